"""The manifest (every file of the projects, one row each) and the per-patient selection rule."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from imputmae.files import atomic_write
from imputmae.gdc._filters import DNAM_PLATFORMS, FILE_FIELDS, MODALITIES, Modality, modality_filters
from imputmae.gdc._transport import GDCError, Transport, _with_retries, iter_hits

log = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "file_id", "file_name", "md5sum", "file_size", "modality", "platform", "case_id", "patient", "sample",
    "sample_type", "project_id",
)

# ---------------------------------------------------------------------------------------------------- manifest


def manifest_rows(hits: Iterable[Mapping[str, Any]], modality: Modality) -> tuple[list[dict[str, Any]], list[str]]:
    """One manifest row per file hit; files linked to no case or to several patients are left out, with a reason.

    Returns:
        (rows with :data:`MANIFEST_COLUMNS`, one line per file left out).
    """
    rows, skipped = [], []
    for h in hits:
        fid = h.get("file_id") or h.get("id")
        cases = h.get("cases") or []
        patients = sorted({c.get("submitter_id") for c in cases if c.get("submitter_id")})
        if len(patients) != 1:
            skipped.append(f"{fid} ({h.get('file_name')}): linked to {len(patients)} patients {patients}")
            continue
        case = next(c for c in cases if c.get("submitter_id") == patients[0])
        samples = case.get("samples") or [{}]
        sample = sorted(samples, key=lambda s: str(s.get("submitter_id", "")))[0]
        rows.append({
            "file_id": fid,
            "file_name": h["file_name"],
            "md5sum": h["md5sum"],
            "file_size": int(h["file_size"]),
            "modality": modality,
            "platform": h.get("platform"),
            "case_id": case.get("case_id"),
            "patient": patients[0][:12],
            "sample": sample.get("submitter_id"),
            "sample_type": sample.get("sample_type"),
            "project_id": (case.get("project") or {}).get("project_id"),
        })
    return rows, skipped


def fetch_manifest(transport: Transport, projects: Sequence[str], modalities: Sequence[Modality] = MODALITIES,
                   page_size: int = 500, retries: int = 8, backoff_s: float = 1.0) -> tuple[pd.DataFrame, dict[str, str]]:
    """All files of ``projects`` for ``modalities``: one query per modality, every page read.

    Returns:
        (manifest with :data:`MANIFEST_COLUMNS`, one row per file sorted by modality, patient, file_id;
        metadata: ``gdc_data_release``, ``gdc_source``, ``projects``).
    """
    status = _with_retries("GET /status", transport.status, retries, backoff_s)
    release = str(status.get("data_release", "unknown"))
    rows: list[dict[str, Any]] = []
    for modality in modalities:
        hits = iter_hits(transport, "files", modality_filters(projects, modality), FILE_FIELDS, page_size,
                         retries=retries, backoff_s=backoff_s)
        got, skipped = manifest_rows(hits, modality)
        for line in skipped:
            log.warning("manifest: %s file left out: %s", modality, line)
        log.info("manifest: %s: %d files, %d patients", modality, len(got), len({r["patient"] for r in got}))
        rows.extend(got)
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    df["file_size"] = df["file_size"].astype("int64")
    order = {m: i for i, m in enumerate(MODALITIES)}
    df = df.sort_values(["modality", "patient", "file_id"], key=lambda s: s.map(order) if s.name == "modality" else s)
    meta = {"gdc_data_release": release, "gdc_source": transport.source, "projects": ",".join(projects)}
    return df.reset_index(drop=True), meta


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``df`` to ``path`` through a temporary name, with ``metadata`` in the parquet schema's key-values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.update({k.encode(): str(v).encode() for k, v in (metadata or {}).items()})
    atomic_write(path, lambda tmp: pq.write_table(table.replace_schema_metadata(meta), tmp))


def read_manifest(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """A manifest: our parquet (``gdc manifest``/``gdc select``), or the GDC portal's ``manifest.tsv``
    (columns id, filename, md5, size, state).

    Returns:
        (rows with at least file_id, file_name, md5sum, file_size; metadata from the parquet, if any).

    Raises:
        GDCError: an unreadable file or missing columns (named).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise GDCError(f"manifest {path}: no such file")
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
        df = table.to_pandas()
    else:
        df = pd.read_csv(path, sep="\t", dtype=str)
        df = df.rename(columns={"id": "file_id", "filename": "file_name", "md5": "md5sum", "size": "file_size"})
        meta = {"gdc_source": f"portal manifest {path.name}"}
    missing = [c for c in ("file_id", "file_name", "md5sum", "file_size") if c not in df.columns]
    if missing:
        raise GDCError(f"manifest {path}: missing column(s) {missing}; expected our parquet or the GDC portal's "
                       "manifest.tsv (id, filename, md5, size, state)")
    df["file_size"] = pd.to_numeric(df["file_size"], errors="raise").astype("int64")
    return df, meta


# --------------------------------------------------------------------------------------------------- selection


def select_files(manifest: pd.DataFrame, sample_types: Sequence[str], download_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The files each patient uses: one RNA and one DNAm file, and every diagnostic slide of the patient's most
    preferred sample type (the rule in the module docstring).

    Args:
        manifest: :func:`fetch_manifest`'s rows.
        sample_types: preference order; files of other sample types are never selected.
        download_dir: where ``gdc download`` puts files; ``local_path = <download_dir>/<file_id>/<file_name>``.

    Returns:
        manifest rows kept, plus ``local_path``, sorted by modality, patient, file_id.
    """
    rank = {s: i for i, s in enumerate(sample_types)}
    df = manifest.copy()
    df["_rank"] = df["sample_type"].map(rank)
    unwanted = df["_rank"].isna()
    if unwanted.any():
        counts = df.loc[unwanted].groupby(["modality", "sample_type"], dropna=False).size()
        for (mod, st), n in counts.items():
            log.info("select: %d %s file(s) of sample type %r not in gdc.sample_types: not used", n, mod, st)
    df = df.loc[~unwanted].copy()
    df["_platform"] = df["platform"].map({p: i for i, p in enumerate(DNAM_PLATFORMS)}).fillna(len(DNAM_PLATFORMS))
    df = df.sort_values(["patient", "_rank", "_platform", "sample", "file_id"], na_position="last")
    omics = df[df["modality"].isin(["rna", "dnam"])].drop_duplicates(["modality", "patient"], keep="first")
    wsi = df[df["modality"] == "wsi"]
    if len(wsi):
        best = wsi.groupby("patient")["_rank"].transform("min")
        wsi = wsi[wsi["_rank"] == best]
    out = pd.concat([omics, wsi]).drop(columns=["_rank", "_platform"])
    out["local_path"] = [str(Path(download_dir) / f / n) for f, n in zip(out["file_id"], out["file_name"])]
    order = {m: i for i, m in enumerate(MODALITIES)}
    out = out.sort_values(["modality", "patient", "file_id"], key=lambda s: s.map(order) if s.name == "modality" else s)
    for mod in MODALITIES:
        n = int((out["modality"] == mod).sum())
        log.info("select: %s: %d file(s) for %d patient(s)", mod, n, out.loc[out["modality"] == mod, "patient"].nunique())
    return out.reset_index(drop=True)


