"""Whole-slide images: slide choice, Otsu tissue mask, HSV tile selection, QC picture.

The method and its decisions: docs/design.md, ``imputmae.wsi``.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
import pandas as pd
from PIL import Image

__all__ = [
    "TileSettings", "SlideError", "Slide", "open_slide", "TissueMask", "tissue_mask", "Candidates",
    "sample_candidates", "read_level_for", "read_tile", "hsv_score", "ink_fraction", "TileSelection",
    "select_tiles",
    "PatientTiles", "tile_patient", "draw_qc", "TILE_COLUMNS", "QC_COLUMNS",
]

log = logging.getLogger(__name__)

#: Otsu classes closer than this (mean saturation, 0-255) mean glass only: "no tissue". H&E tissue sits 50-150
#: above the background; JPEG noise on blank glass gives 2-6.
MIN_SEPARATION = 15.0
#: Thumbnail reads go by strips of at most this many bytes (RGBA) at the level read.
STRIP_BYTES = 32 * 2**20
#: OpenCV hue range [lo, hi) (0-180) of marker ink among saturated pixels: green (~60-75) to blue (~105-118).
#: Measured on the CMU-1 H&E region (tests/test_wsi_real.py): saturated hematoxylin and eosin sit at 120-180 and
#: 0-10; no tissue tile there has more than 1.1% saturated pixels in this range, so a tile over
#: ``max_pen_fraction`` (2%) is ink, not dense nuclei. (A thin stroke averages out on the thumbnail.)
INK_HUE = (35, 120)
#: Candidates read per batch (bounds the tiles held in memory while the top ``keep`` are kept).
BATCH = 64

TILE_COLUMNS = ["patient", "slide", "rank", "candidate", "x", "y", "level", "read_size", "level_read_size",
                "tile_size", "mpp", "hsv_score", "tissue_fraction", "pen_fraction", "ink_fraction"]
QC_COLUMNS = ["patient", "slide", "status", "n_tiles", "mpp", "mpp_source", "tissue_area_um2", "n_slides",
              "slides"]


@dataclass(frozen=True)
class TileSettings:
    """The ``wsi:`` section of the configuration (same names, same defaults as config.yaml)."""

    tile_size: int = 256
    target_mpp: float = 0.5
    default_mpp: float | None = None
    thumbnail_downsample: int = 32
    pen_saturation: int = 160
    median_blur: int = 9
    min_tissue_fraction: float = 0.5
    max_pen_fraction: float = 0.02
    n_candidates: int = 1000
    keep: int = 100
    score_s_min: int = 130
    score_v_min: int = 40
    score_v_max: int = 170
    threads: int = 4
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TileSettings:
        """Settings from a mapping with a subset of the fields; an unknown key is a ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown wsi setting(s) {unknown}; allowed: {sorted(names)}")
        return cls(**dict(values))


class SlideError(Exception):
    """A slide that cannot be used (unopenable, unreadable, no mpp); ``str(exc)`` is the QC reason."""


@dataclass
class Slide:
    """An opened slide and its resolution. ``mpp``: microns per level-0 pixel; ``mpp_source``: where it came from."""

    path: Path
    handle: openslide.OpenSlide
    mpp: float
    mpp_source: str

    @property
    def name(self) -> str:
        return self.path.name

    def close(self) -> None:
        self.handle.close()


