"""``imputmae finetune``: one cohort, modality set and outer fold; parses its arguments, makes one library call
(:func:`imputmae.finetune.run_finetune`) and writes model.pt, predictions.parquet and metrics.json atomically."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from imputmae.choices import CINDEX_CHOICES, MISSING_CHOICES
from imputmae.cli import UserError
from imputmae.files import atomic_write
from imputmae.modalities import MODALITY_SETS
from imputmae.cli._survival_io import _fold_patients, _write_json, add_fold_arguments

log = logging.getLogger("imputmae.survival")

MODSETS = MODALITY_SETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune the survival model of one cohort, modality set and fold")
    add_fold_arguments(p)
    p.add_argument("--modset", required=True, choices=MODSETS)
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--params", default="{}", help="the config's finetune section as JSON (defaults: the paper's)")
    p.add_argument("--cindex", default="antolini", choices=CINDEX_CHOICES,
                   help="the validation C-index (config evaluation.cindex)")
    p.add_argument("--missing", default="impute", choices=MISSING_CHOICES,
                   help="missing modalities: imputed by the pretrained decoder (paper) or zero embeddings")
    p.add_argument("--out", required=True, help="output folder: predictions.parquet, metrics.json, model.pt")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    import torch

    from imputmae.finetune import (CONFIG_KEYS, FinetuneConfig, load_cohort_inputs, normalizers_from_states,
                                   run_finetune, save_survival_model)
    from imputmae.checkpoint import load_pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    s, clinical = _fold_patients(args.results, args.cohort, args.fold)
    test = s.loc[s["fold"] == args.fold, "patient"].tolist()
    train = s.loc[s["fold"] != args.fold, "patient"].tolist()
    if not Path(args.checkpoint).is_file():
        raise UserError(f"{args.checkpoint}: pretrained checkpoint not found (run `imputmae pretrain` first)")
    mae, norm_states, meta = load_pretrained(args.checkpoint)
    pre_train = set(meta.get("extra", {}).get("train_patients", []) or [])
    if pre_train & set(test):
        log.warning("%s: the pretraining saw %d of this fold's test patients (pretrain.per_fold: false?)",
                    args.checkpoint, len(pre_train & set(test)))
    params = json.loads(args.params)
    cfg = FinetuneConfig(modset=args.modset, missing=args.missing, cindex=args.cindex,
                         **{k: params[k] for k in CONFIG_KEYS if k in params})
    normalizers = normalizers_from_states(norm_states)
    inputs = load_cohort_inputs(args.results, args.cohort, normalizers, train + test)
    t0 = time.process_time()
    try:
        res = run_finetune(mae, inputs, clinical, train, test, cfg, fold=args.fold)
    except ValueError as exc:
        raise UserError(f"{args.cohort} {args.modset} fold {args.fold}: {exc}") from None
    out = Path(args.out)
    res.metrics.update(cohort=args.cohort, model="impuTMAE", checkpoint=str(args.checkpoint),
                       cpu_seconds=round(time.process_time() - t0, 3),          # Table 3's time per fold
                       n_parameters=sum(p.numel() for p in res.model.parameters() if p.requires_grad))
    save_survival_model(out / "model.pt", res, mae, norm_states)
    atomic_write(out / "predictions.parquet", lambda t: res.predictions.to_parquet(t, index=False))
    _write_json(out / "metrics.json", res.metrics)
    log.info("%s %s fold %d: antolini %.3f, harrell %.3f, ibs %.3f (best epochs %s; %.1fs cache, %.1fs train)",
             args.cohort, args.modset, args.fold, res.metrics["antolini"], res.metrics["harrell"],
             res.metrics["ibs"], res.metrics["best_epochs"], res.metrics["seconds_cache"],
             res.metrics["seconds_train"])
    return 0


