"""Tile candidates sampled from the tissue mask, read at the target resolution, kept by HSV score."""

from __future__ import annotations

import heapq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import openslide
import pandas as pd
from imputmae.wsi._mask import TissueMask, _rgb, _transparent
from imputmae.wsi._slide import Slide, SlideError, TileSettings, _one_line

#: OpenCV hue range [lo, hi) (0-180) of marker ink among saturated pixels: green (~60-75) to blue (~105-118).
#: Measured on the CMU-1 H&E region (tests/test_wsi_real.py): saturated hematoxylin and eosin sit at 120-180 and
#: 0-10; no tissue tile there has more than 1.1% saturated pixels in this range, so a tile over
#: ``max_pen_fraction`` (2%) is ink, not dense nuclei. (A thin stroke averages out on the thumbnail.)
INK_HUE = (35, 120)
#: Candidates read per batch (bounds the tiles held in memory while the top ``keep`` are kept).
BATCH = 64


@dataclass
class Candidates:
    """Sampled tile positions. x, y: int64 ``[n]`` level-0 top-left corners; tissue_fraction, pen_fraction:
    float ``[n]`` of the footprint on the thumbnail; n_positions: thumbnail positions eligible; n_pen_rejected:
    positions with enough tissue but too much pen."""

    x: np.ndarray
    y: np.ndarray
    tissue_fraction: np.ndarray
    pen_fraction: np.ndarray
    n_positions: int
    n_pen_rejected: int


def _box_fraction(mask: np.ndarray, box: int) -> np.ndarray:
    """Fraction of ``mask`` in every ``box`` x ``box`` window: ``[h - box + 1, w - box + 1]``, from an integral
    image (entry (i, j) is the window whose top-left pixel is (i, j))."""
    ii = cv2.integral(mask.astype(np.uint8), sdepth=cv2.CV_32S)
    sums = ii[box:, box:] - ii[:-box, box:] - ii[box:, :-box] + ii[:-box, :-box]
    return sums / float(box * box)


def sample_candidates(tm: TissueMask, footprint: int, level0_size: tuple[int, int], n: int,
                      rng: np.random.Generator, min_tissue_fraction: float = 0.5,
                      max_pen_fraction: float = 0.02) -> Candidates:
    """Draw up to ``n`` tile positions from the tissue mask.

    A thumbnail position (top-left pixel of a ``round(footprint / downsample)`` box) is eligible when its box is
    at least ``min_tissue_fraction`` tissue and at most ``max_pen_fraction`` pen; ``n`` eligible positions are drawn
    without replacement (all of them when fewer), probability proportional to the tissue fraction, then each is
    placed in level-0 pixels with a uniform sub-pixel offset within its thumbnail pixel and clipped so the
    ``footprint`` (level-0 px) stays inside ``level0_size`` (width, height).
    """
    ds = tm.downsample
    box = max(1, round(footprint / ds))
    h, w = tm.mask.shape
    if box > h or box > w:
        empty = np.zeros(0)
        return Candidates(empty.astype(np.int64), empty.astype(np.int64), empty, empty, 0, 0)
    tissue = _box_fraction(tm.mask, box)
    pen = _box_fraction(tm.pen, box)
    enough = (tissue >= min_tissue_fraction) & (tissue > 0)
    eligible = enough & (pen <= max_pen_fraction)
    rows, cols = np.nonzero(eligible)
    k = min(n, rows.size)
    if k:
        p = tissue[rows, cols]
        pick = rng.choice(rows.size, size=k, replace=False, p=p / p.sum())
    else:
        pick = np.zeros(0, np.int64)
    rows, cols = rows[pick], cols[pick]
    jitter = rng.random((2, k))
    width, height = level0_size
    x = np.clip(np.floor((cols + jitter[0]) * ds), 0, max(0, width - footprint)).astype(np.int64)
    y = np.clip(np.floor((rows + jitter[1]) * ds), 0, max(0, height - footprint)).astype(np.int64)
    return Candidates(x=x, y=y, tissue_fraction=tissue[rows, cols], pen_fraction=pen[rows, cols],
                      n_positions=int(eligible.sum()), n_pen_rejected=int((enough & ~eligible).sum()))


