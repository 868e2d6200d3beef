"""Survival subcommands: ``finetune``, ``cox-baseline``, ``table3``, ``predict``, ``impute``.

Each parses its arguments, makes one library call (imputmae.finetune, imputmae.baselines, imputmae.report) and
writes its outputs under temporary names renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from imputmae.choices import CINDEX_CHOICES, MISSING_CHOICES
from imputmae.cli import UserError
from imputmae.files import atomic_write
from imputmae.modalities import MODALITIES, MODALITY_SETS, is_image

log = logging.getLogger("imputmae.survival")

MODSETS = MODALITY_SETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune the survival model of one cohort, modality set and fold")
    p.add_argument("--checkpoint", required=True, help="the fold's pretrained checkpoint.pt")
    p.add_argument("--results", required=True, help="the results folder {R} (splits, clinical, omics, tiles)")
    p.add_argument("--cohort", required=True)
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

    p = sub.add_parser("cox-baseline", help="penalised Cox on training-fitted PCA, every fold and modality set")
    p.add_argument("--results", required=True)
    p.add_argument("--cohort", required=True)
    p.add_argument("--modsets", nargs="+", default=list(MODSETS), choices=MODSETS)
    p.add_argument("--params", default="{}", help='JSON: n_components, penalizer, n_bins, cut_scheme, seed')
    p.add_argument("--out", required=True, help="folder: {modset}/fold{k}/predictions.parquet, metrics.json")
    p.set_defaults(func=_cox)

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
    p.set_defaults(func=_table3)

    for name, helptext in [("predict", "risk and survival curve for new patients from whatever modalities they have"),
                           ("impute", "reconstruct new patients' missing modalities in the original feature space")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True, help="a fine-tuned model folder (model.pt) or file")
        p.add_argument("inputs", nargs="+", help="rna/dnam tables (.parquet/.csv/.tsv; prefix rna: or dnam: to "
                       "force the modality) and <patient>.npy tile files or folders of them")
        p.add_argument("--out", required=True, help="predict: a .parquet/.csv file; impute: a folder")
        p.set_defaults(func=_predict if name == "predict" else _impute)


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda t: t.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n"))


def _read_table(path: Path, what: str):
    import pandas as pd

    if not path.exists():
        raise UserError(f"{path}: {what} not found (run the stage that writes it first; see docs/layout.md)")
    return pd.read_parquet(path)


def _fold_patients(results: str, cohort: str, fold: int):
    splits = _read_table(Path(results) / "splits.parquet", "the outer-fold splits")
    s = splits[splits["cohort"] == cohort]
    if s.empty:
        raise UserError(f"{results}/splits.parquet has no patient of cohort {cohort}")
    if fold not in set(s["fold"]):
        raise UserError(f"{results}/splits.parquet: cohort {cohort} has no fold {fold} (folds {sorted(set(s['fold']))})")
    clinical = _read_table(Path(results) / cohort / "clinical.parquet", f"{cohort} clinical labels")
    clinical = clinical.set_index("patient") if "patient" in clinical.columns else clinical
    return s, clinical


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
    try:
        res = run_finetune(mae, inputs, clinical, train, test, cfg, fold=args.fold)
    except ValueError as exc:
        raise UserError(f"{args.cohort} {args.modset} fold {args.fold}: {exc}") from None
    out = Path(args.out)
    res.metrics.update(cohort=args.cohort, model="impuTMAE", checkpoint=str(args.checkpoint))
    save_survival_model(out / "model.pt", res, mae, norm_states)
    atomic_write(out / "predictions.parquet", lambda t: res.predictions.to_parquet(t, index=False))
    _write_json(out / "metrics.json", res.metrics)
    log.info("%s %s fold %d: antolini %.3f, harrell %.3f, ibs %.3f (best epochs %s; %.1fs cache, %.1fs train)",
             args.cohort, args.modset, args.fold, res.metrics["antolini"], res.metrics["harrell"],
             res.metrics["ibs"], res.metrics["best_epochs"], res.metrics["seconds_cache"],
             res.metrics["seconds_train"])
    return 0


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
    rows = [r for r in args.rows if r != "none"]
    try:
        out = build_table3(R, args.cohorts, args.modsets, args.folds, args.cindex, rows, args.n_boot, absent, oracle,
                           not args.no_literature, args.km_modset)
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
    print(table3_markdown(out["table"], args.cindex, out["notes"], out["published"], args.n_boot))
    return 0


def _load_model_and_inputs(args: argparse.Namespace):
    """The fine-tuned model at ``args.model`` -> (model, mae, state, normalizers) and ``args.inputs`` read with
    those normalisers; a missing or unreadable file is a UserError."""
    from imputmae.finetune import load_survival_model, normalizers_from_states, read_user_inputs

    try:
        model, mae, state = load_survival_model(args.model)
        normalizers = normalizers_from_states(state["normalizers"])
        inputs = read_user_inputs(args.inputs, normalizers)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return model, mae, state, normalizers, inputs


def _predict(args: argparse.Namespace) -> int:
    from imputmae.finetune import predict_patients

    model, mae, state, _, inputs = _load_model_and_inputs(args)
    if not inputs.patients():
        raise UserError("no patient in the inputs")
    out = predict_patients(model, mae, inputs, state)
    path = Path(args.out)
    cuts = out.attrs["cuts_days"]
    out = out.rename(columns={f"s_{k}": f"S({c:.0f}d)" for k, c in enumerate(cuts)})
    atomic_write(path, (lambda t: out.to_csv(t, index=False)) if path.suffix in (".csv", ".tsv")
            else (lambda t: out.to_parquet(t, index=False)))
    log.info("%d patients -> %s", len(out), path)
    return 0


def _save_npy(path: Path, array) -> None:
    import numpy as np

    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
        np.save(fh, array)


def _impute(args: argparse.Namespace) -> int:
    from imputmae.finetune import impute_patients, imputed_tables

    _, mae, _, normalizers, inputs = _load_model_and_inputs(args)
    tables = imputed_tables(impute_patients(mae, inputs), normalizers)
    out = Path(args.out)
    for m, t in tables.items():
        if is_image(m):
            for p, tiles in t.items():
                atomic_write(out / "wsi" / f"{p}.npy", lambda f, tiles=tiles: _save_npy(f, tiles))
        else:
            atomic_write(out / f"{m}.parquet", lambda f, t=t: t.to_parquet(f))
        log.info("imputed %s for %d patients", m, len(t))
    if not tables:
        log.info("nothing to impute: every patient has every modality")
    return 0
