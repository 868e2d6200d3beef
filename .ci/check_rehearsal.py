"""CI check after the paper-scale rehearsal (.ci/rehearsal): the pipeline ran at the real dimensions, not the demo's.

    check_rehearsal.py results/rehearsal

Per cohort: the RNA matrix has all 19,962 protein-coding genes of GENCODE v36, the DNAm matrix the 25,978 probes
both arrays share; every patient's tiles are config.yaml's K x tile_size x tile_size (or none, with a QC status
saying why), selected with its n_candidates. Exit status 1, one line per failure, when any is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
N_CODING, N_SHARED_PROBES = 19_962, 25_978


def check(results: Path, wsi: dict) -> list[str]:
    errors = []
    cohorts = sorted(p.parent.name for p in results.glob("*/rna.parquet"))
    if not cohorts:
        return [f"{results}: no */rna.parquet"]
    k, px = wsi["keep"], wsi["tile_size"]
    for c in cohorts:
        for name, n in (("rna", N_CODING), ("dnam", N_SHARED_PROBES)):
            shape = pd.read_parquet(results / c / f"{name}.parquet").shape
            if shape[1] != n:
                errors.append(f"{results / c / name}.parquet: {shape[1]} features, expected {n}")
        npys = sorted((results / c / "wsi").glob("*.npy"))
        full = 0
        for npy in npys:
            shape = np.load(npy, mmap_mode="r").shape
            qc = pd.read_csv(npy.with_suffix(".qc.tsv"), sep="\t").iloc[0]
            settings = json.loads(pq.read_schema(npy.with_suffix(".parquet")).metadata[b"imputmae.wsi.settings"])
            if settings["n_candidates"] != wsi["n_candidates"]:
                errors.append(f"{npy.with_suffix('.parquet')}: {settings['n_candidates']} candidates, expected "
                              f"{wsi['n_candidates']}")
            if shape[1:] != (px, px, 3) or (shape[0] != k and qc["status"] == "ok"):
                errors.append(f"{npy}: tiles {shape}, expected ({k}, {px}, {px}, 3) (QC status {qc['status']})")
            full += shape[0] == k
        print(f"{c}: rna {N_CODING} genes, dnam {N_SHARED_PROBES} probes, {full} of {len(npys)} patients with "
              f"{k} tiles of {px} px")
        if not full:
            errors.append(f"{results / c / 'wsi'}: no patient with {k} tiles")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    a = ap.parse_args()
    wsi = yaml.safe_load((ROOT / "config.yaml").read_text())["wsi"]  # the rehearsal keeps config.yaml's wsi settings
    errors = check(a.results, wsi)
    for e in errors:
        print(f"FAIL {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
