"""Download throughput of ``imputmae gdc download`` against curl, and bytes refetched when resuming.

Throughput is measured twice: with the server pacing each connection (``--rate-mib``, as a network does; the
usual case against the GDC) and at loopback speed (where the CPU, not the network, is the limit, and our md5
verification, which curl does not do, costs CPU time). Both clients fetch the same generated files from the loopback GDC server (tests/gdc_server.py, run in its own
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
import resource
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


def _server(mirror: Path, rate_mib: float | None = None) -> tuple[subprocess.Popen, str]:
    extra = ["--rate-mib", str(rate_mib)] if rate_mib else []
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "gdc_server.py"), str(mirror), *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return proc, proc.stdout.readline().strip()


def _post(url: str, obj: dict) -> None:
    req = urllib.request.Request(url, json.dumps(obj).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()


def _sent(url: str, file_id: str) -> list[dict]:
    log = json.loads(urllib.request.urlopen(f"{url}/_requests").read())
    return [r for r in log if r["path"] == f"/data/{file_id}"]


def _throughput(url: str, small: pd.DataFrame, tmp: Path, workers: int, repeats: int, label: str) -> None:
    """curl vs imputmae on the same files from the same server, interleaved, best of ``repeats``."""
    total = int(small["file_size"].sum())
    t_curl, t_ours, t_verified, cpu_curl, cpu_ours = [], [], [], [], []
    for r in range(repeats):
        out = tmp / f"curl{r}"
        out.mkdir()
        cmd = ["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(workers)]
        for fid in small["file_id"]:
            cmd += ["-o", str(out / fid), f"{url}/data/{fid}"]
        c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
        t_curl.append(time.perf_counter() - t0)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_curl.append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
        assert sum(p.stat().st_size for p in out.iterdir()) == total
        # the like-for-like reference: curl, then md5sum over the files (what verification adds)
        subprocess.run(["md5sum", *map(str, out.iterdir())], check=True, stdout=subprocess.DEVNULL)
        t_verified.append(time.perf_counter() - t0)
        c0, t0 = os.times(), time.perf_counter()
        rep = gdc.download_files(small, tmp / f"ours{r}", gdc.HttpTransport(url), workers=workers, progress=False)
        t_ours.append(time.perf_counter() - t0)
        c1 = os.times()
        cpu_ours.append(c1.user + c1.system - c0.user - c0.system)
        assert (rep["status"] == "downloaded").all(), rep
        for d in (out, tmp / f"ours{r}"):
            subprocess.run(["rm", "-rf", str(d)], check=True)
    mibps = lambda t: total / 2**20 / t  # noqa: E731
    gib = total / 2**30
    print(f"throughput, {label}, {len(small)} files x {small['file_size'].iloc[0] / 2**20:g} MiB, {workers} workers, "
          f"best of {repeats} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}): curl {mibps(min(t_curl)):.0f} "
          f"MiB/s, imputmae {mibps(min(t_ours)):.0f} MiB/s (md5 verified) -> ratio {min(t_curl) / min(t_ours):.2f}x "
          f"(goal >= 0.8x)")
    print(f"  like for like: curl + md5sum {mibps(min(t_verified)):.0f} MiB/s -> ratio "
          f"{min(t_verified) / min(t_ours):.2f}x; client CPU per GiB: curl {min(cpu_curl) / gib:.2f} s, "
          f"imputmae {min(cpu_ours) / gib:.2f} s (md5 included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-files", type=int, default=28)
    ap.add_argument("--size-mb", type=float, default=4.0)
    ap.add_argument("--big-mb", type=float, default=64.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate-mib", type=float, default=20.0,
                    help="per-connection pace of the second throughput run (a network, not loopback)")
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
        cols = ["file_id", "file_name", "md5sum", "file_size"]
        small = rows.loc[rows["file_id"] != "big", cols]
        paced, paced_url = _server(mirror, args.rate_mib)
        try:
            _throughput(paced_url, small, tmp, args.workers, 1, f"server paced at {args.rate_mib:g} MiB/s per connection")
        finally:
            paced.stdin.close()
            paced.wait(timeout=10)
        proc, url = _server(mirror)
        try:
            _throughput(url, small, tmp, args.workers, args.repeats, "loopback at full speed")

            # (a) connection cut by the server at 40%, resumed with Range
            bigrow = rows.loc[rows["file_id"] == "big", cols]
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
                  f"{kept + fetched2 - bsize} bytes ({100 * (kept + fetched2 - bsize) / bsize:.3f}%); the server sent {sent - bsize} bytes more than the "
                  f"file ({100 * (sent - bsize) / bsize:.3f}%): in flight in socket buffers when the client died")
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
