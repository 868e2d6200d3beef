"""The demo's slides: stained tissue with tumour regions and nuclei, written as Aperio SVS."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imputmae.demo._helpers import _stream
from imputmae.demo._params import DemoParams, SLIDE_20X
from imputmae.svs import write_aperio_svs


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
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(2, 4))):
            cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
            ay, ax = rng.uniform(0.18, 0.3) * h, rng.uniform(0.15, 0.28) * w
            cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        # Tumour: blobs inside the tissue until they cover the patient's tumour share of it.
        share = 1 / (1 + math.exp(-(prm.tumour_share_logit + prm.tumour_share_per_sd * p.z1)))
        area = max(1, int(np.count_nonzero(mask)))
        tumour = np.zeros((h, w), np.uint8)
        ty, tx = np.nonzero(mask)
        for _ in range(40):
            if np.count_nonzero(tumour & mask) >= share * area:
                break
            j = int(rng.integers(len(ty)))
            r = rng.uniform(0.04, 0.1) * min(h, w)
            cv2.ellipse(tumour, (int(tx[j]), int(ty[j])), (int(r * rng.uniform(0.7, 1.4)), int(r)),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        tumour &= mask
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
                   s: dict[str, Any]) -> bytes | None:
    """Write the slide straight to ``path`` (returns None) or, for the corrupt file, return its bytes."""
    kind = s["kind"]
    if kind == "corrupt":
        _slide_payload(p, stain, prm, rng, path, dict(s, kind="normal"))
        blob = path.read_bytes()
        path.unlink()
        return blob[: len(blob) // 3]  # a scan cut short that the archive holds and serves as is
    img = _tissue_image(p, stain, prm, rng, SLIDE_20X, kind)
    if s["scale"] != 1.0:  # the second diagnostic slide: the same tissue at half the extent
        small = cv2.resize(img, None, fx=s["scale"], fy=s["scale"], interpolation=cv2.INTER_AREA)
        img = np.full_like(img, 242)
        img[: small.shape[0], : small.shape[1]] = small
    if s["mag"] == 40:
        img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    mpp = (0.5 if s["mag"] == 20 else 0.25) if s["mpp"] else None
    write_aperio_svs(path, img, mpp=mpp, app_mag=s["mag"], n_levels=s["levels"], quality=80)
    return None
