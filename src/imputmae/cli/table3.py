"""``imputmae table3``: Table 3 (csv, md, tex) and the Kaplan-Meier figures (:func:`imputmae.report.build_table3`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputmae.choices import CINDEX_CHOICES
from imputmae.cli import UserError
from imputmae.modalities import MODALITY_SETS
from imputmae.cli._survival_io import _read_table

log = logging.getLogger("imputmae.survival")

MODSETS = MODALITY_SETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table3", help="Table 3 (csv, md, tex) and Kaplan-Meier figures from the per-fold metrics")
    p.add_argument("--results", required=True)
    p.add_argument("--cohorts", nargs="+", required=True)
    p.add_argument("--modsets", nargs="+", default=list(MODSETS), choices=MODSETS)
    p.add_argument("--folds", type=int, required=True, help="number of outer folds")
    p.add_argument("--cindex", default="antolini", choices=CINDEX_CHOICES)
    p.add_argument("--oracle", default=None, help="the demo's oracle.parquet: adds the oracle C-index row")
    p.add_argument("--no-literature", action="store_true", help="leave out the rows quoted from the paper")
    p.add_argument("--rows", nargs="+", default=[], help="the rerun rows (imputmae.baselines.rows.ROWS) under "
                   "{R}/baselines/rows/{cohort}/fold{k}/{row}; 'none' for none")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates per cell and paired comparison")
    p.add_argument("--km-modset", default="all", choices=MODSETS, help="the model whose risk splits the KM curves")
    p.add_argument("--not-applicable", action="append", default=[], metavar="COHORT:MODSET",
                   help="a cell not fine-tuned because the cohort has no such modality (own tables without it)")
    p.add_argument("--deviation", action="append", default=[], metavar="KEY=JSON",
                   help="a deviation from the paper's text in force (imputmae.config.DEVIATIONS), named in the caption")
    p.set_defaults(func=_table3)


def _table3(args: argparse.Namespace) -> int:
    import pandas as pd

    from imputmae.report import build_table3, km_split, oracle_cindex, plot_km, table3_markdown

    R = Path(args.results)
    absent = set()
    for item in args.not_applicable:
        cohort, sep, modset = item.partition(":")
        if not sep or cohort not in args.cohorts or modset not in args.modsets:
            raise UserError(f"--not-applicable {item}: expected COHORT:MODSET with a cohort of --cohorts and a "
                            f"modality set of --modsets")
        absent.add((cohort, modset))
    oracle = None
    if args.oracle:
        splits = _read_table(R / "splits.parquet", "the outer-fold splits")
        clin = pd.concat([_read_table(R / c / "clinical.parquet", f"{c} clinical labels") for c in args.cohorts])
        oracle = oracle_cindex(_read_table(Path(args.oracle), "the demo oracle"), splits, clin)
    deviations = _deviations(args.deviation)
    rows = [r for r in args.rows if r != "none"]
    try:
        out = build_table3(R, args.cohorts, args.modsets, args.folds, args.cindex, rows, args.n_boot, absent, oracle,
                           not args.no_literature, args.km_modset, deviations)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    for cohort in args.cohorts:
        preds = out["km"].get(cohort)
        if preds is None:
            raise UserError(f"{cohort}: no {args.km_modset} predictions for the Kaplan-Meier figure")
        med = preds.groupby("fold")["median"].first().to_dict()
        p = plot_km(km_split(preds, med), f"{cohort}: impuTMAE ({args.km_modset}) test patients, split at the "
                    f"training median risk", R / "figures" / f"km_{cohort}.png")
        log.info("%s: KM log-rank p = %.3g", cohort, p)
    print(table3_markdown(out["table"], args.cindex, out["notes"], out["published"], args.n_boot, deviations))
    return 0


def _deviations(items: list[str]) -> list[tuple[str, object]]:
    """--deviation KEY=JSON items as (key, value), each key one of imputmae.config.DEVIATIONS."""
    import json

    from imputmae.config import DEVIATIONS

    known = [d.key for d in DEVIATIONS]
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise UserError(f"--deviation {item}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        try:
            out.append((key, json.loads(value)))
        except json.JSONDecodeError:
            raise UserError(f"--deviation {item}: the value is not JSON") from None
    return out
