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
from imputmae.modalities import Modality, active

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
    """A fresh normaliser for the vector modality ``kind`` configured from ``cfg["omics"]``.

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


def _image_tiles(results: Path, cohort: str, entry: Modality) -> dict[str, str]:
    """{patient: tile file} of the patients an image modality's ``<name>_qc.tsv`` marks ``ok`` (none without it).

    Raises:
        FileNotFoundError: a tile file that the table marks ``ok`` is missing.
    """
    qc_path = entry.qc_path(results, cohort)
    if not qc_path.is_file():
        return {}
    qc = pd.read_csv(qc_path, sep="\t", dtype={"patient": str})
    ok: dict[str, str] = {}
    for patient in sorted(set(qc.loc[qc["status"] == "ok", "patient"])):
        tiles = entry.tiles_path(results, cohort, patient)
        if not tiles.is_file():
            raise FileNotFoundError(f"{tiles}: {qc_path} marks patient {patient} ok but the tile file is "
                                    f"missing; rerun the {entry.name} stage for {cohort}")
        ok[patient] = str(tiles)
    return ok


def _read_clinical(clin_path: Path) -> pd.DataFrame:
    """A cohort's clinical.parquet, index patient, columns project_id, time, event."""
    if not clin_path.is_file():
        raise FileNotFoundError(f"{clin_path}: missing (written by the gdc stage: `snakemake {clin_path}`)")
    clin = pd.read_parquet(clin_path)
    missing = {"patient", "project_id", "time", "event"} - set(clin.columns)
    if missing:
        raise ValueError(f"{clin_path}: missing columns {sorted(missing)}")
    dup = clin["patient"][clin["patient"].duplicated()]
    if len(dup):
        raise ValueError(f"{clin_path}: patient {dup.iloc[0]} appears more than once")
    return clin.set_index(clin["patient"].astype(str))[["project_id", "time", "event"]]


def load_patients(results: str | Path, cohorts: Sequence[str]) -> pd.DataFrame:
    """One row per patient seen in any stage output of any cohort.

    Returns:
        DataFrame sorted by (cohort, patient) with columns patient, cohort, project_id, time, event (NaN when the
        patient has no clinical labels), then per modality of the registry in use ``has_<m>`` (bool), and for an
        image modality ``<m>_path`` (its tile file, or None): has_rna, has_dnam, has_wsi, wsi_path.

    Raises:
        FileNotFoundError: a cohort's clinical.parquet is missing, or a tile file that ``<m>_qc.tsv`` marks ``ok``.
        ValueError: a patient listed twice in one cohort's clinical table.
    """
    results = Path(results)
    reg = active()
    frames = []
    for cohort in cohorts:
        clin = _read_clinical(results / cohort / "clinical.parquet")
        seen: dict[str, pd.Index] = {}
        image_files: dict[str, dict[str, str]] = {}
        for entry in reg:
            if entry.is_image:
                image_files[entry.name] = _image_tiles(results, cohort, entry)
                seen[entry.name] = pd.Index(list(image_files[entry.name]))
            else:
                path = entry.matrix_path(results, cohort)
                seen[entry.name] = _read_index(path) if path.is_file() else pd.Index([])
        patients = sorted(set(clin.index).union(*map(set, seen.values())))
        df = pd.DataFrame({"patient": patients, "cohort": cohort})
        df = df.join(clin, on="patient")
        for m, index in seen.items():
            df[f"has_{m}"] = df["patient"].isin(index)
            if m in image_files:
                df[f"{m}_path"] = df["patient"].map(image_files[m])
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    dup = out["patient"][out["patient"].duplicated()]
    if len(dup):
        raise ValueError(f"patient {dup.iloc[0]} appears in more than one cohort")
    return out


