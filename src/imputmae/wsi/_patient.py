"""One patient: choose the slide and select its tiles."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imputmae.wsi._mask import TissueMask, tissue_mask
from imputmae.wsi._select import TileSelection, select_tiles
from imputmae.wsi._slide import Slide, SlideError, TileSettings, open_slide

log = logging.getLogger(__name__)

TILE_COLUMNS = ["patient", "slide", "rank", "candidate", "x", "y", "level", "read_size", "level_read_size",
                "tile_size", "mpp", "hsv_score", "tissue_fraction", "pen_fraction", "ink_fraction"]
QC_COLUMNS = ["patient", "slide", "status", "n_tiles", "mpp", "mpp_source", "tissue_area_um2", "n_slides",
              "slides"]


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
    """Choose a patient's slide and select its tiles (the method: docs/design.md).

    Each slide is opened and masked; unusable ones are recorded with their reason. Slides with tissue are tried
    by decreasing tissue area (um^2); the first that yields ``keep`` tiles is chosen; when none does, the one
    with most tiles is, with status ``only N tiles``. No usable slide: no tiles, status the reason (one slide) or
    ``no usable slide`` with every slide's reason in ``slides``. ``unavailable``: (file name, reason) of the
    patient's slides that never reached us (a failed download), recorded in ``slides`` like unusable ones.
    """
    rows, masked, best_failed_mask = _mask_slides(paths, patient, settings)
    for name, reason in unavailable:
        rows.append({"slide": name, "status": reason, "mpp": math.nan, "mpp_source": "",
                     "tissue_area_um2": math.nan, "n_tiles": 0, "chosen": False})
    chosen = _choose_slide(masked, rows, patient, settings, progress)
    return _patient_result(patient, rows, chosen, masked, best_failed_mask, settings)


Masked = tuple[float, int, Slide, TissueMask]       # tissue area (um^2), order given, the open slide, its mask
Chosen = tuple[int, Slide, TissueMask, TileSelection]


def _mask_slides(paths: Sequence[str | Path], patient: str, st: TileSettings
                 ) -> tuple[list[dict[str, Any]], list[Masked], TissueMask | None]:
    """Open and mask each slide: one row per slide (status set for an unusable one), the slides with tissue (still
    open), and the first mask that found no tissue (drawn on the QC picture when no slide has any)."""
    rows: list[dict[str, Any]] = []
    masked: list[Masked] = []
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
    return rows, masked, best_failed_mask


def _choose_slide(masked: list[Masked], rows: list[dict[str, Any]], patient: str, st: TileSettings,
                  progress: bool) -> Chosen | None:
    """Select tiles on the slides by decreasing tissue area until one yields ``keep`` (else the one with most
    tiles); statuses go to ``rows``; every slide is closed."""
    masked.sort(key=lambda t: (-t[0], t[1]))
    chosen: Chosen | None = None
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

    return chosen


def _patient_result(patient: str, rows: list[dict[str, Any]], chosen: Chosen | None, masked: list[Masked],
                    best_failed_mask: TissueMask | None, st: TileSettings) -> PatientTiles:
    """The patient's tiles, tile table, QC row and slide table from the chosen slide (or why there is none)."""
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
