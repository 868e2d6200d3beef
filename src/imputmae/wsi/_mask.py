"""The tissue mask: thumbnail read by strips, pen marks removed, median blur, Otsu on saturation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import openslide
from PIL import Image
from imputmae.wsi._slide import SlideError, _one_line

#: Otsu classes closer than this (mean saturation, 0-255) mean glass only: "no tissue". H&E tissue sits 50-150
#: above the background; JPEG noise on blank glass gives 2-6.
MIN_SEPARATION = 15.0
#: Thumbnail reads go by strips of at most this many bytes (RGBA) at the level read.
STRIP_BYTES = 32 * 2**20


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
