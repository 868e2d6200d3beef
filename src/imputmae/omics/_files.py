"""What every omics reader shares: the malformed-file error, the file table, threaded parsing, QC rows."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from imputmae.choices import OnMalformed

log = logging.getLogger(__name__)

QC_COLUMNS: tuple[str, ...] = ("patient", "modality", "file", "reason")


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
