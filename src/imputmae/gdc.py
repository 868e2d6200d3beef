"""Acquisition from the NCI Genomic Data Commons: manifest, per-patient selection, verified downloads, clinical labels.

Everything goes through a :class:`Transport`: :class:`HttpTransport` talks to the GDC API (``--api URL``),
:class:`MirrorTransport` reads a local copy in gdc-client layout (``--mirror DIR``: ``files.json``,
``cases.json``, ``status.json``, ``data/<file_id>/<file_name>``). A transport answers three questions (the data
release, one page of ``/files`` or ``/cases`` hits, the bytes of a file from an offset); everything after it
(filters, pagination, manifest rows, selection, verification, clinical parsing) is the same code. The mirror
evaluates GDC filters with :func:`match_filters`, the evaluator the test server in ``tests/gdc_server.py`` uses.

Selection rule (:func:`select_files`), written down once here and in the README:

* RNA and DNAm: one file per patient. Candidates are the patient's files whose sample type is in
  ``sample_types`` (config ``gdc.sample_types``, a preference order; other sample types, e.g. Solid Tissue Normal,
  are never chosen). Ties are broken, in order, by: the most preferred sample type; for DNAm, the 450k array before
  the 27k; the sample barcode ascending (vial ``01A`` before ``01B``); the file_id ascending.
* WSI: every Diagnostic Slide (experimental strategy ``Diagnostic Slide``; tissue slides ``TS`` are frozen sections
  and are not diagnostic) of the patient's most preferred sample type that has one. The WSI stage picks among them.

Downloads (:func:`download_files`) land in ``DEST/<file_id>/<file_name>`` (gdc-client's layout) through
``<file_name>.part``; the md5 and size from ``/files`` are checked before the rename, so a final name always holds
verified bytes. A ``.part`` left by an interrupted run is resumed with an HTTP ``Range`` request (or by copying
from the offset, for a mirror). A file that still fails after the retries is reported with its reason (status
``failed``) and the run goes on; the modality counts as missing for that patient.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd
import requests
import urllib3

from imputmae.files import atomic_write

__all__ = [
    "GDCError",
    "Modality",
    "MODALITIES",
    "MODALITY_FILTERS",
    "FILE_FIELDS",
    "CASE_FIELDS",
    "MANIFEST_COLUMNS",
    "REPORT_COLUMNS",
    "USABLE_STATUSES",
    "usable_downloads",
    "CLINICAL_COLUMNS",
    "QC_COLUMNS",
    "project_filter",
    "modality_filters",
    "case_filters",
    "match_filters",
    "field_values",
    "project_fields",
    "paginate",
    "RetryableError",
    "Token",
    "Transport",
    "HttpTransport",
    "MirrorTransport",
    "open_transport",
    "read_token",
    "iter_hits",
    "manifest_rows",
    "fetch_manifest",
    "write_parquet",
    "read_manifest",
    "select_files",
    "download_files",
    "md5_file",
    "clinical_table",
    "fetch_clinical",
]

log = logging.getLogger(__name__)
_sleep = time.sleep  # the backoff wait (tests record it instead of waiting)

Modality = Literal["rna", "dnam", "wsi"]
MODALITIES: tuple[Modality, ...] = ("rna", "dnam", "wsi")

DNAM_PLATFORMS = ("Illumina Human Methylation 450", "Illumina Human Methylation 27")


class GDCError(RuntimeError):
    """A GDC request or a downloaded file that could not be made right (message names the file or endpoint)."""


# ----------------------------------------------------------------------------------------------------- filters


def _in(field: str, values: Sequence[str]) -> dict[str, Any]:
    return {"op": "in", "content": {"field": field, "value": list(values)}}


# The three modalities as GDC /files filters (field names as the API documents them).
MODALITY_FILTERS: dict[Modality, list[dict[str, Any]]] = {
    "rna": [
        _in("data_category", ["Transcriptome Profiling"]),
        _in("data_type", ["Gene Expression Quantification"]),
        _in("experimental_strategy", ["RNA-Seq"]),
        _in("analysis.workflow_type", ["STAR - Counts"]),
    ],
    "dnam": [
        _in("data_category", ["DNA Methylation"]),
        _in("data_type", ["Methylation Beta Value"]),
        _in("platform", list(DNAM_PLATFORMS)),
    ],
    "wsi": [
        _in("data_type", ["Slide Image"]),
        _in("experimental_strategy", ["Diagnostic Slide"]),
        _in("data_format", ["SVS"]),
    ],
}

FILE_FIELDS: tuple[str, ...] = (
    "file_id", "file_name", "md5sum", "file_size", "state", "access", "data_category", "data_type", "data_format",
    "experimental_strategy", "platform", "analysis.workflow_type", "cases.case_id", "cases.submitter_id",
    "cases.project.project_id", "cases.samples.submitter_id", "cases.samples.sample_type",
)
CASE_FIELDS: tuple[str, ...] = (
    "case_id", "submitter_id", "project.project_id", "demographic.vital_status", "demographic.days_to_death",
    "diagnoses.days_to_last_follow_up", "follow_ups.days_to_follow_up",
)
MANIFEST_COLUMNS: tuple[str, ...] = (
    "file_id", "file_name", "md5sum", "file_size", "modality", "platform", "case_id", "patient", "sample",
    "sample_type", "project_id",
)
REPORT_COLUMNS: tuple[str, ...] = (
    "file_id", "file_name", "local_path", "md5sum", "md5_verified", "bytes", "status", "reason", "bytes_fetched",
    "attempts",
)
CLINICAL_COLUMNS: tuple[str, ...] = ("patient", "project_id", "case_id", "vital_status", "time", "event")
# A file is usable downstream when its download report says one of these (the others: "failed", with a reason).
USABLE_STATUSES: tuple[str, ...] = ("downloaded", "present")


def usable_downloads(status: pd.Series) -> pd.Series:
    """The download report's "usable" rule, in one place: ``status`` [N] (case-insensitive) -> bool [N]."""
    return status.fillna("").astype(str).str.lower().isin(USABLE_STATUSES)


