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
    from imputmae.config import model_sizes, pretrain_config, pretrain_dir, size_cohorts
    from imputmae.engine import folds_to_run
    from imputmae.table4 import table4, table4_by_size, write_table4

    cfg = config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Path(cfg["results"])
    parts, n_folds = {}, []
    for size in model_sizes(cfg):   # one pooled pretraining per model size, each on its own cohorts
        sub = pretrain_config(cfg, size)
        runs = ["multimodal", *sub["pretrain"]["unimodal"]]
        checkpoints = {(run, f): results / pretrain_dir(cfg, size=size, run=run, fold=f) / "checkpoint.pt"
                       for run in runs for f in folds_to_run(sub, run)}
        missing = [str(p) for p in checkpoints.values() if not p.is_file()]
        if missing:
            raise UserError(f"missing checkpoints: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                            "(run `imputmae pretrain` or snakemake first)")
        try:
            parts[size] = table4(sub, checkpoints=checkpoints, device=args.device)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from None
        # the reconstruction table's folds: those both the multimodal and the unimodal runs have
        n_folds.append(min(len(folds_to_run(sub, r)) for r in runs))
    if len(parts) == 1:
        table, per_fold, imputation = next(iter(parts.values()))
    else:
        table, per_fold, imputation = table4_by_size(parts, {s: size_cohorts(cfg, s) for s in parts})
    out = Path(args.out_dir or results / "tables")
    write_table4(out, table, per_fold, imputation, n_folds=min(n_folds))
    print(table.to_string())
    return 0
