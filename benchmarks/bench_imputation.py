"""Whole-modality imputation on a finished demo run, against references measured in the same run.

For each fold's multimodal pretraining checkpoint (`{results}/pretrain/multimodal/fold*/checkpoint.pt`), on that
fold's test patients that have the modality and at least one other (the rows of Table 4's imputation block):

  - training mean: imputing the training patients' mean (the denominator of every ratio below);
  - oracle: scikit-learn RidgeCV from the demo's TRUE latent factors (oracle.parquet), fitted on the fold's
    training patients: the error no imputer can be expected to beat (the rest is the demo's planted noise);
  - ridge: RidgeCV from the other omics modality (Table 4's reference);
  - own tiles (WSI): each test tile against the mean of the same slide's other tiles, a reference that knows the
    slide (no imputer from omics does); it shows how much of a tile's pixel MSE is texture nothing can predict;
  - decoder, views=0: our decoder shown every patch of the present modalities once;
  - decoder, views=8: our decoder shown them masked as in pretraining, 8 seeded draws averaged (the default).

Goal (issue 6): decoder / training mean <= 0.5.

    PYTHONPATH=src python benchmarks/bench_imputation.py --results results/demo --oracle results/demo/mirror/oracle.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import RidgeCV

from imputmae import data as D
from imputmae.config import load_config
from imputmae.table4 import _test_dataset, evaluate_imputation, ridge_imputation
from imputmae.checkpoint import load_pretrained
from imputmae.model import MODALITIES


def oracle_imputation(model, train: D.OmicsArrays, test: D.OmicsArrays, z: pd.DataFrame) -> dict[str, float]:
    """MSE of RidgeCV(true factors -> modality) on the rows evaluate_imputation scores (omics only)."""
    out = {}
    for m in ("rna", "dnam"):
        if m not in model.modalities:
            continue
        j, n = MODALITIES.index(m), model.cfg.lengths[m]
        others = [MODALITIES.index(o) for o in model.modalities if o != m]
        fit = train.available[:, j]
        rows = test.available[:, j] & test.available[:, others].any(1)
        zt = z.loc[np.asarray(train.patients)[fit]].to_numpy()
        ze = z.loc[np.asarray(test.patients)[rows]].to_numpy()
        ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(zt, train.vectors[m][fit, :n])
        truth = test.vectors[m][rows, :n]
        out[m] = float(((np.clip(ridge.predict(ze), 0, 1) - truth) ** 2).mean())
    return out


def own_tiles_wsi(test: D.OmicsArrays, train_mean: torch.Tensor) -> float:
    """Pixel MSE of each test tile against the mean of its slide's other tiles, over that of the training-mean tile."""
    num = den = 0.0
    mean = train_mean.numpy().transpose(1, 2, 0)                    # [H, W, 3] in [0, 1]
    for path, have in zip(test.image_paths["wsi"], test.available[:, test.column("wsi")]):
        if not have:
            continue
        tiles = np.load(path).astype(np.float64) / 255.0             # [K, H, W, 3]
        if len(tiles) < 2:
            continue
        others = (tiles.sum(0, keepdims=True) - tiles) / (len(tiles) - 1)
        num += float(((others - tiles) ** 2).mean())
        den += float(((mean[None] - tiles) ** 2).mean())
    return num / den if den else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results/demo")
    ap.add_argument("--oracle", default="results/demo/mirror/oracle.parquet")
    ap.add_argument("--config", nargs="+", default=["config.yaml", "config.demo.yaml"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, overrides={"results": args.results})
    R, cohorts = Path(args.results), sorted(cfg["cohorts"])
    z = pd.read_parquet(args.oracle).set_index("patient").filter(regex=r"^z\d+$")
    patients, splits = D.load_patients(R, cohorts), D.read_splits(R / "splits.parquet")
    omics_cache: dict[str, pd.DataFrame] = {}
    rows = []
    for ck in sorted((R / "pretrain" / "multimodal").glob("fold*/checkpoint.pt")):
        fold = int(ck.parent.name.removeprefix("fold"))
        model, norm_states, meta = load_pretrained(ck)
        for k in norm_states:
            omics_cache.setdefault(k, D.load_omics(R, cohorts, k))
        omics = {k: omics_cache[k] for k in norm_states}
        test = _test_dataset(cfg, model, norm_states, fold, patients, splits, omics)
        train_ids = set(meta["extra"]["train_patients"])
        train = D.build_arrays(patients[patients["patient"].isin(train_ids)].reset_index(drop=True), omics,
                               {k: D.restore_normalizer(v) for k, v in norm_states.items()})
        means = meta["extra"]["train_means"]
        oracle = oracle_imputation(model, train, test.a, z)
        ridge = ridge_imputation(model, train, test.a, means)
        dec0 = evaluate_imputation(model, test, means, torch.device("cpu"), views=0)
        dec8 = evaluate_imputation(model, test, means, torch.device("cpu"), views=8)
        own = own_tiles_wsi(test.a, means["wsi"]) if "wsi" in means else np.nan
        for m, r in dec8.items():
            rows.append({"fold": fold, "modality": m, "n": r["n_patients"], "mean": r["mean"],
                         "oracle": oracle.get(m, np.nan), "own_tiles": own * r["mean"] if m == "wsi" else np.nan,
                         "ridge": ridge.get(m, np.nan),
                         "decoder_views0": dec0[m]["model"], "decoder_views8": r["model"]})
    df = pd.DataFrame(rows)
    if df.empty:
        raise SystemExit(f"no multimodal checkpoints under {R / 'pretrain' / 'multimodal'}")
    agg = df.groupby("modality").agg(folds=("fold", "nunique"), patients=("n", "sum"),
                                     **{c: (c, "mean") for c in ("mean", "oracle", "own_tiles", "ridge",
                                                                  "decoder_views0", "decoder_views8")})
    for c in ("oracle", "own_tiles", "ridge", "decoder_views0", "decoder_views8"):
        agg[f"{c} / mean"] = agg[c] / agg["mean"]
    pd.set_option("display.width", 200)
    print(f"Whole-modality imputation, MSE in the [0, 1] space, mean over folds ({args.results})")
    print(agg[["folds", "patients", "mean", "oracle / mean", "own_tiles / mean", "ridge / mean", "decoder_views0 / mean",
               "decoder_views8 / mean"]].round(4).to_string())
    print("goal: decoder_views8 / mean <= 0.5")


if __name__ == "__main__":
    main()