QC_COLUMNS: tuple[str, ...] = ("patient", "project_id", "case_id", "vital_status", "days_to_death",
                               "days_to_follow_up", "reason")


def project_filter(projects: Sequence[str], field: str = "cases.project.project_id") -> dict[str, Any]:
    """``{"op": "in", ...}`` on the project ids (``project.project_id`` on /cases)."""
    if not projects:
        raise ValueError("at least one GDC project id is needed (e.g. TCGA-BRCA)")
    return _in(field, projects)


def modality_filters(projects: Sequence[str], modality: Modality) -> dict[str, Any]:
    """The /files filters for one modality of ``projects``: an ``and`` of ``in`` clauses."""
    return {"op": "and", "content": [project_filter(projects), *MODALITY_FILTERS[modality]]}


def case_filters(projects: Sequence[str]) -> dict[str, Any]:
    """The /cases filters for ``projects``."""
    return {"op": "and", "content": [project_filter(projects, "project.project_id")]}


def field_values(hit: Any, field: str) -> list[Any]:
    """Every value at dotted ``field`` in a nested hit, descending into lists (``cases.project.project_id``)."""
    values = [hit]
    for part in field.split("."):
        nxt: list[Any] = []
        for v in values:
            if isinstance(v, list):
                nxt.extend(x.get(part) for x in v if isinstance(x, Mapping) and part in x)
            elif isinstance(v, Mapping) and part in v:
                nxt.append(v[part])
        values = nxt
    out: list[Any] = []
    for v in values:
        out.extend(v if isinstance(v, list) else [v])
    return [v for v in out if v is not None]


