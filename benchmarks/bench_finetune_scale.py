"""Fine-tuning memory at the paper's dimensions: peak RSS with N and 2N patients, against the code before the
memory work (the named reference, main at fd84d42) at the same sizes.

A synthetic cohort at the real sizes: K = 100 tiles of 256 px per slide (``.npy``, uint8, as `imputmae wsi` writes),
RNA 16,304 genes, DNAm 25,978 probes, the small model of config.yaml (or ``--size big``); every fourth patient has
no slide (the decoder imputes one tile for them). Each (code, N) runs ``run_finetune`` once, ``--epochs`` epochs,
batch ``--batch-size``, in a fresh subprocess that reports its own peak RSS (``getrusage(RUSAGE_SELF)``) and, on
a GPU, ``torch.cuda.max_memory_allocated``. Prints both peaks, their ratio 2N / N (goal <= 1.1), seconds per
patient of the feature pass and per epoch, and the extrapolation to TCGA-BRCA's 982 patients.

    PYTHONPATH=src python benchmarks/bench_finetune_scale.py --n 8 --epochs 1

The reference needs git and this repository's history (``git archive fd84d42 src``); ``--no-reference`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REFERENCE = "fd84d42"          # main before the memory work: every patient's float tiles and hidden states in RAM
RNA_LEN, DNAM_LEN, K, TILE = 16_304, 25_978, 100, 256
BRCA = 982


def make_cohort(root: Path, n: int, seed: int = 0) -> None:
    """n patients' tiles (uint8 [K, 256, 256, 3] .npy), omics (float32 in [0, 1], .npy) and survival (.json)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    clinical = {}
    for i in range(n):
        p = f"SCALE-{i:04d}"
        np.save(root / f"{p}.rna.npy", rng.random(RNA_LEN, dtype=np.float32))
        np.save(root / f"{p}.dnam.npy", rng.random(DNAM_LEN, dtype=np.float32))
        if i % 4 != 3:
            np.save(root / f"{p}.npy", rng.integers(0, 256, (K, TILE, TILE, 3), dtype=np.uint8))
        clinical[p] = [float(rng.integers(30, 3000)), int(rng.random() < 0.4)]
    (root / "clinical.json").write_text(json.dumps(clinical))


