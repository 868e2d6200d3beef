"""Patients, outer folds, and the pretraining dataset.

The method and its decisions: docs/design.md, ``imputmae.data``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from imputmae.files import atomic_write
from imputmae.modalities import MODALITIES, vector_modalities

__all__ = [
    "Normalizer", "make_normalizer", "restore_normalizer", "n_features", "load_patients", "select_split_patients",
    "make_splits", "write_splits",
    "read_splits", "pretraining_patients", "load_omics", "fit_normalizers", "OmicsArrays", "build_arrays",
    "PatientDataset", "collate",
]

log = logging.getLogger(__name__)


class Normalizer(Protocol):
    """What we need from ``imputmae.normalize.OmicsNormalizer`` (the omics stage's fitted transform)."""

    def fit(self, train: pd.DataFrame) -> Normalizer: ...
    def transform(self, df: pd.DataFrame) -> np.ndarray: ...       # float32 [N, L_padded], in [0, 1]
    def state_dict(self) -> dict[str, Any]: ...


def make_normalizer(kind: str, cfg: Mapping[str, Any]) -> Normalizer:
    """A fresh omics normaliser for ``kind`` (``rna``/``dnam``) configured from ``cfg["omics"]``.

    Identity mode (NaN fill and padding only) when every cohort is a bring-your-own table with ``normalize: false``.
    """
    from imputmae.normalize import OmicsNormalizer

    cohorts = list(cfg["cohorts"].values())
    already = bool(cohorts) and all("tables" in c and c.get("normalize") is False for c in cohorts)
    return OmicsNormalizer.from_config(kind, cfg["omics"], already_normalized=already)


def restore_normalizer(state: Mapping[str, Any]) -> Normalizer:
    """A fitted normaliser from its ``state_dict()`` (as stored in a checkpoint)."""
    from imputmae.normalize import OmicsNormalizer

    return OmicsNormalizer.from_state_dict(state)


def n_features(normalizer: Normalizer, padded_width: int) -> int:
    """Real (unpadded) output width of a fitted normaliser."""
    return int(getattr(normalizer, "n_features_", padded_width))


# ----------------------------------------------------------------------------------------------------------------
# patients and splits


def _read_index(path: Path) -> pd.Index:
    return pd.read_parquet(path, columns=[]).index.astype(str)


def load_patients(results: str | Path, cohorts: Sequence[str]) -> pd.DataFrame:
    """One row per patient seen in any stage output of any cohort.

    Returns:
        DataFrame sorted by (cohort, patient) with columns patient, cohort, project_id, time, event (NaN when the
        patient has no clinical labels), has_rna, has_dnam, has_wsi (bool), wsi_path (str or None).

    Raises:
        FileNotFoundError: a cohort's clinical.parquet is missing, or a tile file that wsi_qc.tsv marks ``ok``.
        ValueError: a patient listed twice in one cohort's clinical table.
    """
    results = Path(results)
    frames = []
    for cohort in cohorts:
        d = results / cohort
        clin_path = d / "clinical.parquet"
        if not clin_path.is_file():
            raise FileNotFoundError(f"{clin_path}: missing (written by the gdc stage: `snakemake {clin_path}`)")
        clin = pd.read_parquet(clin_path)
        missing = {"patient", "project_id", "time", "event"} - set(clin.columns)
        if missing:
            raise ValueError(f"{clin_path}: missing columns {sorted(missing)}")
        dup = clin["patient"][clin["patient"].duplicated()]
        if len(dup):
            raise ValueError(f"{clin_path}: patient {dup.iloc[0]} appears more than once")
        clin = clin.set_index(clin["patient"].astype(str))[["project_id", "time", "event"]]
        idx = {m: _read_index(d / f"{m}.parquet") if (d / f"{m}.parquet").is_file() else pd.Index([])
               for m in vector_modalities()}
        wsi_ok: dict[str, str] = {}
        qc_path = d / "wsi_qc.tsv"
        if qc_path.is_file():
            qc = pd.read_csv(qc_path, sep="\t", dtype={"patient": str})
            for patient in sorted(set(qc.loc[qc["status"] == "ok", "patient"])):
                tiles = d / "wsi" / f"{patient}.npy"
                if not tiles.is_file():
                    raise FileNotFoundError(f"{tiles}: {qc_path} marks patient {patient} ok but the tile file is "
                                            f"missing; rerun the wsi stage for {cohort}")
                wsi_ok[patient] = str(tiles)
        patients = sorted(set(clin.index).union(*map(set, idx.values())) | set(wsi_ok))
        df = pd.DataFrame({"patient": patients, "cohort": cohort})
        df = df.join(clin, on="patient")
        for m, index in idx.items():
            df[f"has_{m}"] = df["patient"].isin(index)
        df["has_wsi"] = df["patient"].isin(list(wsi_ok))
        df["wsi_path"] = df["patient"].map(wsi_ok)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    dup = out["patient"][out["patient"].duplicated()]
    if len(dup):
        raise ValueError(f"patient {dup.iloc[0]} appears in more than one cohort")
    return out


def select_split_patients(patients: pd.DataFrame) -> pd.DataFrame:
    """Patients that enter the splits: survival labels (time and event) and RNA; in a cohort without any RNA (own
    tables of DNAm, or slides, only), survival labels and any modality."""
    any_modality = patients["has_rna"] | patients["has_dnam"] | patients["has_wsi"]
    cohort_has_rna = patients.groupby("cohort")["has_rna"].transform("any")
    measured = patients["has_rna"].where(cohort_has_rna, any_modality)
    keep = measured & patients["time"].notna() & patients["event"].notna()
    return patients.loc[keep].reset_index(drop=True)


def make_splits(patients: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Outer folds per cohort, stratified by project and event (``StratifiedKFold(shuffle=True)``).

    Args:
        patients: columns patient, cohort, project_id, event (one row per patient).
    Returns:
        DataFrame patient, cohort, project_id, event (int), fold (the fold where the patient is a test patient),
        sorted by cohort and patient.
    Raises:
        ValueError: a cohort with fewer patients than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    out = []
    for cohort, df in patients.groupby("cohort", sort=True):
        df = df.sort_values("patient").reset_index(drop=True)
        if len(df) < n_folds:
            raise ValueError(f"cohort {cohort}: {len(df)} patients with labels and RNA, fewer than {n_folds} folds")
        label = df["project_id"].astype(str) + "|" + df["event"].astype(int).astype(str)
        counts = label.value_counts()
        if counts.min() < n_folds:  # sklearn would warn; stratify those rare groups by project only
            rare = label.map(counts) < n_folds
            label = label.where(~rare, df["project_id"].astype(str) + "|rare")
        fold = np.full(len(df), -1)
        skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k, (_, test) in enumerate(skf.split(np.zeros(len(df)), label)):
            fold[test] = k
        out.append(pd.DataFrame({"patient": df["patient"].astype(str), "cohort": cohort,
                                 "project_id": df["project_id"].astype(str), "event": df["event"].astype(int),
                                 "fold": fold}))
    return pd.concat(out, ignore_index=True)


def write_splits(splits: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (:func:`imputmae.files.atomic_write`)."""
    return atomic_write(path, lambda tmp: splits.to_parquet(tmp, index=False))


def read_splits(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run `imputmae splits` or `snakemake {path}`)")
    return pd.read_parquet(path)


def pretraining_patients(patients: pd.DataFrame, splits: pd.DataFrame, fold: int,
                         modalities: Sequence[str]) -> pd.DataFrame:
    """Fold ``fold``'s pretraining patients: anyone with one of ``modalities``, minus that fold's test patients."""
    test = set(splits.loc[splits["fold"] == fold, "patient"])
    if not test:
        raise ValueError(f"fold {fold}: no test patients in the splits (folds are 0..{splits['fold'].max()})")
    has_any = np.zeros(len(patients), dtype=bool)
    for m in modalities:
        has_any |= patients[f"has_{m}"].to_numpy()
    keep = has_any & ~patients["patient"].isin(test).to_numpy()
    return patients.loc[keep].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# omics matrices and normalisers


def load_omics(results: str | Path, cohorts: Sequence[str], kind: str) -> pd.DataFrame:
    """All cohorts' ``{kind}.parquet`` stacked (index patient). Features present in every cohort, first
    cohort's order; dropped features are logged."""
    frames = []
    for cohort in cohorts:
        p = Path(results) / cohort / f"{kind}.parquet"
        if p.is_file():
            df = pd.read_parquet(p)
            df.index = df.index.astype(str)
            frames.append(df)
    if not frames:
        raise FileNotFoundError(f"no {kind}.parquet under {results}/<cohort>/ (written by the omics stage)")
    cols = frames[0].columns
    for f in frames[1:]:
        cols = cols[cols.isin(f.columns)]
    dropped = sum(len(f.columns) for f in frames) - len(cols) * len(frames)
    if dropped:
        log.warning("%s: %d feature columns not shared by every cohort dropped; %d kept", kind, dropped, len(cols))
    return pd.concat([f[cols] for f in frames]).astype(np.float32)


def fit_normalizers(omics: Mapping[str, pd.DataFrame], train_patients: Sequence[str],
                    cfg: Mapping[str, Any]) -> dict[str, Normalizer]:
    """Fit one normaliser per omics modality on the training patients' rows only."""
    train = pd.Index(train_patients)
    out = {}
    for kind, df in omics.items():
        rows = df.index[df.index.isin(train)]
        if len(rows) == 0:
            raise ValueError(f"{kind}: no training patient has this modality; cannot fit its normaliser")
        out[kind] = make_normalizer(kind, cfg).fit(df.loc[rows])
    return out


@dataclass
class OmicsArrays:
    """Model-ready arrays for a list of patients (row i = patients[i])."""

    patients: list[str]
    rna: np.ndarray          # float32 [N, L_rna_padded], zeros where absent
    dnam: np.ndarray         # float32 [N, L_dnam_padded], zeros where absent
    available: np.ndarray    # bool [N, M], column order MODALITIES
    wsi_paths: list[str | None]


def build_arrays(patients: pd.DataFrame, omics: Mapping[str, pd.DataFrame], normalizers: Mapping[str, Normalizer],
                 widths: Mapping[str, int] | None = None) -> OmicsArrays:
    """Normalise each patient's omics with the fitted normalisers.

    ``widths`` gives the padded length of a modality without normaliser (a unimodal run): zeros of that width.
    """
    ids = patients["patient"].astype(str).tolist()
    avail = np.zeros((len(ids), len(MODALITIES)), dtype=bool)
    arrays = {}
    for kind in vector_modalities():
        j = MODALITIES.index(kind)
        if kind in normalizers:
            df = omics[kind]
            present = pd.Index(ids).isin(df.index) & patients[f"has_{kind}"].to_numpy()
            rows = [p for p, ok in zip(ids, present) if ok]
            x = np.asarray(normalizers[kind].transform(df.loc[rows]), dtype=np.float32) if rows else None
            width = x.shape[1] if x is not None else int((widths or {}).get(kind, 0))
            arr = np.zeros((len(ids), width), dtype=np.float32)
            if x is not None:
                arr[present] = x
            avail[:, j] = present
        else:
            arr = np.zeros((len(ids), int((widths or {}).get(kind, 0))), dtype=np.float32)
        arrays[kind] = arr
    avail[:, MODALITIES.index("wsi")] = patients["has_wsi"].to_numpy()
    paths = [p if isinstance(p, str) else None for p in patients["wsi_path"].tolist()]
    return OmicsArrays(ids, arrays["rna"], arrays["dnam"], avail, paths)


# ----------------------------------------------------------------------------------------------------------------
# dataset


class PatientDataset(Dataset):
    """One sample per patient: omics rows, one tile drawn per epoch, availability, and the masking noise.

    Item: ``rna`` [L_rna], ``dnam`` [L_dnam] float32; ``wsi`` [3, T, T] float32 in [0, 1] (zeros when absent or
    not among ``modalities``); ``available`` [M] bool (restricted to ``modalities``); ``noise_<m>`` [N_m] float32
    uniform noise for masking (one per model modality); ``index`` int; with ``modality_dropout`` > 0 also
    ``hidden`` [M] bool: with that probability, one of the sample's present modalities (when it has two or more),
    chosen uniformly, is hidden from the encoder but kept as a target (see :meth:`MultimodalMAE.forward_encoder`).

    Randomness per item comes from ``np.random.default_rng([seed, epoch, index])``: the same item in the same
    epoch is the same sample whatever the worker, rank or resume.
    """

    def __init__(self, arrays: OmicsArrays, *, modalities: Sequence[str], n_patches: Mapping[str, int],
                 tile_size: int, seed: int, fixed_tile: bool = False, modality_dropout: float = 0.0):
        self.a = arrays
        self.modalities = tuple(modalities)
        self.n_patches = dict(n_patches)
        self.tile_size = tile_size
        self.seed = seed
        self.fixed_tile = fixed_tile     # evaluation: the same tile in every epoch
        self.modality_dropout = float(modality_dropout)
        self.epoch = 0
        self.mask = np.array([m in self.modalities for m in MODALITIES])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.a.patients)

    def _tile(self, i: int, rng: np.random.Generator) -> np.ndarray:
        path = self.a.wsi_paths[i]
        tiles = np.load(path, mmap_mode="r")
        if tiles.ndim != 4 or tiles.shape[1:] != (self.tile_size, self.tile_size, 3) or tiles.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 tiles [K, {self.tile_size}, {self.tile_size}, 3] for patient "
                             f"{self.a.patients[i]}, got {tiles.dtype} {tiles.shape}; rerun the wsi stage")
        if len(tiles) == 0:
            raise ValueError(f"{path}: no tiles for patient {self.a.patients[i]} although wsi_qc.tsv says ok")
        return np.array(tiles[int(rng.integers(len(tiles)))])

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, 0 if self.fixed_tile else self.epoch, i])
        avail = self.a.available[i] & self.mask
        item: dict[str, Any] = {"rna": torch.from_numpy(self.a.rna[i]), "dnam": torch.from_numpy(self.a.dnam[i])}
        if avail[MODALITIES.index("wsi")]:
            tile = self._tile(i, rng)
            item["wsi"] = torch.from_numpy(tile).permute(2, 0, 1).float().div_(255.0)
        else:
            item["wsi"] = torch.zeros(3, self.tile_size, self.tile_size)
        item["available"] = torch.from_numpy(avail.copy())
        for k, m in enumerate(MODALITIES, start=1):   # one stream per modality: every run masks m alike
            if m in self.modalities:
                noise_rng = np.random.default_rng([self.seed, self.epoch, i, k])
                item[f"noise_{m}"] = torch.from_numpy(noise_rng.random(self.n_patches[m], dtype=np.float32))
        if self.modality_dropout > 0:
            hidden = np.zeros(len(MODALITIES), dtype=bool)
            hide_rng = np.random.default_rng([self.seed, self.epoch, i, 9])
            present = np.flatnonzero(avail)
            if len(present) >= 2 and hide_rng.random() < self.modality_dropout:
                hidden[hide_rng.choice(present)] = True
            item["hidden"] = torch.from_numpy(hidden)
        item["index"] = i
        return item


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack items into a batch (see :class:`PatientDataset` for the keys; ``index`` becomes a LongTensor)."""
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor)
            else torch.tensor([it[k] for it in items]) for k in items[0]}
