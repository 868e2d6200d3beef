"""The four per-patient outputs of ``imputmae wsi tiles``: tiles, tile table, QC picture, QC row."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imputmae.files import atomic_write
from imputmae.wsi._patient import QC_COLUMNS, PatientTiles
from imputmae.wsi._qc import draw_qc


def write_patient_tiles(result: PatientTiles, prefix: str | Path) -> None:
    """Write one patient's four outputs, each to a temporary name then renamed: ``PREFIX.npy`` (the tiles,
    uint8 ``[n, tile, tile, 3]``), ``PREFIX.parquet`` (:data:`TILE_COLUMNS`; the settings, every slide considered
    and the QC row in the metadata ``imputmae.wsi.*``), ``PREFIX.png`` (:func:`draw_qc`) and ``PREFIX.qc.tsv``
    (the QC row, :data:`QC_COLUMNS`)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)

    def save_tiles(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(result.tiles))

    atomic_write(prefix.with_name(prefix.name + ".npy"), save_tiles)
    table = pa.Table.from_pandas(result.table, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"imputmae.wsi.settings"] = json.dumps(dataclasses.asdict(result.settings), sort_keys=True).encode()
    meta[b"imputmae.wsi.slides"] = result.slides.to_json(orient="records").encode()
    meta[b"imputmae.wsi.qc"] = json.dumps(result.qc, default=float).encode()
    atomic_write(prefix.with_name(prefix.name + ".parquet"),
                 lambda tmp: pq.write_table(table.replace_schema_metadata(meta), tmp))
    ok, buf = cv2.imencode(".png", cv2.cvtColor(draw_qc(result), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("cv2.imencode failed on the QC picture")
    atomic_write(prefix.with_name(prefix.name + ".png"), lambda tmp: tmp.write_bytes(buf.tobytes()))
    qc_row = pd.DataFrame([result.qc], columns=QC_COLUMNS)
    atomic_write(prefix.with_name(prefix.name + ".qc.tsv"),
                 lambda tmp: qc_row.to_csv(tmp, sep="\t", index=False, float_format="%.6g"))
