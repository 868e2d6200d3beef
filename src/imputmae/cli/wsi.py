"""``imputmae wsi tiles`` (one patient's slides -> tiles, table, picture, QC row), ``imputmae wsi qc`` (merge the
QC rows of a cohort) and ``imputmae wsi tiles-cohort`` (both for every patient of a cohort in one process: the
demo's setting ``wsi.tile_jobs: cohort``, where one interpreter per patient cost more than the tiling itself).

A slide that cannot be used never fails the command: ``tiles`` exits 0 with the reason in ``PREFIX.qc.tsv`` and
writes empty tiles, an empty table and a picture that says why (Snakemake then moves on to the next patient).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from imputmae.cli import UserError
from imputmae.files import atomic_write

if TYPE_CHECKING:   # heavy imports stay inside the commands
    import pandas as pd

    from imputmae.wsi import PatientTiles

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

    c = wsub.add_parser("tiles-cohort", help="every patient's slides -> DIR/<patient>.npy, .parquet, .png, .qc.tsv "
                                             "and the cohort's QC table, in one process",
                        description="`wsi tiles` for each patient in turn, then `wsi qc` over their rows.")
    c.add_argument("--slide", action="append", default=[], metavar="PATIENT=SLIDE",
                   help="one slide file of a patient (repeat; a patient's slides in any order)")
    c.add_argument("--unavailable", action="append", default=[], metavar="PATIENT=FILE_NAME=REASON",
                   help="a slide of the patient that is not here (e.g. its download failed): recorded in its QC row")
    c.add_argument("--out-dir", required=True, metavar="DIR", help="per-patient outputs: DIR/<patient>.npy, ...")
    c.add_argument("--qc-out", required=True, metavar="TSV", help="the cohort's QC table (as `wsi qc --out`)")
    c.add_argument("--settings", default="{}", metavar="JSON", help="the config's wsi section as JSON")
    c.set_defaults(func=_tiles_cohort, n_candidates=None, keep=None, seed=None, threads=None, default_mpp=None)

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
    from imputmae.wsi import tile_patient

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
    _write_patient(result, prefix)
    return 0


def _write_patient(result: PatientTiles, prefix: Path) -> pd.DataFrame:
    """:func:`imputmae.wsi.write_patient_tiles`, logged; returns the patient's QC row (one-row table)."""
    import pandas as pd

    from imputmae.wsi import QC_COLUMNS, write_patient_tiles

    write_patient_tiles(result, prefix)
    q = result.qc
    log.info("%s: %s: %s, %d tiles (%s slide(s): %s)", q["patient"], q["slide"] or "-", q["status"], q["n_tiles"],
             q["n_slides"], q["slides"])
    return pd.DataFrame([q], columns=QC_COLUMNS)


def _tiles_cohort(args: argparse.Namespace) -> int:
    import pandas as pd

    from imputmae.wsi import QC_COLUMNS, tile_patient

    st = _settings(args)
    slides: dict[str, list[str]] = {}
    unavailable: dict[str, list[tuple[str, str]]] = {}
    for item in args.slide:
        patient, sep, path = item.partition("=")
        if not sep or not patient or not path:
            raise UserError(f"--slide {item!r}: expected PATIENT=SLIDE, e.g. 'DEMO-A1-0001=data/x.svs'")
        slides.setdefault(patient, []).append(path)
    for item in args.unavailable:
        patient, sep, rest = item.partition("=")
        name, sep2, reason = rest.partition("=")
        if not sep or not sep2 or not patient or not name:
            raise UserError(f"--unavailable {item!r}: expected PATIENT=FILE_NAME=REASON, e.g. "
                            "'DEMO-A1-0001=x.svs=not downloaded'")
        unavailable.setdefault(patient, []).append((name, reason or "unavailable"))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for patient in sorted(set(slides) | set(unavailable)):
        result = tile_patient(sorted(slides.get(patient, [])), patient, st, unavailable=unavailable.get(patient, []))
        rows.append(_write_patient(result, out_dir / patient))
    table = _merge_qc(rows) if rows else pd.DataFrame(columns=QC_COLUMNS)
    _write_qc(args.qc_out, table)
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
    _write_qc(args.out, _merge_qc(frames) if frames else pd.DataFrame(columns=QC_COLUMNS))
    return 0


def _merge_qc(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The cohort's QC table from per-patient rows: one row per patient, sorted by patient."""
    import pandas as pd

    table = pd.concat(frames, ignore_index=True)
    dup = table["patient"][table["patient"].duplicated()].unique()
    if len(dup):
        raise UserError(f"patient(s) {sorted(dup)[:5]} appear in more than one QC file; give each patient once")
    return table.sort_values("patient", kind="stable").reset_index(drop=True)


def _write_qc(path: str | Path, table: pd.DataFrame) -> None:
    out = atomic_write(path, lambda tmp: table.to_csv(tmp, sep="\t", index=False, float_format="%.6g"))
    n_ok = int((table["status"] == "ok").sum())
    log.info("%s: %d patients, %d ok, %d not (WSI missing downstream)", out, len(table), n_ok, len(table) - n_ok)
