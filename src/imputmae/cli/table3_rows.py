"""``imputmae table3-rows``: Table 3's rerun rows (baselines and ablations) on one cohort and outer fold.

Parses its arguments, makes one library call (:func:`imputmae.baselines.rows.run_fold_rows_from_results`) and
writes ``{out}/{row}/predictions.parquet`` and ``metrics.json`` per row under temporary names renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from imputmae.choices import CINDEX_CHOICES
from imputmae.cli import UserError
from imputmae.cli._survival_io import add_fold_arguments
from imputmae.files import atomic_write

log = logging.getLogger("imputmae.table3_rows")


def register(sub: argparse._SubParsersAction) -> None:
    # The row names are checked when the command runs (imputmae.baselines.rows.ROWS): importing the baselines here
    # would import torch and lifelines in every `imputmae` command, ~4 CPU-s per Snakemake job.
    p = sub.add_parser("table3-rows", help="Table 3's baselines and ablations on one cohort and outer fold")
    add_fold_arguments(p)
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--rows", nargs="+", required=True, metavar="ROW", help="the rows to train (one job: shared "
                   "imputed inputs and tile features): names of imputmae.baselines.rows.ROWS, e.g. multisurv cmta")
    p.add_argument("--params", default="{}", help="JSON: {finetune: the config's finetune section, baselines: "
                   "per-baseline setting overrides, cox: n_components, penalizer, n_bins, cut_scheme, seed}")
    p.add_argument("--cindex", default="antolini", choices=CINDEX_CHOICES)
    p.add_argument("--out", required=True, help="folder: {row}/predictions.parquet, {row}/metrics.json")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_table3_rows)


def _table3_rows(args: argparse.Namespace) -> int:
    import torch

    from imputmae.baselines.rows import ROWS, run_fold_rows_from_results

    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        raise UserError(f"--rows: unknown row(s) {', '.join(unknown)}; the rows are {', '.join(ROWS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    p = json.loads(args.params)
    try:
        results = run_fold_rows_from_results(args.results, args.cohort, args.fold, args.checkpoint, args.rows,
                                             p.get("finetune", {}), args.cindex, p.get("baselines", {}),
                                             p.get("cox", {}))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"{args.cohort} fold {args.fold}: {exc}") from None
    for name, r in results.items():
        d = Path(args.out) / name
        r.metrics.update(cohort=args.cohort)
        r.metrics.pop("history", None)
        atomic_write(d / "predictions.parquet", lambda t, r=r: r.predictions.to_parquet(t, index=False))
        atomic_write(d / "metrics.json", lambda t, r=r: t.write_text(
            json.dumps(r.metrics, indent=1, sort_keys=True, default=float) + "\n"))
        log.info("%s fold %d %s: antolini %.3f (%d test patients, %.1f CPU s)", args.cohort, args.fold, name,
                 r.metrics["antolini"], r.metrics["n_test"], r.metrics["cpu_seconds"])
    return 0