def read_level_for(handle: openslide.OpenSlide, read_size: int, tile_size: int) -> tuple[int, int]:
    """The pyramid level to read a ``read_size`` (level-0 px) tile from, and the size to read there.

    The coarsest level whose downsample is an integer d (within 1e-6) dividing ``read_size`` with
    ``read_size / d >= tile_size`` (never upsampling; level 0 always qualifies). Returns (level, read_size / d).
    """
    best = (0, read_size)
    for level, ds in enumerate(handle.level_downsamples):
        d = round(ds)
        if d >= 1 and abs(ds - d) < 1e-6 and read_size % d == 0 and read_size // d >= tile_size:
            if read_size // d < best[1]:
                best = (level, read_size // d)
    return best


def read_tile(handle: openslide.OpenSlide, x: int, y: int, level: int, level_read_size: int,
              tile_size: int, opaque: bool = False) -> np.ndarray:
    """The ``level_read_size``-pixel square at level ``level`` whose top-left is (x, y) at level 0, as uint8
    ``[tile_size, tile_size, 3]`` RGB (``cv2.INTER_AREA`` when sizes differ); pixels outside the scanned area are
    white, unless ``opaque`` says the region has none (skips a check that costs a third of our per-tile work).
    Raises ``openslide.OpenSlideError``."""
    region = handle.read_region((int(x), int(y)), level, (level_read_size, level_read_size))
    rgb = _rgb(region, transparent=not opaque and _transparent(region))
    if level_read_size != tile_size:
        rgb = cv2.resize(rgb, (tile_size, tile_size), interpolation=cv2.INTER_AREA)
    return rgb


def hsv_score(tile: np.ndarray, s_min: int = 130, v_min: int = 40, v_max: int = 170,
              pen_saturation: int = 160) -> int:
    """Number of pixels of ``tile`` (uint8 ``[h, w, 3]`` RGB) with S > ``s_min``, ``v_min`` < V < ``v_max`` and
    S < ``pen_saturation`` (OpenCV HSV, 0-255): stained tissue, pen ink never counted."""
    return _measure(cv2.cvtColor(tile, cv2.COLOR_RGB2HSV), s_min, v_min, v_max, pen_saturation)[0]


def ink_fraction(tile: np.ndarray, pen_saturation: int = 160) -> float:
    """Fraction of ``tile`` (uint8 ``[h, w, 3]`` RGB) that is marker ink: S >= ``pen_saturation`` with a hue in
    :data:`INK_HUE` (green to blue). H&E's saturated pixels (dense hematoxylin, eosin) are purple to red and are
    not ink."""
    return _measure(cv2.cvtColor(tile, cv2.COLOR_RGB2HSV), 255, 0, 0, pen_saturation)[1]


def _measure(hsv: np.ndarray, s_min: int, v_min: int, v_max: int, pen_saturation: int) -> tuple[int, float]:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    score = int(np.count_nonzero((s > s_min) & (s < pen_saturation) & (v > v_min) & (v < v_max)))
    ink = np.count_nonzero((s >= pen_saturation) & (h >= INK_HUE[0]) & (h < INK_HUE[1])) / s.size
    return score, float(ink)


@dataclass
class TileSelection:
    """The kept tiles of one slide. tiles: uint8 ``[n, tile, tile, 3]`` best first; table: one row per kept tile
    (:data:`TILE_COLUMNS` less patient); candidates: what was sampled; level, level_read_size: where read;
    ink_rejected: indices of the candidates read and rejected for ink."""

    tiles: np.ndarray
    table: pd.DataFrame
    candidates: Candidates
    read_size: int
    level: int
    level_read_size: int
    ink_rejected: np.ndarray


def select_tiles(slide: Slide, tm: TissueMask, settings: TileSettings, progress: bool = False) -> TileSelection:
    """Sample ``settings.n_candidates`` positions on ``tm``, read them in ``settings.threads`` threads, reject those
    whose :func:`ink_fraction` exceeds ``max_pen_fraction`` (the thumbnail's pen mask already excluded wide
    strokes), keep the ``settings.keep`` best by :func:`hsv_score` (ties: earlier-drawn first). Same slide and
    seed, same tiles.

    Raises :class:`SlideError` on an OpenSlide read error.
    """
    st = settings
    read_size = max(1, round(st.tile_size * st.target_mpp / slide.mpp))
    handle = slide.handle
    cand = sample_candidates(tm, read_size, handle.dimensions, st.n_candidates, np.random.default_rng(st.seed),
                             st.min_tissue_fraction, st.max_pen_fraction)
    level, level_read = read_level_for(handle, read_size, st.tile_size)
    # Candidates lie inside the slide; a slide whose thumbnail read was all opaque has no holes to composite.
    opaque = not tm.transparent

    def read_and_score(i: int) -> tuple[int, float, np.ndarray]:
        tile = read_tile(handle, cand.x[i], cand.y[i], level, level_read, st.tile_size, opaque=opaque)
        hsv = cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)
        return *_measure(hsv, st.score_s_min, st.score_v_min, st.score_v_max, st.pen_saturation), tile

    heap: list[tuple[int, int, np.ndarray, float]] = []  # (score, -index, tile, ink): the smallest drops first
    ink_rejected: list[int] = []
    n = cand.x.size
    bar = _progress(n, f"{slide.name} tiles") if progress else None
    try:
        with ThreadPoolExecutor(max_workers=st.threads) as pool:
            for start in range(0, n, BATCH):
                for i, (score, ink, tile) in zip(range(start, min(n, start + BATCH)),
                                                 pool.map(read_and_score, range(start, min(n, start + BATCH)))):
                    if ink > st.max_pen_fraction:
                        ink_rejected.append(i)
                        continue
                    item = (score, -i, tile, ink)
                    if len(heap) < st.keep:
                        heapq.heappush(heap, item)
                    elif item[:2] > heap[0][:2]:
                        heapq.heapreplace(heap, item)
                if bar is not None:
                    bar.update(min(n, start + BATCH) - start)
    except openslide.OpenSlideError as exc:
        raise SlideError(f"read error: {_one_line(exc)}") from exc
    finally:
        if bar is not None:
            bar.close()
    best = sorted(heap, key=lambda t: (-t[0], -t[1]))
    idx = np.array([-b[1] for b in best], np.int64)
    tiles = (np.stack([b[2] for b in best]) if best
             else np.zeros((0, st.tile_size, st.tile_size, 3), np.uint8))
    table = pd.DataFrame({
        "slide": slide.name, "rank": np.arange(idx.size, dtype=np.int64), "candidate": idx,
        "x": cand.x[idx], "y": cand.y[idx], "level": level, "read_size": read_size,
        "level_read_size": level_read, "tile_size": st.tile_size, "mpp": slide.mpp,
        "hsv_score": np.array([b[0] for b in best], np.int64),
        "tissue_fraction": cand.tissue_fraction[idx].astype(np.float64),
        "pen_fraction": cand.pen_fraction[idx].astype(np.float64),
        "ink_fraction": np.array([b[3] for b in best], np.float64),
    })
    return TileSelection(tiles=tiles, table=table, candidates=cand, read_size=read_size, level=level,
                         level_read_size=level_read, ink_rejected=np.array(ink_rejected, np.int64))


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tile", leave=False)
