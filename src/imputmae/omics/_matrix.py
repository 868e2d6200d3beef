"""Matrix I/O: the patient-by-feature parquet every omics stage writes and reads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from imputmae.files import atomic_write


NORMALIZED_KEY = "imputmae.normalized"


def write_matrix(frame: pd.DataFrame, path: str | Path, normalized: bool = False,
                 metadata: dict[str, str] | None = None) -> None:
    """Write a patient-by-feature matrix to parquet (temporary name, then rename).

    ``normalized`` goes to the schema metadata as ``imputmae.normalized`` (``"true"``: the values are already
    normalised by the user and downstream skips the fitted normaliser); ``metadata`` adds ``imputmae.*`` keys.
    """
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=True)
    meta = dict(table.schema.metadata or {})
    meta[NORMALIZED_KEY.encode()] = b"true" if normalized else b"false"
    for k, v in (metadata or {}).items():
        meta[f"imputmae.{k}".encode()] = str(v).encode()
    table = table.replace_schema_metadata(meta)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_matrix(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A matrix written by :func:`write_matrix` and its ``imputmae.*`` metadata (keys without the prefix)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode()[len("imputmae."):]: v.decode() for k, v in (table.schema.metadata or {}).items()
            if k.startswith(b"imputmae.")}
    frame = table.to_pandas()
    if frame.index.name != "patient" and "patient" in frame.columns:
        frame = frame.set_index("patient")
    return frame, meta


def matrix_is_normalized(path: str | Path) -> bool:
    """True when the matrix at ``path`` is already normalised (bring-your-own with ``normalize: false``).

    Downstream then builds ``OmicsNormalizer(..., mode="identity")`` (padding only) instead of the paper's steps.
    """
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return meta.get(NORMALIZED_KEY.encode(), b"false") == b"true"
