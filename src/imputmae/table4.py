"""Table 4: the pretrained models' reconstruction error on each fold's held-out test patients, and the
multimodal model's whole-modality imputation against the training mean and a ridge reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from imputmae import data as _data
from imputmae.data import PatientDataset, build_arrays, collate, load_omics, load_patients, read_splits
from imputmae.checkpoint import load_pretrained
from imputmae.modalities import active, label
from imputmae.model import MultimodalMAE
from imputmae.tables import markdown_lines, write_texts

__all__ = ["evaluate_reconstruction", "evaluate_imputation", "ridge_imputation", "table4", "table4_by_size",
           "table4_columns",
           "table4_markdown", "write_table4"]


def _loader(dataset: PatientDataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


@torch.no_grad()
def evaluate_reconstruction(model: MultimodalMAE, dataset: PatientDataset, device: torch.device,
                            batch_size: int = 64) -> dict[str, float]:
    """Masked-patch MSE per modality over ``dataset`` (its seeded noise and fixed tiles), present modalities only.

    Pools squared errors over all masked elements of all patients (Eq. 2 over the test set)."""
    model.eval().to(device)
    sse = {m: 0.0 for m in model.modalities}
    n = {m: 0.0 for m in model.modalities}
    for batch in _loader(dataset, batch_size):
        noise = {m: batch.pop(f"noise_{m}").to(device) for m in model.modalities}
        batch = {k: v.to(device) for k, v in batch.items() if k != "index"}
        enc = model.forward_encoder(batch, model.cfg.mask_ratio, noise)
        preds = model.forward_decoder(enc)
        for m in model.modalities:
            e = enc[m]
            s, c = model.reconstruction_error(m, e["x"], preds[m], e["mask"] * e["present"][:, None])
            sse[m] += s.item()
            n[m] += c.item()
    return {m: sse[m] / n[m] if n[m] else float("nan") for m in model.modalities}


@torch.no_grad()
def evaluate_imputation(model: MultimodalMAE, dataset: PatientDataset, train_means: Mapping[str, torch.Tensor],
                        device: torch.device, batch_size: int = 64, views: int = 8) -> dict[str, dict[str, float]]:
    """Remove each modality in turn from patients that have it and at least one other, impute it from the others
    (:meth:`MultimodalMAE.impute` with ``views``), and compare (MSE over real input elements, [0, 1] space) with
    imputing the training mean.

    Returns {m: {"model": mse, "mean": mse, "ratio": model/mean, "n_patients": k}}.
    """
    model.eval().to(device)
    out = {}
    reg = active()
    for m in model.modalities:
        j = reg.index(m)
        others = [reg.index(o) for o in model.modalities if o != m]
        if not others:
            continue
        sse_model = sse_mean = count = 0.0
        patients = 0
        for batch in _loader(dataset, batch_size):
            batch = {k: v.to(device) for k, v in batch.items() if k != "index" and not k.startswith("noise_")}
            avail = batch["available"]
            rows = avail[:, j] & avail[:, others].any(1)
            if not bool(rows.any()):
                continue
            truth = batch[m][rows].float()
            cut = {k: (v[rows] if torch.is_tensor(v) else v) for k, v in batch.items()}
            cut["available"] = cut["available"].clone()
            cut["available"][:, j] = False
            cut[m] = torch.zeros_like(cut[m])
            recon = model.impute(cut, views=views)[m]
            if model.cfg.is_image(m):
                w = torch.ones_like(truth)
            else:
                recon = recon[:, : truth.shape[1]]
                real = torch.arange(truth.shape[1], device=device) < model.cfg.lengths[m]
                w = real.float().expand_as(truth)
            mean = train_means[m].to(device)
            if not model.cfg.is_image(m):
                mean = mean[..., : truth.shape[-1]]
            sse_model += (((recon - truth) ** 2) * w).sum().item()
            sse_mean += (((mean.expand_as(truth) - truth) ** 2) * w).sum().item()
            count += w.sum().item()
            patients += int(rows.sum())
        if count:
            out[m] = {"model": sse_model / count, "mean": sse_mean / count,
                      "ratio": sse_model / sse_mean if sse_mean else float("nan"), "n_patients": patients}
    return out


def ridge_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  alphas: np.ndarray = np.logspace(-2, 4, 13)) -> np.ndarray:
    """scikit-learn ``RidgeCV(alphas)`` (one leave-one-out alpha for all targets) fitted on x_train [n, p] ->
    y_train [n, q], predicting x_test [t, p] -> [t, q], without its [q, p] coefficient matrix.

    The centred targets Y_c [n, q] are fitted through their r <= n right singular vectors V [q, r]: Z = Y_c V.
    Ridge is linear in its targets and Y_c = Z V^T, so the predictions are RidgeCV's on Z times V^T plus the
    targets' mean, and the leave-one-out error summed over targets (how RidgeCV picks alpha) is the same for Z and
    Y_c (V^T has orthonormal rows): the same alpha and the same predictions up to float rounding (tested against
    RidgeCV on the whole targets). Memory [r, p] + [q, r] instead of [q, p]: 16,304 genes from 25,978 probes
    would be a 3.4 GB float64 coefficient matrix."""
    from sklearn.linear_model import RidgeCV

    mean = y_train.mean(0, dtype=np.float64)
    _, sv, vt = np.linalg.svd(y_train - mean, full_matrices=False)
    vt = vt[sv > sv.max(initial=0) * 1e-12]          # the targets' row space: r <= n directions
    ridge = RidgeCV(alphas=alphas).fit(x_train, (y_train - mean) @ vt.T)
    return ridge.predict(x_test) @ vt + mean


def ridge_imputation(model: MultimodalMAE, train: Any, test: Any, train_means: Mapping[str, torch.Tensor]
                     ) -> dict[str, float]:
    """An independent reference for whole-modality imputation: scikit-learn ``RidgeCV`` from another vector
    modality, fitted on the training patients; the training mean where the test patient lacks that modality.

    Scored on the rows :func:`evaluate_imputation` uses (patients with the modality and at least one other).
    ``train``/``test``: :class:`imputmae.data.OmicsArrays`. Returns {m: MSE over real elements} per vector modality
    m, from the first other vector modality o of the model (for the built-in registry: RNA from DNAm and back).
    """
    out = {}
    reg = active()
    vectors = reg.vectors(model.modalities)
    for m, o in ((a, b) for a in vectors for b in vectors if a != b):
        if m in out:
            continue
        j, k = train.column(m), train.column(o)
        others = [test.column(x) for x in model.modalities if x != m]
        n_m, n_o = model.cfg.lengths[m], model.cfg.lengths[o]
        fit_rows = train.available[:, j] & train.available[:, k]
        rows = test.available[:, j] & test.available[:, others].any(1)
        if fit_rows.sum() < 3 or not rows.any():
            continue
        truth = test.vectors[m][rows, :n_m]
        pred = np.broadcast_to(train_means[m].numpy()[:n_m], truth.shape).copy()
        has_o = test.available[rows, k]
        if has_o.any():
            pred[has_o] = ridge_predict(train.vectors[o][fit_rows, :n_o], train.vectors[m][fit_rows, :n_m],
                                        test.vectors[o][rows][has_o, :n_o])
        out[m] = float(((np.clip(pred, 0, 1) - truth) ** 2).mean())
    return out


PAPER_COLUMNS = ("wsi", "rna", "dnam")   # Table 4's column order in the paper


def table4_columns() -> list[str]:
    """Table 4's columns: the paper's (WSI, RNA, DNAm), then any other modality of the registry in use, as labels."""
    names = active().names
    return [label(m) for m in (*[m for m in PAPER_COLUMNS if m in names], *[m for m in names if m not in PAPER_COLUMNS])]


def _test_dataset(cfg: Mapping[str, Any], model: MultimodalMAE, normalizer_states: Mapping[str, Any], fold: int,
                  patients: pd.DataFrame, splits: pd.DataFrame, omics: Mapping[str, pd.DataFrame]) -> PatientDataset:
    test = patients[patients["patient"].isin(set(splits.loc[splits["fold"] == fold, "patient"]))]
    test = test.reset_index(drop=True)
    norms = {k: _data.restore_normalizer(v) for k, v in normalizer_states.items()}
    arrays = build_arrays(test, omics, norms)
    # evaluation noise and tile: seeded by the pretraining seed + 1000 (never a training draw), fixed per patient
    return PatientDataset(arrays, modalities=model.modalities,
                          n_patches={m: model.cfg.n_patches(m) for m in model.modalities},
                          tile_size=model.cfg.tile_size, seed=cfg["pretrain"]["seed"] + 1000, fixed_tile=True)


def table4(cfg: Mapping[str, Any], *, checkpoints: Mapping[tuple[str, int], str | Path], device: str = "cpu"
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Table 4 from pretrained checkpoints {(run, fold): path}.

    Returns (table: rows ``Multimodal pretraining``/``Unimodal pretraining``, columns WSI, RNA, DNAm: mean over
    folds of the test patients' masked-patch MSE, both rows on the folds the unimodal run has (:func:`table4_columns`);
    per_fold: long form run, fold, modality, mse; imputation: per modality the multimodal model's error imputing the
    whole modality from the others vs the training mean).
    """
    dev = torch.device(device)
    results = Path(cfg["results"])
    patients = load_patients(results, sorted(cfg["cohorts"]))
    splits = read_splits(results / "splits.parquet")
    omics_cache: dict[str, pd.DataFrame] = {}
    rows, imp_rows = [], []
    for (run, fold), path in sorted(checkpoints.items()):
        model, norm_states, meta = load_pretrained(path)
        for k in norm_states:
            if k not in omics_cache:
                omics_cache[k] = load_omics(results, sorted(cfg["cohorts"]), k)
        ds = _test_dataset(cfg, model, norm_states, fold, patients, splits, {k: omics_cache[k] for k in norm_states})
        for m, mse in evaluate_reconstruction(model, ds, dev).items():
            rows.append({"run": run, "fold": fold, "modality": m, "mse": mse, "n_test": len(ds)})
        if run == "multimodal":
            means = meta["extra"]["train_means"]
            train = patients[patients["patient"].isin(set(meta["extra"]["train_patients"]))].reset_index(drop=True)
            train_arrays = build_arrays(train, {k: omics_cache[k] for k in norm_states},
                                        {k: _data.restore_normalizer(v) for k, v in norm_states.items()})
            ridge = ridge_imputation(model, train_arrays, ds.a, means)
            for m, r in evaluate_imputation(model, ds, means, dev).items():
                imp_rows.append({"fold": fold, "modality": m, **r, "ridge": ridge.get(m, float("nan"))})
    per_fold = pd.DataFrame(rows)
    table = pd.DataFrame(index=["Multimodal pretraining", "Unimodal pretraining"], columns=table4_columns(),
                         dtype=float)
    if len(per_fold):
        uni = per_fold[(per_fold["run"] != "multimodal") & (per_fold["run"] == per_fold["modality"])]
        # both rows on the same test patients: a modality's multimodal cell on the folds its unimodal run has
        # (pretrain.unimodal_folds), all folds when there is no unimodal run of it
        uni_folds = uni.groupby("modality")["fold"].agg(set)
        mm = per_fold[per_fold["run"] == "multimodal"]
        same = [m not in uni_folds or f in uni_folds[m] for m, f in zip(mm["modality"], mm["fold"])]
        mm = mm[same].groupby("modality")["mse"].mean()
        uni = uni.groupby("modality")["mse"].mean()
        for m, v in mm.items():
            table.loc["Multimodal pretraining", label(m)] = v
        for m, v in uni.items():
            table.loc["Unimodal pretraining", label(m)] = v
    table.index.name = "Pretraining"
    imputation = pd.DataFrame(imp_rows)
    if len(imputation):
        imputation = (imputation.groupby("modality")
                      .agg(model_mse=("model", "mean"), train_mean_mse=("mean", "mean"), ridge_mse=("ridge", "mean"),
                           n_patients=("n_patients", "sum"), folds=("fold", "nunique")).reset_index())
        imputation["ratio"] = imputation["model_mse"] / imputation["train_mean_mse"]
        imputation["ridge_ratio"] = imputation["ridge_mse"] / imputation["train_mean_mse"]
    return table, per_fold, imputation


