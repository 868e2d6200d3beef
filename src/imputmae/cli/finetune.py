"""``imputmae finetune``: one cohort and outer fold, one or several modality sets; parses its arguments, makes one
library call (:func:`imputmae.finetune.grouped.iter_finetune_sets`: :func:`imputmae.finetune.run_finetune` per set,
several sharing one process and the frozen features, each giving the bytes of its own run) and writes each set's
model.pt, predictions.parquet and metrics.json atomically as it finishes."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from imputmae.choices import CINDEX_CHOICES, MISSING_CHOICES
from imputmae.cli import UserError
from imputmae.files import atomic_write
from imputmae.modalities import MODALITY_SETS
from imputmae.cli._survival_io import _fold_patients, _write_json, add_fold_arguments

log = logging.getLogger("imputmae.survival")

MODSETS = MODALITY_SETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune the survival models of one cohort and fold (one or more "
                       "modality sets)")
    add_fold_arguments(p)
    p.add_argument("--modset", required=True, nargs="+", choices=MODSETS,
                   help="the modality sets; several train one after the other in this process (shared frozen "
                   "features; each set's files are those of its own run)")
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--params", default="{}", help="the config's finetune section as JSON (defaults: the paper's)")
    p.add_argument("--cindex", default="antolini", choices=CINDEX_CHOICES,
                   help="the validation C-index (config evaluation.cindex)")
    p.add_argument("--missing", default="impute", choices=MISSING_CHOICES,
                   help="missing modalities: imputed by the pretrained decoder (paper) or zero embeddings")
    p.add_argument("--out", required=True, help="output folder: predictions.parquet, metrics.json, model.pt; with "
                   "several --modset a pattern containing {modset} (e.g. R/finetune/BRCA/{modset}/fold0)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_finetune)


def _out_dirs(out: str, modsets: list[str]) -> dict[str, Path]:
    """{modset: output folder}: ``out`` itself for one set, ``out`` with {modset} filled in for several."""
    if len(set(modsets)) != len(modsets):
        raise UserError(f"--modset {' '.join(modsets)}: a set is named twice")
    if len(modsets) == 1 and "{modset}" not in out:
        return {modsets[0]: Path(out)}
    if "{modset}" not in out:
        raise UserError(f"--out {out}: with several --modset, give a pattern containing {{modset}} "
                        f"(e.g. {out}/{{modset}})")
    return {m: Path(out.replace("{modset}", m)) for m in modsets}


def _finetune(args: argparse.Namespace) -> int:
    import torch

    from imputmae.checkpoint import load_pretrained
    from imputmae.finetune import CONFIG_KEYS, FinetuneConfig, load_cohort_inputs, normalizers_from_states
    from imputmae.finetune.grouped import iter_finetune_sets

    if args.threads:
        torch.set_num_threads(args.threads)
    outs = _out_dirs(args.out, list(args.modset))
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
    cfg = FinetuneConfig(missing=args.missing, cindex=args.cindex,
                         **{k: params[k] for k in CONFIG_KEYS if k in params})
    normalizers = normalizers_from_states(norm_states)
    inputs = load_cohort_inputs(args.results, args.cohort, normalizers, train + test)
    try:
        for modset, res in iter_finetune_sets(mae, inputs, clinical, train, test, list(outs), cfg, fold=args.fold):
            _write_outputs(outs[modset], res, mae, norm_states, args)
    except ValueError as exc:
        raise UserError(f"{args.cohort} fold {args.fold}: {exc}") from None
    return 0


def _write_outputs(out: Path, res, mae, norm_states, args: argparse.Namespace) -> None:
    """One set's model.pt, predictions.parquet and metrics.json (its ``cpu_seconds``, Table 3's time per fold,
    from :func:`iter_finetune_sets`)."""
    from imputmae.finetune import save_survival_model

    res.metrics.update(cohort=args.cohort, model="impuTMAE", checkpoint=str(args.checkpoint),
                       n_parameters=sum(p.numel() for p in res.model.parameters() if p.requires_grad))
    save_survival_model(out / "model.pt", res, mae, norm_states)
    atomic_write(out / "predictions.parquet", lambda t: res.predictions.to_parquet(t, index=False))
    _write_json(out / "metrics.json", res.metrics)
    log.info("%s %s fold %d: antolini %.3f, harrell %.3f, ibs %.3f (best epochs %s; %.1fs cache, %.1fs train)",
             args.cohort, res.metrics["modset"], args.fold, res.metrics["antolini"], res.metrics["harrell"],
             res.metrics["ibs"], res.metrics["best_epochs"], res.metrics["seconds_cache"],
             res.metrics["seconds_train"])
