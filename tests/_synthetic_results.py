"""A tiny results tree in the docs/layout.md format, and a stand-in for the omics stage's normaliser.

Patients share a latent factor across RNA, DNAm and tiles, so cross-modal imputation has something to learn.
Some patients lack DNAm, tiles, labels or RNA, as in TCGA.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from imputmae.config import load_config, merge_config

ROOT = Path(__file__).resolve().parents[1]


class StandInNormalizer:
    """Min-max per feature on the training rows, NaN -> training median, zero-padding to whole patches."""

    def __init__(self, kind: str, patch_size: int):
        self.kind, self.patch_size = kind, patch_size

    def fit(self, train: pd.DataFrame) -> StandInNormalizer:
        x = train.to_numpy(np.float64)
        self.features_in_ = list(train.columns)
        self.median_ = np.nanmedian(x, 0)
        x = np.where(np.isnan(x), self.median_, x)
        self.min_, self.max_ = x.min(0), x.max(0)
        self.n_features_ = x.shape[1]
        self.n_padded_ = math.ceil(self.n_features_ / self.patch_size) * self.patch_size
        return self

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        x = df[self.features_in_].to_numpy(np.float64)
        x = np.where(np.isnan(x), self.median_, x)
        y = np.clip((x - self.min_) / np.where(self.max_ > self.min_, self.max_ - self.min_, 1.0), 0, 1)
        out = np.zeros((len(df), self.n_padded_), np.float32)
        out[:, : self.n_features_] = y
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "patch_size": self.patch_size, "features_in": self.features_in_,
                "median": torch.from_numpy(self.median_), "min": torch.from_numpy(self.min_),
                "max": torch.from_numpy(self.max_)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> StandInNormalizer:
        self = cls(state["kind"], state["patch_size"])
        self.features_in_ = list(state["features_in"])
        self.median_, self.min_, self.max_ = (state[k].numpy() for k in ("median", "min", "max"))
        self.n_features_ = len(self.features_in_)
        self.n_padded_ = math.ceil(self.n_features_ / self.patch_size) * self.patch_size
        return self


def use_stand_in_normalizer(monkeypatch) -> None:
    import imputmae.data as data

    monkeypatch.setattr(data, "make_normalizer",
                        lambda kind, cfg: StandInNormalizer(kind, cfg["omics"][kind]["patch_size"]))
    monkeypatch.setattr(data, "restore_normalizer", StandInNormalizer.from_state_dict)


def write_results(root: Path, *, n_per_cohort: int = 24, n_rna: int = 300, n_dnam: int = 600, tile: int = 32,
                  n_tiles: int = 3, seed: int = 0, complete: bool = False) -> None:
    """Cohorts A (project P-A) and B (P-B1, P-B2) under ``root``; ``complete``: every patient has everything."""
    rng = np.random.default_rng(seed)
    w_rna, w_dnam = rng.normal(size=(4, n_rna)), rng.normal(size=(4, n_dnam))
    w_img = rng.normal(size=(4, 3))
    for cohort, projects in (("A", ["P-A"]), ("B", ["P-B1", "P-B2"])):
        d = root / cohort
        (d / "wsi").mkdir(parents=True, exist_ok=True)
        ids = [f"{cohort}-{i:04d}" for i in range(n_per_cohort)]
        z = rng.normal(size=(n_per_cohort, 4))
        clin = pd.DataFrame({"patient": ids, "project_id": [projects[i % len(projects)] for i in range(len(ids))],
                             "vital_status": "Alive", "time": rng.uniform(10, 3000, len(ids)).round(),
                             "event": (z[:, 0] + rng.normal(0, 0.5, len(ids)) > 0).astype(int)})
        clin.loc[clin["event"] == 1, "vital_status"] = "Dead"
        clin.iloc[: None if complete else -2].to_parquet(d / "clinical.parquet", index=False)      # the last two: no labels
        rna = pd.DataFrame(np.exp(z @ w_rna + rng.normal(0, 0.3, (len(ids), n_rna))).astype(np.float32),
                           index=pd.Index(ids, name="patient"), columns=[f"ENSG{i:011d}" for i in range(n_rna)])
        rna.iloc[0 if complete else 1:].to_parquet(d / "rna.parquet")                          # the first: no RNA
        beta = 1 / (1 + np.exp(-(z @ w_dnam + rng.normal(0, 0.3, (len(ids), n_dnam)))))
        dnam = pd.DataFrame(beta.astype(np.float32), index=pd.Index(ids, name="patient"),
                            columns=[f"cg{i:08d}" for i in range(n_dnam)])
        dnam.iloc[0, 3] = np.nan
        # every fifth patient lacks DNAm
        dnam[[complete or i % 5 != 2 for i in range(len(ids))]].to_parquet(d / "dnam.parquet")
        qc = []
        for i, p in enumerate(ids):
            if i % 4 == 3 and not complete:
                qc.append({"patient": p, "slide": f"{p}-DX1", "status": "blank slide", "n_tiles": 0})
                continue
            colour = 1 / (1 + np.exp(-(z[i] @ w_img)))
            tiles = colour[None, None, None, :] * 200 + rng.normal(0, 10, (n_tiles, tile, tile, 3))
            np.save(d / "wsi" / f"{p}.npy", np.clip(tiles, 0, 255).astype(np.uint8))
            qc.append({"patient": p, "slide": f"{p}-DX1", "status": "ok", "n_tiles": n_tiles})
        pd.DataFrame(qc).to_csv(d / "wsi_qc.tsv", sep="\t", index=False)


def small_config(results: Path, **pretrain: Any) -> dict[str, Any]:
    base = load_config([ROOT / "config.yaml"])
    over = {
        "results": str(results),
        "cohorts": {"A": {"projects": ["P-A"]}, "B": {"projects": ["P-B1", "P-B2"]}},
        "wsi": {"tile_size": 32},
        "splits": {"n_folds": 3, "seed": 0},
        "model": {"size": "tiny", "hidden_size": 32, "intermediate_size": 64, "decoder_hidden_size": 32,
                  "decoder_intermediate_size": 64},
        "pretrain": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8, "checkpoint_every": 1, "num_workers": 0,
                     "deterministic": True, "per_fold": False, **pretrain},
    }
    cfg = merge_config(base, over)
    cfg["cohorts"] = over["cohorts"]
    return cfg
