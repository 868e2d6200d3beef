"""Labels, loss, curves and metrics of imputmae.survival against pycox, scikit-survival and hand computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from imputmae import survival as sv

SEEDS = [0, 1, 2, 3, 4]


def _random_cohort(seed: int, n: int = 60, ties: bool = True):
    rng = np.random.default_rng(seed)
    t = rng.exponential(800.0, n)
    if ties:  # rounded to whole months: many tied durations, some tied event/censoring
        t = np.round(t / 30.0) * 30.0 + 1.0
    d = (rng.random(n) < 0.6).astype(float)
    return t, d


# ---------------------------------------------------------------- labels

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scheme", ["equidistant", "quantiles"])
def test_cuts_and_discretize_match_pycox(seed, scheme):
    from pycox.preprocessing.label_transforms import LabTransDiscreteTime

    t, d = _random_cohort(seed)
    t_test, d_test = _random_cohort(seed + 100, n=40)
    t_test[:3] = t.max() * np.array([1.5, 1.0, 2.0])  # beyond / at the last training cut
    d_test[:3] = 1
    with warnings.catch_warnings():  # pycox warns when quantile cuts collide; we check the same cuts result
        warnings.simplefilter("ignore")
        lab = LabTransDiscreteTime(20, scheme=scheme).fit(t, d)
    cuts = sv.fit_cuts(t, d, 20, scheme)
    np.testing.assert_allclose(cuts, lab.cuts)
    for tt, dd in [(t, d), (t_test, d_test)]:
        idx, ev = sv.discretize(cuts, tt, dd)
        ref_idx, ref_ev = lab.transform(tt, dd)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(ev, ref_ev)


def test_discretize_rules_by_hand():
    cuts = np.array([0.0, 10.0, 20.0, 30.0])
    t = np.array([5.0, 5.0, 10.0, 10.0, 0.0, 35.0, 35.0, 30.0])
    d = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    idx, ev = sv.discretize(cuts, t, d)
    # event -> right cut; censoring -> left cut; exact cut -> that cut; beyond the last cut -> censored there
    assert idx.tolist() == [1, 0, 1, 1, 0, 3, 3, 3]
    assert ev.tolist() == [1, 0, 1, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="below the first cut"):
        sv.discretize(cuts, [-1.0], [1])


def test_cuts_use_only_what_they_are_given():
    t, d = _random_cohort(0)
    cuts = sv.fit_cuts(t, d, 20)
    assert cuts[0] == 0 and cuts[-1] == t.max() and cuts.size == 20


# ---------------------------------------------------------------- loss and curves

def test_loss_by_hand():
    phi = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.5, 0.0]])
    sig = torch.sigmoid
    # patient 0: event at index 1 -> -log(1-h0) - log(h1); patient 1: censored at index 2 -> -sum log(1-h_j), j<=2
    l0 = -math.log(1 - sig(phi[0, 0]).item()) - math.log(sig(phi[0, 1]).item())
    l1 = -sum(math.log(1 - sig(phi[1, j]).item()) for j in range(3))
    out = sv.nll_logistic_hazard(phi, torch.tensor([1, 2]), torch.tensor([1.0, 0.0]), "none")
    np.testing.assert_allclose(out.numpy(), [l0, l1], rtol=1e-6)
    assert sv.NLLLogisticHazardLoss()(phi, torch.tensor([1, 2]), torch.tensor([True, False])).item() == \
        pytest.approx((l0 + l1) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="columns"):
        sv.nll_logistic_hazard(phi, torch.tensor([3, 0]), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_matches_pycox(seed, reduction):
    from pycox.models.loss import nll_logistic_hazard as ref

    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(32, 20, generator=g, dtype=torch.float64) * 3
    idx = torch.randint(0, 20, (32,), generator=g)
    ev = (torch.rand(32, generator=g) < 0.5).double()
    torch.testing.assert_close(sv.nll_logistic_hazard(phi, idx, ev, reduction), ref(phi, idx, ev, reduction))


def test_loss_gradient_flows():
    phi = torch.zeros(4, 5, requires_grad=True)
    sv.nll_logistic_hazard(phi, torch.tensor([0, 1, 2, 4]), torch.tensor([1.0, 0, 1, 0])).backward()
    assert torch.isfinite(phi.grad).all() and phi.grad.abs().sum() > 0
    assert (phi.grad[0, 1:] == 0).all()  # nothing after the patient's index contributes


def test_hazard_to_survival_matches_pycox_and_product():
    from pycox.models.utils import cumsum_reverse  # noqa: F401  (pycox importable)

    phi = torch.randn(8, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = sv.hazard_to_survival(phi, eps=0.0)
    ref = torch.cumprod(1 - torch.sigmoid(phi), dim=1)
    torch.testing.assert_close(s, ref)
    s_eps = sv.hazard_to_survival(phi)
    assert (s_eps[:, 1:] <= s_eps[:, :-1] + 1e-12).all()


def test_interpolate_matches_pycox_interpolation():
    from pycox.models.interpolation import InterpolateDiscrete  # noqa: F401

    cuts = np.array([0.0, 10.0, 30.0])
    surv = np.array([[1.0, 0.8, 0.2], [0.9, 0.9, 0.5]])
    grid, times = sv.interpolate_survival(surv, cuts, n_sub=2)
    np.testing.assert_allclose(times, [0, 5, 10, 20, 30])
    np.testing.assert_allclose(grid, [[1.0, 0.9, 0.8, 0.5, 0.2], [0.9, 0.9, 0.9, 0.7, 0.5]])


# ---------------------------------------------------------------- metrics

def _random_predictions(seed, n=60, t_bins=20, tie_preds=True):
    t, d = _random_cohort(seed, n)
    cuts = sv.fit_cuts(t, d, t_bins)
    rng = np.random.default_rng(seed + 7)
    # informative hazards (risk correlated with short durations) plus duplicated rows: ties in predictions
    z = -np.log(t)[:, None] + rng.normal(0, 1.0, (n, 1))
    phi = torch.tensor(z - 6 + rng.normal(0, 0.3, (n, t_bins)))
    if tie_preds:
        phi[1::5] = phi[0::5][: phi[1::5].shape[0]]
    surv = sv.hazard_to_survival(phi).numpy()
    return t, d, cuts, surv


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["antolini", "adj_antolini"])
def test_concordance_td_matches_pycox(seed, method):
    from pycox.evaluation import EvalSurv

    t, d, cuts, surv = _random_predictions(seed)
    grid, times = sv.interpolate_survival(surv, cuts, 10)
    ev = EvalSurv(pd.DataFrame(grid.T, index=times), t, d.astype(int), censor_surv="km")
    assert sv.concordance_td(t, d, grid, times, method) == pytest.approx(ev.concordance_td(method), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_harrell_matches_sksurv(seed):
    from sksurv.metrics import concordance_index_censored

    t, d, cuts, surv = _random_predictions(seed)
    risk = sv.risk_from_survival(surv)
    ref = concordance_index_censored(d.astype(bool), t, risk)[0]
    assert sv.concordance_harrell(t, d, risk) == pytest.approx(ref, abs=1e-12)


def test_concordance_perfect_and_reversed():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    d = np.ones(4)
    risk = np.array([4.0, 3.0, 2.0, 1.0])
    assert sv.concordance_harrell(t, d, risk) == 1.0
    assert sv.concordance_harrell(t, d, -risk) == 0.0
    times = np.array([0.0, 0.5])  # every duration reads the curves at t = 0.5
    surv = np.stack([np.array([1.0, 0.1 + 0.1 * i]) for i in range(4)])  # later patients survive more
    assert sv.concordance_td(t, d, surv, times, "antolini") == 1.0
    assert sv.concordance_td(t, d, surv[::-1], times, "antolini") == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_and_ibs_match_sksurv(seed):
    from sksurv.metrics import brier_score, integrated_brier_score
    from sksurv.util import Surv

    t_tr, d_tr = _random_cohort(seed + 50, n=120)
    t, d, cuts, surv = _random_predictions(seed)
    t = np.minimum(t, t_tr.max() - 1)  # scikit-survival refuses test times beyond the training follow-up
    grid, times = sv.interpolate_survival(surv, cuts, 10)
    inside = (times > t.min()) & (times < min(t.max(), t_tr.max()))
    g, tg = grid[:, inside], times[inside]
    y_tr, y_te = Surv.from_arrays(d_tr.astype(bool), t_tr), Surv.from_arrays(d.astype(bool), t)
    np.testing.assert_allclose(sv.brier_score(t, d, g, tg, t_tr, d_tr), brier_score(y_tr, y_te, g, tg)[1],
                               rtol=1e-10)
    assert sv.integrated_brier_score(t, d, g, tg, t_tr, d_tr) == pytest.approx(
        integrated_brier_score(y_tr, y_te, g, tg), rel=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_matches_pycox_without_censoring(seed):
    """pycox divides by the sum of IPC weights, Graf/scikit-survival by N: identical when nobody is censored."""
    import scipy.integrate
    from pycox.evaluation import EvalSurv

    t, _, cuts, surv = _random_predictions(seed)
    d = np.ones_like(t)
    grid, times = sv.interpolate_survival(surv, cuts, 10)
    ev = EvalSurv(pd.DataFrame(grid.T, index=times), t, d.astype(int), censor_surv="km")
    tg = times[(times > t.min()) & (times < t.max())]
    ours = sv.brier_score(t, d, grid[:, np.isin(times, tg)], tg)
    np.testing.assert_allclose(ours, ev.brier_score(tg).values, rtol=1e-10)
    # pycox integrates with Simpson's rule (scipy.integrate.simps, removed in scipy 1.14): compare the same rule
    simpson = scipy.integrate.simpson(ours, x=tg) / (tg[-1] - tg[0])
    if not hasattr(scipy.integrate, "simps"):
        scipy.integrate.simps = scipy.integrate.simpson  # pycox 0.3.0 on a current scipy
    assert ev.integrated_brier_score(tg) == pytest.approx(simpson, rel=1e-10)


def test_kaplan_meier_matches_lifelines():
    from lifelines import KaplanMeierFitter

    t, d = _random_cohort(3)
    times, s = sv.kaplan_meier(t, d)
    kmf = KaplanMeierFitter().fit(t, d)
    np.testing.assert_allclose(s, kmf.survival_function_at_times(times).values, rtol=1e-12)


def test_evaluate_survival_keys_and_ranges():
    t, d, cuts, surv = _random_predictions(0)
    m = sv.evaluate_survival(surv, cuts, t, d, train_durations=t, train_events=d)
    assert set(m) == {"antolini", "adj_antolini", "harrell", "ibs"}
    assert 0.5 < m["antolini"] <= 1 and 0.5 < m["harrell"] <= 1 and 0 <= m["ibs"] <= 1


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    t, d, cuts, surv = _random_predictions(1)
    risk = sv.risk_from_survival(surv)

    def metric(idx):
        return sv.concordance_harrell(t[idx], d[idx], risk[idx])

    a = sv.bootstrap_ci(metric, t.size, n_boot=200, seed=3)
    b = sv.bootstrap_ci(metric, t.size, n_boot=200, seed=3)
    assert a == b and a[1] <= a[0] <= a[2] and a[2] - a[1] > 0
