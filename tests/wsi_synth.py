"""Synthetic H&E-like images for the WSI tests and benchmark: white glass, pink tissue with purple nuclei, pen ink.

Colours (RGB -> OpenCV HSV S, V): glass (238, 236, 240) S ~ 4; eosin (228, 150, 190) S 87 V 228 (never scored:
V >= 170); nuclei (120, 70, 150) S 136 V 150 (scored); blue pen (20, 40, 150) S 221 V 150 and green pen
(20, 120, 40) S 212 V 120: both would score if pen were not excluded.
"""

from __future__ import annotations

import cv2
import numpy as np

GLASS = (238, 236, 240)
EOSIN = (228, 150, 190)
NUCLEUS = (120, 70, 150)
BLUE_PEN = (20, 40, 150)
GREEN_PEN = (20, 120, 40)


def he_image(height: int, width: int, blobs: list[tuple[float, float, float, float, float]], seed: int = 0,
             pen: list[tuple[tuple[float, float], tuple[float, float], tuple[int, int, int]]] = (),
             pen_width: float = 0.03) -> np.ndarray:
    """uint8 ``[height, width, 3]`` RGB. blobs: (cx, cy, rx, ry, nuclei density in [0, 1]) as fractions of the
    width/height; pen: ((x0, y0), (x1, y1), rgb) strokes in fractions, ``pen_width`` of the width thick."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GLASS
    for cx, cy, rx, ry, density in blobs:
        tissue = np.zeros((height, width), np.uint8)
        cv2.ellipse(tissue, (round(cx * width), round(cy * height)), (round(rx * width), round(ry * height)), 0, 0,
                    360, 1, -1)
        img[tissue > 0] = EOSIN
        n = int(density * tissue.sum() / 60)
        ys, xs = np.nonzero(tissue)
        pick = rng.choice(ys.size, size=min(n, ys.size), replace=False) if ys.size else []
        for i in pick:
            cv2.circle(img, (int(xs[i]), int(ys[i])), 3, NUCLEUS, -1)
    for (x0, y0), (x1, y1), rgb in pen:
        cv2.line(img, (round(x0 * width), round(y0 * height)), (round(x1 * width), round(y1 * height)), rgb,
                 max(1, round(pen_width * width)))
    noise = rng.integers(-3, 4, size=img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
