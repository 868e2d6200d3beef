"""Discrete-time survival: label cuts, the logistic-hazard loss, survival curves and the metrics of Table 3.

The method and its decisions: docs/design.md, ``imputmae.survival``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from imputmae.choices import CutScheme
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CIndexMethod",
    "fit_cuts",
    "discretize",
    "kaplan_meier",
    "nll_logistic_hazard",
    "NLLLogisticHazardLoss",
    "cox_partial_nll",
    "breslow_log_increments",
    "cox_hazard_logits",
    "hazard_to_survival",
    "risk_from_survival",
    "interpolate_survival",
    "concordance_td",
    "concordance_harrell",
    "censoring_survival",
    "brier_score",
    "integrated_brier_score",
    "evaluate_survival",
    "bootstrap_ci",
]

CIndexMethod = Literal["antolini", "adj_antolini"]      # pycox's concordance_td methods


def _as_1d(x, name: str, dtype=np.float64) -> np.ndarray:
    a = np.asarray(x, dtype=dtype).reshape(-1)
    if dtype is np.float64 and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def kaplan_meier(durations, events) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate. Returns ``(times [U], surv [U])``: the distinct durations and S(t) just after each."""
    t = _as_1d(durations, "durations")
    d = _as_1d(events, "events") > 0
    times, inverse = np.unique(t, return_inverse=True)
    n_events = np.bincount(inverse, weights=d.astype(float), minlength=times.size)
    n_leaving = np.bincount(inverse, minlength=times.size)
    at_risk = t.size - np.concatenate([[0], np.cumsum(n_leaving)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(at_risk > 0, 1.0 - n_events / at_risk, 1.0)
    return times, np.cumprod(factor)


def fit_cuts(durations, events, n_bins: int = 20, scheme: CutScheme = "equidistant", min_: float = 0.0) -> np.ndarray:
    """Fit T = ``n_bins`` cut times on TRAINING patients (pycox ``LabTransDiscreteTime(n_bins, scheme, min_)``).

    durations: [N] days; events: [N] 0/1. Returns cuts [T'] float64, strictly increasing (T' < T only for
    ``quantiles`` when Kaplan-Meier levels collide, as in pycox).
    """
    t = _as_1d(durations, "durations")
    d = _as_1d(events, "events")
    if t.size == 0:
        raise ValueError("fit_cuts: no training durations")
    if n_bins < 2:
        raise ValueError(f"fit_cuts: n_bins must be >= 2, got {n_bins}")
    if scheme == "equidistant":
        cuts = np.linspace(min_, t.max(), n_bins)
    elif scheme == "quantiles":
        km_t, km_s = kaplan_meier(t, d)
        if min_ < km_t[0]:  # the curve starts at S(min_) = 1, as pycox's kaplan_meier(start_duration=0)
            km_t, km_s = np.concatenate([[min_], km_t]), np.concatenate([[1.0], km_s])
        levels = np.linspace(km_s.min(), km_s.max(), n_bins)
        # For each level, the earliest time at which S has dropped to that level or below (reverse search, as pycox).
        idx = np.searchsorted(km_s[::-1], levels)[::-1]
        cuts = np.unique(km_t[::-1][idx])
        cuts[0] = min_
    else:
        raise ValueError(f"fit_cuts: unknown scheme {scheme!r} (equidistant or quantiles)")
    if (np.diff(cuts) <= 0).any():
        raise ValueError(f"fit_cuts: cut points are not increasing ({cuts}); are all training durations 0?")
    return cuts


def fold_cuts(clinical, train: list[str], test: list[str], n_bins: int, scheme: CutScheme,
              what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fold's training labels and label cuts, fitted on the training patients only.

    clinical: a DataFrame indexed by patient with ``time`` (days) and ``event`` (0/1); ``train``/``test``: the fold's
    patients with inputs and a label. Refuses a patient in both sets and a fold too small to fit (``what`` says which
    run and why, in the error). Returns (training durations [N_train], training events [N_train], cuts [n_bins]).
    """
    leak = set(train) & set(test)
    if leak:
        raise ValueError(f"patients in both train and test: {sorted(leak)[:5]}")
    if len(train) < 4 or not test:
        raise ValueError(f"{what}: {len(train)} training and {len(test)} test patients")
    durations = clinical.loc[train, "time"].to_numpy(float)
    events = clinical.loc[train, "event"].to_numpy(float)
    return durations, events, fit_cuts(durations, events, n_bins, scheme)


def discretize(cuts, durations, events) -> tuple[np.ndarray, np.ndarray]:
    """Map (durations [N], events [N]) to (idx_durations [N] int64, events [N] float32) on ``cuts`` [T].

    Events go to the right cut (first cut >= t), censorings to the left cut (last cut <= t), durations beyond the
    last cut are censored at the last cut (pycox ``IdxDiscUnknownC`` with ``censor_side='left'``).
    """
    c = _as_1d(cuts, "cuts")
    t = _as_1d(durations, "durations")
    d = _as_1d(events, "events") > 0
    if t.shape != d.shape:
        raise ValueError(f"discretize: {t.size} durations but {d.size} events")
    if (t < c[0]).any():
        raise ValueError(f"discretize: durations below the first cut {c[0]} (e.g. {t[t < c[0]][:3]})")
    beyond = t > c[-1]
    t = np.where(beyond, c[-1], t)
    d = d & ~beyond
    right = np.searchsorted(c, t, side="left")  # first cut >= t
    left = np.searchsorted(c, t, side="right") - 1  # last cut <= t
    idx = np.where(d, right, left)
    return idx.astype(np.int64), d.astype(np.float32)


def nll_logistic_hazard(phi: Tensor, idx_durations: Tensor, events: Tensor,
                        reduction: Literal["mean", "sum", "none"] = "mean") -> Tensor:
    """Negative log-likelihood of the logistic hazard (pycox convention, see the module docstring).

    phi: [B, T] hazard logits; idx_durations: [B] int64 in [0, T); events: [B] 0/1 (float or bool).
    Per patient: ``sum_{j<=k} BCE(phi_j, 1[j == k and event])`` with k = idx_durations.
    """
    if phi.ndim != 2:
        raise ValueError(f"phi must be [B, T], got {tuple(phi.shape)}")
    if idx_durations.numel() and int(idx_durations.max()) >= phi.shape[1]:
        raise ValueError(f"idx_durations up to {int(idx_durations.max())} but phi has only {phi.shape[1]} columns")
    idx = idx_durations.long().view(-1, 1)
    ev = events.to(phi.dtype).view(-1, 1)
    target = torch.zeros_like(phi).scatter(1, idx, ev)
    bce = F.binary_cross_entropy_with_logits(phi, target, reduction="none")
    loss = bce.cumsum(1).gather(1, idx).view(-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


class NLLLogisticHazardLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`nll_logistic_hazard`."""

    def __init__(self, reduction: Literal["mean", "sum", "none"] = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, phi: Tensor, idx_durations: Tensor, events: Tensor) -> Tensor:
        return nll_logistic_hazard(phi, idx_durations, events, self.reduction)


def cox_partial_nll(eta: Tensor, durations: Tensor, events: Tensor) -> Tensor:
    """Cox's negative log partial likelihood (Breslow's ties), mean over the events of the batch.

    eta: [B] log relative risks; durations: [B] observed times; events: [B] 0/1. Per event i:
    ``log sum_{j: t_j >= t_i} exp(eta_j) - eta_i``. A batch without an event gives 0 (with a gradient of 0).
    """
    if eta.ndim != 1 or eta.shape != durations.shape or eta.shape != events.shape:
        raise ValueError(f"eta, durations and events must be [B] alike, got {tuple(eta.shape)}, "
                         f"{tuple(durations.shape)}, {tuple(events.shape)}")
    order = torch.argsort(durations, descending=True)
    t, e, x = durations[order], events[order].to(eta.dtype), eta[order]
    lcse = torch.logcumsumexp(x, 0)
    # tied times: every patient of a tie is in the risk set of each of them -> the tie group's last position
    last = torch.searchsorted(-t.contiguous(), -t.contiguous(), right=True) - 1
    n_events = e.sum()
    if n_events == 0:
        return eta.sum() * 0.0
    return ((lcse[last] - x) * e).sum() / n_events


def breslow_log_increments(eta: np.ndarray, durations: np.ndarray, events: np.ndarray, cuts: np.ndarray,
                           floor: float = 1e-12) -> np.ndarray:
    """Breslow's baseline cumulative hazard H0 (at eta = 0) between the cuts, as logs: [T] with
    ``log(H0(cuts_k) - H0(cuts_{k-1}))`` (H0 before the first cut: 0), increments floored at ``floor``.

    eta, durations, events: [N] of the patients the model is fitted on (never test patients).
    H0(t) = sum over event times s <= t of d_s / sum_{j: t_j >= s} exp(eta_j).
    """
    eta, t, d = (np.asarray(a, dtype=np.float64) for a in (eta, durations, events))
    c = np.asarray(cuts, dtype=np.float64)
    times = np.unique(t[d > 0])
    w = np.exp(eta - eta.max())
    at_risk = np.array([w[t >= s].sum() for s in times]) * np.exp(eta.max())
    deaths = np.array([d[(t == s)].sum() for s in times])
    h0 = np.concatenate([[0.0], np.cumsum(deaths / at_risk)])
    at_cuts = h0[np.searchsorted(times, c, side="right")]            # H0 at each cut (right-continuous)
    return np.log(np.maximum(np.diff(at_cuts, prepend=0.0), floor))


def cox_hazard_logits(eta: Tensor, log_increments: Tensor) -> Tensor:
    """A proportional-hazards model as logistic-hazard logits: eta [B], log_increments [T] -> phi [B, T].

    The bin hazard of S(t) = exp(-H0(t) exp(eta)) is ``1 - exp(-dH0_k exp(eta))``, whose logit is
    ``log(expm1(u))`` with ``u = exp(eta + log dH0_k)``: :func:`hazard_to_survival` of phi gives that S at the cuts.
    """
    u = torch.exp(eta[:, None] + log_increments[None, :]).clamp_min(1e-30)
    return torch.where(u > 20, u, torch.log(torch.expm1(torch.clamp(u, max=20.0))))


def hazard_to_survival(phi: Tensor, eps: float = 1e-7) -> Tensor:
    """Survival at the cuts from hazard logits: phi [B, T] -> S [B, T], ``S_k = prod_{j<=k} (1 - sigmoid(phi_j))``."""
    return (1 - torch.sigmoid(phi)).add(eps).log().cumsum(1).exp()


def risk_from_survival(surv) -> np.ndarray:
    """Scalar risk per patient: ``-sum_k S(t_k)``; surv [N, T] -> [N] (higher = shorter expected survival)."""
    return -np.asarray(surv, dtype=np.float64).sum(axis=1)


def interpolate_survival(surv, cuts, n_sub: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of S between cuts (pycox ``interpolate(n_sub)``, scheme ``const_pdf``, as DRIM).

    surv: [N, T] at cuts [T]. Returns (surv_grid [N, (T-1)*n_sub + 1], times [(T-1)*n_sub + 1]).
    """
    s = np.asarray(surv, dtype=np.float64)
    c = _as_1d(cuts, "cuts")
    if s.ndim != 2 or s.shape[1] != c.size:
        raise ValueError(f"surv must be [N, {c.size}], got {s.shape}")
    if n_sub <= 1:
        return s.copy(), c.copy()
    frac = np.arange(n_sub) / n_sub  # [n_sub]
    times = np.concatenate([(c[:-1, None] + frac[None] * np.diff(c)[:, None]).reshape(-1), c[-1:]])
    grid = (s[:, :-1, None] + frac[None, None] * (s[:, 1:] - s[:, :-1])[:, :, None]).reshape(s.shape[0], -1)
    return np.concatenate([grid, s[:, -1:]], axis=1), times


def _surv_at_durations(surv: np.ndarray, times: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """[N, N] matrix M[i, j] = S_j(t_i), reading each curve at the grid point at or just before t_i ('post')."""
    idx = np.clip(np.searchsorted(times, durations, side="right") - 1, 0, times.size - 1)
    return surv[:, idx].T


def concordance_td(durations, events, surv, times, method: CIndexMethod = "antolini") -> float:
    """Antolini's time-dependent C-index; surv [N, G] on grid ``times`` [G].

    ``antolini``: pair (i, j) comparable when t_i < t_j and i had the event, or t_i == t_j, i event, j censored;
    concordant when S_i(t_i) < S_j(t_i). ``adj_antolini``: pycox's default, with pairs tied in time or prediction
    counted as in Ishwaran et al.'s RSF paper (step 3, Sec. 5.1) except for time ties that are not both deaths.
    Sums run over ordered pairs i != j, exactly as pycox ``concordance_td``.
    """
    t = _as_1d(durations, "durations")
    d = _as_1d(events, "events") > 0
    s = np.asarray(surv, dtype=np.float64)
    if s.shape != (t.size, np.asarray(times).size):
        raise ValueError(f"surv must be [{t.size}, {np.asarray(times).size}], got {s.shape}")
    m = _surv_at_durations(s, _as_1d(times, "times"), t)  # m[i, j] = S_j(t_i)
    s_ii = np.diag(m)[:, None]
    s_ij = m
    ti, tj = t[:, None], t[None, :]
    di, dj = d[:, None], d[None, :]
    off = ~np.eye(t.size, dtype=bool)
    lt, eq = ti < tj, ti == tj
    if method == "antolini":
        comparable = (lt & di) | (eq & di & ~dj)
        concordant = (s_ii < s_ij) & comparable
    elif method == "adj_antolini":
        comparable = (lt & di) | (eq & (di | dj))
        lower, tie = (s_ii < s_ij), (s_ii == s_ij)
        higher = s_ii > s_ij
        conc = np.where(lt, lower + 0.5 * tie, 0.0)
        conc = np.where(eq & di & dj, 1.0 - 0.5 * (~tie), conc)
        conc = np.where(eq & di & ~dj, lower + 0.5 * tie, conc)
        conc = np.where(eq & ~di & dj, higher + 0.5 * tie, conc)
        concordant = conc * comparable
    else:
        raise ValueError(f"method must be antolini or adj_antolini, got {method!r}")
    n_comparable = float((comparable & off).sum())
    if n_comparable == 0:
        return float("nan")
    return float((concordant * off).sum() / n_comparable)


def concordance_harrell(durations, events, risk, tied_tol: float = 1e-8) -> float:
    """Harrell's C-index on a scalar risk [N] (scikit-survival ``concordance_index_censored`` semantics).

    Comparable: i had the event and t_i < t_j, or t_i == t_j with j censored. Concordant: risk_i > risk_j;
    risk ties (|diff| <= tied_tol) count 1/2.
    """
    t = _as_1d(durations, "durations")
    d = _as_1d(events, "events") > 0
    r = _as_1d(risk, "risk")
    ti, tj = t[:, None], t[None, :]
    comparable = d[:, None] & ((ti < tj) | ((ti == tj) & ~d[None, :]))
    diff = r[:, None] - r[None, :]
    tie = np.abs(diff) <= tied_tol
    score = np.where(tie, 0.5, (diff > 0).astype(float))
    n = comparable.sum()
    if n == 0:
        return float("nan")
    return float((score * comparable).sum() / n)


def censoring_survival(durations, events) -> Callable[[np.ndarray], np.ndarray]:
    """Kaplan-Meier of the censoring distribution G(t) = P(C > t), as a right-continuous step function.

    Censorings are the "events"; at tied times deaths are taken to happen first (scikit-survival
    ``CensoringDistributionEstimator``). G(t) = 1 before the first time and stays at its last value after.
    """
    t = _as_1d(durations, "durations")
    d = _as_1d(events, "events") > 0
    km_t, inverse = np.unique(t, return_inverse=True)
    n_cens = np.bincount(inverse, weights=(~d).astype(float), minlength=km_t.size)
    n_dead = np.bincount(inverse, weights=d.astype(float), minlength=km_t.size)
    n_leaving = np.bincount(inverse, minlength=km_t.size)
    at_risk = t.size - np.concatenate([[0], np.cumsum(n_leaving)[:-1]]) - n_dead  # deaths leave first
    with np.errstate(divide="ignore", invalid="ignore"):
        km_g = np.cumprod(np.where(n_cens > 0, 1.0 - n_cens / at_risk, 1.0))

    def g(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        idx = np.searchsorted(km_t, x, side="right") - 1
        return np.where(idx >= 0, km_g[np.clip(idx, 0, None)], 1.0)

    return g


def brier_score(durations, events, surv_at_times, times, censor_durations=None, censor_events=None) -> np.ndarray:
    """IPCW Brier score (Graf et al. 1999) at each of ``times`` [G]; surv_at_times [N, G] = S_i(times_g).

    BS(t) = mean_i [ S_i(t)^2 1(t_i <= t, d_i) / G(t_i) + (1 - S_i(t))^2 1(t_i > t) / G(t) ], G the censoring KM
    fitted on (censor_durations, censor_events) (default: the evaluated patients; pass the training patients for
    scikit-survival's convention). Mean over all N (Graf, scikit-survival); pycox instead divides by the sum of
    the weights, which differs only when there is censoring.
    """
    t = _as_1d(durations, "durations")
    d = _as_1d(events, "events") > 0
    s = np.asarray(surv_at_times, dtype=np.float64)
    g_times = _as_1d(times, "times")
    if s.shape != (t.size, g_times.size):
        raise ValueError(f"surv_at_times must be [{t.size}, {g_times.size}], got {s.shape}")
    g = censoring_survival(t if censor_durations is None else censor_durations,
                           d if censor_events is None else censor_events)
    with np.errstate(divide="ignore"):
        w_case = np.where(g(t) > 0, 1.0 / g(t), 0.0)[:, None]  # [N, 1]
        w_ctrl = np.where(g(g_times) > 0, 1.0 / g(g_times), 0.0)[None, :]  # [1, G]
    case = (t[:, None] <= g_times[None, :]) & d[:, None]
    ctrl = t[:, None] > g_times[None, :]
    return np.mean(s**2 * case * w_case + (1 - s) ** 2 * ctrl * w_ctrl, axis=0)


def integrated_brier_score(durations, events, surv_at_times, times, censor_durations=None,
                           censor_events=None) -> float:
    """Trapezoidal integral of :func:`brier_score` over ``times`` divided by its span (scikit-survival's IBS)."""
    g_times = _as_1d(times, "times")
    if g_times.size < 2:
        raise ValueError("integrated_brier_score needs at least two times")
    bs = brier_score(durations, events, surv_at_times, g_times, censor_durations, censor_events)
    return float(np.trapezoid(bs, g_times) / (g_times[-1] - g_times[0]))


def evaluate_survival(surv, cuts, durations, events, n_sub: int = 10, train_durations=None,
                      train_events=None) -> dict[str, float]:
    """All Table 3 metrics for predicted curves surv [N, T] at ``cuts`` [T] on patients (durations, events).

    Returns antolini, adj_antolini (on the interpolated grid), harrell (on ``risk_from_survival``) and ibs (on the
    grid points strictly inside the range of the evaluated durations, censoring KM from the training patients when
    given, else from the evaluated ones).
    """
    t = _as_1d(durations, "durations")
    d = _as_1d(events, "events")
    grid_s, grid_t = interpolate_survival(surv, cuts, n_sub)
    out = {
        "antolini": concordance_td(t, d, grid_s, grid_t, "antolini"),
        "adj_antolini": concordance_td(t, d, grid_s, grid_t, "adj_antolini"),
        "harrell": concordance_harrell(t, d, risk_from_survival(surv)),
    }
    inside = (grid_t > t.min()) & (grid_t < t.max())
    if train_durations is not None:  # the censoring KM is not defined beyond the training follow-up
        inside &= grid_t < np.max(train_durations)
    out["ibs"] = (integrated_brier_score(t, d, grid_s[:, inside], grid_t[inside], train_durations, train_events)
                  if inside.sum() >= 2 else float("nan"))
    return out


def bootstrap_ci(metric: Callable[[np.ndarray], float], n: int, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap over patients: ``metric(idx)`` on idx = arange(n), then on ``n_boot`` resamples.

    Returns (estimate, lower, upper) at level 1 - alpha; resamples where the metric is undefined (NaN) are skipped.
    """
    rng = np.random.default_rng(seed)
    estimate = float(metric(np.arange(n)))
    values = np.array([metric(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return estimate, float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return estimate, float(lo), float(hi)
