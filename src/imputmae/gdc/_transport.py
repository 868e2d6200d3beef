"""Where GDC answers come from: :class:`HttpTransport` (the API) or :class:`MirrorTransport` (a local
gdc-client copy); retries with backoff, and paging through every hit of a query.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import requests
import urllib3

from imputmae.gdc._filters import match_filters, paginate, project_fields

log = logging.getLogger(__name__)

_sleep = time.sleep  # the backoff wait (tests record it instead of waiting)


class GDCError(RuntimeError):
    """A GDC request or a downloaded file that could not be made right (message names the file or endpoint)."""



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


