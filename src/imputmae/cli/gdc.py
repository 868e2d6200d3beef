"""``imputmae gdc manifest|select|download|clinical``.

Each reads the GDC API (``--api URL``) or a local gdc-client copy (``--mirror DIR``) and writes its outputs
through temporary names. ``gdc download`` records a file that still fails after the retries in its report
(status ``failed``, with the reason) and goes on; ``--strict`` makes it exit 1 when any file failed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputmae.cli import UserError
from imputmae.files import atomic_write
from imputmae.modalities import MODALITIES

log = logging.getLogger("imputmae.gdc")


def _source(p: argparse.ArgumentParser, token: bool = False) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--api", help="GDC API base URL, e.g. https://api.gdc.cancer.gov")
    src.add_argument("--mirror", help="a local copy in gdc-client layout (files.json, cases.json, data/<id>/<name>)")
    p.add_argument("--retries", type=int, default=8, help="per request; exponential backoff, Retry-After honoured")
    p.add_argument("--backoff", type=float, default=1.0, help="first backoff in seconds (doubles each retry)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds, per request (connect and read)")
    if token:
        p.add_argument("--token-file", help="GDC token file for controlled data (sent as X-Auth-Token; never logged)")


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("gdc", help="GDC acquisition: manifest, selection, verified downloads, clinical labels")
    gsub = g.add_subparsers(dest="gdc_command", metavar="ACTION", required=True)

    m = gsub.add_parser("manifest", help="list the RNA-seq, DNAm and diagnostic-slide files of projects")
    m.add_argument("--project", action="append", required=True, help="GDC project id (repeat for several)")
    m.add_argument("--out", required=True, help="manifest.parquet")
    m.add_argument("--page-size", type=int, default=500)
    _source(m, token=True)
    m.set_defaults(func=_manifest)

    s = gsub.add_parser("select", help="one RNA and one DNAm file per patient, all of its diagnostic slides")
    s.add_argument("manifest", help="manifest.parquet from `gdc manifest`")
    s.add_argument("--out", required=True, help="selected.parquet")
    s.add_argument("--download-dir", required=True, help="where `gdc download` puts files (for local_path)")
    s.add_argument("--sample-type", action="append", required=True, dest="sample_types",
                   help="sample types in preference order (repeat), e.g. 'Primary Tumor'")
    s.set_defaults(func=_select)

    d = gsub.add_parser("download", help="download and verify files into DEST/<file_id>/<file_name>")
    d.add_argument("manifest", help="our manifest/selected parquet, or the GDC portal's manifest.tsv")
    d.add_argument("--dest", required=True, help="download folder (gdc-client layout)")
    d.add_argument("--report", default=None,
                   help="TSV report, one row per file (default: DEST/download_report.tsv, or download_<modality>.tsv "
                        "with --modality)")
    d.add_argument("--modality", choices=MODALITIES, help="only this modality (parquet manifests)")
    d.add_argument("--workers", type=int, default=4)
    d.add_argument("--strict", action="store_true", help="exit 1 when any file failed (default: record, go on)")
    d.add_argument("--no-progress", action="store_true")
    _source(d, token=True)
    d.set_defaults(func=_download)

    c = gsub.add_parser("clinical", help="survival labels from /cases, with a QC table of dropped patients")
    c.add_argument("--project", action="append", required=True)
    c.add_argument("--out", required=True, help="clinical.parquet")
    c.add_argument("--qc", default=None,
                   help="the patients left out, with the reason (default: beside --out, clinical_qc.tsv for "
                        "clinical.parquet)")
    c.add_argument("--page-size", type=int, default=500)
    _source(c, token=True)
    c.set_defaults(func=_clinical)

def _gdc(call, *args, **kwargs):
    """``call(*args, **kwargs)``, with a GDCError (a request or a file that could not be made right) as a UserError."""
    from imputmae.gdc import GDCError

    try:
        return call(*args, **kwargs)
    except GDCError as exc:
        raise UserError(str(exc)) from None


def _transport(args: argparse.Namespace):
    from imputmae.gdc import open_transport

    return _gdc(open_transport, api=args.api, mirror=args.mirror, timeout_s=args.timeout,
                token_file=getattr(args, "token_file", None))


def _manifest(args: argparse.Namespace) -> int:
    from imputmae.gdc import fetch_manifest, write_parquet

    df, meta = _gdc(fetch_manifest, _transport(args), args.project, page_size=args.page_size, retries=args.retries,
                    backoff_s=args.backoff)
    if df.empty:
        raise UserError(f"no RNA-seq, DNAm or diagnostic-slide files for {args.project} at {meta['gdc_source']}; "
                        "check the project ids")
    write_parquet(df, args.out, meta)
    log.info("manifest: %d files -> %s (%s)", len(df), args.out, meta["gdc_data_release"])
    return 0


def _select(args: argparse.Namespace) -> int:
    from imputmae.gdc import read_manifest, select_files, write_parquet

    manifest, meta = _gdc(read_manifest, args.manifest)
    if "modality" not in manifest.columns:
        raise UserError(f"{args.manifest}: not a `gdc manifest` parquet (no modality column)")
    out = select_files(manifest, args.sample_types, args.download_dir)
    write_parquet(out, args.out, meta)
    return 0


def _download(args: argparse.Namespace) -> int:
    from imputmae.gdc import download_files, read_manifest

    manifest, _ = _gdc(read_manifest, args.manifest)
    if args.modality:
        if "modality" not in manifest.columns:
            raise UserError(f"{args.manifest}: --modality needs our parquet manifest (this one has no modality column)")
        manifest = manifest[manifest["modality"] == args.modality]
    transport = _transport(args)
    log.info("download: %d file(s), %.1f MB from %s into %s with %d worker(s)", len(manifest),
             manifest["file_size"].sum() / 1e6, transport.source, args.dest, args.workers)
    report = download_files(manifest, args.dest, transport, workers=args.workers, retries=args.retries,
                            backoff_s=args.backoff, progress=not args.no_progress)
    path = Path(args.report) if args.report else \
        Path(args.dest) / (f"download_{args.modality}.tsv" if args.modality else "download_report.tsv")
    atomic_write(path, lambda tmp: report.to_csv(tmp, sep="\t", index=False))
    counts = report["status"].value_counts().to_dict()
    failed = counts.get("failed", 0)
    log.info("download: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to do")
    if failed:
        log.error("download: %d file(s) FAILED after retries (reasons in %s); their modality counts as missing for "
                  "those patients. %s", failed, path,
                  "Exiting 1 (--strict)." if args.strict else "Continuing (pass --strict to stop instead).")
        return 1 if args.strict else 0
    return 0


def _clinical(args: argparse.Namespace) -> int:
    from imputmae.gdc import fetch_clinical, write_parquet

    clinical, qc, meta = _gdc(fetch_clinical, _transport(args), args.project, page_size=args.page_size,
                              retries=args.retries, backoff_s=args.backoff)
    if clinical.empty:
        raise UserError(f"no usable clinical rows for {args.project} ({len(qc)} dropped; see the log)")
    from imputmae.cli.omics import beside

    atomic_write(Path(args.qc) if args.qc else beside(args.out, "_qc.tsv"),
                 lambda tmp: qc.to_csv(tmp, sep="\t", index=False))
    write_parquet(clinical, args.out, meta)
    return 0
