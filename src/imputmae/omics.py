"""RNA-seq and DNA methylation matrices: parse GDC files (or your own tables) into patient-by-feature frames.

RNA (GDC ``STAR - Counts``, ``*.rna_seq.augmented_star_gene_counts.tsv``)::

    # gene-model: GENCODE v36
    gene_id  gene_name  gene_type  unstranded  stranded_first  stranded_second  tpm_unstranded  fpkm_unstranded  fpkm_uq_unstranded
    N_unmapped ... N_multimapping ... N_noFeature ... N_ambiguous ...      (4 rows, no gene_type)
    ENSG00000000003.15  TSPAN6  protein_coding  ...

Only ``gene_id``, ``gene_type`` and the configured value column are read (pyarrow's CSV reader). Rows with
``gene_type == protein_coding`` are kept; the ``N_*`` rows have no gene type and fall out with the filter. Gene ids
lose their version suffix (``ENSG00000000003.15`` -> ``ENSG00000000003``). GENCODE lists the genes of the X/Y
pseudo-autosomal regions twice, the Y copy as ``ENSG...._PAR_Y``; STAR assigns every read of those regions to the
X copy, so the ``_PAR_Y`` rows carry no signal and would collide with the X gene once the version is gone: they
are dropped. Any other id that repeats after the version is stripped makes the file malformed.

DNAm (SeSAMe level 3, ``*.methylation_array.sesame.level3betas.txt``): two tab-separated columns, probe id and
beta, no header, ``NA`` for a masked probe. The probe set is the overlap of the arrays present: the union of
the probes of the 27k files intersected with the union of the probes of the 450k files (25,978 probes on TCGA),
or a probe list given by the user; always in sorted order. ``NA`` stays ``NaN``.

Matrices are float32 with index ``patient`` and one column per feature, built by filling a preallocated array
(no concatenation), parsed in threads (pyarrow releases the GIL).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from imputmae.choices import OnMalformed
from imputmae.files import atomic_write

__all__ = [
    "MalformedFileError",
    "STAR_COLUMNS",
    "read_star_counts",
    "read_sesame_betas",
    "build_rna_matrix",
    "dnam_probe_set",
    "build_dnam_matrix",
    "read_probe_list",
    "file_table_from_paths",
    "GDC_FILE_PATTERNS",
    "platform_group",
    "read_feature_table",
    "read_clinical_table",
    "unlabelled_patients",
    "read_slide_table",
    "SLIDE_PATIENT_PATTERN",
    "QC_COLUMNS",
    "NORMALIZED_KEY",
    "write_matrix",
    "read_matrix",
    "matrix_is_normalized",
    "write_star_counts",
    "write_sesame_betas",
]

log = logging.getLogger(__name__)

STAR_COLUMNS: tuple[str, ...] = ("gene_id", "gene_name", "gene_type", "unstranded", "stranded_first",
                                 "stranded_second", "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded")
STAR_VALUE_COLUMNS: tuple[str, ...] = STAR_COLUMNS[3:]
QC_COLUMNS: tuple[str, ...] = ("patient", "modality", "file", "reason")
# A beta file that lacks more than this fraction of the probe set is taken as truncated (or another array).
MAX_MISSING_PROBE_FRACTION = 0.5



class MalformedFileError(ValueError):
    """A file that cannot be parsed as its format says. ``str()`` is one line naming file, line and the fix."""

    def __init__(self, path: str | Path, reason: str, line: int | None = None, patient: str | None = None):
        self.path, self.reason, self.line, self.patient = str(path), reason, line, patient
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.path}" + (f", line {self.line}" if self.line is not None else "")
        who = f" (patient {self.patient})" if self.patient else ""
        return (f"malformed file {where}{who}: {self.reason}. Fix: re-download or replace the file, or set "
                f"omics.on_malformed: qc to record it in the QC table and treat the modality as missing")

    def with_patient(self, patient: str) -> MalformedFileError:
        return MalformedFileError(self.path, self.reason, self.line, patient)


_ROW_RE = re.compile(r"Row #(\d+)")


def _arrow_error(path: str | Path, exc: pa.ArrowInvalid) -> MalformedFileError:
    """Turn pyarrow's CSV error into one naming the line (``Row #N`` is the file's line N, skipped rows counted)."""
    msg = str(exc)
    m = _ROW_RE.search(msg)
    line = int(m.group(1)) if m else None
    reason = msg.split(": ", 1)[1] if msg.startswith(("CSV parse error", "In CSV column")) else msg
    reason = _ROW_RE.sub("", reason).replace("  ", " ").strip(": ")
    if "conversion error" in msg:
        reason = f"a value is not a number ({reason})"
    elif "Expected" in msg and "columns" in msg:
        reason = f"wrong number of columns ({reason}; truncated or not this format?)"
    return MalformedFileError(path, reason, line)


def _read_head(path: str | Path, size: int = 1 << 16) -> bytes:
    """The first ``size`` bytes (pyarrow reads the rest itself, block by block, without a whole-file copy)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(size)
    except OSError as exc:
        raise MalformedFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not head.strip():
        raise MalformedFileError(path, "the file is empty", 1)
    return head


