"""Table 3's rerun rows beyond impuTMAE's own fine-tuning: one registry entry per row, one function per fold.

:data:`ROWS` names each row and how it is trained. :func:`run_fold_rows` trains any subset of them on ONE outer fold
(the same training / test patients and the same training-only label cuts as ``imputmae finetune``), computing what
the rows share once: the decoder-imputed inputs, the baselines' frozen tile features (zero-filled and imputed) and the
training mean. Rows (``missing``: how a patient's missing modality reaches the model):

* ``imputmae_no_pretrain``: impuTMAE's architecture (same MAE config, same trainable last blocks, fusion and head)
  from random initialisation (seeded), on the decoder-imputed inputs every baseline gets;
* ``imputmae_zero``: the pretrained impuTMAE with missing modalities as zero embeddings (``missing="zero"``);
* ``imputmae_mean``: the pretrained impuTMAE with missing modalities set to the training patients' mean
  (:mod:`imputmae.finetune.fill`);
* ``multisurv``, ``cmta``, ``mome``: the reimplemented baselines on decoder-imputed inputs (the paper's protocol);
* ``multisurv_zero``: MultiSurv's native zero-filling, with modality dropout in training (``modality_dropout``);
* ``cox_pca_impute``: the Cox-PCA reference on decoder-imputed inputs (the reconstructions mapped back to raw units
  by the fold's normalisers), beside its zero-fill rows of ``imputmae cox-baseline``.

Each result holds predictions (patient, fold, split, risk, time, event, s_0..s_{T-1}; ``attrs["cuts_days"]``) and
metrics (the C-indices, n_test, n_parameters, seconds_train, device, the row's settings).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from imputmae.modalities import MODALITIES, is_image

__all__ = ["Row", "ROWS", "RowResult", "run_fold_rows", "run_fold_rows_from_results"]


@dataclass(frozen=True)
class Row:
    """One Table 3 row: ``label`` (the table's model name), ``kind`` (what trains it), ``missing`` (how missing
    modalities are filled), ``baseline`` (a :data:`imputmae.baselines.BASELINES` name) and its setting overrides."""

    label: str
    kind: Literal["impuTMAE", "network", "cox_pca"]
    missing: Literal["impute", "zero", "mean"]
    pretrained: bool = True
    baseline: str | None = None
    over: Mapping[str, Any] = field(default_factory=dict)


ROWS: dict[str, Row] = {
    "imputmae_no_pretrain": Row("impuTMAE, no pretraining", "impuTMAE", "impute", pretrained=False),
    "imputmae_zero": Row("impuTMAE, zero-filled", "impuTMAE", "zero"),
    "imputmae_mean": Row("impuTMAE, training-mean filled", "impuTMAE", "mean"),
    "multisurv": Row("MultiSurv", "network", "impute", baseline="multisurv"),
    "multisurv_zero": Row("MultiSurv, zero-filled + modality dropout", "network", "zero", baseline="multisurv",
                          over={"modality_dropout": 0.5}),
    "cmta": Row("CMTA", "network", "impute", baseline="cmta"),
    "mome": Row("MoME", "network", "impute", baseline="mome"),
    "cox_pca_impute": Row("Cox-PCA, decoder-imputed", "cox_pca", "impute"),
}


@dataclass
class RowResult:
    predictions: pd.DataFrame
    metrics: dict[str, Any]


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _cox_features(raw: Mapping[str, pd.DataFrame], filled, flags: Mapping[str, np.ndarray], patients: Sequence[str],
                  normalizers: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """Raw Cox-PCA features with the decoder's reconstructions (mapped back to raw units) added as rows."""
    from imputmae.baselines.cox_pca import wsi_summary_features
    from imputmae.finetune import imputed_tables

    rec = {m: {p: torch.from_numpy(np.asarray(filled.tiles[p] if is_image(m) else filled.omics[m][p]))
               for i, p in enumerate(patients) if flags[m][i]} for m in MODALITIES}
    rec = {m: d for m, d in rec.items() if d and (is_image(m) or m in normalizers)}
    out = dict(raw)
    for m, d in rec.items():
        if is_image(m):
            rows = pd.DataFrame.from_dict({p: wsi_summary_features(t.numpy()) for p, t in d.items()}, orient="index")
        else:
            rows = imputed_tables({m: d}, normalizers)[m]
        out[m] = pd.concat([raw[m], rows.astype(np.float32)]) if len(raw[m]) else rows.astype(np.float32)
    return out