def _strip(field: str, endpoint: str | None) -> str:
    return field[len(endpoint) + 1:] if endpoint and field.startswith(endpoint + ".") else field


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return str(a) == str(b)


def _compare(op: str, a: Any, b: Any) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        x, y = str(a), str(b)  # type: ignore[assignment]
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


def match_filters(filters: Mapping[str, Any] | None, hit: Mapping[str, Any], endpoint: str | None = None) -> bool:
    """Whether ``hit`` satisfies GDC ``filters`` (ops: and, or, not, in, exclude, =, !=, <, <=, >, >=, is, not).

    Fields are dotted paths into the nested hit; a list on the way matches when any element does (as the API
    does). ``endpoint`` ("files" or "cases") lets a field carry the endpoint's prefix (``files.data_type``).

    Raises:
        ValueError: an unknown op or a malformed clause (the API answers 400 to those).
    """
    if not filters:
        return True
    op = str(filters.get("op", "")).lower()
    content = filters.get("content")
    if op in ("and", "or"):
        if not isinstance(content, list):
            raise ValueError(f"filters: '{op}' needs a list of clauses, got {content!r}")
        results = (match_filters(c, hit, endpoint) for c in content)
        return all(results) if op == "and" else any(results)
    if op == "not" and isinstance(content, Mapping) and "op" in content:
        return not match_filters(content, hit, endpoint)
    if not isinstance(content, Mapping) or "field" not in content:
        raise ValueError(f"filters: '{op}' needs {{'field': ..., 'value': ...}}, got {content!r}")
    have = field_values(hit, _strip(str(content["field"]), endpoint))
    value = content.get("value")
    if op in ("in", "exclude"):
        wanted = value if isinstance(value, list) else [value]
        found = any(_same(h, w) for h in have for w in wanted)
        return found if op == "in" else not found
    if op == "=":
        return any(_same(h, value) for h in have)
    if op == "!=":
        return not any(_same(h, value) for h in have)
    if op in ("<", "<=", ">", ">="):
        return any(_compare(op, h, value) for h in have)
    if op == "is":  # {"op": "is", "content": {"field": f, "value": "missing"}}
        return not have if str(value).lower() == "missing" else bool(have)
    if op == "not":
        return bool(have) if str(value).lower() == "missing" else not have
    raise ValueError(f"filters: unknown op {op!r}")


def project_fields(hit: Mapping[str, Any], fields: Sequence[str] | None, endpoint: str | None = None) -> dict[str, Any]:
    """The part of ``hit`` that the API returns for ``fields`` (nesting kept; ``id`` always; all when ``None``)."""
    if not fields:
        return dict(hit)
    out: dict[str, Any] = {"id": hit["id"]} if "id" in hit else {}
    for f in fields:
        _copy_path(hit, out, _strip(f, endpoint).split("."))
    return out


def _copy_path(src: Any, dst: dict[str, Any], parts: list[str]) -> None:
    key, rest = parts[0], parts[1:]
    if not isinstance(src, Mapping) or key not in src:
        return
    value = src[key]
    if not rest or value is None:
        dst[key] = value
    elif isinstance(value, list):
        existing = dst.setdefault(key, [{} for _ in value])
        for s, d in zip(value, existing):
            _copy_path(s, d, rest)
    else:
        _copy_path(value, dst.setdefault(key, {}), rest)