def select_split_patients(patients: pd.DataFrame) -> pd.DataFrame:
    """Patients that enter the splits: survival labels (time and event) and the anchor modality
    (:attr:`Modality.anchor`: RNA); in a cohort without any of it (own tables of DNAm, or slides, only), survival
    labels and any modality."""
    reg = active()
    has = [f"has_{m}" for m in reg.names if f"has_{m}" in patients]
    any_modality = patients[has].any(axis=1)
    anchors = [f"has_{e.name}" for e in reg if e.anchor and f"has_{e.name}" in patients]
    measured = any_modality
    if anchors:
        anchored = patients[anchors].any(axis=1)
        cohort_has_anchor = anchored.groupby(patients["cohort"]).transform("any")
        measured = anchored.where(cohort_has_anchor, any_modality)
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
        ValueError: a cohort with fewer patients, or fewer events, than folds (a test fold without an event has no
            C-index).
    """
    from sklearn.model_selection import StratifiedKFold

    out = []
    for cohort, df in patients.groupby("cohort", sort=True):
        df = df.sort_values("patient").reset_index(drop=True)
        if len(df) < n_folds:
            raise ValueError(f"cohort {cohort}: {len(df)} patients with labels and RNA, fewer than {n_folds} folds")
        n_events = int(df["event"].sum())
        if n_events < n_folds:
            raise ValueError(
                f"cohort {cohort}: {n_events} events among {len(df)} patients with labels and RNA, fewer than the "
                f"{n_folds} that {n_folds} stratified folds need (one per test fold; 10 or more for a usable "
                f"C-index): add patients (the demo: demo.size or demo.n_patients) or lower splits.n_folds")
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
    entry = active().get(kind)
    for cohort in cohorts:
        p = entry.matrix_path(results, cohort)
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
    """Model-ready arrays for a list of patients (row i = patients[i]).

    Attributes:
        patients: the patient ids, P of them.
        vectors: {vector modality: float32 [P, L_m_padded]}, zeros where absent (width 0 without a normaliser).
        available: bool [P, M], columns ``modalities``.
        image_paths: {image modality: [P] tile file or None}.
        modalities: the registry's names when built: the columns of ``available``.
    """

    patients: list[str]
    vectors: dict[str, np.ndarray]
    available: np.ndarray
    image_paths: dict[str, list[str | None]]
    modalities: tuple[str, ...]

    def column(self, m: str) -> int:
        """``m``'s column in ``available``."""
        return self.modalities.index(m)


def build_arrays(patients: pd.DataFrame, omics: Mapping[str, pd.DataFrame], normalizers: Mapping[str, Normalizer],
                 widths: Mapping[str, int] | None = None) -> OmicsArrays:
    """Normalise each patient's vector modalities with the fitted normalisers; list their tile files.

    ``widths`` gives the padded length of a modality without normaliser (a unimodal run): zeros of that width.
    """
    reg = active()
    ids = patients["patient"].astype(str).tolist()
    avail = np.zeros((len(ids), len(reg)), dtype=bool)
    vectors = {}
    for kind in reg.vectors():
        j = reg.index(kind)
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
        vectors[kind] = arr
    paths: dict[str, list[str | None]] = {}
    for m in reg.images():
        avail[:, reg.index(m)] = patients[f"has_{m}"].to_numpy()
        paths[m] = [p if isinstance(p, str) else None for p in patients[f"{m}_path"].tolist()]
    return OmicsArrays(ids, vectors, avail, paths, reg.names)


# ----------------------------------------------------------------------------------------------------------------
# dataset


class PatientDataset(Dataset):
    """One sample per patient: vector rows, one tile drawn per epoch, availability, and the masking noise.

    Item, per modality of ``arrays``: a vector ``<m>`` [L_m] float32; an image ``<m>`` [3, T, T] float32 in [0, 1]
    (zeros when absent or not among ``modalities``); ``available`` [M] bool (restricted to ``modalities``, columns
    ``arrays.modalities``); ``noise_<m>`` [N_m] float32 uniform noise for masking (one per model modality);
    ``index`` int; with ``modality_dropout`` > 0 also ``hidden`` [M] bool: with that probability, one of the
    sample's present modalities (when it has two or more), chosen uniformly, is hidden from the encoder but kept as
    a target (see :meth:`MultimodalMAE.forward_encoder`).

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
        self.mask = np.array([m in self.modalities for m in arrays.modalities])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.a.patients)

    def _tile(self, m: str, i: int, rng: np.random.Generator) -> np.ndarray:
        path = self.a.image_paths[m][i]
        tiles = np.load(path, mmap_mode="r")
        if tiles.ndim != 4 or tiles.shape[1:] != (self.tile_size, self.tile_size, 3) or tiles.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 tiles [K, {self.tile_size}, {self.tile_size}, 3] for patient "
                             f"{self.a.patients[i]}, got {tiles.dtype} {tiles.shape}; rerun the {m} stage")
        if len(tiles) == 0:
            raise ValueError(f"{path}: no tiles for patient {self.a.patients[i]} although {m}_qc.tsv says ok")
        return np.array(tiles[int(rng.integers(len(tiles)))])

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, 0 if self.fixed_tile else self.epoch, i])
        avail = self.a.available[i] & self.mask
        item: dict[str, Any] = {m: torch.from_numpy(x[i]) for m, x in self.a.vectors.items()}
        for m in self.a.image_paths:
            if avail[self.a.column(m)]:
                item[m] = torch.from_numpy(self._tile(m, i, rng)).permute(2, 0, 1).float().div_(255.0)
            else:
                item[m] = torch.zeros(3, self.tile_size, self.tile_size)
        item["available"] = torch.from_numpy(avail.copy())
        for k, m in enumerate(self.a.modalities, start=1):   # one stream per modality: every run masks m alike
            if m in self.modalities:
                noise_rng = np.random.default_rng([self.seed, self.epoch, i, k])
                item[f"noise_{m}"] = torch.from_numpy(noise_rng.random(self.n_patches[m], dtype=np.float32))
        if self.modality_dropout > 0:
            hidden = np.zeros(len(self.a.modalities), dtype=bool)
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
