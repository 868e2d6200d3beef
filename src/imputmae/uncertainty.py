"""Uncertainty of a Table 3 cell: a bootstrap confidence interval of the C-index over test patients, and a paired
bootstrap of the difference between two models scored on the same patients.

The statistic of a cell is what Table 3 reports: the **mean over the outer folds of each fold's test C-index**
(each fold's curves come from that fold's model, on that fold's label cuts). One bootstrap replicate resamples,
**within each fold**, that fold's test patients with replacement (a stratified bootstrap: every fold keeps its size,
curves of different folds' models are never compared with each other), recomputes each fold's C-index and their
mean. A fold whose C-index is undefined (no comparable pair among its, or a replicate's, test patients) is left out
of that mean, as the per-fold mean always did (a small cohort's fold without an event among a modality's patients);
whether a pair is comparable depends only on times and events, so a paired comparison leaves out the same folds for
both models. The interval is the percentile interval of the replicates; replicates with no fold defined are
skipped and counted.

Paired comparison: both models' folds are aligned on the same patients (the patients both scored, per fold), each
replicate draws ONE set of resampled patients and applies it to both, and the difference of their statistics is
recorded. Reported: the observed difference, its percentile interval and a two-sided bootstrap p-value,
``p = min(1, 2 * min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (B + 1))``.

The C-index is :func:`imputmae.survival.concordance_td` (Antolini) on the curves interpolated between the cuts
(:func:`imputmae.survival.interpolate_survival`), exactly as :func:`imputmae.survival.evaluate_survival` scores a
fold; ``harrell`` uses :func:`imputmae.survival.concordance_harrell` on ``-sum S``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from imputmae.survival import concordance_harrell, concordance_td, interpolate_survival, risk_from_survival

__all__ = ["FoldPredictions", "fold_predictions", "resample_folds", "bootstrap_cindex", "paired_bootstrap"]

CIndex = Literal["antolini", "adj_antolini", "harrell"]


@dataclass
class FoldPredictions:
    """One fold's test patients: patients [N], durations [N] (days), events [N] 0/1, surv [N, T] at cuts [T]."""

    patients: list[str]
    durations: np.ndarray
    events: np.ndarray
    surv: np.ndarray
    cuts: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.patients)
        if not (self.durations.shape == self.events.shape == (n,)) or self.surv.shape != (n, self.cuts.size):
            raise ValueError(f"FoldPredictions: {n} patients, durations {self.durations.shape}, events "
                             f"{self.events.shape}, surv {self.surv.shape}, cuts {self.cuts.shape}")

    def take(self, idx: np.ndarray) -> FoldPredictions:
        return FoldPredictions([self.patients[i] for i in idx], self.durations[idx], self.events[idx],
                               self.surv[idx], self.cuts)

    def cindex(self, method: CIndex = "antolini", n_sub: int = 10) -> float:
        if method == "harrell":
            return concordance_harrell(self.durations, self.events, risk_from_survival(self.surv))
        grid, times = interpolate_survival(self.surv, self.cuts, n_sub)
        return concordance_td(self.durations, self.events, grid, times, method)


def fold_predictions(predictions: pd.DataFrame, cuts: np.ndarray) -> FoldPredictions:
    """A fold's test rows of a predictions table (patient, split, time, event, s_0..s_{T-1}; as
    :func:`imputmae.finetune.run_finetune` and :func:`imputmae.baselines.train_baseline` write) and its cuts."""
    p = predictions[predictions["split"] == "test"] if "split" in predictions else predictions
    s = p.filter(regex=r"^s_\d+$").to_numpy(np.float64)
    return FoldPredictions(p["patient"].astype(str).tolist(), p["time"].to_numpy(np.float64),
                           p["event"].to_numpy(np.float64), s, np.asarray(cuts, np.float64))


def resample_folds(sizes: Sequence[int], n_boot: int, seed: int = 0) -> list[list[np.ndarray]]:
    """The bootstrap draws: ``n_boot`` replicates, each one index array [n_f] per fold (with replacement, within the
    fold). Seeded: the same sizes and seed give the same draws (paired comparisons reuse them)."""
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, n, n) for n in sizes] for _ in range(n_boot)]