def run_fold_rows(rows: Sequence[str], mae, inputs, clinical: pd.DataFrame, train: Sequence[str],
                  test: Sequence[str], finetune_cfg, fold: int = 0, baseline_over: Mapping[str, Mapping] = {},
                  cox_features: Mapping[str, pd.DataFrame] | None = None, normalizers: Mapping[str, Any] = {},
                  cox_params: Mapping[str, Any] = {}, device: str | None = None) -> dict[str, RowResult]:
    """Train and score ``rows`` (names of :data:`ROWS`) on one fold (module docstring).

    mae: the fold's pretrained :class:`~imputmae.model.MultimodalMAE`; inputs: its
    :class:`~imputmae.finetune.PatientInputs`; clinical: index patient, columns time, event; finetune_cfg: the
    :class:`~imputmae.finetune.FinetuneConfig` of impuTMAE's rows (``modset`` and ``missing`` are set per row);
    baseline_over: per baseline name, overrides of its published settings (e.g. the demo's shorter schedules);
    cox_features / normalizers / cox_params: the Cox-PCA row's raw features, the fold's normalisers, its settings.
    """
    from imputmae.baselines import BaselineConfig, baseline_inputs, fit_cox_pca, train_baseline
    from imputmae.finetune import run_finetune, select_patients
    from imputmae.finetune.grouped import shared_features
    from imputmae.finetune.fill import decoder_filled_inputs, fit_mean_fill, mean_filled_inputs
    from imputmae.model import MultimodalMAE

    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown Table 3 rows {unknown}: one of {', '.join(ROWS)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mae = mae.to(dev)
    train = [p for p in select_patients(inputs, train, "all") if p in clinical.index]
    test = [p for p in select_patients(inputs, test, "all") if p in clinical.index]
    everyone = train + test
    shared: dict[str, Any] = {}
    shared_seconds: dict[str, float] = {}

    def once(key: str, make):
        if key not in shared:
            t0 = time.process_time()
            shared[key] = make()
            shared_seconds[key] = round(time.process_time() - t0, 3)
        return shared[key]

    recon: dict = {}   # the decoder's reconstructions, made once for every imputing row (ReconCache)

    def zero_features():   # the pretrained encoders' frozen states of every present input, read by several rows
        return once("frozen", lambda: shared_features(mae, inputs, clinical, train, test,
                                                      replace(finetune_cfg, missing="zero"), dev))

    def imputed_inputs():   # the baselines' decoder-imputed inputs, their tile features from zero_features()
        return once("bi_impute", lambda: baseline_inputs(
            mae, inputs, everyone, missing="impute", frozen=zero_features(),
            trainable_blocks=finetune_cfg.trainable_blocks, recon_cache=recon))

    out: dict[str, RowResult] = {}
    for name in rows:
        row = ROWS[name]
        t0 = time.process_time()
        if row.kind == "impuTMAE":
            cfg = replace(finetune_cfg, modset="all", missing="zero" if row.missing != "impute" or not row.pretrained
                          else "impute")
            if not row.pretrained:
                filled, _ = once("decoder", lambda: decoder_filled_inputs(mae, inputs, everyone, recon))
                torch.manual_seed(finetune_cfg.seed)
                net, data = MultimodalMAE(mae.cfg), filled
            elif row.missing == "mean":
                data, _ = mean_filled_inputs(inputs, everyone, fit_mean_fill(inputs, train))   # training only
                net = mae
            else:
                net, data = mae, inputs
            share = {} if not row.pretrained else (
                {"features": zero_features()} if cfg.missing == "zero" and data is inputs
                else {"reuse": zero_features()})
            res = run_finetune(net, data, clinical, train, test, cfg, fold=fold, device=dev, **share)
            pred, metrics = res.predictions, res.metrics
            metrics["n_parameters"] = _trainable(res.model)
        elif row.kind == "network":
            bi = (imputed_inputs() if row.missing == "impute"        # zero-filled: the imputed inputs without
                  else once("bi_zero", lambda: imputed_inputs().without_imputed()))   # what was imputed
            cfg = BaselineConfig.published(row.baseline, seed=finetune_cfg.seed, n_bins=finetune_cfg.n_bins,
                                           cut_scheme=finetune_cfg.cut_scheme, cindex=finetune_cfg.cindex,
                                           val_fraction=finetune_cfg.val_fraction,
                                           **{**baseline_over.get(row.baseline, {}), **row.over})
            res = train_baseline(bi, clinical, train, test, cfg, fold=fold, device=dev)
            pred, metrics = res.predictions, res.metrics
            pred.attrs["cuts_days"] = [float(c) for c in res.state["cuts"]]
            metrics["epochs"] = cfg.epochs
        else:
            if cox_features is None:
                raise ValueError(f"row {name}: needs cox_features (the cohort's raw features per modality)")
            filled, flags = once("decoder", lambda: decoder_filled_inputs(mae, inputs, everyone, recon))
            feats = _cox_features(cox_features, filled, flags, everyone, normalizers)
            res = fit_cox_pca(feats, clinical, train, test, "all", **cox_params)
            pred, metrics = res.predictions, res.metrics
            pred.insert(1, "fold", int(fold))
            lab = clinical.loc[pred["patient"]]
            pred["time"], pred["event"] = lab["time"].to_numpy(float), lab["event"].to_numpy(int)
            pred.attrs["cuts_days"] = [float(c) for c in res.cuts]
            metrics.update(fold=int(fold), device="cpu")
        metrics.update(row=name, label=row.label, missing=row.missing, pretrained=row.pretrained,
                       cpu_seconds=round(time.process_time() - t0, 3), shared_cpu_seconds=dict(shared_seconds))
        out[name] = RowResult(pred, metrics)
    if "frozen" in shared:
        for store in shared["frozen"].store.values():
            store.close()
    return out


def run_fold_rows_from_results(results: str, cohort: str, fold: int, checkpoint: str, rows: Sequence[str],
                               finetune: Mapping[str, Any], cindex: str = "antolini",
                               baseline_over: Mapping[str, Mapping] = {}, cox_params: Mapping[str, Any] = {},
                               device: str | None = None) -> dict[str, RowResult]:
    """:func:`run_fold_rows` on a results folder (docs/layout.md): the fold's splits, labels, inputs (through the
    checkpoint's normalisers) and pretrained MAE, as ``imputmae finetune`` reads them. ``finetune``: the config's
    finetune section; raises FileNotFoundError / ValueError naming what is absent."""
    from pathlib import Path

    from imputmae.baselines.cox_pca import load_modality_features
    from imputmae.checkpoint import load_pretrained
    from imputmae.finetune import CONFIG_KEYS, FinetuneConfig, load_cohort_inputs, normalizers_from_states

    R = Path(results)
    for f in (R / "splits.parquet", R / cohort / "clinical.parquet", Path(checkpoint)):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: not found (run the stage that writes it first; see docs/layout.md)")
    splits = pd.read_parquet(R / "splits.parquet")
    s = splits[splits["cohort"] == cohort]
    if fold not in set(s["fold"]):
        raise ValueError(f"{R}/splits.parquet: cohort {cohort} has no fold {fold}")
    clinical = pd.read_parquet(R / cohort / "clinical.parquet")
    clinical = clinical.set_index("patient") if "patient" in clinical.columns else clinical
    test = s.loc[s["fold"] == fold, "patient"].tolist()
    train = s.loc[s["fold"] != fold, "patient"].tolist()
    mae, norm_states, _ = load_pretrained(checkpoint)
    normalizers = normalizers_from_states(norm_states)
    inputs = load_cohort_inputs(results, cohort, normalizers, train + test)
    cfg = FinetuneConfig(cindex=cindex, **{k: finetune[k] for k in CONFIG_KEYS if k in finetune})
    cox = ({m: load_modality_features(results, cohort, m) for m in MODALITIES}
           if any(ROWS[r].kind == "cox_pca" for r in rows) else None)
    return run_fold_rows(rows, mae, inputs, clinical, train, test, cfg, fold=fold, baseline_over=baseline_over,
                         cox_features=cox, normalizers=normalizers, cox_params=cox_params, device=device)
