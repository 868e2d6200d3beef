"""The demo's slides: stained tissue with tumour regions and nuclei, written as Aperio SVS."""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imputmae.demo._helpers import _stream
from imputmae.demo._params import DEMO_SCALE, DemoParams, FileScale
from imputmae.svs import write_aperio_svs, write_aperio_svs_strips


@dataclass(frozen=True)
class _Stain:
    """A site's stain and scanner: eosin hue (0 pink .. 1 purple), hematoxylin intensity, gain and blur."""

    hue: float
    hematoxylin: float
    gain: float
    blur: float


def _site_stain(site: str, seed: int, prm: DemoParams) -> _Stain:
    rng = _stream(seed, "stain", site)
    return _Stain(hue=1 / (1 + math.exp(-rng.normal(0, prm.site_hue_sd))),
                  hematoxylin=float(np.clip(1 + rng.normal(0, prm.site_hematoxylin_sd), 0.8, 1.15)),
                  gain=float(np.clip(1 + rng.normal(0, prm.site_brightness_sd), 0.92, 1.04)),
                  blur=float(rng.uniform(0, prm.site_blur_max)))


def _nuclei(img: np.ndarray, region: np.ndarray, density: float, radius: float, stain: _Stain,
            rng: np.random.Generator) -> None:
    """Draw round nuclei inside ``region`` (uint8 [H, W] mask) onto ``img`` in place. Hematoxylin stays below the
    pen threshold (HSV S < 160), as on real H&E."""
    h, w = region.shape
    n = int(density * np.count_nonzero(region))
    ys, xs = rng.integers(0, h, 4 * n + 8), rng.integers(0, w, 4 * n + 8)
    inside = region[ys, xs] > 0
    ys, xs = ys[inside][:n], xs[inside][:n]
    radii = np.clip(np.round(rng.normal(radius, 0.8, len(ys))), 2, 12)
    shade = rng.integers(0, 35, len(ys))
    k = stain.hematoxylin
    for y, x, r, s in zip(ys, xs, radii, shade, strict=True):
        colour = (min(255, int(k * (95 + s))), min(255, int(k * (60 + s // 2))), min(255, int(k * (140 + s))))
        cv2.circle(img, (int(x), int(y)), int(r), colour, -1)


def _tumour_share(p: Any, prm: DemoParams) -> float:
    """The share of a patient's tissue that is tumour (a logistic function of z1)."""
    return 1 / (1 + math.exp(-(prm.tumour_share_logit + prm.tumour_share_per_sd * p.z1)))


def _islands_and_tumour(shape: tuple[int, int], extent: tuple[int, int], share: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two or three elliptic tissue islands placed within the top-left ``extent`` (rows, columns) of a ``shape`` map,
    then tumour blobs inside the tissue until they cover ``share`` of it (at most 40 blobs). The random draws come in
    one fixed order, so a seed gives the same slide. Returns uint8 [H, W] tissue mask and tumour mask (inside it)."""
    h, w = shape
    th, tw = extent
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(2, 4))):
        cy, cx = rng.uniform(0.3, 0.7) * th, rng.uniform(0.25, 0.75) * tw
        ay, ax = rng.uniform(0.18, 0.3) * th, rng.uniform(0.15, 0.28) * tw
        cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    area = max(1, int(np.count_nonzero(mask)))
    tumour = np.zeros((h, w), np.uint8)
    ty, tx = np.nonzero(mask)
    for _ in range(40):
        if np.count_nonzero(tumour & mask) >= share * area:
            break
        j = int(rng.integers(len(ty)))
        r = rng.uniform(0.04, 0.1) * min(th, tw)
        cv2.ellipse(tumour, (int(tx[j]), int(ty[j])), (int(r * rng.uniform(0.7, 1.4)), int(r)),
                    float(rng.uniform(0, 180)), 0, 360, 1, -1)
    tumour &= mask
    return mask, tumour


def _tissue_image(p: Any, stain: _Stain, prm: DemoParams, rng: np.random.Generator, shape: tuple[int, int],
                  kind: str) -> np.ndarray:
    """An H&E-like field at 20x: white background, tissue islands of stroma holding tumour regions. In the tumour,
    nuclear density follows z0, the tumour's share of the tissue z1 and nuclear size z4; stroma's sparse small nuclei
    carry nothing. The site sets the stain and the scanner. ``kind``: "normal", "blank" or "pen".
    Returns uint8 [H, W, 3] RGB."""
    h, w = shape
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (242, 240, 244)
    img -= rng.integers(0, 6, (h, w, 1), dtype=np.uint8)
    if kind != "blank":
        mask, tumour = _islands_and_tumour((h, w), (h, w), _tumour_share(p, prm), rng)
        stroma = mask & (1 - tumour)
        hue = stain.hue
        eosin = np.array([236 - 40 * hue, 150 - 35 * hue, 190 + 10 * hue], np.float32)
        low = cv2.resize(rng.standard_normal((h // 64 + 2, w // 64 + 2), np.float32), (w, h),
                         interpolation=cv2.INTER_CUBIC)
        grain = rng.standard_normal((h, w), np.float32)
        tissue = cv2.merge([eosin[c] + 12 * low + 4 * grain - 10 * tumour for c in range(3)])
        tissue = np.clip(tissue, 0, 255).astype(np.uint8)
        _nuclei(tissue, stroma, prm.stroma_density, prm.stroma_radius, stain, rng)
        _nuclei(tissue, tumour, prm.tumour_density * math.exp(prm.tumour_density_per_sd * p.z0),
                prm.tumour_radius * math.exp(prm.tumour_radius_per_sd * p.z4), stain, rng)
        m = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3)
        img = cv2.blendLinear(tissue, img, m, 1 - m)
    # The scanner: gain and optical blur.
    if stain.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), stain.blur)
    img = np.clip(img.astype(np.float32) * stain.gain, 0, 255).astype(np.uint8)
    if kind == "pen":
        # Marker ink on the glass: thick saturated strokes, over tissue and background alike.
        for colour in ((20, 110, 60), (25, 45, 170)):
            pts = np.stack([rng.uniform(0.1, 0.9, 6) * w, rng.uniform(0.1, 0.9, 6) * h], 1).astype(np.int32)
            cv2.polylines(img, [pts], False, colour, thickness=max(8, w // 90))
    return img


def _plan_slides(patients: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Which slides each patient gets. Most: one pyramidal 20x diagnostic slide. Some: a second diagnostic slide
    (with less tissue), 40x scans, one-level files, no MPP (AppMag only), a tissue slide (TS) beside the DX.
    Exactly one blank slide, one pen-marked slide and one corrupt file, each a patient's only diagnostic slide."""
    plan: dict[str, list[dict[str, Any]]] = {}
    with_wsi = [p for p in patients if p.has_wsi]
    slots = [1, 4, 7] if len(with_wsi) > 7 else list(range(min(3, len(with_wsi))))
    specials = {with_wsi[i].patient: kind for i, kind in zip(slots, ("blank", "pen", "corrupt"), strict=False)}
    for j, p in enumerate(with_wsi):
        kind = specials.get(p.patient, "normal")
        mag = 40 if j % 5 == 2 else 20
        dx = dict(sample="01Z", portion="00", tag="DX1", kind=kind, mag=mag, levels=1 if j % 6 == 3 else 3,
                  mpp=j % 8 != 6, scale=1.0)
        slides = [dx]
        if kind == "normal" and j % 7 == 0:
            slides.append(dict(dx, tag="DX2", mag=20, levels=3, mpp=True, scale=0.5))  # less tissue: not chosen
        if j % 6 == 1:
            slides.append(dict(dx, sample="01A", portion="01", tag="TS1", kind="normal", mag=20, levels=2))
        plan[p.patient] = slides
    return plan


def _slide_payload(p: Any, stain: _Stain, prm: DemoParams, rng: np.random.Generator, path: Path,
                   s: dict[str, Any], scale: FileScale = DEMO_SCALE) -> bytes | None:
    """Write the slide straight to ``path`` (returns None) or, for the corrupt file, return its bytes."""
    kind = s["kind"]
    if kind == "corrupt":
        _slide_payload(p, stain, prm, rng, path, dict(s, kind="normal"), scale)
        if scale.strip_rows:  # cut short in place: a paper-scale file is too large to copy through memory
            os.truncate(path, path.stat().st_size // 3)
            return None
        blob = path.read_bytes()
        path.unlink()
        return blob[: len(blob) // 3]  # a scan cut short that the archive holds and serves as is
    mpp = (0.5 if s["mag"] == 20 else 0.25) if s["mpp"] else None
    if scale.strip_rows:
        shape, strips = _slide_strips(p, stain, prm, rng, scale, s)
        write_aperio_svs_strips(path, shape, strips, mpp=mpp, app_mag=s["mag"], n_levels=s["levels"],
                                level_factor=scale.level_factor, quality=80)
        return None
    img = _tissue_image(p, stain, prm, rng, scale.slide_20x, kind)
    if s["scale"] != 1.0:  # the second diagnostic slide: the same tissue at half the extent
        small = cv2.resize(img, None, fx=s["scale"], fy=s["scale"], interpolation=cv2.INTER_AREA)
        img = np.full_like(img, 242)
        img[: small.shape[0], : small.shape[1]] = small
    if s["mag"] == 40:
        img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    write_aperio_svs(path, img, mpp=mpp, app_mag=s["mag"], n_levels=s["levels"], quality=80)
    return None


# ------------------------------------------------------------------------------------ paper-scale slides, by strips

#: Level-0 (20x) pixels per pixel of a streamed slide's layout (tissue, tumour and stain-variation maps).
LAYOUT_DOWNSAMPLE = 16
#: Rows rendered beyond each side of a strip and cut off again, so that blur and nuclei cross strips without seams.
STRIP_MARGIN = 16
#: Strips rendered ahead of the one being written (bounds the strips in memory).
STRIP_AHEAD = 2


@dataclass(frozen=True)
class _Layout:
    """A streamed slide's low-resolution maps at 1 / :data:`LAYOUT_DOWNSAMPLE` of 20x: tissue and tumour (float32
    [h, w] in {0, 1}), the stain's slow variation ``low`` (float32 [h, w]); nuclei as level-0 (20x) centres sorted
    by row: ``ny``, ``nx`` (int64 [n]), radius ``nr`` and colour ``nc`` (uint8 [n, 3] RGB); pen
    strokes (int32 [k, 2] level-0 points, RGB colour) each."""

    tissue: np.ndarray
    tumour: np.ndarray
    low: np.ndarray
    ny: np.ndarray
    nx: np.ndarray
    nr: np.ndarray
    nc: np.ndarray
    pen: list[tuple[np.ndarray, tuple[int, int, int]]]


def _draw_nuclei(region: np.ndarray, density: float, radius: float, stain: _Stain, rng: np.random.Generator,
                 d: int) -> tuple[np.ndarray, ...]:
    """Nucleus centres (level-0 px) uniform over ``region`` (a layout map, each cell d x d level-0 px), their radii
    and colours (the demo's, see :func:`_nuclei`). Returns y, x, r (int64 [n]) and colour (uint8 [n, 3])."""
    h, w = region.shape
    n = int(density * np.count_nonzero(region) * d * d)
    ys, xs = rng.integers(0, h * d, 4 * n + 8), rng.integers(0, w * d, 4 * n + 8)
    inside = region[ys // d, xs // d] > 0
    ys, xs = ys[inside][:n], xs[inside][:n]
    r = np.clip(np.round(rng.normal(radius, 0.8, len(ys))), 2, 12).astype(np.int64)
    shade = rng.integers(0, 35, len(ys))
    k = stain.hematoxylin
    colour = np.stack([np.minimum(255, (k * (95 + shade)).astype(np.int64)),
                       np.minimum(255, (k * (60 + shade // 2)).astype(np.int64)),
                       np.minimum(255, (k * (140 + shade)).astype(np.int64))], 1).astype(np.uint8)
    return ys, xs, r, colour


def _layout(p: Any, stain: _Stain, prm: DemoParams, rng: np.random.Generator, shape: tuple[int, int], kind: str,
            extent: float) -> _Layout:
    """The maps and nuclei of one streamed slide of level-0 (20x) ``shape``: the demo's tissue islands and tumour
    blobs (:func:`_tissue_image`) drawn at layout resolution; ``extent`` < 1 shrinks the tissue into the top-left
    corner (a second slide with less tissue)."""
    d = LAYOUT_DOWNSAMPLE
    h, w = shape[0] // d, shape[1] // d
    mask = np.zeros((h, w), np.uint8)
    tumour = np.zeros((h, w), np.uint8)
    if kind != "blank":
        extent_shape = (max(1, int(h * extent)), max(1, int(w * extent)))
        mask, tumour = _islands_and_tumour((h, w), extent_shape, _tumour_share(p, prm), rng)
    low = cv2.resize(rng.standard_normal((h * d // 64 + 2, w * d // 64 + 2), np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    stroma = mask & (1 - tumour)
    nuclei = [_draw_nuclei(stroma, prm.stroma_density, prm.stroma_radius, stain, rng, d),
              _draw_nuclei(tumour, prm.tumour_density * math.exp(prm.tumour_density_per_sd * p.z0),
                           prm.tumour_radius * math.exp(prm.tumour_radius_per_sd * p.z4), stain, rng, d)]
    ny, nx, nr, nc = (np.concatenate(parts) for parts in zip(*nuclei, strict=True))
    order = np.argsort(ny, kind="stable")
    pen = []
    if kind == "pen":
        for colour in ((20, 110, 60), (25, 45, 170)):
            pen.append((np.stack([rng.uniform(0.1, 0.9, 6) * shape[1], rng.uniform(0.1, 0.9, 6) * shape[0]],
                                 1).astype(np.int32), colour))
    return _Layout(tissue=mask.astype(np.float32), tumour=tumour.astype(np.float32), low=low, ny=ny[order],
                   nx=nx[order], nr=nr[order], nc=nc[order], pen=pen)


def _rows_of(layout_map: np.ndarray, y0: int, y1: int, d: int) -> np.ndarray:
    """Level-0 rows [y0, y1) of ``layout_map`` (float32 [h, w]) upsampled d times (bilinear, pixel centres aligned
    as ``cv2.resize`` aligns them): the same values whichever strip asks. Returns float32 [y1 - y0, w * d]."""
    h, w = layout_map.shape
    b0, b1 = max(0, y0 // d - 1), min(h, -(-y1 // d) + 1)
    block = cv2.resize(layout_map[b0:b1], (w * d, (b1 - b0) * d), interpolation=cv2.INTER_LINEAR)
    # cv2 replicates the block's edge rows: the rows asked for lie at least one layout row inside it
    return block[y0 - b0 * d:y1 - b0 * d]


def _render_rows(lay: _Layout, stain: _Stain, y0: int, y1: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Level-0 (20x) rows [y0, y1) of a streamed slide, uint8 [y1 - y0, width, 3] RGB: the demo's background,
    stain, nuclei, tissue edge blend and pen ink (:func:`_tissue_image`), then the scanner's blur and gain. Only
    the columns that hold tissue are stained."""
    d = LAYOUT_DOWNSAMPLE
    h = y1 - y0
    img = np.empty((h, width, 3), np.uint8)
    img[:] = (242, 240, 244)
    img -= rng.integers(0, 6, (h, width, 1), dtype=np.uint8)
    m = _rows_of(lay.tissue, y0, y1, d)
    cols = np.flatnonzero(m.max(axis=0) > 0)
    if cols.size:
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        m = np.ascontiguousarray(m[:, c0:c1])
        tumour = (_rows_of(lay.tumour, y0, y1, d)[:, c0:c1] > 0.5).astype(np.float32)
        base = 12 * _rows_of(lay.low, y0, y1, d)[:, c0:c1]
        base += 4 * rng.standard_normal((h, c1 - c0), np.float32)
        base -= 10 * tumour
        hue = stain.hue
        eosin = (236 - 40 * hue, 150 - 35 * hue, 190 + 10 * hue)
        tissue = cv2.merge([cv2.convertScaleAbs(base, alpha=1.0, beta=e) for e in eosin])  # saturating to uint8
        lo, hi = np.searchsorted(lay.ny, [y0 - 12, y1 + 12])
        for y, x, r, c in zip(lay.ny[lo:hi], lay.nx[lo:hi], lay.nr[lo:hi], lay.nc[lo:hi], strict=True):
            cv2.circle(tissue, (int(x) - c0, int(y) - y0), int(r), (int(c[0]), int(c[1]), int(c[2])), -1)
        img[:, c0:c1] = cv2.blendLinear(tissue, np.ascontiguousarray(img[:, c0:c1]), m, 1 - m)
    for pts, colour in lay.pen:
        cv2.polylines(img, [pts - np.array([0, y0], np.int32)], False, colour, thickness=max(8, width // 90))
    if stain.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), stain.blur)
    return cv2.convertScaleAbs(img, alpha=stain.gain)


def _slide_strips(p: Any, stain: _Stain, prm: DemoParams, rng: np.random.Generator, scale: FileScale,
                  s: dict[str, Any]) -> tuple[tuple[int, int], Iterator[np.ndarray]]:
    """Level-0 shape and strips (uint8 [rows, W, 3], top to bottom) of a paper-scale slide: rendered at 20x by
    ``scale.strip_rows`` rows with :data:`STRIP_MARGIN` rows either side (cut off after the scanner's blur), a 40x
    slide upsampled 2x (cubic) strip by strip. Memory: a few strips, never the slide."""
    h, w = scale.slide_20x
    lay = _layout(p, stain, prm, rng, (h, w), s["kind"], s["scale"])
    seed = int(rng.integers(2**63))  # each strip's noise from its own stream: strips can be rendered in any order
    up = 2 if s["mag"] == 40 else 1

    def strip(i: int) -> np.ndarray:
        y0 = i * scale.strip_rows
        y1 = min(h, y0 + scale.strip_rows)
        a, b = max(0, y0 - STRIP_MARGIN), min(h, y1 + STRIP_MARGIN)
        img = _render_rows(lay, stain, a, b, w, np.random.default_rng([seed, i]))
        if up > 1:
            img = cv2.resize(img, (w * up, (b - a) * up), interpolation=cv2.INTER_CUBIC)
        return img[(y0 - a) * up:(y1 - a) * up]

    def strips() -> Iterator[np.ndarray]:
        # numpy and OpenCV release the GIL: strips render in threads, at most STRIP_AHEAD ahead of the writer
        n = -(-h // scale.strip_rows)
        with ThreadPoolExecutor(max_workers=scale.threads) as pool:
            pending = deque(pool.submit(strip, i) for i in range(min(n, STRIP_AHEAD)))
            for i in range(n):
                img = pending.popleft().result()
                if i + STRIP_AHEAD < n:
                    pending.append(pool.submit(strip, i + STRIP_AHEAD))
                yield img

    return (h * up, w * up), strips()