def _statistic(folds: Sequence[FoldPredictions], draw: Sequence[np.ndarray] | None, method: CIndex,
               n_sub: int) -> float:
    values = [(f if draw is None else f.take(d)).cindex(method, n_sub) for f, d in
              zip(folds, draw if draw is not None else [None] * len(folds))]
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]   # a fold with no comparable pair has no C-index: left out of the mean
    return float(values.mean()) if values.size else float("nan")


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_cindex(folds: Sequence[FoldPredictions], n_boot: int = 1000, alpha: float = 0.05,
                     method: CIndex = "antolini", n_sub: int = 10, seed: int = 0) -> dict[str, float]:
    """Mean-over-folds test C-index and its (1 - alpha) percentile bootstrap interval (module docstring).

    Returns estimate, lower, upper, n (test patients over all folds), n_folds, n_boot (replicates used)."""
    if not folds:
        raise ValueError("bootstrap_cindex: no folds")
    draws = resample_folds([len(f.patients) for f in folds], n_boot, seed)
    reps = np.array([_statistic(folds, d, method, n_sub) for d in draws])
    reps = reps[np.isfinite(reps)]
    lo, hi = _interval(reps, alpha)
    return {"estimate": _statistic(folds, None, method, n_sub), "lower": lo, "upper": hi,
            "n": int(sum(len(f.patients) for f in folds)), "n_folds": len(folds), "n_boot": int(reps.size)}


def _align(a: FoldPredictions, b: FoldPredictions) -> tuple[FoldPredictions, FoldPredictions]:
    """Both folds restricted to the patients both scored, in a's order; their labels must agree."""
    pos = {p: i for i, p in enumerate(b.patients)}
    common = [p for p in a.patients if p in pos]
    ia = np.array([i for i, p in enumerate(a.patients) if p in pos], dtype=np.int64)
    ib = np.array([pos[p] for p in common], dtype=np.int64)
    a2, b2 = a.take(ia), b.take(ib)
    if not (np.array_equal(a2.durations, b2.durations) and np.array_equal(a2.events, b2.events)):
        raise ValueError("paired_bootstrap: the two models disagree on some patients' (time, event)")
    return a2, b2


def paired_bootstrap(folds_a: Sequence[FoldPredictions], folds_b: Sequence[FoldPredictions], n_boot: int = 1000,
                     alpha: float = 0.05, method: CIndex = "antolini", n_sub: int = 10,
                     seed: int = 0) -> dict[str, float]:
    """C-index of model a minus model b on the same test patients, fold by fold (module docstring).

    folds_a[f] and folds_b[f] are the same outer fold. Returns difference, lower, upper, p, n (patients both
    scored), n_only_a / n_only_b (patients one model scored and the other did not: left out), n_boot."""
    if len(folds_a) != len(folds_b) or not folds_a:
        raise ValueError(f"paired_bootstrap: {len(folds_a)} and {len(folds_b)} folds")
    pairs = [_align(a, b) for a, b in zip(folds_a, folds_b)]
    if any(len(a.patients) == 0 for a, _ in pairs):
        raise ValueError("paired_bootstrap: a fold where the two models share no test patient")
    fa, fb = [a for a, _ in pairs], [b for _, b in pairs]
    draws = resample_folds([len(f.patients) for f in fa], n_boot, seed)
    d = np.array([_statistic(fa, x, method, n_sub) - _statistic(fb, x, method, n_sub) for x in draws])
    d = d[np.isfinite(d)]
    lo, hi = _interval(d, alpha)
    p = min(1.0, 2 * min((d <= 0).sum() + 1, (d >= 0).sum() + 1) / (d.size + 1)) if d.size else float("nan")
    n = sum(len(f.patients) for f in fa)
    return {"difference": _statistic(fa, None, method, n_sub) - _statistic(fb, None, method, n_sub),
            "lower": lo, "upper": hi, "p": float(p), "n": int(n),
            "n_only_a": int(sum(len(f.patients) for f in folds_a) - n),
            "n_only_b": int(sum(len(f.patients) for f in folds_b) - n), "n_boot": int(d.size)}
