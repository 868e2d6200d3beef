"""DNAm: SeSAMe level-3 beta files to a patient-by-probe matrix over the arrays' probe overlap."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
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

# A beta file that lacks more than this fraction of the probe set is taken as truncated (or another array).
MAX_MISSING_PROBE_FRACTION = 0.5


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
