"""``imputmae omics rna|dnam|tables|qc``: build the omics matrices of a cohort.

A file table is CSV/TSV/parquet with columns ``patient`` and ``path`` (or ``local_path``), and ``platform`` for
DNAm (GDC's field); the GDC stage's ``selected.parquet`` is one (``--modality`` picks its rows). With
``--report`` (the GDC stage's ``download_<modality>.tsv``: file_id, local_path, status, reason), a file whose
download failed goes to the QC table (that patient's modality is missing), in either ``--on-malformed`` mode.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputmae.choices import ON_MALFORMED_CHOICES

log = logging.getLogger("imputmae.omics")

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("omics", help="RNA-seq and DNA methylation matrices (GDC files or your own tables)")
    osub = p.add_subparsers(dest="omics_command", metavar="STEP", required=True)

    def common(q: argparse.ArgumentParser, modality: str) -> None:
        q.add_argument("--files", required=True, nargs="+",
                       help="a table of patient, path (or local_path)" + (", platform" if modality == "dnam" else "")
                       + " (CSV/TSV/parquet); or the download folder, or the files (patient: the file name up to "
                       "its first dot)")
        q.add_argument("--modality", default=None, help=f"keep rows whose modality column is this (e.g. {modality})")
        q.add_argument("--report", default=None, help="download report TSV (file_id, local_path, status)")
        q.add_argument("--out", required=True, help=f"{modality}.parquet")
        q.add_argument("--qc", default=None,
                       help=f"QC table (patient, modality, file, reason), TSV (default: beside --out, {modality}_qc.tsv "
                       f"for {modality}.parquet)")
        q.add_argument("--on-malformed", choices=ON_MALFORMED_CHOICES, default="error")
        q.add_argument("--threads", type=int, default=2)

    r = osub.add_parser("rna", help="patient x gene FPKM-UQ matrix from GDC STAR - Counts files")
    common(r, "rna")
    r.add_argument("--column", default="fpkm_uq_unstranded")
    r.add_argument("--gene-type", default="protein_coding")
    r.set_defaults(func=_run_rna)

    d = osub.add_parser("dnam", help="patient x probe beta matrix from SeSAMe level-3 files")
    common(d, "dnam")
    d.add_argument("--probes-out", default=None,
                   help="the probe set, one per line, sorted (default: beside --out, dnam_probes.txt for dnam.parquet)")
    d.add_argument("--probe-list", default=None, help="use these probes instead of the 27k/450k overlap")
    d.set_defaults(func=_run_dnam)

    t = osub.add_parser("tables", help="bring your own matrices: validate and write the cohort's files")
    t.add_argument("--cohort", required=True, help="cohort name (clinical project_id)")
    t.add_argument("--clinical", required=True, help="patient, time (days), event (1 death, 0 censored)")
    t.add_argument("--rna", default=None, help="first column patient, other columns genes")
    t.add_argument("--dnam", default=None, help="first column patient, other columns probes (betas)")
    t.add_argument("--out-dir", required=True, help="{results}/{cohort}")
    t.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-normalize: the tables are already normalised; downstream only pads them")
    t.set_defaults(func=_run_tables)

    q = osub.add_parser("qc", help="concatenate per-modality QC tables")
    q.add_argument("inputs", nargs="+")
    q.add_argument("--out", required=True)
    q.set_defaults(func=_run_qc)


def _file_table(args: argparse.Namespace, modality: str):
    """(files: patient, path[, platform]; qc rows for files the report says are not usable)."""
    import numpy as np
    import pandas as pd

    from imputmae.cli import UserError
    from imputmae.omics import GDC_FILE_PATTERNS, file_table_from_paths

    src = Path(args.files[0])
    if len(args.files) > 1 or src.is_dir() or src.match(GDC_FILE_PATTERNS[modality]):
        try:
            files = file_table_from_paths(args.files, modality)
        except ValueError as exc:
            raise UserError(f"--files: {exc}") from None
        log.info("%s: %d file(s) from %s", modality, len(files), " ".join(args.files))
        src = Path(args.files[0])
    elif not src.is_file():
        raise UserError(f"--files {src}: no such file or folder")
    elif src.suffix in (".parquet", ".pq"):
        files = pd.read_parquet(src)
    else:
        files = pd.read_csv(src, sep="," if src.suffix == ".csv" else "\t", dtype=str, keep_default_na=False)
    if args.modality and "modality" in files.columns:
        files = files[files["modality"] == args.modality]
    if "path" not in files.columns and "local_path" in files.columns:
        files = files.rename(columns={"local_path": "path"})
    from imputmae.gdc import usable_downloads

    qc = []
    if args.report:  # the GDC stage's download report: a failed download's modality is missing for its patient
        rep = pd.read_csv(args.report, sep="\t", dtype=str, keep_default_na=False)
        if "file_id" not in rep.columns or "file_id" not in files.columns:
            raise UserError(f"--report {args.report}: both tables need a file_id column to be joined")
        rep = rep.drop_duplicates("file_id", keep="last").set_index("file_id")
        if "local_path" in rep.columns:
            local = files["file_id"].map(rep["local_path"])
            files = files.assign(path=local.where(local.notna() & (local != ""), files.get("path")))
        status = files["file_id"].map(rep["status"]) if "status" in rep.columns else pd.Series("", index=files.index)
        reason = files["file_id"].map(rep["reason"]) if "reason" in rep.columns else pd.Series("", index=files.index)
        absent = ~files["file_id"].isin(rep.index)
        bad = absent | ~usable_downloads(status)
        for i in np.flatnonzero(bad.to_numpy()):
            row = files.iloc[i]
            why = "not in the download report" if absent.iloc[i] else f"download failed: {reason.iloc[i] or 'no reason given'}"
            qc.append(dict(patient=row["patient"], modality=modality, file=row.get("path", row["file_id"]), reason=why))
        if bad.any():
            log.warning("%s: %d file(s) not downloaded: modality missing for those patients", modality, int(bad.sum()))
        files = files[~bad.to_numpy()]
    missing = {"patient", "path"} - set(files.columns)
    if missing:
        raise UserError(f"--files {src}: needs columns patient and path (or local_path); missing {sorted(missing)}")
    dup = files["patient"][files["patient"].duplicated()]
    if len(dup):
        raise UserError(f"--files {src}: patient {dup.iloc[0]} has more than one {modality} file; the file table "
                        f"must hold the one file chosen per patient")
    return files.reset_index(drop=True), qc


def beside(out: str | Path, suffix: str) -> Path:
    """A side output's default path: beside ``out``, named after its stem (``rna.parquet`` -> ``rna_qc.tsv``)."""
    out = Path(out)
    return out.with_name(f"{out.name.split('.', 1)[0]}{suffix}")