def open_slide(path: str | Path, default_mpp: float | None = None) -> Slide:
    """Open ``path`` with OpenSlide and find its level-0 resolution.

    mpp from ``openslide.mpp-x``; else 10 / ``openslide.objective-power`` (Aperio ``AppMag``: 20x -> 0.5,
    40x -> 0.25); else ``default_mpp`` with a warning. Raises :class:`SlideError` when the file is missing, is not a
    slide OpenSlide reads, or has no resolution and no default.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError("cannot open: file not found")
    try:
        handle = openslide.OpenSlide(path)
    except openslide.OpenSlideError as exc:  # includes OpenSlideUnsupportedFormatError
        raise SlideError(f"cannot open: {_one_line(exc) or type(exc).__name__}") from exc
    props = handle.properties
    mpp = _positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
    source = openslide.PROPERTY_NAME_MPP_X
    if mpp is None:
        power = _positive_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER) or props.get("aperio.AppMag"))
        if power is not None:
            mpp, source = 10.0 / power, f"objective power {power:g}x"
    if mpp is None and default_mpp is not None:
        log.warning("%s: neither %s nor an objective power; using wsi.default_mpp = %g", path.name,
                    openslide.PROPERTY_NAME_MPP_X, default_mpp)
        mpp, source = float(default_mpp), "default_mpp"
    if mpp is None:
        handle.close()
        raise SlideError("no mpp: the slide has neither openslide.mpp-x nor an objective power (AppMag); "
                         "set wsi.default_mpp to use it")
    return Slide(path=path, handle=handle, mpp=mpp, mpp_source=source)


def _positive_float(value: str | None) -> float | None:
    try:
        x = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return x if math.isfinite(x) and x > 0 else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


@dataclass
class TissueMask:
    """The tissue mask of a slide and the thumbnail it was computed on.

    mask: bool ``[h, w]`` tissue (after pen removal, blur, Otsu, cleanup); thumb: uint8 ``[h, w, 3]`` RGB;
    pen: bool ``[h, w]`` pen ink (S >= pen_saturation); downsample: level-0 pixels per thumbnail pixel;
    level: the pyramid level read; threshold: Otsu's threshold on blurred S; separation: the Otsu class means'
    difference; reason: None, or why there is no tissue; transparent: whether the level read has pixels outside
    the scanned area (alpha < 255): then tile reads composite over white, else they skip that check.
    """

    mask: np.ndarray
    thumb: np.ndarray
    pen: np.ndarray
    downsample: float
    level: int
    threshold: float
    separation: float
    reason: str | None = None
    transparent: bool = False

    def tissue_area_um2(self, mpp: float) -> float:
        """Tissue area in square microns: mask pixels x downsample^2 x mpp^2."""
        return float(self.mask.sum()) * (self.downsample * mpp) ** 2


def _transparent(region: Image.Image) -> bool:
    """Whether some pixel of OpenSlide's RGBA image is outside the scanned area (alpha < 255)."""
    return region.getchannel("A").getextrema()[0] < 255


def _rgb(region: Image.Image, transparent: bool) -> np.ndarray:
    """OpenSlide's RGBA PIL image as uint8 ``[h, w, 3]`` RGB, composited over white when ``transparent``.
    (PIL's own conversion: three times faster than slicing a numpy copy of the RGBA.)"""
    if transparent:
        region = Image.alpha_composite(Image.new("RGBA", region.size, (255, 255, 255, 255)), region)
    return np.asarray(region.convert("RGB"))


def _thumbnail_level(level_downsamples: Sequence[float], downsample: float) -> tuple[int, int]:
    """(level, integer reduction factor) for a thumbnail at about ``downsample`` (see :func:`_read_thumbnail`)."""
    ds = [float(d) for d in level_downsamples]
    level = min(range(len(ds)), key=lambda i: (round(abs(math.log2(ds[i] / downsample)), 2), -ds[i]))
    return level, max(1, round(downsample / ds[level]))