# ---------------------------------------------------------------------------------------------------------- RNA


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


def _equal(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    return len(a) == len(b) and a.equals(b)


def _qc_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(QC_COLUMNS))


def _check_file_table(files: pd.DataFrame) -> pd.DataFrame:
    missing = {"patient", "path"} - set(files.columns)
    if missing:
        raise ValueError(f"the file table needs columns patient and path; missing {sorted(missing)}")
    dup = files["patient"][files["patient"].duplicated()]
    if len(dup):
        raise ValueError(f"patient {dup.iloc[0]} has more than one file; choose one file per patient upstream")
    return files.sort_values("patient", kind="stable").reset_index(drop=True)


# The GDC file names of each modality (gdc-client layout: <folder>/<file_id>/<file_name>).
GDC_FILE_PATTERNS: dict[str, str] = {"rna": "*.rna_seq.augmented_star_gene_counts.tsv",
                                     "dnam": "*.level3betas.txt"}


def file_table_from_paths(paths: Sequence[str | Path], modality: str) -> pd.DataFrame:
    """A file table (patient, path, file_id) from a download folder or a list of files, as gdc-client leaves them:
    a folder is searched for the modality's GDC files (:data:`GDC_FILE_PATTERNS`), recursively. The patient id is a
    file's name up to its first dot (GDC names files by a UUID: give a table with a ``patient`` column to name them
    by barcode); ``file_id`` is the name of the file's folder (gdc-client's ``<file_id>/<file_name>``).

    Raises:
        ValueError: a path that does not exist, a folder without such files, or two files with the same id.
    """
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob(GDC_FILE_PATTERNS[modality]) if f.is_file())
            if not found:
                raise ValueError(f"{p}: no {GDC_FILE_PATTERNS[modality]} file under this folder; give the download "
                                 f"folder of {modality} files, the files, or a table of patient and path")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    out = pd.DataFrame({"patient": [f.name.split(".", 1)[0] for f in files], "path": [str(f) for f in files],
                        "file_id": [f.parent.name for f in files]})
    dup = out[out["patient"].duplicated(keep=False)]
    if len(dup):
        raise ValueError(f"{dup['path'].iloc[0]} and {dup['path'].iloc[1]}: the same id {dup['patient'].iloc[0]!r}; "
                         f"give a table of patient and path to say which file is whose")
    return out


def _run_parallel(fn: Callable[[int], object], n: int, threads: int, desc: str) -> list[object]:
    """``[fn(i) for i in range(n)]`` in a thread pool (pyarrow parsing releases the GIL), with a progress bar."""
    from tqdm.auto import tqdm

    out: list[object] = [None] * n
    with tqdm(total=n, desc=desc, unit="file", disable=True if n < 50 else None, leave=False) as bar:
        if threads <= 1:
            for i in range(n):
                out[i] = fn(i)
                bar.update()
        else:
            with ThreadPoolExecutor(threads) as pool:
                for i, res in enumerate(pool.map(fn, range(n))):
                    out[i] = res
                    bar.update()
    return out


