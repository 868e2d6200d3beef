"""Tile selection speed and memory on a 100,000 x 80,000 px pyramidal Aperio slide.

    PYTHONPATH=src python benchmarks/bench_tiles.py [--width 100000 --height 80000] [--threads 2] [--repeats 3]

1. Writes the slide to a temporary folder (deleted at the end): 40x (0.25 um/px), JPEG tiles of 256 px, levels
   1, 4, 16, 64 like an Aperio scanner; mostly glass with elliptic tissue blobs. Tiles are JPEG-encoded once per
   kind (glass, a pool of tissue textures) and streamed to tifffile as encoded bytes, so writing takes a minute
   and a few hundred MB of disk, and never holds a level in memory.
2. Time: our whole per-patient selection (``tile_patient``: open, thumbnail and Otsu mask, 1,000 candidates, reads,
   resize, HSV score, top 100) against bare OpenSlide ``read_region`` of the same 1,000 regions (same level, size
   and thread count, fresh handle, nothing else), alternating, ``--repeats`` times each; prints min seconds and
   the ratio (goal <= 1.3), in wall-clock and in CPU time (the latter steadier on a shared machine).
3. Memory: peak RSS (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``) of ``imputmae wsi tiles`` on the slide
   in a fresh subprocess, all four outputs written (goal < 1 GiB); and, for scale, of a subprocess that only
   imports our modules.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import openslide
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imputmae import wsi  # noqa: E402
from imputmae.svs import aperio_description  # noqa: E402

TILE = 256
QUALITY = 85
GLASS = np.array([238, 236, 240], np.float32)
EOSIN = np.array([228, 150, 190], np.float32)
NUCLEUS = (120, 70, 150)
# Tissue blobs: (cx, cy, rx, ry) as fractions of width and height; about 10% of the slide is tissue.
BLOBS = [(0.3, 0.35, 0.12, 0.14), (0.62, 0.55, 0.1, 0.18), (0.45, 0.8, 0.07, 0.06)]


def _textures(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` tissue tiles [256, 256, 3]: eosin with nuclei at random densities."""
    out = []
    for _ in range(n):
        t = np.empty((TILE, TILE, 3), np.uint8)
        t[:] = EOSIN
        density = rng.uniform(0.1, 1.0)
        for x, y in rng.integers(0, TILE, size=(int(400 * density), 2)):
            cv2.circle(t, (int(x), int(y)), 3, NUCLEUS, -1)
        noise = rng.integers(-4, 5, size=t.shape, dtype=np.int16)
        out.append(np.clip(t.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return out


def _coverage(x0: float, y0: float, step: float, width: int, height: int) -> np.ndarray:
    """Tissue (1) or glass (0) for the 256 x 256 pixels of a tile whose top-left is (x0, y0) in level-0 px and
    whose pixels are ``step`` level-0 px apart."""
    xs = (x0 + step * (np.arange(TILE) + 0.5)) / width
    ys = (y0 + step * (np.arange(TILE) + 0.5)) / height
    inside = np.zeros((TILE, TILE), bool)
    for cx, cy, rx, ry in BLOBS:
        inside |= ((xs[None, :] - cx) / rx) ** 2 + ((ys[:, None] - cy) / ry) ** 2 <= 1
    return inside


def _quick_kind(x0: float, y0: float, w: float, h: float) -> str:
    """"glass" when the tile (fractions of the slide) misses every blob's bounding box, "tissue" when its four
    corners are inside one blob (an ellipse is convex), else "edge"."""
    near = False
    for cx, cy, rx, ry in BLOBS:
        if x0 + w < cx - rx or x0 > cx + rx or y0 + h < cy - ry or y0 > cy + ry:
            continue
        near = True
        corners = [(x0, y0), (x0 + w, y0), (x0, y0 + h), (x0 + w, y0 + h)]
        if all(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1 for x, y in corners):
            return "tissue"
    return "edge" if near else "glass"


def _tile_bytes(width: int, height: int, ds: int, textures: list[np.ndarray], glass: bytes):
    """Encoded tiles of the level with downsample ``ds``, row by row: glass tiles share one encoding, tissue tiles
    inside a blob come from the texture pool, edge tiles are composed and encoded on the fly."""
    lw, lh = -(-width // ds), -(-height // ds)
    encoded = [imagecodecs.jpeg_encode(t, level=QUALITY) for t in textures]
    glass_tile = np.broadcast_to(GLASS.astype(np.uint8), (TILE, TILE, 3))
    k = 0
    span = TILE * ds
    for ty in range(-(-lh // TILE)):
        for tx in range(-(-lw // TILE)):
            k += 1
            x0, y0 = tx * span, ty * span
            kind = _quick_kind(x0 / width, y0 / height, span / width, span / height)
            if kind == "glass":
                yield glass
            elif kind == "tissue":
                yield encoded[k % len(encoded)]
            else:
                inside = _coverage(x0, y0, ds, width, height)
                tile = np.where(inside[..., None], textures[k % len(textures)], glass_tile)
                yield imagecodecs.jpeg_encode(np.ascontiguousarray(tile), level=QUALITY)


def write_big_slide(path: Path, width: int, height: int, levels=(1, 4, 16, 64), seed: int = 0) -> Path:
    """A pyramidal Aperio SVS (40x, 0.25 um/px) of ``width`` x ``height`` px written tile by tile."""
    rng = np.random.default_rng(seed)
    textures = _textures(32, rng)
    glass = imagecodecs.jpeg_encode(np.ascontiguousarray(np.broadcast_to(GLASS.astype(np.uint8), (TILE, TILE, 3))),
                                    level=QUALITY)
    opts = dict(photometric="rgb", compression="jpeg", compressionargs={"level": QUALITY}, metadata=None,
                software=False)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, ds in enumerate(levels):
            lw, lh = -(-width // ds), -(-height // ds)
            desc = (aperio_description(width, height, TILE, 40, 0.25, QUALITY) if i == 0
                    else f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> {lw}x{lh}")
            tif.write(_tile_bytes(width, height, ds, textures, glass), shape=(lh, lw, 3), dtype=np.uint8,
                      tile=(TILE, TILE), description=desc, **opts)
            if i == 0:  # Aperio's stripped thumbnail as the second directory
                scale = 768 / max(width, height)
                tw, th = round(width * scale), round(height * scale)
                thumb = np.empty((th, tw, 3), np.uint8)
                yy, xx = np.mgrid[0:th, 0:tw]
                inside = np.zeros((th, tw), bool)
                for cx, cy, rx, ry in BLOBS:
                    inside |= (((xx + 0.5) / tw - cx) / rx) ** 2 + (((yy + 0.5) / th - cy) / ry) ** 2 <= 1
                thumb[:] = GLASS.astype(np.uint8)
                thumb[inside] = EOSIN.astype(np.uint8)
                tif.write(thumb, description=f"Aperio Image Library v12.0.15 \r\n{width}x{height} -> {tw}x{th}",
                          rowsperstrip=16, **opts)
    return path


def bare_reads(path: Path, xs, ys, level: int, size: int, threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds to read the regions with a fresh OpenSlide handle and nothing else."""
    t0, c0 = time.perf_counter(), time.process_time()
    handle = openslide.OpenSlide(path)

    def read(i: int) -> None:
        handle.read_region((int(xs[i]), int(ys[i])), level, (size, size))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(read, range(len(xs))))
    handle.close()
    return time.perf_counter() - t0, time.process_time() - c0


def peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``cmd`` run as a child process (ru_maxrss is in KiB on Linux)."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=100_000)
    ap.add_argument("--height", type=int, default=80_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tmp", default=None, help="folder for the temporary slide (default: the system's)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_tiles_", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        slide = write_big_slide(tmp / "big.svs", args.width, args.height)
        print(f"slide: {args.width} x {args.height} px, 40x, levels 1/4/16/64, {slide.stat().st_size / 2**20:.0f} MiB, "
              f"written in {time.perf_counter() - t0:.0f} s")
        st = wsi.TileSettings(n_candidates=1000, keep=100, threads=args.threads)
        ours, bare, ours_cpu, bare_cpu = [], [], [], []
        for r in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            res = wsi.tile_patient([slide], "BENCH", st)
            ours.append(time.perf_counter() - t0)
            ours_cpu.append(time.process_time() - c0)
            assert res.qc["status"] == "ok", res.qc
            sel = res.selection
            wall, cpu = bare_reads(slide, sel.candidates.x, sel.candidates.y, sel.level, sel.level_read_size,
                                   args.threads)
            bare.append(wall)
            bare_cpu.append(cpu)
        n = sel.candidates.x.size
        print(f"candidates read: {n} regions of {sel.level_read_size} px at level {sel.level} "
              f"(read_size {sel.read_size} level-0 px -> {st.tile_size}), threads {args.threads}")
        print(f"thumbnail: level {res.mask.level}, downsample {res.mask.downsample:g}, {res.mask.mask.shape[1]} x "
              f"{res.mask.mask.shape[0]} px")
        print(f"ours (tile_patient, whole selection): min {min(ours):.2f} s  ({', '.join(f'{t:.2f}' for t in ours)})")
        print(f"bare OpenSlide read_region, same regions: min {min(bare):.2f} s  "
              f"({', '.join(f'{t:.2f}' for t in bare)})")
        print(f"CPU seconds (all threads): ours min {min(ours_cpu):.2f}, bare min {min(bare_cpu):.2f}")
        print(f"ratio ours / bare reads: wall {min(ours) / min(bare):.2f}, CPU {min(ours_cpu) / min(bare_cpu):.2f} "
              f"(goal <= 1.3)")
        rss, secs = peak_rss_mib([sys.executable, "-m", "imputmae", "wsi", "tiles", str(slide), "--out",
                                  str(tmp / "BENCH"), "--threads", str(args.threads), "--no-progress"])
        base, _ = peak_rss_mib([sys.executable, "-c", "import imputmae.wsi, imputmae.cli.wsi, pyarrow.parquet"])
        print(f"peak RSS, imputmae wsi tiles on the slide (all outputs written, {secs:.1f} s): {rss:.0f} MiB "
              f"(goal < 1024); imports alone: {base:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