def _write_qc(path: str, qc_frames, modality: str) -> None:
    import pandas as pd

    from imputmae.files import atomic_write_text
    from imputmae.omics import QC_COLUMNS

    qc = pd.concat([f for f in qc_frames if len(f)], ignore_index=True) if any(len(f) for f in qc_frames) else \
        pd.DataFrame(columns=list(QC_COLUMNS))
    atomic_write_text(path, qc[list(QC_COLUMNS)].to_csv(sep="\t", index=False))
    if len(qc):
        log.warning("%s: %d file(s) in the QC table %s (modality missing for those patients)", modality, len(qc),
                    path)


def _run_rna(args: argparse.Namespace) -> int:
    import pandas as pd

    from imputmae.cli import UserError
    from imputmae.omics import MalformedFileError, build_rna_matrix, write_matrix

    files, pre_qc = _file_table(args, "rna")
    try:
        matrix, qc = build_rna_matrix(files, column=args.column, gene_type=args.gene_type,
                                      on_malformed=args.on_malformed, threads=args.threads)
    except (MalformedFileError, ValueError) as exc:
        raise UserError(str(exc)) from None
    write_matrix(matrix, args.out, normalized=False,
                 metadata=dict(modality="rna", source="gdc", column=args.column, gene_type=args.gene_type))
    _write_qc(args.qc or beside(args.out, "_qc.tsv"), [pd.DataFrame(pre_qc), qc], "rna")
    log.info("rna: %d patients x %d genes -> %s", *matrix.shape, args.out)
    return 0


