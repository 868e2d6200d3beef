"""``imputmae table4``: Table 4, test-set masked-patch MSE of multimodal vs unimodal pretraining."""

from __future__ import annotations

import argparse
from pathlib import Path

from imputmae.cli import add_config_arguments, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table4", help="Table 4: test-set masked-patch MSE, multimodal vs unimodal pretraining")
    add_config_arguments(p)
    p.add_argument("--out-dir", help="default {results}/tables")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=_table4)


def _table4(args: argparse.Namespace) -> int:
    import torch

    from imputmae.cli import UserError
    from imputmae.engine import folds_to_run
    from imputmae.table4 import table4, write_table4

    cfg = config_from_args(args)
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