def paginate(hits: Sequence[Mapping[str, Any]], from_: int, size: int,
             sort: str | None = None) -> dict[str, Any]:
    """One page of ``hits`` as the API's ``data`` object (``hits`` and ``pagination``); sort as ``field[:asc|desc]``."""
    rows = list(hits)
    if sort:
        field, _, order = sort.partition(":")
        rows.sort(key=lambda h: [str(v) for v in field_values(h, field)], reverse=order == "desc")
    page = rows[from_:from_ + size]
    return {
        "hits": page,
        "pagination": {"count": len(page), "total": len(rows), "size": size, "from": from_, "sort": sort or "",
                       "page": from_ // size + 1 if size else 1, "pages": math.ceil(len(rows) / size) if size else 1},
    }


# -------------------------------------------------------------------------------------------------- transports


class Transport(Protocol):
    """Where GDC answers come from: the API over HTTP, or a local mirror."""

    source: str

    def status(self) -> dict[str, Any]:
        """The ``/status`` object (``data_release``, ...)."""

    def query(self, endpoint: Literal["files", "cases"], filters: Mapping[str, Any], fields: Sequence[str],
              from_: int, size: int, sort: str) -> dict[str, Any]:
        """One page: the API's ``data`` object with ``hits`` and ``pagination``."""

    def fetch(self, file_id: str, file_name: str, part: Path, offset: int, on_bytes: Callable[[bytes], None]) -> None:
        """Append the file's bytes from ``offset`` to ``part`` (which holds exactly ``offset`` bytes), calling
        ``on_bytes`` with each chunk written. Raises :class:`RetryableError` for what a retry may fix."""

    def local_source(self, file_id: str, file_name: str) -> Path | None:
        """A local path holding the file (a mirror), or ``None``."""


class RetryableError(GDCError):
    """A failure that a later attempt may not see: a cut connection, a timeout, HTTP 5xx or 429."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Token:
    """The X-Auth-Token value; its repr and str never show it."""

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "<token redacted>"

    __str__ = __repr__


def read_token(path: str | os.PathLike[str] | None) -> Token | None:
    """The token in ``path`` (whitespace stripped), or ``None`` when no path is given.

    Raises:
        GDCError: the file is missing or empty (the message names the file, never its content).
    """
    if path is None:
        return None
    p = Path(path)
    try:
        value = p.read_text().strip()
    except OSError as exc:
        raise GDCError(f"token file {p}: cannot read it ({exc.strerror}); download a token from the GDC portal") from None
    if not value:
        raise GDCError(f"token file {p} is empty; download a token from the GDC portal")
    return Token(value)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class _TokenSession(requests.Session):
    """A session that drops X-Auth-Token when a redirect leaves the API's host (requests strips only
    ``Authorization`` by itself; a custom header would follow the redirect)."""

    def rebuild_auth(self, prepared_request, response):
        super().rebuild_auth(prepared_request, response)
        if self.should_strip_auth(response.request.url, prepared_request.url):
            prepared_request.headers.pop("X-Auth-Token", None)


class HttpTransport:
    """The GDC API over HTTP(S): one ``requests.Session`` per thread, streamed bodies, Range resume.

    Args:
        api: base URL, e.g. ``https://api.gdc.cancer.gov``.
        timeout_s: connect and read timeout of each request (a stalled body counts as a read timeout).
        token: X-Auth-Token for controlled data (sent only to the API's host; never logged).
        chunk_size: bytes per read of a streamed body.
    """

    def __init__(self, api: str, timeout_s: float = 60.0, token: Token | None = None, chunk_size: int = 1 << 20):
        self.api = api.rstrip("/")
        self.source = self.api
        self.timeout_s = timeout_s
        self._token = token
        self.chunk_size = chunk_size
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = _TokenSession()
            session.headers["User-Agent"] = "imputmae-gdc"
            if self._token is not None:
                session.headers["X-Auth-Token"] = self._token.value
            self._local.session = session
        return session

    def _redact(self, text: str) -> str:
        return text.replace(self._token.value, "<token redacted>") if self._token is not None else text

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.api}/{path}"
        try:
            resp = self._session().request(method, url, timeout=self.timeout_s, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryableError(self._redact(f"{method} {url}: {type(exc).__name__}: {exc}")) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            wait = _retry_after(resp.headers.get("Retry-After"))
            resp.close()
            raise RetryableError(f"{method} {url}: HTTP {resp.status_code} {resp.reason}", retry_after=wait)
        if resp.status_code >= 400:
            body = self._redact(resp.text[:200]).strip()
            resp.close()
            hint = " (controlled data: pass --token-file with a valid GDC token)" if resp.status_code in (401, 403) else ""
            raise GDCError(f"{method} {url}: HTTP {resp.status_code} {resp.reason}{hint}: {body}")
        return resp

    def status(self) -> dict[str, Any]:
        resp = self._request("GET", "status")
        return resp.json()

    def query(self, endpoint: Literal["files", "cases"], filters: Mapping[str, Any], fields: Sequence[str],
              from_: int, size: int, sort: str) -> dict[str, Any]:
        body = {"filters": filters, "fields": ",".join(fields), "from": from_, "size": size, "sort": sort,
                "format": "JSON"}
        resp = self._request("POST", endpoint, json=body)
        try:
            return resp.json()["data"]
        except (ValueError, KeyError) as exc:
            raise RetryableError(f"POST {self.api}/{endpoint}: not a GDC JSON answer ({exc})") from None

    def fetch(self, file_id: str, file_name: str, part: Path, offset: int, on_bytes: Callable[[bytes], None]) -> None:
        # identity: Range offsets count the bytes on disk; read1 hands over whatever arrived, so a cut connection
        # loses nothing that reached us.
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
        resp = self._request("GET", f"data/{file_id}", headers=headers, stream=True)
        with resp:
            if offset and resp.status_code != 206:
                # The server ignored the Range: start again from byte 0.
                raise _RestartFromZero()
            try:
                with open(part, "ab") as fh:
                    while chunk := resp.raw.read1(self.chunk_size):
                        fh.write(chunk)
                        on_bytes(chunk)
            except (urllib3.exceptions.HTTPError, requests.RequestException, ConnectionError, TimeoutError) as exc:
                raise RetryableError(self._redact(f"GET data/{file_id}: body cut ({type(exc).__name__})")) from None

    def local_source(self, file_id: str, file_name: str) -> Path | None:
        return None


class _RestartFromZero(Exception):
    pass


class MirrorTransport:
    """A local copy in gdc-client layout: ``files.json``, ``cases.json`` (lists of API hits), ``status.json``,
    ``data/<file_id>/<file_name>``. Files are hard-linked into the destination when it is on the same filesystem
    (and not resumed), else copied; either way they are verified exactly as HTTP downloads are."""

    def __init__(self, root: str | os.PathLike[str], link: bool = True, chunk_size: int = 1 << 20):
        self.root = Path(root)
        self.source = f"mirror:{self.root}"
        self.link = link
        self.chunk_size = chunk_size
        if not (self.root / "files.json").is_file():
            raise GDCError(f"mirror {self.root}: no files.json here; expected gdc-client layout "
                           "(files.json, cases.json, data/<file_id>/<file_name>)")
        self._hits: dict[str, list[dict[str, Any]]] = {}

    def _load(self, endpoint: str) -> list[dict[str, Any]]:
        if endpoint not in self._hits:
            path = self.root / f"{endpoint}.json"
            if not path.is_file():
                raise GDCError(f"mirror {self.root}: no {endpoint}.json")
            hits = json.loads(path.read_text())
            if isinstance(hits, Mapping):  # an API answer saved whole
                hits = hits.get("data", hits).get("hits", [])
            self._hits[endpoint] = hits
        return self._hits[endpoint]

    def status(self) -> dict[str, Any]:
        path = self.root / "status.json"
        return json.loads(path.read_text()) if path.is_file() else {"data_release": "unknown (mirror without status.json)"}

    def query(self, endpoint: Literal["files", "cases"], filters: Mapping[str, Any], fields: Sequence[str],
              from_: int, size: int, sort: str) -> dict[str, Any]:
        hits = [h for h in self._load(endpoint) if match_filters(filters, h, endpoint)]
        page = paginate(hits, from_, size, sort)
        page["hits"] = [project_fields(h, fields, endpoint) for h in page["hits"]]
        return page

    def local_source(self, file_id: str, file_name: str) -> Path | None:
        return self.root / "data" / file_id / file_name

    def fetch(self, file_id: str, file_name: str, part: Path, offset: int, on_bytes: Callable[[bytes], None]) -> None:
        src = self.local_source(file_id, file_name)
        if not src.is_file():
            raise GDCError(f"mirror {self.root}: {file_id}/{file_name} is not there; the mirror is incomplete")
        if offset == 0 and self.link:
            part.unlink(missing_ok=True)
            try:
                os.link(src, part)
            except OSError:
                pass
            else:
                with open(part, "rb") as fh:
                    while chunk := fh.read(self.chunk_size):
                        on_bytes(chunk)
                return
        with open(src, "rb") as fin, open(part, "ab") as fout:
            fin.seek(offset)
            while chunk := fin.read(self.chunk_size):
                fout.write(chunk)
                on_bytes(chunk)


def open_transport(api: str | None = None, mirror: str | os.PathLike[str] | None = None, timeout_s: float = 60.0,
                   token_file: str | os.PathLike[str] | None = None) -> Transport:
    """An :class:`HttpTransport` for ``api`` or a :class:`MirrorTransport` for ``mirror`` (exactly one)."""
    if (api is None) == (mirror is None):
        raise ValueError("give exactly one of api (a GDC API URL) or mirror (a local gdc-client folder)")
    if mirror is not None:
        return MirrorTransport(mirror)
    return HttpTransport(api, timeout_s=timeout_s, token=read_token(token_file))


# ------------------------------------------------------------------------------------------ retries, pagination


def _with_retries(what: str, call: Callable[[], Any], retries: int, backoff_s: float,
                  max_backoff_s: float = 120.0) -> Any:
    """``call()``, retried on :class:`RetryableError` up to ``retries`` times: exponential backoff
    (``backoff_s * 2**attempt``, capped) or the server's Retry-After when it sent one."""
    for attempt in range(retries + 1):
        try:
            return call()
        except RetryableError as exc:
            if attempt == retries:
                raise GDCError(f"{what}: gave up after {retries + 1} attempts: {exc}") from None
            wait = exc.retry_after if exc.retry_after is not None else min(max_backoff_s, backoff_s * 2 ** attempt)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, exc, attempt + 1, retries, wait)
            _sleep(wait)
    raise AssertionError("unreachable")