def _run_dnam(args: argparse.Namespace) -> int:
    import pandas as pd

    from imputmae.cli import UserError
    from imputmae.files import atomic_write_text
    from imputmae.omics import MalformedFileError, build_dnam_matrix, dnam_probe_set, read_probe_list, write_matrix

    files, pre_qc = _file_table(args, "dnam")
    try:
        if args.probe_list:
            probes, probe_qc = read_probe_list(args.probe_list), pd.DataFrame()
            log.info("dnam: %d probes from %s", len(probes), args.probe_list)
        else:
            probes, probe_qc = dnam_probe_set(files, on_malformed=args.on_malformed, threads=args.threads)
        if len(probe_qc):
            files = files[~files["path"].astype(str).isin(probe_qc["file"])]
        matrix, qc = build_dnam_matrix(files, probes, on_malformed=args.on_malformed, threads=args.threads)
    except (MalformedFileError, ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    atomic_write_text(args.probes_out or beside(args.out, "_probes.txt"), "".join(p + "\n" for p in probes))
    write_matrix(matrix, args.out, normalized=False, metadata=dict(modality="dnam", source="gdc"))
    _write_qc(args.qc or beside(args.out, "_qc.tsv"), [pd.DataFrame(pre_qc), probe_qc, qc], "dnam")
    nan = float(matrix.isna().to_numpy().mean()) if matrix.size else 0.0
    log.info("dnam: %d patients x %d probes (NaN fraction %.4f) -> %s", *matrix.shape, nan, args.out)
    return 0


def _run_tables(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from imputmae.cli import UserError
    from imputmae.files import atomic_write, atomic_write_text
    from imputmae.omics import QC_COLUMNS, read_clinical_table, read_feature_table, unlabelled_patients, write_matrix

    if not (args.rna or args.dnam):
        raise UserError("give --rna and/or --dnam with --clinical")
    out = Path(args.out_dir)
    try:
        clinical = read_clinical_table(args.clinical, args.cohort)
        mats = {m: read_feature_table(p, m) for m, p in (("rna", args.rna), ("dnam", args.dnam)) if p}
    except ValueError as exc:
        raise UserError(str(exc)) from None
    clinical_qc = unlabelled_patients({m: (getattr(args, m), mat.index) for m, mat in mats.items()}, clinical,
                                      args.clinical, args.cohort)
    if len(clinical_qc):
        log.warning("%d patient(s) of the matrices have no row in %s (e.g. %s): no survival label, pretraining "
                    "only (listed in %s)", len(clinical_qc), args.clinical, ", ".join(clinical_qc["patient"][:3]),
                    out / "clinical_qc.tsv")
    if "dnam" in mats:
        mats["dnam"] = mats["dnam"].reindex(columns=sorted(mats["dnam"].columns))  # the fixed sorted probe order
    for m in ("rna", "dnam"):
        mat = mats.get(m)
        if mat is None:  # the modality is missing for every patient: an empty matrix keeps the layout uniform
            mat = pd.DataFrame(np.zeros((0, 0), np.float32), index=pd.Index([], name="patient", dtype=str))
        write_matrix(mat, out / f"{m}.parquet", normalized=not args.normalize,
                     metadata=dict(modality=m, source="tables", table=str(getattr(args, m) or "")))
        log.info("%s: %d patients x %d features (normalize: %s)", m, *mat.shape, args.normalize)
    atomic_write_text(out / "dnam_probes.txt", "".join(p + "\n" for p in mats.get("dnam", pd.DataFrame()).columns))
    atomic_write_text(out / "omics_qc.tsv", "\t".join(QC_COLUMNS) + "\n")
    atomic_write_text(out / "clinical_qc.tsv", clinical_qc.to_csv(sep="\t", index=False))
    atomic_write(out / "clinical.parquet", lambda tmp: clinical.to_parquet(tmp, index=False))
    log.info("clinical: %d patients, %d events", len(clinical), int(clinical["event"].sum()))
    return 0


def _run_qc(args: argparse.Namespace) -> int:
    import pandas as pd

    from imputmae.files import atomic_write_text
    from imputmae.omics import QC_COLUMNS

    frames = [pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False) for p in args.inputs]
    qc = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(QC_COLUMNS))
    atomic_write_text(args.out, qc.reindex(columns=list(QC_COLUMNS)).to_csv(sep="\t", index=False))
    return 0
