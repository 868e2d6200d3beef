"""Fine-tuning inputs from files: a cohort's pipeline outputs (docs/layout.md) or a user's tables and tiles,
through the normalisers saved with the model, and imputations back to the original feature space."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from imputmae.finetune.features import PatientInputs, TileFile
from imputmae.modalities import active, is_image, names, vector_modalities

log = logging.getLogger(__name__)

def normalizers_from_states(states: Mapping[str, Any]) -> dict[str, Any]:
    """{modality: OmicsNormalizer} from the states saved with a model (``imputmae.normalize``)."""
    from imputmae.normalize import OmicsNormalizer

    return {m: OmicsNormalizer.from_state_dict(s) for m, s in states.items() if m in vector_modalities() and s}


def normalize_omics(normalizer: Any, df: pd.DataFrame, source: str = "table") -> dict[str, np.ndarray]:
    """Raw omics frame (index patient, columns features) -> {patient: float32 [L_pad]} via the fitted normaliser.

    Features the normaliser was fitted on but absent from ``df`` are set to NaN (then the training median) and
    counted in the log; extra columns are ignored. Rows that are entirely NaN count as not having the modality.
    """
    want = list(normalizer.features_in_)
    have = pd.Index([str(c) for c in df.columns])
    df = df.set_axis(have, axis=1)
    absent = pd.Index(want).difference(have)
    if len(absent) == len(want):
        raise ValueError(f"{source}: none of the {len(want)} {normalizer.kind} features the model was trained on "
                         f"(e.g. {want[:3]}) is a column")
    if len(absent):
        log.warning("%s: %d of %d %s features absent, filled with the training median", source, len(absent),
                    len(want), normalizer.kind)
    df = df.reindex(columns=want)
    df = df[~df.isna().all(axis=1)]
    x = normalizer.transform(df)
    return {str(p): x[i] for i, p in enumerate(df.index)}


def load_cohort_inputs(results: str | Path, cohort: str, normalizers: Mapping[str, Any],
                       patients: Sequence[str] | None = None) -> PatientInputs:
    """The cohort's normalised inputs: each vector modality's ``{R}/{cohort}/<m>.parquet`` through the fold's
    normalisers (fitted on its training patients at pretraining) and the tiles of the patients the image
    modality's ``<m>_qc.tsv`` marks ``ok`` (``{R}/{cohort}/<m>/{patient}.npy``, read when used: :class:`TileFile`),
    with the availability rules of :func:`imputmae.data.load_patients` (the ones pretraining used)."""
    from imputmae.data import load_patients

    reg = active()
    table = load_patients(results, [cohort])
    if patients is not None:
        table = table[table["patient"].isin(set(patients))]
    inp = PatientInputs(omics={})
    for m in reg.vectors():
        who = table.loc[table[f"has_{m}"], "patient"]
        if m not in normalizers or who.empty:
            continue
        path = reg.get(m).matrix_path(results, cohort)
        df = pd.read_parquet(path)
        if df.index.name != "patient" and "patient" in df.columns:
            df = df.set_index("patient")
        df.index = df.index.astype(str)
        inp.omics[m] = normalize_omics(normalizers[m], df[df.index.isin(set(who))], str(path))
    for m in reg.images():
        for p, f in table.loc[table[f"has_{m}"], ["patient", f"{m}_path"]].itertuples(index=False):
            tiles = TileFile(f)
            if tiles.ndim != 4 or tiles.shape[-1] != 3:
                raise ValueError(f"{f}: expected uint8 tiles [K, H, W, 3], got shape {tiles.shape}")
            if tiles.shape[0] > 0:
                inp.tiles[p] = tiles
    return inp


def read_user_inputs(paths: Sequence[str | Path], normalizers: Mapping[str, Any]) -> PatientInputs:
    """New patients' files for ``predict`` / ``impute``.

    Each path is a table (.parquet, .csv, .tsv: first column the patient id, then features in raw units) or tiles
    (``<patient>.npy``, uint8 [K, H, W, 3]); a folder is searched for ``*.npy``. A table's modality is the one
    whose training features it shares most columns with; prefix the modality (``rna:``, ``dnam:``) to say it
    explicitly.
    """
    inp = PatientInputs(omics={})
    for raw in paths:
        s = str(raw)
        forced = None
        if s.split(":", 1)[0] in names() and ":" in s:
            forced, s = s.split(":", 1)
        path = Path(s)
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise ValueError(f"{path}: a folder with no <patient>.npy tile files")
        else:
            files = [path]
        for f in files:
            if not f.exists():
                raise FileNotFoundError(f"{f}: no such file")
            if f.suffix == ".npy":
                tiles = TileFile(f)
                if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8 or tiles.shape[0] == 0:
                    raise ValueError(f"{f}: expected uint8 tiles [K, H, W, 3] (as `imputmae wsi` writes), got "
                                     f"{tiles.dtype} {tiles.shape}")
                inp.tiles[f.stem] = tiles
                continue
            if f.suffix == ".parquet":
                df = pd.read_parquet(f)
                if "patient" in df.columns:
                    df = df.set_index("patient")
            elif f.suffix in (".csv", ".tsv", ".txt"):
                df = pd.read_csv(f, sep="," if f.suffix == ".csv" else "\t", index_col=0)
            else:
                raise ValueError(f"{f}: unknown input type (expected .parquet, .csv, .tsv or <patient>.npy)")
            df.index = df.index.astype(str)
            m = forced or max(normalizers, key=lambda k: len(set(map(str, df.columns))
                                                           & set(normalizers[k].features_in_)))
            if m not in normalizers:
                raise ValueError(f"{f}: the model has no {m} normaliser")
            inp.omics.setdefault(m, {}).update(normalize_omics(normalizers[m], df, str(f)))
    return inp


def imputed_tables(imputed: Mapping[str, Mapping[str, Tensor]], normalizers: Mapping[str, Any]
                   ) -> dict[str, pd.DataFrame | dict[str, np.ndarray]]:
    """Reconstructions back to the original feature space: omics via ``OmicsNormalizer.inverse_transform``
    (per-patient upper-quartile scale: the training median, see imputmae.normalize), tiles to uint8 [1, H, W, 3]."""
    out: dict[str, Any] = {}
    for m, d in imputed.items():
        if not d:
            continue
        pts = sorted(d)
        if is_image(m):
            out[m] = {p: (d[p].clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
                      for p in pts}
        else:
            x = torch.stack([d[p] for p in pts]).numpy()
            out[m] = normalizers[m].inverse_transform(x, index=pd.Index(pts, name="patient")).astype(np.float32)
    return out
