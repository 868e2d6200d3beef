"""Bring your own: feature, clinical and slide tables a user gives instead of GDC files."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa


log = logging.getLogger(__name__)


def _read_any_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{path}: no such file")
    name = p.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            df = pd.read_parquet(p)
            if df.index.name is not None or not isinstance(df.index, pd.RangeIndex):
                df = df.reset_index()
            return df
        sep = "," if name.endswith((".csv", ".csv.gz")) else "\t"
        return pd.read_csv(p, sep=sep, engine="c", low_memory=False)
    except (ValueError, OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{path}: cannot be read as a table ({exc})") from None


# Every survival time of a clinical table below this many days (under 7 months of follow-up) hints at months.
MONTHS_HINT_DAYS = 200


def _check_unique_patients(path: str | Path, patients: pd.Series) -> None:
    dup = patients[patients.duplicated(keep=False)]
    if len(dup):
        first = dup.iloc[0]
        rows = [str(i + 1) for i in np.flatnonzero((patients == first).to_numpy())]
        raise ValueError(f"{path}: rows {', '.join(rows)} (patient {first!r}): the same patient more than once; "
                         f"keep one row per patient")


def unlabelled_patients(matrices: Mapping[str, tuple[str | Path, pd.Index]], clinical: pd.DataFrame,
                        clinical_path: str | Path, cohort: str) -> pd.DataFrame:
    """Patients of a user's matrices without a row in the clinical table: no survival label, so pretraining only
    (as in Xena and cBioPortal downloads). matrices: modality -> (its table's path, its patient ids). Returns the
    rows of ``clinical_qc.tsv``: patient, project_id, reason (naming the tables the patient is in)."""
    known = set(clinical["patient"])
    where: dict[str, list[str]] = {}
    for m, (path, ids) in matrices.items():
        for p in ids:
            if p not in known:
                where.setdefault(str(p), []).append(str(path))
    rows = [(p, cohort, f"in {', '.join(t)} but not in the clinical table {clinical_path}: no survival label, "
                        f"pretraining only") for p, t in sorted(where.items())]
    return pd.DataFrame(rows, columns=["patient", "project_id", "reason"])


def read_feature_table(path: str | Path, modality: str) -> pd.DataFrame:
    """A user's matrix: first column patient id, every other column a numeric feature -> float32 frame.

    Raises:
        ValueError: one line naming the file, the row or column, and what was expected.
    """
    df = _read_any_table(path)
    if df.shape[1] < 2:
        raise ValueError(f"{path}: expected a first column of patient ids and at least one feature column, "
                         f"got columns {list(df.columns)[:5]} (is the separator right? .csv is comma, else tab)")
    first = df.columns[0]
    patients = df[first].astype(str).str.strip()
    if df[first].isna().any():
        row = int(np.flatnonzero(df[first].isna().to_numpy())[0])
        raise ValueError(f"{path}: row {row + 1}: empty patient id in the first column ({first!r})")
    _check_unique_patients(path, patients)
    feats = df.columns[1:].astype(str)
    if feats.duplicated().any():
        raise ValueError(f"{path}: feature column {feats[feats.duplicated()][0]!r} appears more than once")
    values = df.iloc[:, 1:]
    for c, name in enumerate(values.columns):  # the readers parse numeric columns as numbers: check the others
        if not pd.api.types.is_numeric_dtype(values[name]):
            col = values[name]
            bad = pd.to_numeric(col, errors="coerce").isna() & col.notna()
            if bad.any():
                r = int(np.flatnonzero(bad.to_numpy())[0])
                raise ValueError(f"{path}: row {r + 1} (patient {patients.iloc[r]}), column {feats[c]!r}: "
                                 f"{str(col.iloc[r])!r} is not a number")
    arr = values.apply(pd.to_numeric) if (values.dtypes == object).any() else values
    arr = arr.to_numpy(dtype=np.float32)
    if np.isinf(arr).any():
        r, c = (int(x[0]) for x in np.nonzero(np.isinf(arr)))
        raise ValueError(f"{path}: row {r + 1} (patient {patients.iloc[r]}), column {feats[c]!r}: infinite value")
    if modality == "dnam":
        out = (arr < 0) | (arr > 1)
        if out.any():
            r, c = (int(x[0]) for x in np.nonzero(out))
            raise ValueError(f"{path}: row {r + 1} (patient {patients.iloc[r]}), column {feats[c]!r}: beta "
                             f"{arr[r, c]} outside [0, 1]")
    return pd.DataFrame(np.asfortranarray(arr), index=pd.Index(patients.tolist(), name="patient"),
                        columns=pd.Index(feats.tolist()), copy=False)


def read_clinical_table(path: str | Path, cohort: str) -> pd.DataFrame:
    """A user's clinical table (patient, time, event) -> patient, project_id, vital_status, time, event.

    ``time`` is days (float, >= 0), ``event`` 1 for death and 0 for censoring; ``project_id`` is the cohort name.
    """
    df = _read_any_table(path)
    need = {"patient", "time", "event"}
    if not need <= set(df.columns):
        raise ValueError(f"{path}: expected columns patient, time, event; missing "
                         f"{sorted(need - set(df.columns))} (got {list(df.columns)[:8]})")
    if df["patient"].isna().any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(df['patient'].isna().to_numpy())[0]) + 1}: empty patient")
    patients = df["patient"].astype(str).str.strip()
    _check_unique_patients(path, patients)
    time = pd.to_numeric(df["time"], errors="coerce")
    event = pd.to_numeric(df["event"], errors="coerce")
    for name, col, ok in (("time", time, time.notna() & np.isfinite(time) & (time >= 0)),
                          ("event", event, event.isin([0, 1]))):
        if not ok.all():
            r = int(np.flatnonzero(~ok.to_numpy())[0])
            want = "a number of days >= 0" if name == "time" else "0 (censored) or 1 (death)"
            value = df[name].iloc[r]
            value = value.item() if hasattr(value, "item") else value
            raise ValueError(f"{path}: row {r + 1} (patient {patients.iloc[r]}): {name} {value!r}, expected {want}")
    if len(time) and time.max() < MONTHS_HINT_DAYS:
        r = int(np.argmax(time.to_numpy()))
        log.warning("%s: every time is below %d (longest: row %d, patient %s, %s): if these are months, multiply "
                    "them by 30.44 (times are days)", path, MONTHS_HINT_DAYS, r + 1, patients.iloc[r], time.iloc[r])
    event = event.astype(np.int8)
    return pd.DataFrame({
        "patient": patients.to_numpy(),
        "project_id": cohort,
        "vital_status": np.where(event == 1, "Dead", "Alive"),
        "time": time.astype(np.float64).to_numpy(),
        "event": event.to_numpy(),
    })


# A patient id names files ({R}/{cohort}/wsi/{patient}.npy) and a Snakemake wildcard: these characters only.
SLIDE_PATIENT_PATTERN = r"[A-Za-z0-9_-]+"


def read_slide_table(path: str | Path) -> pd.DataFrame:
    """A user's slide table (``patient``, ``path``: any file OpenSlide reads; several rows for a patient with several
    slides) -> patient, path (absolute: a relative path is relative to the table's folder), file_name, row (1-based
    data row), exists (bool). A slide that does not exist is not an error here: its patient gets a WSI QC row.

    Raises:
        ValueError: one line naming the file, the row, the patient and the fix (missing columns, an empty
            patient or path, a patient id unfit for a file name, a slide listed twice).
    """
    df = _read_any_table(path)
    if "path" not in df.columns and "slide" in df.columns:
        df = df.rename(columns={"slide": "path"})
    if not {"patient", "path"} <= set(df.columns):
        raise ValueError(f"{path}: expected columns patient and path (the slide file); got {list(df.columns)[:8]}")
    base = Path(path).resolve().parent
    rows = []
    for r, (patient, slide) in enumerate(zip(df["patient"], df["path"]), start=1):
        if pd.isna(patient) or not str(patient).strip() or pd.isna(slide) or not str(slide).strip():
            raise ValueError(f"{path}: row {r}: empty {'patient' if pd.isna(patient) or not str(patient).strip() else 'path'}"
                             f"; give every row a patient and a slide path, or remove the row")
        patient = str(patient).strip()
        if not re.fullmatch(SLIDE_PATIENT_PATTERN, patient):
            raise ValueError(f"{path}: row {r} (patient {patient!r}): a patient id may hold only letters, digits, "
                             f"'-' and '_' (it names the tile files); rename it here and in the other tables")
        full = Path(str(slide).strip()).expanduser()
        full = full if full.is_absolute() else base / full
        rows.append((patient, str(full), full.name, r, full.is_file()))
    out = pd.DataFrame(rows, columns=["patient", "path", "file_name", "row", "exists"])
    dup = out[out.duplicated(["patient", "file_name"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        raise ValueError(f"{path}: rows {', '.join(map(str, dup.loc[dup['file_name'] == first['file_name'], 'row']))}"
                         f" (patient {first['patient']}): slide {first['file_name']!r} listed more than once; "
                         f"keep one row per slide")
    return out
