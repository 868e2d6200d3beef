"""RNA: GDC ``STAR - Counts`` files to a patient-by-gene matrix (format and filters: ``imputmae.omics``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from imputmae.choices import OnMalformed
from imputmae.omics._files import (MalformedFileError, _arrow_error, _check_file_table, _compact, _equal,
                                   _malformed_qc_row, _qc_frame, _read_head, _run_parallel)

log = logging.getLogger(__name__)

STAR_COLUMNS: tuple[str, ...] = ("gene_id", "gene_name", "gene_type", "unstranded", "stranded_first",
                                 "stranded_second", "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded")
STAR_VALUE_COLUMNS: tuple[str, ...] = STAR_COLUMNS[3:]


@dataclass(frozen=True)
class _StarTable:
    gene_id: pa.ChunkedArray    # raw ids, every row (N_* rows included)
    gene_type: pa.ChunkedArray
    values: pa.ChunkedArray
    skipped: int                # lines before the header (the "# gene-model" comment)


def _star_header(path: str | Path, column: str) -> int:
    """Check the header of a STAR - Counts file; return the number of comment lines before it."""
    lines = _read_head(path).split(b"\n")
    skipped = 0
    while skipped < len(lines) - 1 and lines[skipped].startswith(b"#"):  # "# gene-model: GENCODE v36"
        skipped += 1
    if skipped == len(lines) - 1:
        raise MalformedFileError(path, "no header line after the comment (truncated?)", skipped + 1)
    header = lines[skipped].decode("utf-8", "replace").rstrip("\r").split("\t")
    missing = [c for c in ("gene_id", "gene_type", column) if c not in header]
    if missing:
        raise MalformedFileError(path, f"header lacks column(s) {missing}; expected the GDC STAR - Counts "
                                 f"columns {list(STAR_COLUMNS)}, got {header[:12]}", skipped + 1)
    if len(set(header)) != len(header):
        raise MalformedFileError(path, f"header repeats a column name: {header}", skipped + 1)
    return skipped


def _star_options(column: str, skipped: int) -> dict:
    return dict(
        read_options=pacsv.ReadOptions(use_threads=False, skip_rows=skipped),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(
            include_columns=["gene_id", "gene_type", column],
            column_types={"gene_id": pa.string(), "gene_type": pa.string(), column: pa.float64()},
            strings_can_be_null=False,
        ),
    )


def _parse_star(path: str | Path, column: str) -> _StarTable:
    skipped = _star_header(path, column)
    try:
        table = pacsv.read_csv(path, **_star_options(column, skipped))
    except pa.ArrowInvalid as exc:
        raise _arrow_error(path, exc) from None
    if table.num_rows == 0:
        raise MalformedFileError(path, "a header and no genes (truncated?)", skipped + 2)
    return _StarTable(table["gene_id"], table["gene_type"], table[column], skipped)


def _star_genes(t: _StarTable, path: str | Path, gene_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Row positions to keep (``gene_type`` rows without the ``_PAR_Y`` copies) and their versionless ids."""
    keep = pc.and_(pc.equal(t.gene_type, gene_type), pc.invert(pc.ends_with(t.gene_id, "_PAR_Y")))
    rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    if rows.size == 0:
        raise MalformedFileError(path, f"no gene of type {gene_type!r} (wrong file type, or truncated?)")
    raw = t.gene_id.take(pa.array(rows))
    ids = pc.replace_substring_regex(raw, r"\.\d+$", "").to_numpy(zero_copy_only=False).astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        pos = rows[np.flatnonzero(ids == dup)[1]]
        raise MalformedFileError(path, f"gene id {dup} appears more than once", int(pos) + t.skipped + 2)
    return rows, ids


def _check_star_values(vals: np.ndarray, rows: np.ndarray, first_line: int, path: str | Path, column: str) -> None:
    """``vals`` of table rows ``rows`` (row 0 on line ``first_line``): present, finite, >= 0."""
    bad = ~np.isfinite(vals) | (vals < 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        what = f"empty {column} value" if np.isnan(vals[k]) else f"{column} must be a finite number >= 0"
        raise MalformedFileError(path, what, int(rows[k]) + first_line)


def _star_values(t: _StarTable, rows: np.ndarray, path: str | Path, column: str) -> np.ndarray:
    vals = t.values.to_numpy(zero_copy_only=False)[rows]
    _check_star_values(vals, rows, t.skipped + 2, path, column)
    return vals


def read_star_counts(path: str | Path, column: str = "fpkm_uq_unstranded",
                     gene_type: str = "protein_coding") -> pd.Series:
    """One STAR - Counts file as a float64 Series indexed by versionless gene id (file order).

    Raises:
        MalformedFileError: missing columns, non-numeric or negative values, repeated gene ids, empty/truncated.
    """
    t = _parse_star(path, column)
    rows, ids = _star_genes(t, path, gene_type)
    return pd.Series(_star_values(t, rows, path, column), index=pd.Index(ids, name="gene_id"), name=column)


_Head = tuple[_StarTable, np.ndarray, np.ndarray]    # the parsed file, its kept rows, their versionless gene ids


def _first_parsed(paths: Sequence[str], column: str, gene_type: str,
                  fail: Callable[[int, MalformedFileError], None]) -> dict[int, _Head]:
    """The first three files that parse, by position (the candidates for the reference gene list); ``fail(i, err)``
    for each malformed one met on the way."""
    heads: dict[int, _Head] = {}
    for i in range(len(paths)):
        if len(heads) == 3:
            break
        try:
            t = _parse_star(paths[i], column)
            heads[i] = (t, *_star_genes(t, paths[i], gene_type))
        except MalformedFileError as err:
            fail(i, err)
    return heads


def _reference_file(heads: dict[int, _Head]) -> int:
    """The file whose gene list is the reference: the first, unless the second and third agree and it does not."""
    order = list(heads)
    if len(order) == 3:
        same = [np.array_equal(heads[a][2], heads[b][2]) for a, b in ((order[0], order[1]), (order[0], order[2]),
                                                                      (order[1], order[2]))]
        if not same[0] and not same[1] and same[2]:
            return order[1]
    return order[0]


def build_rna_matrix(files: pd.DataFrame, column: str = "fpkm_uq_unstranded", gene_type: str = "protein_coding",
                     on_malformed: OnMalformed = "error", threads: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patient-by-gene float32 matrix from STAR - Counts files.

    Args:
        files: one row per patient, columns ``patient`` and ``path`` (the file chosen upstream).
        column: the value column (raw FPKM-UQ by default).
        on_malformed: ``error`` raises on the first malformed file; ``qc`` records it and leaves the row out.
        threads: files parsed at once.

    Returns:
        ``(matrix [n_patients, n_genes] float32, index "patient", columns versionless gene ids in file order;
        qc table (patient, modality, file, reason))``. The gene order is the reference file's: the first file,
        unless the second and third agree with each other and not with it. Every file must list the same genes
        in the same order; one that does not is malformed.
    """
    files = _check_file_table(files)
    n = len(files)
    paths, patients = files["path"].astype(str).tolist(), files["patient"].astype(str).tolist()
    qc: list[dict] = []
    failed = np.zeros(n, dtype=bool)

    def fail(i: int, err: MalformedFileError) -> None:
        qc.append(_malformed_qc_row(err, patients[i], "rna", paths[i], on_malformed))
        failed[i] = True

    heads = _first_parsed(paths, column, gene_type, fail)
    if not heads:
        return (pd.DataFrame(np.zeros((0, 0), np.float32), index=pd.Index([], name="patient")),
                _qc_frame(qc))
    ref_i = _reference_file(heads)
    ref, ref_rows, ref_ids = heads[ref_i]
    n_genes = len(ref_ids)
    # F order: each gene's column is contiguous, so the frame and the parquet writer use it without a copy.
    matrix = np.empty((n, n_genes), dtype=np.float32, order="F")
    log.info("rna: %d files, %d %s genes (reference %s)", n, n_genes, gene_type, paths[ref_i])

    def fill(i: int) -> None:
        if failed[i]:
            return
        try:
            head = heads.pop(i, None)
            t = head[0] if head is not None else _parse_star(paths[i], column)
            if _equal(t.gene_id, ref.gene_id) and _equal(t.gene_type, ref.gene_type):
                rows = ref_rows  # the fast path: the same genes in the same rows as the reference
            else:
                rows, ids = _star_genes(t, paths[i], gene_type)
                if not np.array_equal(ids, ref_ids):
                    extra = np.setdiff1d(ids, ref_ids)[:3].tolist()
                    lack = np.setdiff1d(ref_ids, ids)[:3].tolist()
                    raise MalformedFileError(
                        paths[i], f"its {len(ids)} {gene_type} genes differ from the {n_genes} of {paths[ref_i]} "
                        f"(lacks {lack}, extra {extra}; or another order): truncated, or another gene model?")
            matrix[i] = _star_values(t, rows, paths[i], column)
        except MalformedFileError as err:
            return err
        return None

    errors = _run_parallel(fill, n, threads, "rna files")
    for i, err in enumerate(errors):
        if err is not None:
            fail(i, err)
    if failed.any():
        matrix = _compact(matrix, ~failed)
    kept = [p for p, f in zip(patients, failed) if not f]
    frame = pd.DataFrame(matrix, index=pd.Index(kept, name="patient"), columns=pd.Index(ref_ids, name=None),
                         copy=False)
    return frame, _qc_frame(qc)
