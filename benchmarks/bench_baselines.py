"""Fine-tuning time per baseline per fold, against impuTMAE's fine-tuning of the same fold in the same run.

The fold: demo-sized and synthetic by default (40 patients, 2,000 RNA genes, 1,100 DNAm probes, 8 tiles of
256 px each, some modalities missing; a latent risk drives the times and every modality), with the demo's MAE
(config.yaml + config.demo.yaml: the ``tiny`` model, 32-px WSI patches) left at its initialisation: time does not
depend on the weights. ``--results results/demo`` uses fold 0 of the first cohort of a finished demo run instead
(its pretrained MAE, normalised inputs and labels).

Timed, each with wall and CPU seconds (``time.process_time``), on 1 thread:
  * the reference: :func:`imputmae.finetune.run_finetune` ("all", the demo's fine-tuning settings: members, epochs,
    selection), frozen-feature cache included;
  * the baselines' shared inputs (:func:`imputmae.baselines.baseline_inputs`: decoder imputation + frozen tile
    features), once per fold for all baseline rows;
  * each baseline's :func:`imputmae.baselines.train_baseline` with its published settings (epochs, batch,
    optimiser), and the ratio baseline / reference.

    PYTHONPATH=src python benchmarks/bench_baselines.py                      # synthetic demo-sized fold
    PYTHONPATH=src python benchmarks/bench_baselines.py --patients 200       # larger
    PYTHONPATH=src python benchmarks/bench_baselines.py --results results/demo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imputmae.baselines import BASELINES, BaselineConfig, baseline_inputs, train_baseline
from imputmae.finetune import FinetuneConfig, PatientInputs, run_finetune
from imputmae.model import MAEConfig, MultimodalMAE


def synthetic_fold(cfg: dict, n: int, n_tiles: int, seed: int = 0):
    """(mae, inputs, clinical, train, test) for a demo-sized synthetic fold (module docstring)."""
    rng = np.random.default_rng(seed)
    rna_len, dnam_len = 2000, 1100
    torch.manual_seed(seed)
    mae = MultimodalMAE(MAEConfig.from_config(cfg, {"rna": rna_len, "dnam": dnam_len})).eval()
    size = mae.cfg.tile_size
    z = rng.normal(size=n)
    patients = [f"SYN-{i:04d}" for i in range(n)]
    t = rng.exponential(1000 * np.exp(-z))
    c = rng.exponential(2500, n)
    clinical = pd.DataFrame({"time": np.minimum(t, c).round() + 1, "event": (t <= c).astype(int)},
                            index=pd.Index(patients, name="patient"))
    sig = 1 / (1 + np.exp(-z))
    inp = PatientInputs(omics={"rna": {}, "dnam": {}})
    for i, p in enumerate(patients):
        if i % 7 != 3:
            inp.omics["rna"][p] = np.clip(sig[i] + rng.normal(0, 0.2, rna_len), 0, 1).astype(np.float32)
        if i % 5 != 1:
            inp.omics["dnam"][p] = np.clip(1 - sig[i] + rng.normal(0, 0.2, dnam_len), 0, 1).astype(np.float32)
        if i % 4 != 2:
            inp.tiles[p] = (np.clip(sig[i] + rng.normal(0, 0.2, (n_tiles, size, size, 3)), 0, 1) * 255
                            ).astype(np.uint8)
    test = patients[: n // 5]
    return mae, inp, clinical, patients[n // 5:], test


def demo_fold(cfg: dict, results: Path):
    """Fold 0 of the first cohort of a finished demo run."""
    from imputmae.finetune import load_cohort_inputs, normalizers_from_states
    from imputmae.checkpoint import load_pretrained

    splits = pd.read_parquet(results / "splits.parquet")
    cohort = sorted(splits["cohort"].unique())[0]
    s = splits[splits["cohort"] == cohort]
    mae, states, _ = load_pretrained(results / "pretrain" / "multimodal" / "fold0" / "checkpoint.pt")
    inputs = load_cohort_inputs(results, cohort, normalizers_from_states(states), s["patient"].tolist())
    clinical = pd.read_parquet(results / cohort / "clinical.parquet").set_index("patient")
    return (mae, inputs, clinical, s.loc[s["fold"] != 0, "patient"].tolist(),
            s.loc[s["fold"] == 0, "patient"].tolist())


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", nargs="+", default=["config.yaml", "config.demo.yaml"])
    ap.add_argument("--results", type=Path, default=None, help="a finished demo run (else a synthetic fold)")
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--baselines", nargs="+", default=list(BASELINES))
    args = ap.parse_args()
    from imputmae.config import load_config

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    mae, inputs, clinical, train, test = (demo_fold(cfg, args.results) if args.results
                                          else synthetic_fold(cfg, args.patients, args.tiles))
    everyone = [p for p in train + test if p in clinical.index]
    print(f"fold: {len(train)} training / {len(test)} test patients; MAE hidden {mae.cfg.hidden_size}, "
          f"{'demo run ' + str(args.results) if args.results else 'synthetic'}; 1 thread, CPU")
    ref, ref_w, ref_c = timed(lambda: run_finetune(mae, inputs, clinical, train, test,
                                                   FinetuneConfig.from_config(cfg, "all"), device="cpu"))
    bi, in_w, in_c = timed(lambda: baseline_inputs(mae, inputs, everyone, "impute"))
    rows = [{"model": "impuTMAE all (reference)", "epochs": cfg["finetune"]["epochs"],
             "wall_s": ref_w, "cpu_s": ref_c, "ratio_wall": 1.0, "ratio_cpu": 1.0,
             "antolini": ref.metrics["antolini"]},
            {"model": "baseline inputs (once per fold)", "epochs": None, "wall_s": in_w, "cpu_s": in_c,
             "ratio_wall": in_w / ref_w, "ratio_cpu": in_c / ref_c, "antolini": float("nan")}]
    for name in args.baselines:
        bc = BaselineConfig.published(name)
        res, w, c = timed(lambda: train_baseline(bi, clinical, train, test, bc, device="cpu"))
        rows.append({"model": name, "epochs": bc.epochs, "wall_s": w, "cpu_s": c, "ratio_wall": w / ref_w,
                     "ratio_cpu": c / ref_c,
                     "antolini": res.metrics["antolini"], "parameters": res.metrics["n_parameters"]})
    table = pd.DataFrame(rows).set_index("model").astype({"epochs": "Int64", "parameters": "Int64"})
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print("ratio_wall / ratio_cpu = wall / CPU seconds over impuTMAE's fine-tuning of the same fold in this run; "
          f"test C-index on {len(test)} patients (one fold: a smoke figure, not a comparison)")


if __name__ == "__main__":
    main()
