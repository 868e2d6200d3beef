"""A loopback HTTP server speaking the part of the GDC API that imputmae uses, with injectable faults.

Serves a mirror folder in gdc-client layout (``files.json``, ``cases.json``, ``status.json``,
``data/<file_id>/<file_name>``) on 127.0.0.1:

* ``GET /status``; ``GET`` and ``POST /files`` and ``/cases`` with ``filters`` (GDC's JSON syntax, evaluated by
  :func:`imputmae.gdc.match_filters`), ``fields``, ``from``, ``size``, ``sort``; a malformed filter is a 400.
* ``GET /data/<file_id>`` with ``Range: bytes=a-`` / ``bytes=a-b`` (206 + Content-Range).

Faults are queued per target (``"data/<file_id>"``, ``"files"``, ``"cases"``, ``"status"``) and each is used by
the next ``times`` matching requests: ``cut`` (send ``after`` bytes of the body, then close the connection),
``429`` (with ``Retry-After: retry_after``), ``500``, ``wrong`` (same length, bytes flipped), ``slow`` (sleep
``delay`` seconds before the body), ``ignore_range`` (answer 200 with the whole body), ``redirect`` (302 to the
same path on ``localhost``, another host name for the same server), ``403_echo`` (403 whose body echoes the
X-Auth-Token it received, to check that the client redacts it). Every request is logged in ``server.requests``.

Run alone (``python tests/gdc_server.py MIRROR``) it prints its URL and serves until stdin closes; then
``POST /_faults`` (a JSON fault: target, kind, ...) queues a fault and ``GET /_requests`` returns the log.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from imputmae.gdc import match_filters, paginate, project_fields


@dataclass
class Fault:
    kind: str
    times: int = 1
    after: int = 0
    retry_after: float = 0.0
    delay: float = 0.0


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    token: str | None
    status: int = 0
    bytes_sent: int = 0
    body: dict[str, Any] = field(default_factory=dict)


class GDCServer:
    """``with GDCServer(mirror) as srv: srv.url`` ... ; ``srv.add_fault("data/<id>", "cut", after=1000)``."""

    def __init__(self, mirror: str | Path, chunk_size: int = 1 << 16, rate: float | None = None):
        self.mirror = Path(mirror)
        self.hits = {name: json.loads((self.mirror / f"{name}.json").read_text()) for name in ("files", "cases")}
        status = self.mirror / "status.json"
        self.status = json.loads(status.read_text()) if status.is_file() else {"data_release": "Data Release 0"}
        self.files = {h["file_id"]: h for h in self.hits["files"]}
        self.chunk_size = chunk_size
        self.rate = rate  # bytes/s per connection for /data bodies (a network's pace); None: as fast as possible
        self.faults: dict[str, list[Fault]] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_fault(self, target: str, kind: str, times: int = 1, **params: Any) -> None:
        with self._lock:
            self.faults.setdefault(target, []).append(Fault(kind, times, **params))

    def take_fault(self, target: str) -> Fault | None:
        with self._lock:
            queue = self.faults.get(target) or []
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.pop(0)
            return fault

    def log(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def data_requests(self, file_id: str) -> list[Request]:
        return [r for r in self.requests if r.path == f"/data/{file_id}"]

    def __enter__(self) -> GDCServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(server: GDCServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send_json(self, req: Request, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            req.status, req.bytes_sent = code, len(body)

        def _common_fault(self, req: Request, fault: Fault | None) -> bool:
            if fault is None:
                return False
            if fault.kind == "429":
                self._send_json(req, 429, {"message": "Too Many Requests"}, {"Retry-After": f"{fault.retry_after:g}"})
            elif fault.kind == "500":
                self._send_json(req, 500, {"message": "Internal Server Error"})
            elif fault.kind == "403_echo":
                self._send_json(req, 403, {"message": f"token {req.token} is not authorized for this file"})
            elif fault.kind == "redirect":
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{server.port}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                req.status = 302
            elif fault.kind == "slow" and not req.path.startswith("/data/"):
                time.sleep(fault.delay)
                return False
            else:
                return False
            return True

        def _request(self, method: str) -> Request:
            req = Request(method, urlsplit(self.path).path, self.headers.get("Range"), self.headers.get("X-Auth-Token"))
            server.log(req)
            return req

        def do_GET(self) -> None:  # noqa: N802
            req = self._request("GET")
            params = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
            self._route(req, params)

        def do_POST(self) -> None:  # noqa: N802
            req = self._request("POST")
            length = int(self.headers.get("Content-Length") or 0)
            try:
                params = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self._send_json(req, 400, {"message": "body is not JSON"})
            self._route(req, params)

        def _route(self, req: Request, params: dict[str, Any]) -> None:
            path = req.path.strip("/")
            if path == "_faults" and req.method == "POST":
                server.add_fault(**params)
                return self._send_json(req, 200, {"queued": params})
            if path == "_requests":
                return self._send_json(req, 200, [r.__dict__ for r in server.requests if r.path != "/_requests"])
            fault = server.take_fault(path)
            if self._common_fault(req, fault):
                return
            if path == "status":
                return self._send_json(req, 200, server.status)
            if path in ("files", "cases"):
                return self._query(req, path, params)
            if path.startswith("data/"):
                return self._data(req, path[len("data/"):], fault)
            self._send_json(req, 404, {"message": f"no endpoint {path}"})

        def _query(self, req: Request, endpoint: str, params: dict[str, Any]) -> None:
            req.body = params
            try:
                filters = params.get("filters") or {}
                if isinstance(filters, str):
                    filters = json.loads(filters)
                fields = params.get("fields") or []
                if isinstance(fields, str):
                    fields = [f for f in fields.split(",") if f]
                from_, size = int(params.get("from", 0)), int(params.get("size", 10))
                hits = [h for h in server.hits[endpoint] if match_filters(filters, h, endpoint)]
            except (ValueError, TypeError) as exc:
                return self._send_json(req, 400, {"message": f"bad query: {exc}"})
            page = paginate(hits, from_, size, params.get("sort") or None)
            page["hits"] = [project_fields(h, fields, endpoint) for h in page["hits"]]
            self._send_json(req, 200, {"data": page, "warnings": {}})

        def _data(self, req: Request, file_id: str, fault: Fault | None) -> None:
            hit = server.files.get(file_id)
            if hit is None:
                return self._send_json(req, 404, {"message": f"file {file_id} not found"})
            path = server.mirror / "data" / file_id / hit["file_name"]
            total = path.stat().st_size
            start, end = 0, total - 1
            kind = fault.kind if fault else None
            ranged = req.range is not None and kind != "ignore_range"
            if ranged:
                spec = req.range.split("=", 1)[1]
                a, _, b = spec.partition("-")
                start = int(a)
                end = int(b) if b else total - 1
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    req.status = 416
                    return
            length = end + 1 - start
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Content-Disposition", f"attachment; filename={hit['file_name']}")
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
            self.end_headers()
            self.wfile.flush()
            req.status = 206 if ranged else 200
            if kind == "slow":
                time.sleep(fault.delay)
            if kind == "cut":
                length = min(length, fault.after)
            try:
                with open(path, "rb") as fh:
                    if kind == "wrong":  # same length, the first bytes flipped
                        fh.seek(start)
                        body = bytearray(fh.read(length))
                        body[:64] = bytes(x ^ 0xFF for x in body[:64])
                        self.wfile.write(body)
                        req.bytes_sent = len(body)
                    else:  # zero-copy, in chunks so that bytes_sent is known if the client goes away
                        sock, offset, t0 = self.connection.fileno(), start, time.perf_counter()
                        while req.bytes_sent < length:
                            if server.rate:
                                time.sleep(max(0.0, t0 + req.bytes_sent / server.rate - time.perf_counter()))
                            n = os.sendfile(sock, fh.fileno(), offset, min(server.chunk_size, length - req.bytes_sent))
                            if n == 0:
                                break
                            offset += n
                            req.bytes_sent += n
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            if kind == "cut":  # the connection drops before Content-Length bytes were sent
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

    return Handler


def write_mirror(root: str | Path, files: list[tuple[dict[str, Any], bytes]], cases: list[dict[str, Any]],
                 data_release: str = "Data Release 0") -> Path:
    """Write a mirror in gdc-client layout: ``files`` are (hit, bytes); md5sum and file_size are filled in."""
    import hashlib

    root = Path(root)
    hits = []
    for hit, data in files:
        hit = {**hit, "id": hit["file_id"], "md5sum": hashlib.md5(data).hexdigest(), "file_size": len(data)}
        path = root / "data" / hit["file_id"] / hit["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        hits.append(hit)
    (root / "files.json").write_text(json.dumps(hits))
    (root / "cases.json").write_text(json.dumps([{**c, "id": c["case_id"]} for c in cases]))
    (root / "status.json").write_text(json.dumps({"data_release": data_release, "status": "OK"}))
    return root


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mirror")
    ap.add_argument("--chunk-size", type=int, default=1 << 20)
    ap.add_argument("--rate-mib", type=float, default=None, help="MiB/s per connection for /data bodies")
    a = ap.parse_args()
    rate = a.rate_mib * 2**20 if a.rate_mib else None
    with GDCServer(a.mirror, chunk_size=a.chunk_size if not rate else 1 << 18, rate=rate) as srv:
        print(srv.url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin
