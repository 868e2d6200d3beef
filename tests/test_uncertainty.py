"""Bootstrap CIs of the mean-over-folds C-index and the paired bootstrap, against pycox's C-index on the same
resamples, and the behaviour a reader relies on (seeded, a model against itself, a real difference detected)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imputmae.survival import interpolate_survival
from imputmae.uncertainty import (FoldPredictions, bootstrap_cindex, fold_predictions, paired_bootstrap,
                                  resample_folds)


def synthetic_folds(n_folds: int = 3, n: int = 40, signal: float = 1.5, seed: int = 0, noise_seed: int = 99,
                    T: int = 8) -> tuple[list[FoldPredictions], list[np.ndarray]]:
    """Folds of test patients whose curves S = exp(-(t / 800) * exp(signal * z + noise)) rank by a latent z that
    also drives their times; fold-specific cuts. Returns (folds, each fold's z)."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(noise_seed)
    folds, zs = [], []
    for f in range(n_folds):
        z = rng.normal(size=n)
        t = rng.exponential(1000 * np.exp(-z))
        c = rng.exponential(2000, n)
        time, event = np.minimum(t, c).round() + 1, (t <= c).astype(float)
        cuts = np.linspace(0, time.max() * (0.9 + 0.05 * f), T)
        lin = signal * z + noise.normal(0, 1, n)
        surv = np.exp(-(cuts[None, :] / 800) * np.exp(lin[:, None]))
        folds.append(FoldPredictions([f"F{f}-P{i}" for i in range(n)], time, event, surv, cuts))
        zs.append(z)
    return folds, zs


def pycox_cindex(f: FoldPredictions, idx: np.ndarray, n_sub: int = 10) -> float:
    from pycox.evaluation import EvalSurv

    grid, times = interpolate_survival(f.surv[idx], f.cuts, n_sub)
    ev = EvalSurv(pd.DataFrame(grid.T, index=times), f.durations[idx], f.events[idx], censor_surv="km")
    return float(ev.concordance_td("antolini"))


def test_bootstrap_ci_matches_pycox_on_the_same_resamples():
    folds, _ = synthetic_folds()
    n_boot, seed = 30, 5
    got = bootstrap_cindex(folds, n_boot=n_boot, seed=seed)
    draws = resample_folds([len(f.patients) for f in folds], n_boot, seed)
    reps = np.array([np.mean([pycox_cindex(f, d) for f, d in zip(folds, draw)]) for draw in draws])
    est = np.mean([pycox_cindex(f, np.arange(len(f.patients))) for f in folds])
    assert got["estimate"] == pytest.approx(est, abs=1e-12)
    assert got["lower"] == pytest.approx(np.quantile(reps, 0.025), abs=1e-12)
    assert got["upper"] == pytest.approx(np.quantile(reps, 0.975), abs=1e-12)
    assert got["lower"] < got["estimate"] < got["upper"] and got["n"] == 120 and got["n_boot"] == n_boot


def test_paired_bootstrap_matches_pycox_and_orders_patients_by_id():
    a, _ = synthetic_folds(noise_seed=1)
    b, _ = synthetic_folds(signal=0.3, noise_seed=2)
    # model b's rows come in another order: pairing is by patient, not by row
    b = [f.take(np.random.default_rng(i).permutation(len(f.patients))) for i, f in enumerate(b)]
    n_boot, seed = 20, 3
    got = paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    b_aligned = [f.take(np.array([f.patients.index(p) for p in fa.patients])) for f, fa in zip(b, a)]
    draws = resample_folds([len(f.patients) for f in a], n_boot, seed)
    d = np.array([np.mean([pycox_cindex(fa, x) for fa, x in zip(a, draw)])
                  - np.mean([pycox_cindex(fb, x) for fb, x in zip(b_aligned, draw)]) for draw in draws])
    assert got["lower"] == pytest.approx(np.quantile(d, 0.025), abs=1e-12)
    assert got["upper"] == pytest.approx(np.quantile(d, 0.975), abs=1e-12)
    p = min(1.0, 2 * min((d <= 0).sum() + 1, (d >= 0).sum() + 1) / (n_boot + 1))
    assert got["p"] == pytest.approx(p)
    assert got["n"] == 120 and got["n_only_a"] == got["n_only_b"] == 0


def test_a_real_difference_is_detected_and_a_model_equals_itself():
    strong, _ = synthetic_folds(n=60, signal=2.0, noise_seed=1)
    weak, _ = synthetic_folds(n=60, signal=0.0, noise_seed=2)      # curves unrelated to the times
    res = paired_bootstrap(strong, weak, n_boot=200, seed=0)
    assert res["difference"] > 0.1 and res["lower"] > 0 and res["p"] < 0.01
    same = paired_bootstrap(strong, strong, n_boot=50, seed=0)
    assert same["difference"] == 0 and same["lower"] == same["upper"] == 0 and same["p"] == 1.0


def test_seeded_and_patients_only_one_model_scored_are_left_out_and_counted():
    folds, _ = synthetic_folds()
    assert bootstrap_cindex(folds, n_boot=30, seed=1) == bootstrap_cindex(folds, n_boot=30, seed=1)
    fewer = [f.take(np.arange(5, len(f.patients))) for f in folds]
    res = paired_bootstrap(folds, fewer, n_boot=20)
    assert res["n"] == 105 and res["n_only_a"] == 15 and res["n_only_b"] == 0
    relabelled = [FoldPredictions(f.patients, f.durations + 1, f.events, f.surv, f.cuts) for f in folds]
    with pytest.raises(ValueError, match="disagree"):
        paired_bootstrap(folds, relabelled, n_boot=5)


def test_fold_predictions_reads_the_test_rows_of_a_predictions_table():
    folds, _ = synthetic_folds(n_folds=1, n=6)
    f = folds[0]
    df = pd.DataFrame(f.surv, columns=[f"s_{k}" for k in range(f.cuts.size)])
    df.insert(0, "event", f.events.astype(int))
    df.insert(0, "time", f.durations)
    df.insert(0, "split", ["train", "test"] * 3)
    df.insert(0, "patient", f.patients)
    got = fold_predictions(df, f.cuts)
    assert got.patients == f.patients[1::2]
    np.testing.assert_array_equal(got.surv, f.surv[1::2])
