"""``imputmae cox-baseline``: the Cox-PCA reference on every fold and modality set of a cohort
(:func:`imputmae.baselines.run_cox_pca_folds`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from imputmae.cli import UserError
from imputmae.files import atomic_write
from imputmae.modalities import MODALITIES, MODALITY_SETS
from imputmae.cli._survival_io import _write_json, _read_table, _fold_patients

log = logging.getLogger("imputmae.survival")

MODSETS = MODALITY_SETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cox-baseline", help="penalised Cox on training-fitted PCA, every fold and modality set")
    p.add_argument("--results", required=True)
    p.add_argument("--cohort", required=True)
    p.add_argument("--modsets", nargs="+", default=list(MODSETS), choices=MODSETS)
    p.add_argument("--params", default="{}", help='JSON: n_components, penalizer, n_bins, cut_scheme, seed')
    p.add_argument("--out", required=True, help="folder: {modset}/fold{k}/predictions.parquet, metrics.json")
    p.set_defaults(func=_cox)


def _cox(args: argparse.Namespace) -> int:
    from imputmae.baselines import load_modality_features, run_cox_pca_folds

    splits = _read_table(Path(args.results) / "splits.parquet", "the outer-fold splits")
    splits = splits[splits["cohort"] == args.cohort]
    _, clinical = _fold_patients(args.results, args.cohort, int(splits["fold"].min()))
    p = json.loads(args.params)
    kw = {k: p[k] for k in ("n_components", "penalizer", "n_bins", "cut_scheme", "seed") if k in p}
    features = {m: load_modality_features(args.results, args.cohort, m) for m in MODALITIES}
    for modset in args.modsets:
        if modset != "all" and features[modset].empty:  # e.g. own tables without slides: a record, not a crash
            reason = f"no patient of {args.cohort} has {modset}"
            log.warning("%s cox-pca %s: %s; its metrics say so", args.cohort, modset, reason)
            for fold in sorted(splits["fold"].unique()):
                _write_json(Path(args.out) / modset / f"fold{fold}" / "metrics.json",
                            {"cohort": args.cohort, "modset": modset, "model": "cox_pca", "fold": int(fold),
                             "n_test": 0, "reason": reason,
                             **{k: float("nan") for k in ("antolini", "adj_antolini", "harrell", "ibs")}})
            continue
        try:
            results = run_cox_pca_folds(features, clinical, splits, modset, **kw)
        except ValueError as exc:
            raise UserError(f"{args.cohort} cox-pca {modset}: {exc}") from None
        for r in results:
            d = Path(args.out) / modset / f"fold{r.metrics['fold']}"
            r.metrics.update(cohort=args.cohort, modset=modset, model="cox_pca")
            r.predictions.attrs["cuts_days"] = [float(c) for c in r.cuts]   # s_k at cuts_days[k], as fine-tuning
            atomic_write(d / "predictions.parquet", lambda t, r=r: r.predictions.to_parquet(t, index=False))
            _write_json(d / "metrics.json", r.metrics)
            log.info("%s cox-pca %s fold %d: antolini %.3f", args.cohort, modset, r.metrics["fold"],
                     r.metrics["antolini"])
    return 0