def iter_hits(transport: Transport, endpoint: Literal["files", "cases"], filters: Mapping[str, Any],
              fields: Sequence[str], page_size: int = 500, sort: str | None = None, retries: int = 8,
              backoff_s: float = 1.0) -> Iterator[dict[str, Any]]:
    """Every hit of ``filters`` on ``endpoint``, paging with ``from``/``size`` (sorted by ``sort`` so that pages do
    not overlap) until ``pagination.total`` hits are read.

    Raises:
        GDCError: a page that keeps failing, or a total that changes while paging (a data release mid-way).
    """
    sort = sort or ("file_id:asc" if endpoint == "files" else "case_id:asc")
    seen: set[str] = set()
    from_, total = 0, None
    while total is None or from_ < total:
        page = _with_retries(f"POST /{endpoint} (from={from_})",
                             lambda: transport.query(endpoint, filters, fields, from_, page_size, sort),
                             retries, backoff_s)
        pag = page["pagination"]
        if total is not None and pag["total"] != total:
            raise GDCError(f"/{endpoint}: the number of hits changed from {total} to {pag['total']} while paging "
                           "(a new GDC data release?); run again")
        total = int(pag["total"])
        hits = page["hits"]
        if not hits and from_ < total:
            raise GDCError(f"/{endpoint}: empty page at from={from_} of {total} hits")
        for h in hits:
            key = h.get("id") or h.get("file_id") or h.get("case_id")
            if key in seen:
                raise GDCError(f"/{endpoint}: hit {key} returned twice while paging; run again")
            seen.add(key)
            yield h
        from_ += len(hits)
        log.debug("/%s: %d of %d hits", endpoint, from_, total)


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
            _sleep(wait)
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

    def one(row: Any) -> dict[str, Any]:
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
            out = list(pool.map(one, rows.itertuples(index=False)))
    finally:
        bar.close()
    return pd.DataFrame(out, columns=list(REPORT_COLUMNS))


