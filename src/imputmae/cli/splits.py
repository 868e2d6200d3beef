"""``imputmae splits``: the patient-level outer folds per cohort (stratified by project and event)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputmae.cli import add_config_arguments, config_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("splits", help="outer folds per cohort (stratified by project and event) -> splits.parquet")
    add_config_arguments(p)
    p.add_argument("--out", help="output parquet (default {results}/splits.parquet)")
    p.set_defaults(func=_splits)


def _splits(args: argparse.Namespace) -> int:
    from imputmae.cli import UserError
    from imputmae.data import load_patients, make_splits, select_split_patients, write_splits

    cfg = config_from_args(args)
    out = Path(args.out or Path(cfg["results"]) / "splits.parquet")
    try:
        patients = load_patients(cfg["results"], sorted(cfg["cohorts"]))
        eligible = select_split_patients(patients)
        splits = make_splits(eligible, cfg["splits"]["n_folds"], cfg["splits"]["seed"])
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    write_splits(splits, out)
    log.info("%d of %d patients (labels and RNA) in %d folds -> %s", len(splits), len(patients),
             cfg["splits"]["n_folds"], out)
    print(splits.groupby(["cohort", "fold"]).size().unstack().to_string())
    return 0
