"""``imputmae splits``, ``imputmae pretrain``, ``imputmae table4``: outer folds, MAE pretraining, Table 4.

Each takes the merged configuration as YAML files (``--config config.yaml config.demo.yaml``) or, from Snakemake,
as one JSON string (``--config-json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from imputmae.modalities import MODALITIES

log = logging.getLogger(__name__)


def _add_config(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", nargs="+", metavar="YAML", help="config files, later ones merged over earlier ones")
    g.add_argument("--config-json", metavar="JSON", help="the merged config as JSON (what Snakemake passes)")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    from imputmae.config import load_config, validate_config

    if args.config_json:
        partial = json.loads(args.config_json)  # the rule hands over only the sections this step reads
        return validate_config(partial, sections=list(partial))
    return load_config(args.config)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("splits", help="outer folds per cohort (stratified by project and event) -> splits.parquet")
    _add_config(p)
    p.add_argument("--out", help="output parquet (default {results}/splits.parquet)")
    p.set_defaults(func=_splits)

    p = sub.add_parser("pretrain",
                       help="pretrain the multimodal MAE (or a unimodal one) on one fold's training patients")
    _add_config(p)
    p.add_argument("--run", required=True, choices=["multimodal", *MODALITIES])
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--out-dir", help="default {results}/pretrain/{run}/fold{fold}")
    p.add_argument("--resume", action="store_true", help="continue from out-dir/checkpoint.pt when present")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("table4", help="Table 4: test-set masked-patch MSE, multimodal vs unimodal pretraining")
    _add_config(p)
    p.add_argument("--out-dir", help="default {results}/tables")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=_table4)


def _splits(args: argparse.Namespace) -> int:
    from imputmae.cli import UserError
    from imputmae.data import load_patients, make_splits, select_split_patients, write_splits

    cfg = _config(args)
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


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from imputmae.cli import UserError
    from imputmae.engine import EXIT_PREEMPTED, pretrain

    cfg = _config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or Path(cfg["results"]) / "pretrain" / args.run / f"fold{args.fold}")
    try:
        res = pretrain(cfg, run=args.run, fold=args.fold, out_dir=out_dir, resume=args.resume, device=args.device,
                       progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if res["status"] == "preempted":
        print(f"preempted at epoch {res['epoch']}, step {res['step']}: checkpoint written; rerun with --resume",
              file=sys.stderr)
        return EXIT_PREEMPTED
    last = res["history"][-1] if res["history"] else {}
    print(f"pretrain {args.run} fold {args.fold}: {res['epoch']} epochs, {res['step']} steps, "
          f"final loss {last.get('loss', float('nan')):.4g} -> {out_dir}")
    return 0


def _table4(args: argparse.Namespace) -> int:
    import torch

    from imputmae.cli import UserError
    from imputmae.engine import folds_to_run
    from imputmae.table4 import table4, write_table4

    cfg = _config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(cfg["results"]) / "pretrain"
    runs = ["multimodal", *cfg["pretrain"]["unimodal"]]
    checkpoints = {(run, f): root / run / f"fold{f}" / "checkpoint.pt" for run in runs for f in folds_to_run(cfg, run)}
    missing = [str(p) for p in checkpoints.values() if not p.is_file()]
    if missing:
        raise UserError(f"missing checkpoints: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                        "(run `imputmae pretrain` or snakemake first)")
    try:
        table, per_fold, imputation = table4(cfg, checkpoints=checkpoints, device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out_dir or Path(cfg["results"]) / "tables")
    # the reconstruction table's folds: those both the multimodal and the unimodal runs have
    write_table4(out, table, per_fold, imputation, n_folds=min(len(folds_to_run(cfg, r)) for r in runs))
    print(table.to_string())
    return 0