def table4_by_size(parts: Mapping[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]],
                   cohorts: Mapping[str, Sequence[str]]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Table 4 of several pretrainings, one per model size ({size: :func:`table4` of that size's configuration}),
    each on its own cohorts' test patients (``cohorts``: {size: names}): rows ``Multimodal pretraining (big:
    GBMLGG)``, ...; per_fold and imputation gain a first column ``size``."""
    tables, folds, imputations = [], [], []
    for size, (table, per_fold, imputation) in parts.items():
        tag = f" ({size}: {', '.join(cohorts[size])})"
        tables.append(table.rename(index=lambda r, tag=tag: r + tag))
        folds.append(per_fold.assign(size=size)[["size", *per_fold.columns]])
        if len(imputation):
            imputations.append(imputation.assign(size=size)[["size", *imputation.columns]])
    table = pd.concat(tables)
    table.index.name = "Pretraining"
    return table, pd.concat(folds, ignore_index=True), (pd.concat(imputations, ignore_index=True) if imputations
                                                        else pd.DataFrame())


def _number(v: object) -> str:
    """Table 4's cells: 4 significant digits, ``n/a`` for NaN, integers and labels as they are."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return "n/a" if v != v else f"{v:.4g}"


IMPUTATION_COLUMNS = {"modality": "Modality", "model_mse": "decoder MSE", "train_mean_mse": "training-mean MSE",
                      "ratio": "decoder / mean", "ridge_mse": "ridge MSE", "ridge_ratio": "ridge / mean",
                      "n_patients": "patients"}


def table4_markdown(table: pd.DataFrame, imputation: pd.DataFrame, n_folds: int) -> str:
    """``table4.md``: the reconstruction table with its reading, then the whole-modality imputation table."""
    lines = [f"# Table 4: reconstruction MSE on held-out test patients (mean over {n_folds} fold(s))", "",
             "Masked-patch MSE (50% of patches masked, fixed seeded noise) on each fold's test patients that have",
             "the modality. RNA and DNAm in the normalised [0, 1] space; WSI in ImageNet-normalised pixels (the",
             "space the model is trained in, as in MAE).", "",
             *markdown_lines(table.reset_index(), rule="plain", cell=_number),
             "", "Paper (Table 4): multimodal 0.028 / 0.0039 / 0.0085; unimodal 0.0165 / 0.0092 / 0.0087.", ""]
    if len(imputation):
        columns = {"size": "Model", **IMPUTATION_COLUMNS} if "size" in imputation else IMPUTATION_COLUMNS
        shown = imputation[list(columns)].astype({"n_patients": "int64"}).rename(columns=columns)
        lines += ["## Whole-modality imputation (multimodal model)", "",
                  "Each modality removed from test patients that have it and at least one other; reconstructed by",
                  "the decoder from the others (shown masked as in pretraining, 8 seeded draws averaged), against",
                  "imputing the training patients' mean ([0, 1] space), and an independent reference:",
                  "scikit-learn RidgeCV from the other omics modality fitted on the",
                  "training patients (training mean where that modality is absent; omics targets only).", "",
                  *markdown_lines(shown, rule="plain", cell=_number)]
    return "\n".join(lines) + "\n"


def write_table4(out: str | Path, table: pd.DataFrame, per_fold: pd.DataFrame, imputation: pd.DataFrame, *,
                 n_folds: int) -> list[Path]:
    """``table4.csv`` (the paper's layout), ``table4.md``, ``table4_folds.csv``, ``table4_imputation.csv`` in
    ``out`` (:func:`imputmae.tables.write_texts`)."""
    out = Path(out)
    return (write_texts(out / "table4", {"csv": table.to_csv(float_format="%.6g"),
                                         "md": table4_markdown(table, imputation, n_folds)})
            + write_texts(out / "table4_folds", {"csv": per_fold.to_csv(index=False, float_format="%.6g")})
            + write_texts(out / "table4_imputation", {"csv": imputation.to_csv(index=False, float_format="%.6g")}))
