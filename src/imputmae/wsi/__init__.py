"""Whole-slide images: slide choice, Otsu tissue mask, HSV tile selection, QC picture.

The method and its decisions: docs/design.md. Files: ``_slide`` (the ``wsi:`` settings, opening a slide and its
mpp), ``_mask`` (tissue mask), ``_select`` (candidates and HSV selection), ``_patient`` (one patient's slide choice
and tiles), ``_qc`` (the QC picture), ``_outputs`` (the four per-patient files). Every public name is re-exported
here.
"""

from imputmae.wsi._mask import MIN_SEPARATION, TissueMask, tissue_mask
from imputmae.wsi._outputs import write_patient_tiles
from imputmae.wsi._patient import QC_COLUMNS, TILE_COLUMNS, PatientTiles, tile_patient
from imputmae.wsi._qc import draw_qc
from imputmae.wsi._select import (Candidates, TileSelection, hsv_score, ink_fraction, read_level_for, read_tile,
                                  sample_candidates, select_tiles)
from imputmae.wsi._slide import Slide, SlideError, TileSettings, open_slide

__all__ = [
    "TileSettings", "SlideError", "Slide", "open_slide", "TissueMask", "tissue_mask", "MIN_SEPARATION", "Candidates",
    "sample_candidates", "read_level_for", "read_tile", "hsv_score", "ink_fraction", "TileSelection",
    "select_tiles",
    "PatientTiles", "tile_patient", "draw_qc", "write_patient_tiles", "TILE_COLUMNS", "QC_COLUMNS",
]
