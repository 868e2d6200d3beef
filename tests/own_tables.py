"""A small bring-your-own cohort (README "Bring your own matrices") and a tiny configuration that runs the whole
workflow on it in seconds: the tests that run Snakemake on own tables share these.

A latent factor per patient drives both the hazard and the features, so the models have something to learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_own_tables(folder: Path, prefix: str = "P", n: int = 24, seed: int = 0,
                     modalities: Sequence[str] = ("rna", "dnam"), n_rna: int = 12, n_dnam: int = 16,
                     unlabelled: int = 0) -> dict[str, Path]:
    """Write ``rna.csv`` (genes), ``dnam.tsv`` (betas, a few NaN) and ``clinical.csv`` (patient, time in days,
    event) for ``n`` patients ``{prefix}000..``; the last ``unlabelled`` patients of the matrices have no clinical
    row (as in Xena and cBioPortal downloads). Returns the ``tables:`` mapping of a cohort (modality -> path)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    z = rng.normal(size=n)
    out: dict[str, Path] = {}
    if "rna" in modalities:
        w = rng.normal(size=n_rna)
        rna = pd.DataFrame(np.exp(np.outer(z, w) + rng.normal(0, 0.3, (n, n_rna))),
                           columns=[f"GENE{j:02d}" for j in range(n_rna)])
        rna.insert(0, "sample", ids)
        rna.to_csv(folder / "rna.csv", index=False)
        out["rna"] = folder / "rna.csv"
    if "dnam" in modalities:
        w = rng.normal(size=n_dnam)
        beta = pd.DataFrame(1 / (1 + np.exp(-(np.outer(z, w) + rng.normal(0, 0.3, (n, n_dnam))))),
                            columns=[f"cg{j:08d}" for j in range(n_dnam)])
        beta.iloc[1, 2] = np.nan
        beta.insert(0, "patient", ids)
        beta.to_csv(folder / "dnam.tsv", sep="\t", index=False)
        out["dnam"] = folder / "dnam.tsv"
    labelled = n - unlabelled
    hazard = np.exp(z[:labelled])
    time = rng.exponential(1500 / hazard).round() + 30
    censor = rng.uniform(200, 4000, labelled).round()
    clin = pd.DataFrame({"patient": ids[:labelled], "time": np.minimum(time, censor),
                         "event": (time <= censor).astype(int)})
    clin.to_csv(folder / "clinical.csv", index=False)
    out["clinical"] = folder / "clinical.csv"
    return out


def write_slide_table(folder: Path, patients: Sequence[str], missing: Sequence[str] = (), seed: int = 0) -> Path:
    """One small synthetic Aperio slide per patient (tests/wsi_synth.py: pink tissue, purple nuclei), listed in
    ``slides.csv`` (patient, path relative to the table); the ``missing`` patients' rows name a file that does not
    exist. Returns the table's path."""
    from wsi_synth import he_image

    from imputmae.svs import write_aperio_svs

    (folder / "slides").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, p in enumerate(patients):
        name = f"slides/{p}-DX1.svs"
        if p not in missing:
            img = he_image(512, 640, [(0.5, 0.5, 0.35, 0.35, 0.3 + 0.7 * (i % 3) / 2)], seed=seed + i)
            write_aperio_svs(folder / name, img, mpp=0.5, app_mag=20, n_levels=2)
        rows.append({"patient": p, "path": name})
    pd.DataFrame(rows).to_csv(folder / "slides.csv", index=False)
    return folder / "slides.csv"


def tiny_overlay(results: Path, cohorts: dict[str, Any], n_folds: int = 2,
                 modality_sets: Sequence[str] = ("rna", "all"), unimodal: Sequence[str] = ("rna",)) -> dict[str, Any]:
    """A ``--configfile`` overlay: the given cohorts, a tiny model, a few epochs, ``n_folds`` outer folds."""
    return {
        "results": str(results),
        "cohorts": cohorts,
        "omics": {"n_quantiles": 20, "rna": {"patch_size": 4}, "dnam": {"patch_size": 4}},
        "splits": {"n_folds": n_folds, "seed": 0},
        "model": {"size": "tiny", "hidden_size": 16, "intermediate_size": 32, "decoder_hidden_size": 16,
                  "decoder_intermediate_size": 32, "wsi_patch_size": 32},
        "wsi": {"tile_size": 64, "n_candidates": 40, "keep": 4, "threads": 1},
        "pretrain": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "checkpoint_every": 1, "num_workers": 0,
                     "deterministic": True, "per_fold": False, "unimodal": list(unimodal)},
        "finetune": {"modality_sets": list(modality_sets), "epochs": 2, "batch_size": 8, "warmup_epochs": 1,
                     "members": 1},
        # Table 3's baselines at narrow widths and one or two epochs: the rows' plumbing, not their quality
        "baselines": {"n_boot": 50, "settings": {
            "multisurv": {"epochs": 2, "model": {"width": 32, "rna_features": 32, "dnam_features": 32}},
            "cmta": {"epochs": 1, "model": {"dim": 32, "genomic_hidden": 32}},
            "mome": {"epochs": 1, "model": {"dim": 32}}}},
    }


def snakemake_command(workdir: Path, overlay: dict[str, Any], *extra: str, cores: int = 2) -> list[str]:
    """``python -m snakemake`` on this checkout's Snakefile in ``workdir`` with ``overlay`` written as
    ``workdir/overlay.yaml`` (merged over the repository's config.yaml, as a user's ``--configfile`` is)."""
    import sys

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
            "--configfile", str(workdir / "overlay.yaml"), "--cores", str(cores), *extra]