def _read_thumbnail(handle: openslide.OpenSlide, downsample: float) -> tuple[np.ndarray, float, int, bool]:
    """RGB thumbnail ``[h, w, 3]`` at about ``downsample``: the pyramid level nearest it (in log scale; a tie goes
    to the coarser level, cheaper to read), reduced by the integer factor ``round(downsample / level downsample)``
    with ``INTER_AREA`` strip by strip (at most :data:`STRIP_BYTES` read at once; a one-level slide is read in
    strips of level 0). Returns (thumb, downsample, level, whether any pixel read was transparent).
    """
    level, factor = _thumbnail_level(handle.level_downsamples, downsample)
    level_ds = float(handle.level_downsamples[level])
    lw, lh = handle.level_dimensions[level]
    tw, th = lw // factor, lh // factor
    if tw == 0 or th == 0:
        raise SlideError(f"slide too small for a {downsample:g}x thumbnail ({lw}x{lh} px at level {level})")
    out_rows = max(1, STRIP_BYTES // (4 * lw * factor))
    thumb = np.empty((th, tw, 3), np.uint8)
    any_transparent = False
    for r0 in range(0, th, out_rows):
        r1 = min(th, r0 + out_rows)
        y_level = r0 * factor
        region = handle.read_region((0, round(y_level * level_ds)), level, (tw * factor, (r1 - r0) * factor))
        transparent = _transparent(region)
        any_transparent |= transparent
        strip = _rgb(region, transparent)
        thumb[r0:r1] = strip if factor == 1 else cv2.resize(strip, (tw, r1 - r0), interpolation=cv2.INTER_AREA)
    return thumb, level_ds * factor, level, any_transparent


def tissue_mask(handle: openslide.OpenSlide, downsample: float = 32, pen_saturation: int = 160,
                median_blur: int = 9, min_area: float = 0.5 * 256**2,
                min_separation: float = MIN_SEPARATION) -> TissueMask:
    """Otsu tissue mask on the saturation of a thumbnail at about ``downsample`` x.

    Pen pixels (S >= ``pen_saturation``) are set to S = 0 (background) before the median blur (kernel
    ``median_blur``) and Otsu's threshold (``cv2.THRESH_OTSU``); tissue is blurred S > threshold and not pen. Then
    connected tissue components smaller than ``min_area`` (level-0 pixels; :func:`tile_patient` passes half a tile
    footprint: a speck that cannot hold half a tile) are removed and background components (holes) smaller than
    that, not touching the border, are filled (8-connectivity, at least 4 thumbnail pixels). When the two Otsu classes'
    mean saturations differ by less than ``min_separation`` or nothing is left, the mask is empty and ``reason``
    says "no tissue". Never reads level 0 whole (see :func:`_read_thumbnail`).

    Raises :class:`SlideError` when OpenSlide fails to read the slide.
    """
    try:
        thumb, ds, level, transparent = _read_thumbnail(handle, downsample)
    except openslide.OpenSlideError as exc:
        raise SlideError(f"read error: {_one_line(exc)}") from exc
    s = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[..., 1]
    pen = s >= pen_saturation
    s = np.where(pen, 0, s).astype(np.uint8)
    blurred = cv2.medianBlur(s, median_blur)
    threshold, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = blurred > threshold
    low, high = blurred[~mask], blurred[mask]
    mask &= ~pen  # the blur closes thin strokes over tissue; ink stays background
    separation = float(high.mean() - low.mean()) if high.size and low.size else 0.0
    reason = None
    if separation < min_separation:
        mask[:] = False
        reason = f"no tissue (Otsu classes {separation:.1f} saturation levels apart, < {min_separation:g})"
    else:
        area = max(4, round(min_area / ds**2))
        mask = _remove_small(mask, area)
        mask = ~_remove_small(~mask, area, keep_border=True)
        if not mask.any():
            reason = f"no tissue (no tissue region of {area} thumbnail pixels or more)"
    return TissueMask(mask=mask, thumb=thumb, pen=pen, downsample=ds, level=level, threshold=float(threshold),
                      separation=separation, reason=reason, transparent=transparent)


def _remove_small(mask: np.ndarray, min_area: int, keep_border: bool = False) -> np.ndarray:
    """``mask`` without its 8-connected components smaller than ``min_area`` (those touching the border kept when
    ``keep_border``: background reaching the border is not a hole)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA]
    keep = area >= min_area
    if keep_border:
        h, w = mask.shape
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        keep |= (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    keep[0] = False  # label 0 is the complement
    return keep[labels]


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


@dataclass
class PatientTiles:
    """Tiles of one patient. tiles: uint8 ``[n, tile, tile, 3]`` (n = keep when status is ``ok``, fewer else);
    table: :data:`TILE_COLUMNS`; qc: one row of :data:`QC_COLUMNS`; slides: one row per slide given (slide,
    status, mpp, mpp_source, tissue_area_um2, n_tiles, chosen); mask: the chosen (or best-ranked) slide's
    :class:`TissueMask`, None when no slide could be read."""

    tiles: np.ndarray
    table: pd.DataFrame
    qc: dict[str, Any]
    slides: pd.DataFrame
    mask: TissueMask | None = None
    selection: TileSelection | None = None
    settings: TileSettings = field(default_factory=TileSettings)


def tile_patient(paths: Sequence[str | Path], patient: str, settings: TileSettings = TileSettings(),
                 progress: bool = False, unavailable: Sequence[tuple[str, str]] = ()) -> PatientTiles:
    """Choose a patient's slide and select its tiles (module docstring, steps 1-5).

    Each slide is opened and masked; unusable ones are recorded with their reason. Slides with tissue are tried
    by decreasing tissue area (um^2); the first that yields ``keep`` tiles is chosen; when none does, the one
    with most tiles is, with status ``only N tiles``. No usable slide: no tiles, status the reason (one slide) or
    ``no usable slide`` with every slide's reason in ``slides``. ``unavailable``: (file name, reason) of the
    patient's slides that never reached us (a failed download), recorded in ``slides`` like unusable ones.
    """
    st = settings
    rows: list[dict[str, Any]] = []
    masked: list[tuple[float, int, Slide, TissueMask]] = []
    best_failed_mask: TissueMask | None = None
    for order, p in enumerate(paths):
        row = {"slide": Path(p).name, "status": None, "mpp": math.nan, "mpp_source": "",
               "tissue_area_um2": math.nan, "n_tiles": 0, "chosen": False}
        rows.append(row)
        try:
            slide = open_slide(p, st.default_mpp)
        except SlideError as exc:
            row["status"] = str(exc)
            log.warning("%s: %s: %s", patient, row["slide"], exc)
            continue
        row.update(mpp=slide.mpp, mpp_source=slide.mpp_source)
        footprint = st.tile_size * st.target_mpp / slide.mpp  # level-0 px
        try:
            tm = tissue_mask(slide.handle, st.thumbnail_downsample, st.pen_saturation, st.median_blur,
                             min_area=0.5 * footprint**2)
        except SlideError as exc:
            row["status"] = str(exc)
            log.warning("%s: %s: %s", patient, row["slide"], exc)
            slide.close()
            continue
        row["tissue_area_um2"] = tm.tissue_area_um2(slide.mpp)
        if tm.reason is not None:
            row["status"] = tm.reason
            if best_failed_mask is None:
                best_failed_mask = tm
            slide.close()
            continue
        masked.append((row["tissue_area_um2"], order, slide, tm))
    for name, reason in unavailable:
        rows.append({"slide": name, "status": reason, "mpp": math.nan, "mpp_source": "",
                     "tissue_area_um2": math.nan, "n_tiles": 0, "chosen": False})

    masked.sort(key=lambda t: (-t[0], t[1]))
    chosen: tuple[int, Slide, TissueMask, TileSelection] | None = None
    for area, order, slide, tm in masked:
        row = rows[order]
        if chosen is not None and chosen[3].tiles.shape[0] >= st.keep:
            row["status"] = "not chosen (less tissue)"
            continue
        try:
            sel = select_tiles(slide, tm, st, progress=progress)
        except SlideError as exc:
            row["status"] = str(exc)
            log.warning("%s: %s: %s", patient, row["slide"], exc)
            continue
        row["n_tiles"] = int(sel.tiles.shape[0])
        row["status"] = "ok" if row["n_tiles"] >= st.keep else f"only {row['n_tiles']} tiles"
        if chosen is None or row["n_tiles"] > chosen[3].tiles.shape[0]:
            if chosen is not None:
                rows[chosen[0]]["status"] += "; not chosen (fewer tiles)"
            chosen = (order, slide, tm, sel)
        else:
            row["status"] += "; not chosen (fewer tiles)"
    for _, _, slide, _ in masked:
        slide.close()

    slides = pd.DataFrame(rows, columns=["slide", "status", "mpp", "mpp_source", "tissue_area_um2", "n_tiles",
                                         "chosen"])
    summary = "; ".join(f"{r['slide']}: {_fmt_area(r['tissue_area_um2'])}{r['status']}" for r in rows)
    if chosen is not None and chosen[3].tiles.shape[0] > 0:
        order, slide, tm, sel = chosen
        slides.loc[order, "chosen"] = True
        n = int(sel.tiles.shape[0])
        status = "ok" if n >= st.keep else f"only {n} tiles"
        table = sel.table.assign(patient=patient)[TILE_COLUMNS]
        qc = dict(patient=patient, slide=slide.name, status=status, n_tiles=n, mpp=slide.mpp,
                  mpp_source=slide.mpp_source, tissue_area_um2=rows[order]["tissue_area_um2"],
                  n_slides=len(rows), slides=summary)
        return PatientTiles(sel.tiles, table, qc, slides, tm, sel, st)
    if len(rows) == 1:
        status = rows[0]["status"]
    elif not rows:
        status = "no slide"
    else:
        status = f"no usable slide ({len(rows)} slides)"
    mask = masked[0][3] if masked else best_failed_mask
    one = rows[0] if len(rows) == 1 else None
    qc = dict(patient=patient, slide=one["slide"] if one else "", status=status, n_tiles=0,
              mpp=one["mpp"] if one else math.nan, mpp_source=one["mpp_source"] if one else "",
              tissue_area_um2=one["tissue_area_um2"] if one else math.nan, n_slides=len(rows), slides=summary)
    empty = np.zeros((0, st.tile_size, st.tile_size, 3), np.uint8)
    return PatientTiles(empty, pd.DataFrame({c: [] for c in TILE_COLUMNS}), qc, slides, mask, None, st)


def _fmt_area(area: float) -> str:
    return "" if not math.isfinite(area) else f"{area / 1e6:.3f} mm2, "


def draw_qc(result: PatientTiles, width: int = 768, montage_tile: int = 96) -> np.ndarray:
    """The QC picture, uint8 ``[H, W, 3]`` RGB: the thumbnail (scaled to ``width``) with the tissue outline
    (green), pen pixels (magenta), candidates rejected for ink (red crosses), the kept tiles boxed (blue, rank 1
    thickest), header lines with patient,
    slide, status and mpp; below, the kept tiles in rank order at ``montage_tile`` px."""
    qc = result.qc
    tm = result.mask
    if tm is None:
        canvas = np.full((width // 2, width, 3), 235, np.uint8)
    else:
        h, w = tm.mask.shape
        scale = width / w
        canvas = cv2.resize(tm.thumb, (width, max(1, round(h * scale))), interpolation=cv2.INTER_NEAREST)
        pen = cv2.resize(tm.pen.astype(np.uint8), canvas.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        canvas[pen] = (canvas[pen] // 2 + np.array([127, 0, 127], np.uint8))
        up = cv2.resize(tm.mask.astype(np.uint8), canvas.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(up, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, (0, 170, 0), 2)
        if result.selection is not None:
            t = result.table
            k = scale / tm.downsample
            sel = result.selection
            for i in sel.ink_rejected:  # candidates rejected for marker ink: red crosses at their centres
                c = (round((sel.candidates.x[i] + sel.read_size / 2) * k), round((sel.candidates.y[i] + sel.read_size / 2) * k))
                cv2.drawMarker(canvas, c, (220, 0, 0), cv2.MARKER_TILTED_CROSS, 8, 1)
            for rank, (x, y, size) in enumerate(zip(t["x"], t["y"], t["read_size"])):
                p0 = (round(x * k), round(y * k))
                p1 = (round((x + size) * k), round((y + size) * k))
                cv2.rectangle(canvas, p0, p1, (30, 60, 230), 3 if rank == 0 else 1)
    lines = [f"{qc['patient']}   status: {qc['status']}   tiles: {qc['n_tiles']}"]
    lines.append(f"slide: {qc['slide'] or '-'}" + (f"   mpp {qc['mpp']:.3f} ({qc['mpp_source']})"
                                                   if math.isfinite(qc["mpp"]) else ""))
    if qc["n_slides"] > 1:
        lines.append(f"slides: {qc['slides']}")
    chars = max(20, width // 8)
    lines = [part for line in lines for part in textwrap.wrap(line, chars)]
    header = np.full((10 + 18 * len(lines), canvas.shape[1], 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(header, line, (6, 19 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    parts = [header, canvas]
    if result.tiles.shape[0]:
        per_row = max(1, width // montage_tile)
        small = [cv2.resize(t, (montage_tile, montage_tile), interpolation=cv2.INTER_AREA) for t in result.tiles]
        small += [np.full_like(small[0], 255)] * (-len(small) % per_row)
        rows = [np.hstack(small[i:i + per_row]) for i in range(0, len(small), per_row)]
        montage = np.vstack(rows)
        pad = np.full((montage.shape[0], width - montage.shape[1], 3), 255, np.uint8)
        parts.append(np.hstack([montage, pad]))
    return np.vstack(parts)