# ---------------------------------------------------------------------------------------------------- clinical


def _numbers(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(x):
            out.append(x)
    return out


def clinical_table(cases: Iterable[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Survival labels from /cases hits.

    time (days) = ``demographic.days_to_death`` for the dead (event 1), else the largest of
    ``diagnoses[].days_to_last_follow_up`` and ``follow_ups[].days_to_follow_up`` (event 0). A patient is dropped,
    with that reason, for: ``missing vital status`` (absent, Not Reported, Unknown), ``dead without days_to_death``,
    ``no follow-up time`` (alive), ``negative time``, ``duplicate patient`` (a second case with the same barcode).

    Returns:
        (clinical rows with :data:`CLINICAL_COLUMNS` sorted by patient, dropped rows with :data:`QC_COLUMNS`).
    """
    keep, drop = [], []
    seen: set[str] = set()
    for c in cases:
        patient = str(c.get("submitter_id") or "")[:12]
        demo = c.get("demographic") or {}
        status = demo.get("vital_status")
        death = _numbers([demo.get("days_to_death")])
        follow = _numbers(field_values(c, "diagnoses.days_to_last_follow_up")
                          + field_values(c, "follow_ups.days_to_follow_up"))
        row = {"patient": patient, "project_id": (c.get("project") or {}).get("project_id"),
               "case_id": c.get("case_id") or c.get("id"), "vital_status": status,
               "days_to_death": death[0] if death else None, "days_to_follow_up": max(follow) if follow else None}
        reason = None
        if patient in seen:
            reason = "duplicate patient"
        elif status not in ("Alive", "Dead"):
            reason = "missing vital status"
        elif status == "Dead" and not death:
            reason = "dead without days_to_death"
        elif status == "Alive" and not follow:
            reason = "no follow-up time"
        seen.add(patient)
        if reason is None:
            time_ = death[0] if status == "Dead" else max(follow)
            if time_ < 0:
                reason = "negative time"
        if reason:
            drop.append({**row, "reason": reason})
        else:
            keep.append({**row, "time": float(time_), "event": int(status == "Dead")})
    clinical = pd.DataFrame(keep, columns=list(CLINICAL_COLUMNS)).sort_values("patient").reset_index(drop=True)
    clinical["time"] = clinical["time"].astype("float64")
    clinical["event"] = clinical["event"].astype("int8")
    qc = pd.DataFrame(drop, columns=list(QC_COLUMNS)).sort_values(["reason", "patient"]).reset_index(drop=True)
    return clinical, qc


def fetch_clinical(transport: Transport, projects: Sequence[str], page_size: int = 500, retries: int = 8,
                   backoff_s: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """:func:`clinical_table` over every /cases hit of ``projects``; returns (clinical, qc, metadata)."""
    status = _with_retries("GET /status", transport.status, retries, backoff_s)
    hits = iter_hits(transport, "cases", case_filters(projects), CASE_FIELDS, page_size, retries=retries,
                     backoff_s=backoff_s)
    clinical, qc = clinical_table(hits)
    for reason, n in qc["reason"].value_counts().sort_index().items():
        log.warning("clinical: %d patient(s) dropped: %s (see the QC table)", n, reason)
    log.info("clinical: %d patients kept (%d events), %d dropped", len(clinical), int(clinical["event"].sum()), len(qc))
    meta = {"gdc_data_release": str(status.get("data_release", "unknown")), "gdc_source": transport.source,
            "projects": ",".join(projects)}
    return clinical, qc, meta