def child(args: argparse.Namespace) -> None:
    """One run in this process: load the cohort as that code's reader does, fine-tune once, print a JSON line."""
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    from imputmae.config import MODEL_SIZES
    from imputmae.finetune import FinetuneConfig, PatientInputs, run_finetune
    from imputmae.model import MAEConfig, MultimodalMAE

    root = Path(args.cohort)
    clinical = json.loads((root / "clinical.json").read_text())
    patients = sorted(clinical)[: args.child_n]
    try:
        from imputmae.finetune import TileFile           # the new code: tiles read when used
        read = TileFile
    except ImportError:                                   # the reference: memory-mapped, as its load_cohort_inputs
        def read(f):
            return np.load(f, mmap_mode="r")
    inp = PatientInputs(omics={"rna": {}, "dnam": {}})
    for p in patients:
        for m in ("rna", "dnam"):
            inp.omics[m][p] = np.load(root / f"{p}.{m}.npy")
        if (root / f"{p}.npy").exists():
            inp.tiles[p] = read(root / f"{p}.npy")
    clin = pd.DataFrame(clinical, index=["time", "event"]).T.loc[patients]
    torch.manual_seed(0)
    cfg = MAEConfig.from_dict(dict(rna_len=RNA_LEN, dnam_len=DNAM_LEN, tile_size=TILE, wsi_patch_size=16,
                    **MODEL_SIZES[args.size]))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    mae = MultimodalMAE(cfg).eval().to(dev)
    test = patients[::4]
    train = [p for p in patients if p not in test]
    fcfg = FinetuneConfig(modset="all", epochs=args.epochs, batch_size=args.batch_size, warmup_epochs=0,
                          n_bins=4, val_fraction=0.25)
    t0 = time.process_time()
    res = run_finetune(mae, inp, clin, train, test, fcfg, device=dev)
    out = {"n": len(patients), "cpu_s": time.process_time() - t0,
           "seconds_cache": res.metrics["seconds_cache"], "seconds_train": res.metrics["seconds_train"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "cuda_max_mib": torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None}
    print("RESULT " + json.dumps(out), flush=True)


def run(code_src: Path, cohort: Path, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child-n", str(n), "--cohort", str(cohort), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--size", args.size, "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(code_src)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{code_src} at N={n} failed:\n{proc.stderr[-3000:]}")
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT "))
    return {**json.loads(line[7:]), "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="N; the second size is 2N")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4, help="smaller than N's fit patients: the batch is the "
                                                                "same at N and 2N")
    ap.add_argument("--size", choices=["small", "big"], default="small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cohort", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_n:
        child(args)
        return
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="imputmae-scale-") as tmp:
        cohort = Path(tmp) / "cohort"
        make_cohort(cohort, 2 * args.n)
        codes = {"new": here / "src"}
        if not args.no_reference:
            ref = Path(tmp) / "reference"
            ref.mkdir()
            archive = subprocess.run(["git", "-C", str(here), "archive", REFERENCE, "src"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(ref)], input=archive, check=True)
            codes[f"reference {REFERENCE}"] = ref / "src"
        rows = {}
        for name, src in codes.items():
            rows[name] = [run(src, cohort, n, args) for n in (args.n, 2 * args.n)]
    print(f"model {args.size}, K = {K} tiles of {TILE} px, RNA {RNA_LEN}, DNAm {DNAM_LEN}, epochs {args.epochs}, "
          f"batch {args.batch_size}, {args.threads} thread(s); every 4th patient without a slide")
    for name, (a, b) in rows.items():
        print(f"{name:>20}: peak RSS N={a['n']}: {a['peak_rss_mib']:.0f} MiB, 2N={b['n']}: {b['peak_rss_mib']:.0f}"
              f" MiB, ratio {b['peak_rss_mib'] / a['peak_rss_mib']:.3f}"
              + (f"; CUDA max allocated {a['cuda_max_mib']:.0f} / {b['cuda_max_mib']:.0f} MiB, ratio "
                 f"{b['cuda_max_mib'] / a['cuda_max_mib']:.3f}" if a["cuda_max_mib"] else ""))
        for r in (a, b):
            per_cache = r["seconds_cache"] / r["n"]
            per_epoch = r["seconds_train"] / args.epochs
            print(f"{'':>22}N={r['n']}: feature pass {per_cache:.2f} s/patient, training {per_epoch:.1f} s/epoch "
                  f"({per_epoch / r['n']:.2f} s/patient/epoch), {r['cpu_s']:.0f} CPU-s, {r['wall_s']:.0f} s wall")
    new = rows["new"][1]
    from imputmae.config import MODEL_SIZES
    D = MODEL_SIZES[args.size]["hidden_size"]
    print(f"BRCA ({BRCA} patients), new code, from 2N: feature pass {new['seconds_cache'] / new['n'] * BRCA / 3600:.2f}"
          f" h, {new['seconds_train'] / args.epochs / new['n'] * BRCA / 3600:.2f} h per epoch (this device); peak RSS "
          f"stays ~{new['peak_rss_mib']:.0f} MiB; frozen-feature file (float32) "
          f"{BRCA * 0.75 * K * (1 + (TILE // 16) ** 2) * D * 4 / 2**30:.0f} GiB in $TMPDIR ({args.size} model, 3/4 "
          f"of the patients with a slide)")
    if len(rows) > 1:
        ref = rows[f"reference {REFERENCE}"]
        print(f"new / reference peak RSS: N {rows['new'][0]['peak_rss_mib'] / ref[0]['peak_rss_mib']:.3f}, "
              f"2N {new['peak_rss_mib'] / ref[1]['peak_rss_mib']:.3f}")


if __name__ == "__main__":
    main()
