"""Download throughput of ``imputmae gdc download`` against curl, and bytes refetched when resuming.

Both clients fetch the same generated files from the loopback GDC server (tests/gdc_server.py, run in its own
process so that it competes with neither client for the GIL), in the same run, interleaved, best of ``--repeats``:

* curl: ``curl --parallel --parallel-max W`` writing each file (no verification);
* ours: :func:`imputmae.gdc.download_files` with W workers (streams to ``.part``, md5 + size check, rename).

Resume: a ``--big-mb`` file is (a) cut by the server at 40% (connection closed mid-body), then resumed: the
bytes the server sent in total minus the file size are the bytes refetched; (b) the client process is killed
(SIGKILL) mid-transfer and run again: the second run's Range offset must equal the ``.part`` length, and the
bytes the server sent beyond the file size are those that were in flight (socket buffers) when the client died.

    PYTHONPATH=src python benchmarks/bench_download.py            # ~180 MB of files in a temporary folder
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from gdc_server import write_mirror  # noqa: E402

from imputmae import gdc  # noqa: E402


def _server(mirror: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gdc_server.py"), str(mirror)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return proc, proc.stdout.readline().strip()


def _post(url: str, obj: dict) -> None:
    req = urllib.request.Request(url, json.dumps(obj).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()


def _sent(url: str, file_id: str) -> list[dict]:
    log = json.loads(urllib.request.urlopen(f"{url}/_requests").read())
    return [r for r in log if r["path"] == f"/data/{file_id}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-files", type=int, default=28)
    ap.add_argument("--size-mb", type=float, default=4.0)
    ap.add_argument("--big-mb", type=float, default=64.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    size = int(args.size_mb * 2**20)
    with tempfile.TemporaryDirectory(prefix="bench_download_") as tmp:
        tmp = Path(tmp)
        hits = [({"file_id": f"file{i:03d}", "file_name": f"f{i:03d}.bin"}, rng.bytes(size)) for i in range(args.n_files)]
        big = ({"file_id": "big", "file_name": "big.svs"}, rng.bytes(int(args.big_mb * 2**20)))
        mirror = write_mirror(tmp / "mirror", hits + [big], [])
        del hits, big
        rows = pd.DataFrame(json.loads((mirror / "files.json").read_text()))
        small = rows[rows["file_id"] != "big"][["file_id", "file_name", "md5sum", "file_size"]]
        total = int(small["file_size"].sum())
        proc, url = _server(mirror)
        try:
            t_curl, t_ours = [], []
            for r in range(args.repeats):
                out = tmp / f"curl{r}"
                out.mkdir()
                cmd = ["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(args.workers)]
                for fid in small["file_id"]:
                    cmd += ["-o", str(out / fid), f"{url}/data/{fid}"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
                t_curl.append(time.perf_counter() - t0)
                assert sum(p.stat().st_size for p in out.iterdir()) == total
                t0 = time.perf_counter()
                rep = gdc.download_files(small, tmp / f"ours{r}", gdc.HttpTransport(url), workers=args.workers,
                                         progress=False)
                t_ours.append(time.perf_counter() - t0)
                assert (rep["status"] == "downloaded").all(), rep
                for d in (out, tmp / f"ours{r}"):
                    subprocess.run(["rm", "-rf", str(d)], check=True)
            mbps = lambda t: total / 2**20 / t  # noqa: E731
            ratio = min(t_curl) / min(t_ours)
            print(f"throughput, {args.n_files} files x {args.size_mb:g} MiB, {args.workers} workers, best of "
                  f"{args.repeats}: curl {mbps(min(t_curl)):.0f} MiB/s, imputmae {mbps(min(t_ours)):.0f} MiB/s "
                  f"(md5 verified) -> ratio {ratio:.2f}x (goal >= 0.8x)")

            # (a) connection cut by the server at 40%, resumed with Range
            bigrow = rows[rows["file_id"] == "big"][["file_id", "file_name", "md5sum", "file_size"]]
            bsize = int(bigrow["file_size"].iloc[0])
            _post(f"{url}/_faults", {"target": "data/big", "kind": "cut", "after": int(0.4 * bsize)})
            rep = gdc.download_files(bigrow, tmp / "cut", gdc.HttpTransport(url), workers=1, progress=False,
                                     backoff_s=0.0)
            assert rep["status"].iloc[0] == "downloaded"
            sent = sum(r["bytes_sent"] for r in _sent(url, "big"))
            print(f"resume after a cut connection: server sent {sent} bytes for a {bsize}-byte file: "
                  f"refetched {sent - bsize} bytes ({100 * (sent - bsize) / bsize:.3f}%, goal < 1%)")

            # (b) the client killed mid-transfer, then run again
            man = tmp / "big.tsv"
            bigrow.rename(columns={"file_id": "id", "file_name": "filename", "md5sum": "md5",
                                   "file_size": "size"}).to_csv(man, sep="\t", index=False)
            cli = [sys.executable, "-m", "imputmae", "gdc", "download", str(man), "--api", url, "--dest",
                   str(tmp / "kill"), "--report", str(tmp / "kill.tsv"), "--no-progress", "--workers", "1"]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            n_before = len(_sent(url, "big"))
            victim = subprocess.Popen(cli, env=env, stderr=subprocess.DEVNULL)
            part = tmp / "kill" / "big" / "big.svs.part"
            while not part.exists() or part.stat().st_size < 0.4 * bsize:
                time.sleep(0.002)
                if victim.poll() is not None:
                    raise SystemExit("the client finished before it could be killed; use a bigger --big-mb")
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kept = part.stat().st_size
            subprocess.run(cli, env=env, check=True, stderr=subprocess.DEVNULL)
            reqs = _sent(url, "big")[n_before:]
            report = pd.read_csv(tmp / "kill.tsv", sep="\t")
            assert report["status"].iloc[0] == "downloaded" and reqs[-1]["range"] == f"bytes={kept}-"
            sent = sum(r["bytes_sent"] for r in reqs)
            fetched2 = int(report["bytes_fetched"].iloc[0])
            print(f"resume after SIGKILL at {100 * kept / bsize:.0f}%: second run asked Range bytes={kept}- and "
                  f"fetched {fetched2} bytes (= size - kept: {fetched2 == bsize - kept}); the client refetched "
                  f"{kept + fetched2 - bsize} bytes (0.000%); the server sent {sent - bsize} bytes more than the "
                  f"file ({100 * (sent - bsize) / bsize:.3f}%): in flight in socket buffers when the client died")
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