def _compact(matrix: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Rows ``ok`` of an F-ordered matrix, moved up in place (no second full-size array)."""
    for dst, src in enumerate(np.flatnonzero(ok)):
        if dst != src:
            matrix[dst] = matrix[src]
    return matrix[: int(ok.sum())]


def _malformed_qc_row(err: MalformedFileError, patient: str, modality: str, path: str,
                      on_malformed: OnMalformed) -> dict[str, str]:
    """The QC row of a malformed file (``on_malformed="qc"``: logged, the modality missing for ``patient``), or
    ``err`` raised, naming the patient (``on_malformed="error"``)."""
    err = err.with_patient(patient)
    if on_malformed == "error":
        raise err
    log.warning("%s", err)
    return dict(patient=patient, modality=modality, file=path,
                reason=err.reason + (f" (line {err.line})" if err.line else ""))


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

    # The reference gene list: the majority of the first three files that parse.
    heads: dict[int, tuple[_StarTable, np.ndarray, np.ndarray]] = {}
    for i in range(n):
        if len(heads) == 3:
            break
        try:
            t = _parse_star(paths[i], column)
            heads[i] = (t, *_star_genes(t, paths[i], gene_type))
        except MalformedFileError as err:
            fail(i, err)
    if not heads:
        return (pd.DataFrame(np.zeros((0, 0), np.float32), index=pd.Index([], name="patient")),
                _qc_frame(qc))
    order = list(heads)
    ref_i = order[0]
    if len(order) == 3:
        same = [np.array_equal(heads[a][2], heads[b][2]) for a, b in ((order[0], order[1]), (order[0], order[2]),
                                                                      (order[1], order[2]))]
        if not same[0] and not same[1] and same[2]:
            ref_i = order[1]
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


# --------------------------------------------------------------------------------------------------------- DNAm


def platform_group(platform: object) -> str:
    """``27k``, ``450k``, ``epic`` or ``unknown`` from GDC's platform field (e.g. "Illumina Human Methylation 450")."""
    s = str(platform or "").lower().replace(" ", "")
    if "27" in s:
        return "27k"
    if "450" in s:
        return "450k"
    if "epic" in s or "850" in s or "935" in s:
        return "epic"
    return "unknown"


def _parse_betas(path: str | Path, probes_only: bool = False) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None]:
    _read_head(path, 4096)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, column_names=["probe", "beta"]),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(
                include_columns=["probe"] if probes_only else ["probe", "beta"],
                column_types={"probe": pa.string(), "beta": pa.float64()},
                null_values=["NA", "", "NaN", "nan"], strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        err = _arrow_error(path, exc)
        if err.line == 1 and "not a number" in err.reason:
            err = MalformedFileError(path, err.reason + "; SeSAMe beta files have no header line", 1)
        raise err from None
    return table["probe"], (None if probes_only else table["beta"])


def read_sesame_betas(path: str | Path) -> pd.Series:
    """One SeSAMe beta file as a float64 Series indexed by probe id (file order), NaN where ``NA``.

    Raises:
        MalformedFileError: not two columns, a beta that is not a number in [0, 1], a repeated probe, empty.
    """
    probes, betas = _parse_betas(path)
    values = betas.to_numpy(zero_copy_only=False)
    _check_betas(path, probes, values)
    return pd.Series(values, index=pd.Index(probes.to_numpy(zero_copy_only=False), name="probe"), name="beta")


def _check_beta_range(path: str | Path, values: np.ndarray) -> None:
    bad = np.flatnonzero((values < 0) | (values > 1))
    if bad.size:
        raise MalformedFileError(path, f"beta {values[bad[0]]} outside [0, 1]", int(bad[0]) + 1)


def _check_betas(path: str | Path, probes: pa.ChunkedArray, values: np.ndarray) -> None:
    _check_beta_range(path, values)
    if pc.count_distinct(probes).as_py() != len(probes):
        ids = probes.to_numpy(zero_copy_only=False)
        _, first, counts = np.unique(ids, return_index=True, return_counts=True)
        dup_first = first[counts > 1].min()
        second = np.flatnonzero(ids == ids[dup_first])[1]
        raise MalformedFileError(path, f"probe {ids[dup_first]} appears more than once", int(second) + 1)


def read_probe_list(path: str | Path) -> list[str]:
    """Probe ids from a text file, one per line (blank lines and ``#`` comments ignored); sorted, unique."""
    lines = Path(path).read_text().splitlines()
    probes = sorted({s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")})
    if not probes:
        raise ValueError(f"probe list {path} has no probe ids")
    return probes


def dnam_probe_set(files: pd.DataFrame, on_malformed: OnMalformed = "error",
                   threads: int = 2) -> tuple[list[str], pd.DataFrame]:
    """The probes of every platform present, in sorted order: ∩ over platforms of (∪ of that platform's files).

    Args:
        files: columns ``patient``, ``path`` and (optional) ``platform`` (GDC's field). Without platforms, all
            files count as one platform.

    Returns:
        ``(sorted probe ids, qc rows of files that could not be read)``. With one platform present its own probes
        are used (and logged); with 27k and 450k files, their overlap (25,978 probes on TCGA).
    """
    files = _check_file_table(files)
    groups = (files["platform"].map(platform_group) if "platform" in files else
              pd.Series("unknown", index=files.index))
    paths, patients = files["path"].astype(str).tolist(), files["patient"].astype(str).tolist()

    qc: list[dict] = []
    unions: dict[str, set[str]] = {}
    seen: dict[str, list[pa.ChunkedArray]] = {}  # the distinct probe lists of each platform (nearly always one)
    lock = threading.Lock()

    def probes_of(i: int) -> MalformedFileError | None:
        try:
            probes = _parse_betas(paths[i], probes_only=True)[0]
        except MalformedFileError as err:
            return err
        g = groups.iloc[i]
        with lock:  # only a new list is kept and added to the union: memory is one list per platform
            if not any(_equal(probes, prev) for prev in seen.get(g, [])):
                seen.setdefault(g, []).append(probes)
                unions.setdefault(g, set()).update(probes.to_numpy(zero_copy_only=False).tolist())
        return None

    results = _run_parallel(probes_of, len(files), threads, "dnam probes")
    for i, res in enumerate(results):
        if res is not None:
            err = res.with_patient(patients[i])
            if on_malformed == "error":
                raise err
            qc.append(dict(patient=patients[i], modality="dnam", file=paths[i], reason=err.reason))
    if not unions:
        return [], _qc_frame(qc)
    platforms = sorted(unions)
    probes = set.intersection(*unions.values())
    sizes = ", ".join(f"{g}: {len(unions[g])}" for g in platforms)
    if len(platforms) == 1:
        log.info("dnam: one platform (%s) present: using its %d probes", platforms[0], len(probes))
    else:
        log.info("dnam: probes per platform (%s); overlap %d", sizes, len(probes))
    return sorted(probes), _qc_frame(qc)


def build_dnam_matrix(files: pd.DataFrame, probes: Sequence[str], on_malformed: OnMalformed = "error",
                      threads: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Patient-by-probe float32 beta matrix over ``probes`` (in that order); NaN for NA or absent probes.

    A file lacking more than half of ``probes`` is malformed (truncated, or another array).

    Returns:
        ``(matrix [n_patients, n_probes] float32 with index "patient"; qc table)``.
    """
    files = _check_file_table(files)
    n, probe_index = len(files), pd.Index(list(probes))
    if not probe_index.is_unique:
        raise ValueError("the probe list repeats probe ids")
    paths, patients = files["path"].astype(str).tolist(), files["patient"].astype(str).tolist()
    matrix = np.full((n, len(probe_index)), np.nan, dtype=np.float32, order="F")
    cache: list[tuple[pa.ChunkedArray, np.ndarray, np.ndarray]] = []  # (probe column, file rows, matrix columns)

    def fill(i: int):
        try:
            ids, betas = _parse_betas(paths[i])
            values = betas.to_numpy(zero_copy_only=False)
            hit = next((c for c in list(cache) if _equal(ids, c[0])), None)
            if hit is None:
                _check_betas(paths[i], ids, values)
                pos = probe_index.get_indexer(ids.to_numpy(zero_copy_only=False))
                rows = np.flatnonzero(pos >= 0)
                hit = (ids, rows, pos[rows])
                if len(cache) < 4:
                    cache.append(hit)
            else:
                _check_beta_range(paths[i], values)  # ids are the cached file's: already known unique
            lacking = len(probe_index) - len(hit[1])
            if len(probe_index) and lacking > MAX_MISSING_PROBE_FRACTION * len(probe_index):
                raise MalformedFileError(paths[i], f"lacks {lacking} of the {len(probe_index)} probes "
                                         f"(truncated, or another array?)")
            row = np.full(len(probe_index), np.nan, dtype=np.float32)
            row[hit[2]] = values[hit[1]]
            matrix[i] = row
            return lacking
        except MalformedFileError as err:
            return err

    results = _run_parallel(fill, n, threads, "dnam files")
    qc: list[dict] = []
    failed = np.zeros(n, dtype=bool)
    for i, res in enumerate(results):
        if isinstance(res, MalformedFileError):
            qc.append(_malformed_qc_row(res, patients[i], "dnam", paths[i], on_malformed))
            failed[i] = True
        elif res:
            log.info("dnam: %s (patient %s) lacks %d probes of the set: NaN", paths[i], patients[i], res)
    if failed.any():
        matrix = _compact(matrix, ~failed)
    kept = [p for p, f in zip(patients, failed) if not f]
    frame = pd.DataFrame(matrix, index=pd.Index(kept, name="patient"), columns=probe_index, copy=False)
    return frame, _qc_frame(qc)


# ------------------------------------------------------------------------------------------- bring your own


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


# ------------------------------------------------------------------------------------------------------- I/O

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


def write_star_counts(path: str | Path, gene_ids: Sequence[str], gene_types: Sequence[str],
                      values: np.ndarray, gene_model: str = "GENCODE v36") -> None:
    """Write a GDC STAR - Counts TSV (the four ``N_*`` rows first); ``values [n_genes]`` go to every FPKM-UQ,
    FPKM and TPM column scaled (fpkm = values / 2, tpm = values / 3) and to the count columns rounded.

    For tests, benchmarks and the demo: the reader's exact inverse on the columns it reads.
    """
    values = np.asarray(values, dtype=np.float64)
    counts = np.rint(values * 10).astype(np.int64)
    lines = [f"# gene-model: {gene_model}", "\t".join(STAR_COLUMNS)]
    lines += [f"{n}\t\t\t{k}\t{k}\t{k}\t\t\t" for n, k in
              (("N_unmapped", 1000), ("N_multimapping", 900), ("N_noFeature", 800), ("N_ambiguous", 700))]
    lines += [f"{g}\t{g.split('.')[0]}\t{t}\t{c}\t{c // 2}\t{c - c // 2}\t{v / 3:.4f}\t{v / 2:.4f}\t{v:.4f}"
              for g, t, c, v in zip(gene_ids, gene_types, counts.tolist(), values.tolist())]
    Path(path).write_text("\n".join(lines) + "\n")


def write_sesame_betas(path: str | Path, probes: Sequence[str], betas: np.ndarray) -> None:
    """Write a SeSAMe level-3 beta file: probe TAB beta, no header, ``NA`` for NaN."""
    betas = np.asarray(betas, dtype=np.float64)
    Path(path).write_text("".join(f"{p}\t{'NA' if np.isnan(b) else f'{b:.6g}'}\n"
                                  for p, b in zip(probes, betas.tolist())))
