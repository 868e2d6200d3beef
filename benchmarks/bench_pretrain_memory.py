"""Peak host memory of one pretraining job against the number of patients, at the real omics widths.

What ``workflow/rules/pretrain.smk`` asks Slurm for (``mem_mb``, :func:`imputmae.memory.pretrain_mem_mb`) is fitted
on this: a synthetic results folder of N patients (two cohorts; RNA 19,962 protein-coding genes before the std
filter, DNAm 25,978 probes, float32 matrices as the omics stage writes them; every patient with a slide of K tiles
of 256 px), then :func:`imputmae.engine.pretrain` for one epoch, each N in its own subprocess reporting its own
peak RSS (``ru_maxrss``). The per-patient cost is the slope between N and 2N, divided by the omics width, so that
the constant covers the loaded matrices, the normalisers' float64 copies and the model-ready arrays.

    PYTHONPATH=src nice -n 5 python benchmarks/bench_pretrain_memory.py --n 150 300
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RNA_COLUMNS, DNAM_COLUMNS = 19_962, 25_978


def write_cohort(results: Path, name: str, n: int, k_tiles: int, tile: int, seed: int) -> None:
    """``results/<name>/`` with clinical.parquet, rna.parquet, dnam.parquet, wsi_qc.tsv and wsi/<patient>.npy."""
    rng = np.random.default_rng(seed)
    d = results / name
    (d / "wsi").mkdir(parents=True, exist_ok=True)
    ids = [f"{name}-{i:04d}" for i in range(n)]
    pd.DataFrame({"patient": ids, "project_id": f"P-{name}", "time": rng.uniform(30, 3000, n),
                  "event": (rng.random(n) < 0.4).astype(int)}).to_parquet(d / "clinical.parquet", index=False)
    rna = rng.gamma(0.8, 5.0, (n, RNA_COLUMNS)).astype(np.float32)
    pd.DataFrame(rna, index=pd.Index(ids, name="patient"),
                 columns=[f"ENSG{j:011d}" for j in range(RNA_COLUMNS)]).to_parquet(d / "rna.parquet")
    del rna
    dnam = rng.random((n, DNAM_COLUMNS), dtype=np.float32)
    pd.DataFrame(dnam, index=pd.Index(ids, name="patient"),
                 columns=[f"cg{j:08d}" for j in range(DNAM_COLUMNS)]).to_parquet(d / "dnam.parquet")
    del dnam
    tiles = rng.integers(0, 255, (k_tiles, tile, tile, 3), dtype=np.uint8)
    for p in ids:
        np.save(d / "wsi" / f"{p}.npy", tiles)
    pd.DataFrame({"patient": ids, "slide": [f"{p}-DX1" for p in ids], "status": "ok",
                  "n_tiles": k_tiles}).to_csv(d / "wsi_qc.tsv", sep="\t", index=False)


def child(results: Path, size: str, batch: int) -> None:
    """Run in a subprocess: one epoch of pretraining on ``results``; prints JSON with the peak RSS."""
    import torch

    from imputmae.config import load_config, merge_config
    from imputmae.engine import pretrain

    torch.set_num_threads(1)
    base = load_config([REPO / "config.yaml"])
    cfg = merge_config(base, {"results": str(results), "model": {"size": size},
                              "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": batch, "num_workers": 0,
                                           "per_fold": False, "checkpoint_every": 1}})
    cfg["cohorts"] = {"A": {"projects": ["P-A"]}, "B": {"projects": ["P-B"]}}
    t0 = time.process_time()
    pretrain(cfg, run="multimodal", fold=0, out_dir=results / "out", device="cpu", progress=False)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cpu_s": round(time.process_time() - t0, 1)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs=2, default=[150, 300], help="patients in all (N and 2N)")
    ap.add_argument("--size", default="small", choices=["small", "big", "tiny"])
    ap.add_argument("--k-tiles", type=int, default=4, help="tiles per slide (memory-mapped; one read per sample)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child), args.size, args.batch)
        return 0
    from imputmae import data

    rows = []
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="bench-pretrain-mem-") as tmp:
            results = Path(tmp)
            for j, name in enumerate("AB"):
                write_cohort(results, name, n // 2, args.k_tiles, 256, seed=j)
            patients = data.load_patients(results, ["A", "B"])
            data.write_splits(data.make_splits(data.select_split_patients(patients), 5, 0), results / "splits.parquet")
            out = subprocess.run([sys.executable, __file__, "--child", str(results), "--size", args.size,
                                  "--batch", str(args.batch)], capture_output=True, text=True, check=True)
            rows.append({"patients": n, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    (a, b) = rows
    width = RNA_COLUMNS + DNAM_COLUMNS
    per = (b["peak_rss_mib"] - a["peak_rss_mib"]) * 2**20 / (b["patients"] - a["patients"])
    print(f"{args.size}: peak RSS {a['peak_rss_mib']:.0f} MiB at N = {a['patients']}, {b['peak_rss_mib']:.0f} MiB at "
          f"2N = {b['patients']}: {per / 2**20:.2f} MiB per patient = {per / width:.1f} bytes per patient and omics "
          f"column ({width} columns); intercept {a['peak_rss_mib'] - per * a['patients'] / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
