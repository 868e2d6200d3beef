"""Write Aperio SVS files (tiled, JPEG-compressed pyramidal TIFF) that OpenSlide opens as vendor ``aperio``.

Used by the demo cohort and by tests to make slides of known content. The layout follows what Aperio
scanners write and OpenSlide's aperio driver expects: level 0 as a tiled directory whose ImageDescription starts
with ``Aperio Image Library`` and carries ``AppMag`` and ``MPP``; then a stripped thumbnail; then the lower
pyramid levels, tiled, each a power-of-two downsample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import cv2
import numpy as np
import tifffile

from imputmae.files import atomic_write

__all__ = ["write_aperio_svs", "write_aperio_svs_strips",
           "aperio_description"]


def aperio_description(width: int, height: int, tile: int, app_mag: float | None, mpp: float | None,
                       quality: int, extra: dict[str, str] | None = None) -> str:
    """The ImageDescription of an Aperio level-0 directory: a header line, then ``key = value`` fields joined by ``|``."""
    fields = [f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
              f"JPEG/RGB Q={quality}"]
    if app_mag is not None:
        fields.append(f"AppMag = {app_mag:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:.4f}")
    fields.append("ScanScope ID = IMPUTMAE-DEMO")
    for k, v in (extra or {}).items():
        fields.append(f"{k} = {v}")
    return "|".join(fields)


def write_aperio_svs(path: str | Path, image: np.ndarray, *, mpp: float | None, app_mag: float | None,
                     n_levels: int = 3, tile: int = 256, quality: int = 85,
                     extra: dict[str, str] | None = None) -> Path:
    """Write ``image`` as an Aperio SVS at ``path`` (through a temporary name, renamed when complete).

    Args:
        image: uint8 ``[H, W, 3]`` RGB, level 0.
        mpp: microns per pixel at level 0 (None leaves it out, as some scanners do).
        app_mag: objective power (AppMag), e.g. 20 or 40 (None leaves it out).
        n_levels: pyramid levels including level 0 (1 gives a one-level slide); each halves the previous.
        tile: TIFF tile edge in pixels (a multiple of 16).

    Returns:
        The path written. Same inputs give the same bytes.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    return atomic_write(path, lambda tmp: _write_svs(tmp, image, tile, app_mag, mpp, quality, extra, n_levels))


def _write_svs(tmp: Path, image: np.ndarray, tile: int, app_mag: float, mpp: float, quality: int,
               extra: Mapping[str, str] | None, n_levels: int) -> None:
    h, w = image.shape[:2]
    desc = aperio_description(w, h, tile, app_mag, mpp, quality, extra)
    opts = dict(photometric="rgb", compression="jpeg", compressionargs={"level": quality}, metadata=None,
                software=False)
    with tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        tif.write(image, tile=(tile, tile), description=desc, **opts)
        # Aperio's second directory is a stripped thumbnail; OpenSlide lists it as the associated image "thumbnail".
        scale = 768 / max(h, w)
        thumb = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        tif.write(thumb, description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}",
                  rowsperstrip=16, **opts)
        level = image
        for i in range(1, n_levels):
            level = cv2.resize(level, (max(1, level.shape[1] // 2), max(1, level.shape[0] // 2)),
                               interpolation=cv2.INTER_AREA)
            lh, lw = level.shape[:2]
            tif.write(level, tile=(tile, tile),
                      description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {lw}x{lh}", **opts)


def write_aperio_svs_strips(path: str | Path, shape: tuple[int, int], strips: Iterable[np.ndarray], *,
                            mpp: float | None, app_mag: float | None, n_levels: int = 3, level_factor: int = 4,
                            tile: int = 256, quality: int = 85, extra: dict[str, str] | None = None) -> Path:
    """Write an Aperio SVS whose level 0 comes strip by strip: a slide too large to hold in memory whole.

    Args:
        shape: level-0 (height, width).
        strips: uint8 ``[rows, width, 3]`` RGB, top to bottom, covering ``height`` rows; ``rows`` a multiple of
            ``tile`` and of ``level_factor`` (the last strip may be shorter).
        n_levels: pyramid levels including level 0; each is ``level_factor`` times smaller than the one before
            (Aperio scanners write 4). The level below 0 is kept in memory (1 / level_factor^2 of level 0) for the
            lower levels and the thumbnail, even for a one-level file.

    Same layout as :func:`write_aperio_svs` (level 0 tiled, a stripped thumbnail, the lower levels tiled); same
    inputs, same bytes. Returns the path written.
    """
    return atomic_write(path, lambda tmp: _write_svs_strips(tmp, shape, strips, mpp, app_mag, n_levels, level_factor,
                                                            tile, quality, extra))


def _write_svs_strips(tmp: Path, shape: tuple[int, int], strips: Iterable[np.ndarray], mpp: float | None,
                      app_mag: float | None, n_levels: int, factor: int, tile: int, quality: int,
                      extra: Mapping[str, str] | None) -> None:
    h, w = shape
    if h % factor or w % factor:
        raise ValueError(f"slide shape {shape} must be a multiple of the level factor {factor}")
    desc = aperio_description(w, h, tile, app_mag, mpp, quality, extra)
    opts = dict(photometric="rgb", compression="jpeg", compressionargs={"level": quality}, metadata=None,
                software=False)
    below = np.empty((h // factor, w // factor, 3), np.uint8)  # level 1, filled as level 0 goes by

    def tiles() -> Iterator[np.ndarray]:
        y = 0
        for strip in strips:
            rows = strip.shape[0]
            if (strip.dtype != np.uint8 or strip.shape[1:] != (w, 3) or rows % factor or y + rows > h
                    or (rows % tile and y + rows != h)):
                raise ValueError(f"strip at row {y}: {strip.dtype} {strip.shape} does not fit a {w} px wide, "
                                 f"{h} px high slide by multiples of {tile} rows")
            below[y // factor:(y + rows) // factor] = cv2.resize(strip, (w // factor, rows // factor),
                                                                 interpolation=cv2.INTER_AREA)
            for t0 in range(0, rows, tile):
                band = strip[t0:t0 + tile]
                if band.shape[0] < tile:
                    band = np.concatenate([band, np.zeros((tile - band.shape[0], w, 3), np.uint8)])
                for x0 in range(0, w, tile):
                    part = band[:, x0:x0 + tile]
                    if part.shape[1] < tile:
                        part = np.concatenate([part, np.zeros((tile, tile - part.shape[1], 3), np.uint8)], 1)
                    yield part
            y += rows
        if y != h:
            raise ValueError(f"strips covered {y} of the slide's {h} rows")

    with tifffile.TiffWriter(tmp, bigtiff=False) as tif:  # JPEG keeps even a 40x paper-scale slide far below 4 GB
        tif.write(tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), description=desc, **opts)
        levels = [below]
        while len(levels) < max(1, n_levels - 1):
            prev = levels[-1]
            levels.append(cv2.resize(prev, (max(1, prev.shape[1] // factor), max(1, prev.shape[0] // factor)),
                                     interpolation=cv2.INTER_AREA))
        small = levels[-1]
        scale = 768 / max(h, w)
        thumb = cv2.resize(small, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        tif.write(thumb, description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}",
                  rowsperstrip=16, **opts)
        for level in levels[: n_levels - 1]:
            lh, lw = level.shape[:2]
            tif.write(level, tile=(tile, tile),
                      description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {lw}x{lh}", **opts)
