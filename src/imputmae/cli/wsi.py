"""``imputmae wsi tiles`` (one patient's slides -> tiles, table, picture, QC row) and ``imputmae wsi qc`` (merge the
QC rows of a cohort).

A slide that cannot be used never fails the command: ``tiles`` exits 0 with the reason in ``PREFIX.qc.tsv`` and
writes empty tiles, an empty table and a picture that says why (Snakemake then moves on to the next patient).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from imputmae.cli import UserError
from imputmae.files import atomic_write

log = logging.getLogger("imputmae.wsi")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("wsi", help="whole-slide images: tissue mask and tile selection, QC table")
    wsub = p.add_subparsers(dest="wsi_command", metavar="WSI_COMMAND", required=True)

    t = wsub.add_parser("tiles", help="one patient's slides -> PREFIX.npy, .parquet, .png, .qc.tsv",
                        description="Choose the slide with most tissue, sample candidates on its Otsu tissue mask, "
                                    "keep the best by HSV score. Exit 0 with a QC reason when no slide is usable.")
    t.add_argument("slides", nargs="*", metavar="SLIDE", help="the patient's slide files (.svs or any OpenSlide format)")
    t.add_argument("--out", required=True, metavar="PREFIX", help="output prefix: PREFIX.npy, .parquet, .png, .qc.tsv")
    t.add_argument("--patient", help="patient id for the tables (default: the name of PREFIX)")
    t.add_argument("--settings", default="{}", metavar="JSON",
                   help="the config's wsi section as JSON (keys as in config.yaml); the flags below override it")
    t.add_argument("--n-candidates", type=int, help="random positions sampled from the tissue mask (config: 1000)")
    t.add_argument("--keep", type=int, help="tiles kept, best HSV score first (config: 100)")
    t.add_argument("--seed", type=int, help="candidate sampling seed (config: 0)")
    t.add_argument("--threads", type=int, help="parallel OpenSlide reads (config: 4)")
    t.add_argument("--default-mpp", type=float,
                   help="um/px for slides with neither MPP nor AppMag (config: none, such a slide goes to QC)")
    t.add_argument("--unavailable", action="append", default=[], metavar="FILE_NAME=REASON",
                   help="a slide of the patient that is not here (e.g. its download failed): recorded in the QC row")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_tiles)

    q = wsub.add_parser("qc", help="merge per-patient QC rows (PREFIX.qc.tsv) into the cohort table")
    q.add_argument("rows", nargs="*", metavar="QC_TSV", help="per-patient QC files")
    q.add_argument("--from-list", metavar="FILE", help="a file listing QC_TSV paths, one a line")
    q.add_argument("--out", required=True, help="the cohort table (TSV)")
    q.set_defaults(func=_qc)


def _settings(args: argparse.Namespace):
    from imputmae.wsi import TileSettings

    try:
        values = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        raise UserError(f"--settings: not JSON ({exc}); pass the wsi config section, e.g. '{{\"keep\": 8}}'") from None
    if not isinstance(values, dict):
        raise UserError("--settings: expected a JSON object such as '{\"keep\": 8}'")
    for flag, key in (("n_candidates", "n_candidates"), ("keep", "keep"), ("seed", "seed"), ("threads", "threads"),
                      ("default_mpp", "default_mpp")):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    try:
        return TileSettings.from_mapping(values)
    except ValueError as exc:
        raise UserError(f"--settings: {exc}") from None


def _tiles(args: argparse.Namespace) -> int:
    from imputmae.wsi import tile_patient, write_patient_tiles

    st = _settings(args)
    unavailable = []
    for item in args.unavailable:
        name, sep, reason = item.partition("=")
        if not sep or not name:
            raise UserError(f"--unavailable {item!r}: expected FILE_NAME=REASON, e.g. 'x.svs=not downloaded'")
        unavailable.append((name, reason or "unavailable"))
    if not args.slides and not unavailable:
        raise UserError("no SLIDE given; pass the patient's slide files (or --unavailable NAME=REASON for each "
                        "slide that is missing, to record them)")
    prefix = Path(args.out)
    patient = args.patient or prefix.name
    result = tile_patient(args.slides, patient, st, progress=not args.no_progress, unavailable=unavailable)
    write_patient_tiles(result, prefix)
    q = result.qc
    log.info("%s: %s: %s, %d tiles (%s slide(s): %s)", patient, q["slide"] or "-", q["status"], q["n_tiles"],
             q["n_slides"], q["slides"])
    return 0


def _qc(args: argparse.Namespace) -> int:
    import pandas as pd

    from imputmae.wsi import QC_COLUMNS

    paths = list(args.rows)
    if args.from_list:
        paths += [line.strip() for line in Path(args.from_list).read_text().splitlines() if line.strip()]
    frames = []
    for p in paths:
        if not Path(p).is_file():
            raise UserError(f"{p}: no such QC file; run `imputmae wsi tiles ... --out PREFIX` for that patient first")
        df = pd.read_csv(p, sep="\t", dtype={"patient": str, "slide": str, "status": str, "slides": str},
                         keep_default_na=False, na_values={"mpp": ["", "nan"], "tissue_area_um2": ["", "nan"]})
        missing = sorted(set(QC_COLUMNS) - set(df.columns))
        if missing:
            raise UserError(f"{p}: not a wsi QC file (missing columns {missing}); it should come from `imputmae wsi tiles`")
        frames.append(df[QC_COLUMNS])
    table = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=QC_COLUMNS))
    dup = table["patient"][table["patient"].duplicated()].unique()
    if len(dup):
        raise UserError(f"patient(s) {sorted(dup)[:5]} appear in more than one QC file; give each patient once")
    table = table.sort_values("patient", kind="stable").reset_index(drop=True)
    out = atomic_write(args.out, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.6g"))
    n_ok = int((table["status"] == "ok").sum())
    log.info("%s: %d patients, %d ok, %d not (WSI missing downstream)", out, len(table), n_ok, len(table) - n_ok)
    return 0
