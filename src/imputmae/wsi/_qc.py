"""The per-patient QC picture: thumbnail, tissue outline, pen, kept tiles, and the tiles' montage."""

from __future__ import annotations

import math
import textwrap

import cv2
import numpy as np
from imputmae.wsi._patient import PatientTiles

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
