"""Fine-tuning quality and speed on a finished demo run (after `snakemake --configfile config.demo.yaml`).

Prints, per cohort:
  1. C-index of impuTMAE "all" / the oracle's C-index on the same test folds (goal >= 0.95);
  2. "all" against each single modality ON THE SAME test patients (those who have that modality);
  3. imputed-all against zero-filled-all (missing="zero" rerun here, same folds, same seeds);
  4. time per fold: the run's fine-tuning jobs (their metrics.json); one model's fine-tuning with the frozen-feature
     cache against the reference, the same epochs recomputing the frozen layers (and imputation) for every batch,
     measured in this run on one fold.

    PYTHONPATH=src python benchmarks/bench_finetune.py --results results/demo --oracle results/demo/mirror/oracle.parquet
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imputmae.finetune import (FinetuneConfig, SurvivalModel, frozen_features, load_cohort_inputs,
                               normalizers_from_states, run_finetune, select_patients)
from imputmae.checkpoint import load_pretrained
from imputmae.survival import concordance_td, discretize, fit_cuts, interpolate_survival, nll_logistic_hazard


def cindex(pred: pd.DataFrame, method: str = "antolini") -> float:
    s = pred.filter(regex=r"^s_\d+$").to_numpy()
    cuts = pred.attrs["cuts"]
    g, t = interpolate_survival(s, cuts, 10)
    return concordance_td(pred["time"].to_numpy(), pred["event"].to_numpy(), g, t, method)


def fold_preds(R: Path, cohort: str, modset: str, fold: int) -> pd.DataFrame:
    d = R / "finetune" / cohort / modset / f"fold{fold}"
    p = pd.read_parquet(d / "predictions.parquet")
    p = p[p["split"] == "test"].copy()
    p.attrs["cuts"] = torch.load(d / "model.pt", weights_only=True, map_location="cpu")["cuts"].numpy()
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default="results/demo")
    ap.add_argument("--oracle", default="results/demo/mirror/oracle.parquet")
    ap.add_argument("--config", nargs="+", default=["config.yaml", "config.demo.yaml"])
    ap.add_argument("--skip-zero", action="store_true")
    args = ap.parse_args()
    from imputmae.config import load_config
    from imputmae.report import oracle_cindex

    cfg = load_config(args.config)
    torch.set_num_threads(1)
    R = Path(args.results)
    splits = pd.read_parquet(R / "splits.parquet")
    cohorts = sorted(splits["cohort"].unique())
    n_folds = int(splits["fold"].max()) + 1
    clin = pd.concat([pd.read_parquet(R / c / "clinical.parquet") for c in cohorts])
    oracle = oracle_cindex(pd.read_parquet(args.oracle), splits, clin)
    rows = []
    for c in cohorts:
        row = {"cohort": c}
        a = [cindex(fold_preds(R, c, "all", k)) for k in range(n_folds)]
        row["all"] = float(np.mean(a))
        row["oracle"] = float(oracle.loc[oracle["cohort"] == c, "cindex"].mean())
        row["all/oracle"] = row["all"] / row["oracle"]
        for m in ("rna", "dnam", "wsi"):
            single, same = [], []
            for k in range(n_folds):
                pm = fold_preds(R, c, m, k)
                pa = fold_preds(R, c, "all", k)
                pa = pa[pa["patient"].isin(set(pm["patient"]))]
                if len(pm) > 2:
                    single.append(cindex(pm))
                    same.append(cindex(pa))
            row[m] = float(np.nanmean(single))
            row[f"all_on_{m}_patients"] = float(np.nanmean(same))
        rows.append(row)
    table = pd.DataFrame(rows).set_index("cohort")
    print("Antolini C-index, mean over folds (single modality vs 'all' on the same test patients)")
    print(table.round(3).to_string())

    timings, zero_rows = [], []
    for c in cohorts:
        s = splits[splits["cohort"] == c]
        clinical = pd.read_parquet(R / c / "clinical.parquet").set_index("patient")
        z, imp = [], []
        for k in range(n_folds):
            ck = R / "pretrain" / "multimodal" / f"fold{k if cfg['pretrain']['per_fold'] else 0}" / "checkpoint.pt"
            mae, states, _ = load_pretrained(ck)
            inputs = load_cohort_inputs(R, c, normalizers_from_states(states), s["patient"].tolist())
            test = s.loc[s["fold"] == k, "patient"].tolist()
            train = s.loc[s["fold"] != k, "patient"].tolist()
            fc = FinetuneConfig.from_config(cfg, "all")
            if not args.skip_zero:
                rz = run_finetune(mae, inputs, clinical, train, test, FinetuneConfig.from_config(cfg, "all",
                                                                                                 missing="zero"),
                                  fold=k, device="cpu")
                z.append(rz.metrics["antolini"])
                imp.append(json.loads((R / "finetune" / c / "all" / f"fold{k}" / "metrics.json").read_text())
                           ["antolini"])
            if c == cohorts[0] and k == 0:
                timings = time_cached_vs_uncached(mae, inputs, clinical, train, fc)
        if z:
            zero_rows.append({"cohort": c, "imputed_all": np.mean(imp), "zero_filled_all": np.mean(z)})
    if zero_rows:
        print("\nimputed vs zero-filled missing modalities ('all', Antolini, mean over folds)")
        print(pd.DataFrame(zero_rows).set_index("cohort").round(3).to_string())
    runs = [json.loads(f.read_text()) for f in sorted((R / "finetune").glob("*/*/fold*/metrics.json"))]
    if runs:
        print("\nthe run's fine-tuning jobs ({} of them, {} member(s) each): mean {:.2f}s cache + {:.2f}s training "
              "per job (metrics.json)".format(len(runs), sorted({r.get("members", 1) for r in runs}),
                                              np.mean([r["seconds_cache"] for r in runs]),
                                              np.mean([r["seconds_train"] for r in runs])))
    print("\nfine-tuning time per fold ({}; 1 thread): cached {:.2f}s (cache {:.2f}s + {} epochs {:.2f}s); reference "
          "recomputing the frozen layers every batch {:.2f}s; ratio reference/cached = {:.1f}x".format(
              cohorts[0], timings["cached_total"], timings["cache"], timings["epochs"], timings["cached_train"],
              timings["uncached"], timings["uncached"] / timings["cached_total"]))


def time_cached_vs_uncached(mae, inputs, clinical, train, cfg: FinetuneConfig) -> dict:
    """The same optimisation steps, with the frozen-feature cache and recomputing it for every batch."""
    mods = cfg.modalities(mae.modalities)
    train = select_patients(inputs, train, "all")
    t = clinical.loc[train, "time"].to_numpy(float)
    e = clinical.loc[train, "event"].to_numpy(float)
    cuts = fit_cuts(t, e, cfg.n_bins)
    idx, ev = discretize(cuts, t, e)
    idx, ev = torch.from_numpy(idx), torch.from_numpy(ev)
    out = {"epochs": cfg.epochs}

    def run(cached: bool) -> float:
        torch.manual_seed(0)
        model = SurvivalModel(mae.cfg, mods, len(cuts), cfg.dropout, encoders=mae.encoders)
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        from imputmae.finetune import collate_batch as _collate

        t0 = time.perf_counter()
        ff = frozen_features(mae, inputs, train, mods) if cached else None
        out["cache"] = time.perf_counter() - t0 if cached else out.get("cache", 0.0)
        for _ in range(cfg.epochs):
            for i in range(0, len(train), cfg.batch_size):
                b = np.arange(i, min(i + cfg.batch_size, len(train)))
                if cached:
                    feats = _collate(ff, b, mods)
                else:  # the reference: impute and run the frozen layers again for this batch
                    fb = frozen_features(mae, inputs, [train[j] for j in b], mods)
                    feats = _collate(fb, np.arange(len(b)), mods)
                loss = nll_logistic_hazard(model(feats), idx[b], ev[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return time.perf_counter() - t0

    out["cached_total"] = run(True)
    out["cached_train"] = out["cached_total"] - out["cache"]
    out["uncached"] = run(False)
    return out


if __name__ == "__main__":
    main()
