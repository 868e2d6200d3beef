"""``imputmae report --results DIR --out FILE``: the pipeline's self-contained HTML report (imputmae.htmlreport)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputmae.cli import UserError
from imputmae.files import atomic_write

log = logging.getLogger("imputmae.report")


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML file: Tables 2-4, figures, loss curves and QC")
    p.add_argument("--results", required=True, help="the results folder {R} (docs/layout.md)")
    p.add_argument("--out", required=True, help="the HTML file to write, e.g. {R}/report.html")
    p.add_argument("--cohorts", nargs="+", default=None,
                   help="cohorts to show (default: every cohort folder found under --results)")
    p.add_argument("--config", nargs="+", default=[], metavar="FILE",
                   help="the run's configuration files: their names and SHA-256 go in the header")
    p.add_argument("--thumbnails", type=_count, default=12, metavar="N",
                   help="at most N tile/QC pictures per cohort, first patients in sorted order (default 12)")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from imputmae.htmlreport import build_report

    results = Path(args.results)
    if not results.is_dir():
        raise UserError(f"{results}: results folder not found (give the folder `results:` names in the config)")
    for c in args.config:
        if not Path(c).is_file():
            raise UserError(f"{c}: configuration file not found")
    text = build_report(results, cohorts=args.cohorts, config_files=args.config, n_thumbnails=args.thumbnails)
    out = Path(args.out)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))
    log.info("report: %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return 0
