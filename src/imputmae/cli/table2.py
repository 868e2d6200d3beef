"""``imputmae table2``: Table 2, modality availability among the patients with RNA-seq, per cohort."""

from __future__ import annotations

import argparse
from pathlib import Path

from imputmae.cli import UserError
from imputmae.modalities import MODALITIES, vector_modalities


def register(sub: argparse._SubParsersAction) -> None:
    t2 = sub.add_parser("table2", help="Table 2: modality availability among patients with RNA-seq")
    t2.add_argument("--results", required=True, help="results folder ({R}); reads {R}/<cohort>/gdc/... and clinical")
    t2.add_argument("--cohort", action="append", default=[], dest="cohorts", help="GDC cohort name (repeat)")
    t2.add_argument("--table-cohort", action="append", default=[], dest="table_cohorts",
                    help="a cohort given as tables (repeat): its patients from {R}/<cohort>/rna.parquet, dnam.parquet "
                         "and, with slides, wsi_qc.tsv (every row: a patient with a slide)")
    t2.add_argument("--out", required=True, help="output prefix, e.g. results/tables/table2")
    t2.add_argument("--with-downloads", action="store_true",
                    help="also read {R}/<cohort>/gdc/download_{rna,dnam,wsi}.tsv: failed downloads count as missing")
    t2.set_defaults(func=_table2)


def _table2(args: argparse.Namespace) -> int:
    import pandas as pd

    from imputmae.tables import table2, tables_selection, write_table

    results = Path(args.results)
    if not args.cohorts and not args.table_cohorts:
        raise UserError("table2: give at least one --cohort (GDC) or --table-cohort (own tables)")
    selected, clinical, downloads = {}, {}, {}
    for cohort in args.cohorts:
        sel = results / cohort / "gdc" / "selected.parquet"
        clin = results / cohort / "clinical.parquet"
        for p in (sel, clin):
            if not p.is_file():
                raise UserError(f"table2: {p} is missing; run `imputmae gdc select` / `gdc clinical` for {cohort}")
        selected[cohort] = pd.read_parquet(sel)
        clinical[cohort] = pd.read_parquet(clin)
        if args.with_downloads:
            reports = [results / cohort / "gdc" / f"download_{m}.tsv" for m in MODALITIES]
            missing = [str(r) for r in reports if not r.is_file()]
            if missing:
                raise UserError(f"table2 --with-downloads: {', '.join(missing)} missing; run `imputmae gdc download`")
            downloads[cohort] = pd.concat([pd.read_csv(r, sep="\t", dtype={"file_id": str}) for r in reports])
    for cohort in args.table_cohorts:
        d = results / cohort
        if not (d / "clinical.parquet").is_file():
            raise UserError(f"table2: {d / 'clinical.parquet'} is missing; run `imputmae omics tables` for {cohort}")
        have = {m: pd.read_parquet(d / f"{m}.parquet", columns=[]).index.astype(str)
                for m in vector_modalities() if (d / f"{m}.parquet").is_file()}
        if (d / "wsi_qc.tsv").is_file():
            have["wsi"] = pd.read_csv(d / "wsi_qc.tsv", sep="\t", dtype={"patient": str})["patient"].unique()
        selected[cohort] = tables_selection(have, cohort)
        clinical[cohort] = pd.read_parquet(d / "clinical.parquet")
    df = table2(selected, clinical, downloads)
    notes = []
    if args.cohorts:
        notes.append("Among patients with a selected RNA-seq file (gdc/selected.parquet): % with a selected DNAm file, "
                     "with a usable survival label (clinical.parquet) and with at least one diagnostic slide. "
                     + ("Files whose download failed count as missing. " if args.with_downloads else
                        "Availability at the GDC, before downloads. ")
                     + "WSI availability is before slide QC: the WSI stage may still drop slides (wsi_qc.tsv).")
    if args.table_cohorts:
        notes.append(f"Cohorts given as tables ({', '.join(args.table_cohorts)}): among the patients of the RNA "
                     f"matrix, % in the DNAm matrix, in the clinical table and with a slide in the slide table, "
                     f"before slide QC (no slide table: 0%).")
    note = " ".join(notes)
    write_table(df, args.out, ("csv", "md"),
                caption="Table 2: Modality availability (%) among patients with RNA-seq data.", note=note)
    print(df.to_string(index=False))
    return 0
