"""A classical reference for Table 3: lifelines' penalised Cox model on PCA components, on the same folds.

Per fold, everything is fitted on the fold's TRAINING patients only: the feature transform (RNA: log1p of
FPKM-UQ; DNAm: betas with NaN set to the training median; WSI: per patient, the mean over its tiles of the tile
average-pooled to 8x8x3, i.e. 192 colour/texture-layout numbers), standardisation, PCA (``n_components`` per
modality) and ``CoxPHFitter(penalizer=...)``. Modality sets follow :mod:`imputmae.finetune`: a single-modality
set uses the patients who have that modality; ``all`` uses every patient, with the PCA scores of a missing
modality set to 0 (the training mean, since PCA centres). Survival curves at the fold's label cuts give the same
metrics as the fine-tuned model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from imputmae.survival import evaluate_survival, fit_cuts, risk_from_survival

__all__ = ["CoxPCAResult", "load_modality_features", "wsi_summary_features", "fit_cox_pca", "run_cox_pca_folds"]

Modality = Literal["rna", "dnam", "wsi"]
MODALITIES: tuple[str, ...] = ("rna", "dnam", "wsi")


def wsi_summary_features(tiles: np.ndarray, pool: int = 8) -> np.ndarray:
    """tiles: uint8 [K, H, W, 3] -> [pool*pool*3] float32: mean over tiles of each tile average-pooled to pool x pool."""
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.shape[0] == 0:
        raise ValueError(f"tiles must be [K, H, W, 3] with K >= 1, got {tiles.shape}")
    k, h, w, _ = tiles.shape
    x = tiles.astype(np.float32)[:, : h - h % pool, : w - w % pool] / 255.0
    x = x.reshape(k, pool, h // pool, pool, w // pool, 3).mean(axis=(2, 4))
    return x.mean(axis=0).reshape(-1)


def load_modality_features(results: str | Path, cohort: str, modality: Modality) -> pd.DataFrame:
    """The cohort's raw features for one modality (docs/layout.md): patients x features, float32.

    RNA/DNAm from ``{R}/{cohort}/{modality}.parquet``; WSI from ``{R}/{cohort}/wsi/{patient}.npy`` via
    :func:`wsi_summary_features`. A missing table means no patient has the modality (empty frame).
    """
    root = Path(results) / cohort
    if modality in ("rna", "dnam"):
        path = root / f"{modality}.parquet"
        if not path.exists():
            return pd.DataFrame(dtype=np.float32)
        df = pd.read_parquet(path)
        if df.index.name != "patient" and "patient" in df.columns:
            df = df.set_index("patient")
        return df.astype(np.float32)
    if modality == "wsi":
        rows = {}
        for f in sorted((root / "wsi").glob("*.npy")):
            tiles = np.load(f, mmap_mode="r")
            if tiles.ndim == 4 and tiles.shape[0] > 0:
                rows[f.stem] = wsi_summary_features(np.asarray(tiles))
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("patient").astype(np.float32)
    raise ValueError(f"unknown modality {modality!r}")


class _ModalityPCA:
    """Transform + standardise + PCA of one modality, fitted on training patients."""

    def __init__(self, modality: str, n_components: int, seed: int):
        self.modality, self.n_components, self.seed = modality, n_components, seed

    def _prepare(self, x: pd.DataFrame) -> np.ndarray:
        a = x.to_numpy(np.float64)
        if self.modality == "rna":
            a = np.log1p(np.clip(a, 0, None))
        return np.where(np.isnan(a), self.median_[None, :], a)

    def fit(self, x: pd.DataFrame) -> "_ModalityPCA":
        a = x.to_numpy(np.float64)
        if self.modality == "rna":
            a = np.log1p(np.clip(a, 0, None))
        med = np.nanmedian(a, axis=0)
        self.median_ = np.where(np.isnan(med), 0.0, med)
        a = self._prepare(x)
        self.scaler_ = StandardScaler().fit(a)
        k = int(min(self.n_components, a.shape[0] - 1, a.shape[1]))
        self.pca_ = PCA(n_components=max(k, 1), random_state=self.seed).fit(self.scaler_.transform(a))
        return self

    def transform(self, x: pd.DataFrame) -> np.ndarray:
        return self.pca_.transform(self.scaler_.transform(self._prepare(x)))


@dataclass
class CoxPCAResult:
    """Per-fold output: predictions (patient, risk, surv at cuts) and metrics on the test patients."""

    predictions: pd.DataFrame  # patient, fold, split (train/test), risk, s_0..s_{T-1}
    metrics: dict[str, float]
    cuts: np.ndarray
    train_patients: list[str]


def fit_cox_pca(features: Mapping[str, pd.DataFrame], clinical: pd.DataFrame, train: Sequence[str],
                test: Sequence[str], modset: str, n_components: int = 10, penalizer: float = 0.1,
                n_bins: int = 20, cut_scheme: Literal["equidistant", "quantiles"] = "equidistant",
                n_sub: int = 10, seed: int = 0) -> CoxPCAResult:
    """Fit PCA + penalised Cox on ``train`` patients, predict and score ``test`` patients.

    features: modality -> DataFrame (patients x features); clinical: index patient, columns time, event.
    modset: ``rna``, ``dnam``, ``wsi`` (patients with that modality) or ``all`` (every patient, zero scores for
    a missing modality).
    """
    from lifelines import CoxPHFitter

    mods = list(MODALITIES) if modset == "all" else [modset]
    have = {m: set(features[m].index) if m in features else set() for m in mods}
    keep = (lambda p: any(p in have[m] for m in mods)) if modset == "all" else (lambda p: p in have[modset])
    train = [p for p in train if keep(p) and p in clinical.index]
    test = [p for p in test if keep(p) and p in clinical.index]
    if len(train) < 3 or not test:
        raise ValueError(f"cox-pca {modset}: {len(train)} training / {len(test)} test patients with the modality")

    def design(patients: list[str], fitted: dict[str, _ModalityPCA]) -> np.ndarray:
        blocks = []
        for m, f in fitted.items():
            z = np.zeros((len(patients), f.pca_.n_components_))
            rows = [i for i, p in enumerate(patients) if p in have[m]]
            if rows:
                z[rows] = f.transform(features[m].loc[[patients[i] for i in rows]])
            blocks.append(z)
        return np.concatenate(blocks, axis=1)

    fitted = {}
    for m in mods:
        tr_m = [p for p in train if p in have[m]]
        if len(tr_m) >= 3:
            fitted[m] = _ModalityPCA(m, n_components, seed).fit(features[m].loc[tr_m])
    if not fitted:
        raise ValueError(f"cox-pca {modset}: no modality with >= 3 training patients")
    x_train, x_test = design(train, fitted), design(test, fitted)
    cols = [f"pc{i}" for i in range(x_train.shape[1])]
    t_tr = clinical.loc[train, "time"].to_numpy(float)
    e_tr = clinical.loc[train, "event"].to_numpy(float)
    df = pd.DataFrame(x_train, columns=cols).assign(time=t_tr, event=e_tr)
    cph = CoxPHFitter(penalizer=penalizer).fit(df, duration_col="time", event_col="event")
    cuts = fit_cuts(t_tr, e_tr, n_bins, cut_scheme)

    def surv(x: np.ndarray) -> np.ndarray:
        return cph.predict_survival_function(pd.DataFrame(x, columns=cols), times=cuts).to_numpy().T

    s_tr, s_te = surv(x_train), surv(x_test)
    t_te = clinical.loc[test, "time"].to_numpy(float)
    e_te = clinical.loc[test, "event"].to_numpy(float)
    metrics = evaluate_survival(s_te, cuts, t_te, e_te, n_sub, t_tr, e_tr)
    r_tr = risk_from_survival(s_tr)
    metrics.update(n_train=len(train), n_test=len(test), n_test_events=int(e_te.sum()),
                   train_median_risk=float(np.median(r_tr)), n_parameters=len(cols))   # the Cox coefficients
    pred = pd.DataFrame(np.concatenate([s_tr, s_te]), columns=[f"s_{k}" for k in range(cuts.size)])
    pred.insert(0, "risk", np.concatenate([r_tr, risk_from_survival(s_te)]))
    pred.insert(0, "split", ["train"] * len(train) + ["test"] * len(test))
    pred.insert(0, "patient", train + test)
    return CoxPCAResult(pred, metrics, cuts, train)


def run_cox_pca_folds(features: Mapping[str, pd.DataFrame], clinical: pd.DataFrame, splits: pd.DataFrame,
                      modset: str, **kwargs) -> list[CoxPCAResult]:
    """:func:`fit_cox_pca` on every outer fold of ``splits`` (patient, fold): train = the other folds."""
    out = []
    for fold in sorted(splits["fold"].unique()):
        test = splits.loc[splits["fold"] == fold, "patient"].tolist()
        train = splits.loc[splits["fold"] != fold, "patient"].tolist()
        res = fit_cox_pca(features, clinical, train, test, modset, **kwargs)
        res.predictions.insert(1, "fold", int(fold))
        res.metrics["fold"] = int(fold)
        out.append(res)
    return out
