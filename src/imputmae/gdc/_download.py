"""Verified, resumable downloads into gdc-client's layout, and the download report's "usable" rule."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from imputmae.files import atomic_write
from imputmae.gdc import _transport
from imputmae.gdc._transport import GDCError, RetryableError, Transport, _RestartFromZero

log = logging.getLogger(__name__)

REPORT_COLUMNS: tuple[str, ...] = (
    "file_id", "file_name", "local_path", "md5sum", "md5_verified", "bytes", "status", "reason", "bytes_fetched",
    "attempts",
)
# A file is usable downstream when its download report says one of these (the others: "failed", with a reason).
USABLE_STATUSES: tuple[str, ...] = ("downloaded", "present")


def usable_downloads(status: pd.Series) -> pd.Series:
    """The download report's "usable" rule, in one place: ``status`` [N] (case-insensitive) -> bool [N]."""
    return status.fillna("").astype(str).str.lower().isin(USABLE_STATUSES)


# --------------------------------------------------------------------------------------------------- downloads


def md5_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _Result:
    status: str = "failed"
    reason: str = ""
    md5_verified: bool = False
    bytes: int = 0
    bytes_fetched: int = 0
    attempts: int = 0


def _download_one(transport: Transport, file_id: str, file_name: str, md5sum: str, size: int, dest: Path,
                  retries: int, backoff_s: float, max_backoff_s: float, progress: Callable[[int], None]) -> _Result:
    """Fetch one file to ``dest/<file_id>/<file_name>`` through ``.part`` (resumed by Range), verified by size
    and md5, with retries and backoff; the outcome (status, reason, bytes, attempts) as a ``_Result``.

    Over 60 lines on purpose: one retry loop whose state (offset, attempts, failures, full re-downloads after an
    md5 mismatch) every branch updates; split into helpers, that state would travel through every call.
    """
    final = dest / file_id / file_name
    part = final.with_name(file_name + ".part")
    res = _Result()
    if final.is_file():
        if final.stat().st_size == size and md5_file(final) == md5sum:
            return _Result("present", "", True, size, 0, 0)
        log.warning("%s: %s does not match its md5/size: fetching it again", file_id, final)
        final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    full_downloads = 0  # md5 mismatches tolerated: one fresh download after a mismatch, then give up
    failures = 0
    while True:
        res.attempts += 1
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        elif offset and part.stat().st_nlink > 1:  # a hard link into a mirror: appending would modify the mirror
            atomic_write(part, lambda tmp: shutil.copyfile(part, tmp))
        h = hashlib.md5(usedforsecurity=False)
        if offset:
            with open(part, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)

        def on_bytes(chunk: bytes) -> None:
            h.update(chunk)
            res.bytes_fetched += len(chunk)
            progress(len(chunk))

        try:
            if offset < size:
                transport.fetch(file_id, file_name, part, offset, on_bytes)
        except _RestartFromZero:
            log.warning("%s: the server ignored the Range request; restarting from byte 0", file_id)
            part.unlink(missing_ok=True)
            continue
        except RetryableError as exc:
            failures += 1
            if failures > retries:
                res.reason = f"gave up after {res.attempts} attempts: {exc}"
                return res
            wait = exc.retry_after if exc.retry_after is not None else min(max_backoff_s, backoff_s * 2 ** (failures - 1))
            have = part.stat().st_size if part.exists() else 0
            log.warning("%s: %s (%d of %d bytes kept); retry %d/%d in %.1f s", file_id, exc, have, size,
                        failures, retries, wait)
            _transport._sleep(wait)
            continue
        except (GDCError, OSError) as exc:  # not retryable: 4xx, a file missing from the mirror, a full disk
            res.reason = str(exc)
            return res
        got = part.stat().st_size if part.exists() else 0
        if got < size:
            if got == offset:  # this attempt added nothing: the source is short, not the connection
                res.reason = f"the source ends at {got} of {size} bytes (file_size from /files)"
                part.unlink(missing_ok=True)
                return res
            failures += 1
            if failures > retries:
                res.reason = f"gave up after {res.attempts} attempts: body ended at {got} of {size} bytes"
                return res
            log.warning("%s: body ended at %d of %d bytes; resuming", file_id, got, size)
            continue
        digest = h.hexdigest()
        if got == size and digest == md5sum:
            os.replace(part, final)
            return _Result("downloaded", "", True, size, res.bytes_fetched, res.attempts)
        part.unlink()
        full_downloads += 1
        why = f"size {got} != {size}" if got != size else f"md5 {digest} != {md5sum}"
        if full_downloads > 1:
            res.reason = (f"{why} after {full_downloads} full downloads: the source's bytes differ from /files; "
                          "rerun `imputmae gdc manifest` (a new data release?) or report it to the GDC")
            return res
        log.warning("%s: %s; discarding the bytes and downloading again", file_id, why)


def download_files(manifest: pd.DataFrame, dest: str | os.PathLike[str], transport: Transport, workers: int = 4,
                   retries: int = 8, backoff_s: float = 1.0, max_backoff_s: float = 120.0,
                   progress: bool = True) -> pd.DataFrame:
    """Fetch every row of ``manifest`` (file_id, file_name, md5sum, file_size) into ``dest/<file_id>/<file_name>``.

    Parallel over files (``workers`` threads). Each file streams into ``<file_name>.part`` (resumed from its
    length when one exists), is checked against md5sum and file_size, and only then renamed; a file already
    present with the right md5 is not fetched again. Retryable failures (cut connection, timeout, 5xx, 429) are
    retried ``retries`` times with exponential backoff or Retry-After, keeping the bytes received; an md5 mismatch
    discards the bytes and downloads once more. A file that still fails is reported, not raised.

    Returns:
        one row per file with :data:`REPORT_COLUMNS` (status ``downloaded``, ``present`` or ``failed``).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    rows = manifest.drop_duplicates("file_id")
    bar = tqdm(total=int(rows["file_size"].sum()), unit="B", unit_scale=True, unit_divisor=1024,
               desc="gdc download", disable=not progress, mininterval=1.0)
    lock = threading.Lock()
    done = {"files": 0, "failed": 0}

    def tick(n: int) -> None:
        with lock:
            bar.update(n)

    def finished(failed: bool) -> None:
        with lock:
            done["files"] += 1
            done["failed"] += failed
            bar.set_postfix_str(f"{done['files']}/{len(rows)} files, {done['failed']} failed", refresh=False)

    def download_row(row: Any) -> dict[str, Any]:
        r = _download_one(transport, row.file_id, row.file_name, row.md5sum, int(row.file_size), dest, retries,
                          backoff_s, max_backoff_s, tick)
        if r.status == "present":
            tick(int(row.file_size))
        if r.status == "failed":
            log.error("%s (%s): FAILED: %s", row.file_id, row.file_name, r.reason)
        finished(r.status == "failed")
        return {"file_id": row.file_id, "file_name": row.file_name,
                "local_path": str(dest / row.file_id / row.file_name), "md5sum": row.md5sum,
                "md5_verified": r.md5_verified, "bytes": r.bytes, "status": r.status, "reason": r.reason,
                "bytes_fetched": r.bytes_fetched, "attempts": r.attempts}

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            out = list(pool.map(download_row, rows.itertuples(index=False)))
    finally:
        bar.close()
    return pd.DataFrame(out, columns=list(REPORT_COLUMNS))


