"""``imputmae pretrain``: pretrain the multimodal MAE (or a unimodal one) on one fold's training patients."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imputmae.cli import add_config_arguments, config_from_args
from imputmae.modalities import MODALITIES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain",
                       help="pretrain the multimodal MAE (or a unimodal one) on one fold's training patients")
    add_config_arguments(p)
    p.add_argument("--run", required=True, choices=["multimodal", *MODALITIES])
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--out-dir", help="default {results}/pretrain/{run}/fold{fold}")
    p.add_argument("--resume", action="store_true", help="continue from out-dir/checkpoint.pt when present")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from imputmae.cli import UserError
    from imputmae.engine import EXIT_PREEMPTED, pretrain
    from imputmae.finetune import MemoryNeeded
    from imputmae.memory import check_pretrain_memory

    cfg = config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir or Path(cfg["results"]) / "pretrain" / args.run / f"fold{args.fold}")
    gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    try:
        check_pretrain_memory(cfg, gpu=gpu)     # before anything is loaded: the rule, the figure, the setting
        res = pretrain(cfg, run=args.run, fold=args.fold, out_dir=out_dir, resume=args.resume, device=args.device,
                       progress=not args.no_progress)
    except (FileNotFoundError, ValueError, MemoryNeeded) as exc:
        raise UserError(str(exc)) from None
    except torch.OutOfMemoryError as exc:
        raise UserError(f"pretrain {args.run} fold {args.fold}: the GPU ran out of memory on batches of "
                        f"{cfg['pretrain']['batch_size']} ({str(exc).splitlines()[0]}): lower pretrain.batch_size, "
                        f"or give the job more GPUs (`set-resources: pretrain: gpu:` in the profile: the batch is "
                        f"split over them)") from None
    if res["status"] == "preempted":
        print(f"preempted at epoch {res['epoch']}, step {res['step']}: checkpoint written; rerun with --resume",
              file=sys.stderr)
        return EXIT_PREEMPTED
    last = res["history"][-1] if res["history"] else {}
    print(f"pretrain {args.run} fold {args.fold}: {res['epoch']} epochs, {res['step']} steps, "
          f"final loss {last.get('loss', float('nan')):.4g} -> {out_dir}")
    return 0
