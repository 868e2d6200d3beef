"""The fitted omics normaliser (paper Section 4), fitted on training patients only and saved with each model.

The method and its decisions: docs/design.md, ``imputmae.normalize``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from imputmae.modalities import get, vector_modalities

__all__ = ["OmicsNormalizer", "quantile_fit", "quantile_transform", "quantile_inverse", "upper_quartile_scale"]

log = logging.getLogger(__name__)

BOUNDS_THRESHOLD = 1e-7  # scikit-learn's: values this close to the training range's ends map to 0 or 1
_FORMAT = "imputmae.OmicsNormalizer/1"


# ------------------------------------------------------------------------------------ pure tensor functions


def _references(n_quantiles: int) -> torch.Tensor:
    """``numpy.linspace(0, 1, Q)`` (torch.linspace rounds differently in the last bit, which moves ties)."""
    return torch.from_numpy(np.linspace(0, 1, n_quantiles, dtype=np.float64))


def _percentile_linear(sorted_x: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """Linear-interpolated percentiles of each column of ``sorted_x [N, F]`` at ``refs [Q]`` in [0, 1] -> [F, Q].

    NumPy's default ("linear") method, with its two-sided lerp for accuracy near the upper point.
    """
    n = sorted_x.shape[0]
    pos = (n - 1) * (refs * 100 / 100)  # numpy.percentile(q=refs*100)'s virtual index, bit for bit
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    t = (pos - lo.to(pos.dtype)).unsqueeze(0)               # [1, Q]
    a, b = sorted_x[lo].T, sorted_x[hi].T                    # [F, Q]
    diff = b - a
    return torch.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def quantile_fit(x: torch.Tensor, n_quantiles: int, chunk: int = 4096) -> torch.Tensor:
    """Per-feature quantiles of ``x [N, F]`` (no NaN) at ``linspace(0, 1, n_quantiles)``: ``[F, n_quantiles]``.

    Non-decreasing along the last axis (``cummax``), as scikit-learn enforces.
    """
    refs = _references(n_quantiles)
    out = torch.empty((x.shape[1], n_quantiles), dtype=torch.float64)
    for c0 in range(0, x.shape[1], chunk):
        s = torch.sort(x[:, c0: c0 + chunk].to(torch.float64), dim=0).values
        out[c0: c0 + chunk] = _percentile_linear(s, refs)
    return torch.cummax(out, dim=1).values


def _tie_starts(q: torch.Tensor) -> torch.Tensor:
    """For each knot of ``q [F, Q]`` (non-decreasing rows), the index of the first knot with the same value."""
    idx = torch.arange(q.shape[1]).expand_as(q)
    new = torch.ones_like(q, dtype=torch.bool)
    new[:, 1:] = q[:, 1:] != q[:, :-1]
    return torch.cummax(torch.where(new, idx, torch.zeros_like(idx)), dim=1).values


def quantile_transform(x: torch.Tensor, quantiles: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Map ``x [N, F]`` through the per-feature ``quantiles [F, Q]`` to uniform [0, 1] (float64 [N, F]).

    Matches scikit-learn's ``QuantileTransformer(output_distribution="uniform").transform``, which averages
    ``np.interp`` forwards and backwards: between knots that is plain linear interpolation; at a value shared by
    knots ``a..b`` it is the middle of their references, ``(ref[a] + ref[b]) / 2``. Values within
    ``BOUNDS_THRESHOLD`` of the training range's ends, or outside it, go to exactly 0 or 1.
    """
    n_q = quantiles.shape[1]
    refs = _references(n_q)
    out = torch.empty(x.shape, dtype=torch.float64)
    for c0 in range(0, x.shape[1], chunk):
        q = quantiles[c0: c0 + chunk].to(torch.float64).contiguous()        # [F, Q]
        xt = x[:, c0: c0 + chunk].to(torch.float64).T.contiguous()         # [F, N]
        last = (torch.searchsorted(q, xt, right=True) - 1).clamp(0, n_q - 1)  # last knot <= x (0 below range)
        j = last.clamp(max=n_q - 2)
        x0, x1 = q.gather(1, j), q.gather(1, j + 1)
        d = x1 - x0
        t = torch.where(d > 0, ((xt - x0) / torch.where(d > 0, d, 1.0)).clamp(0, 1), 1.0)
        y = refs[j] + t * (refs[j + 1] - refs[j])
        tie = q.gather(1, last) == xt
        if tie.any():
            y = torch.where(tie, 0.5 * (refs[_tie_starts(q).gather(1, last)] + refs[last]), y)
        y = torch.where(xt + BOUNDS_THRESHOLD > q[:, -1:], 1.0, y)
        y = torch.where(xt - BOUNDS_THRESHOLD < q[:, :1], 0.0, y)
        out[:, c0: c0 + chunk] = y.T
    return out


def quantile_inverse(y: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantile_transform` for ``y [N, F]`` in [0, 1]: interpolation on the uniform grid."""
    n_q = quantiles.shape[1]
    q = quantiles.to(torch.float64)
    pos = y.to(torch.float64).clamp(0, 1).T * (n_q - 1)                  # [F, N]
    lo = pos.floor().long().clamp(0, n_q - 2)
    t = pos - lo.to(torch.float64)
    a, b = q.gather(1, lo), q.gather(1, lo + 1)
    return (a + t * (b - a)).T


def upper_quartile_scale(x: torch.Tensor) -> torch.Tensor:
    """Each row's 75th percentile (linear, as ``numpy.percentile``) for ``x [N, F]`` -> ``[N]`` (float64).

    Two order statistics per row (``kthvalue``), not a sort: no [N, F] copy beyond the float64 cast.
    """
    x = x.to(torch.float64)
    n = x.shape[1]
    pos = (n - 1) * (75.0 / 100)  # numpy's virtual index for q = 75
    lo = math.floor(pos)
    t = pos - lo
    a = torch.kthvalue(x, lo + 1, dim=1).values
    b = torch.kthvalue(x, min(lo + 2, n), dim=1).values
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


# ------------------------------------------------------------------------------------------------- the class


class OmicsNormalizer:
    """Fit on training patients, transform anyone; saved with the model as plain tensors, lists and numbers.

    Args:
        kind: a vector modality of the registry in use; its entry says which steps apply
            (:attr:`Modality.log1p`, :attr:`Modality.std_filter`: RNA both, DNAm neither).
        min_std: the feature filter on the raw training values (std, ddof=1, must exceed it); ``None`` keeps all.
            Ignored for a modality without :attr:`Modality.std_filter`.
        n_quantiles: quantiles of the quantile transform (fewer when fewer training patients).
        patch_size: the feature axis is zero-padded to a multiple of it (default: the entry's, RNA 256, DNAm 512).
        mode: ``paper`` (every step) or ``identity`` (NaN fill and padding only, for matrices the user already
            normalised).
        quantile_dtype: storage of the fitted quantiles, the bulk of the state (features x min(n_quantiles,
            n_train)). ``float64`` (default) matches scikit-learn to rounding; ``float32`` halves the checkpoint,
            but where training values lie closer together than float32 resolves, an output can move by up to
            one quantile step, 1 / (Q - 1) (5e-4 seen on 30 patients).

    Attributes (after ``fit``):
        features_in_: the columns ``transform`` expects (the training frame's).
        feature_names_: the kept features, the first ``n_features_`` output columns, in order.
        n_features_, n_padded_: output widths before and after padding.
    """

    def __init__(self, kind: str, min_std: float | None = 0.1, n_quantiles: int = 10_000,
                 patch_size: int | None = None, mode: Literal["paper", "identity"] = "paper",
                 quantile_dtype: Literal["float32", "float64"] = "float64"):
        entry = get(kind)
        if entry.is_image:
            raise ValueError(f"kind must be a vector modality ({', '.join(vector_modalities())}), got {kind!r}")
        if mode not in ("paper", "identity"):
            raise ValueError(f"mode must be 'paper' or 'identity', got {mode!r}")
        if quantile_dtype not in ("float32", "float64"):
            raise ValueError(f"quantile_dtype must be 'float32' or 'float64', got {quantile_dtype!r}")
        self.quantile_dtype = quantile_dtype
        if n_quantiles < 2:
            raise ValueError(f"n_quantiles must be >= 2, got {n_quantiles}")
        self.kind, self.mode = kind, mode
        self.log1p = entry.log1p
        self.min_std = min_std if entry.std_filter else None
        self.n_quantiles = int(n_quantiles)
        self.patch_size = int(patch_size or entry.patch_size)
        self._fitted = False

    @classmethod
    def from_config(cls, kind: str, omics_cfg: Mapping[str, Any],
                    already_normalized: bool = False) -> OmicsNormalizer:
        """From the config's ``omics`` section; ``already_normalized`` (see
        :func:`imputmae.omics.matrix_is_normalized`) selects the identity mode. A modality without its
        ``omics.<kind>`` section (one added in a registry, not in the schema) takes its registry entry's patch
        size and no feature filter."""
        section = omics_cfg.get(kind) or {}
        return cls(kind, min_std=section.get("min_std"), n_quantiles=omics_cfg["n_quantiles"],
                   patch_size=section.get("patch_size"), mode="identity" if already_normalized else "paper")

    # ------------------------------------------------------------------------------------------ fitting

    def fit(self, train: pd.DataFrame) -> OmicsNormalizer:
        """Fit every step on ``train [n_train, n_features]`` (rows: training patients only; columns: features)."""
        if train.shape[0] < 2 or train.shape[1] < 1:
            raise ValueError(f"fit needs at least 2 training patients and 1 feature, got shape {train.shape}")
        self.features_in_ = [str(c) for c in train.columns]
        if len(set(self.features_in_)) != len(self.features_in_):
            raise ValueError("the training frame repeats a feature name")
        raw = train.to_numpy(dtype=np.float64, copy=True)
        self.n_train_ = raw.shape[0]
        never = np.isnan(raw).all(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features: handled just below
            median = np.nanmedian(raw, axis=0)
        median[never] = 0.0
        if never.any():
            log.info("%s: %d features never observed in training are filled with 0", self.kind, int(never.sum()))
        self.median_ = torch.from_numpy(median)
        keep = np.arange(raw.shape[1])
        if self.mode == "paper" and self.min_std is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a feature seen once or never: std NaN, dropped
                std = np.nanstd(raw, axis=0, ddof=1)
            keep = np.flatnonzero(np.nan_to_num(std, nan=0.0) > self.min_std)
            log.info("%s: %d of %d features have training std > %g", self.kind, keep.size, raw.shape[1],
                     self.min_std)
            if keep.size == 0:
                raise ValueError(f"{self.kind}: no feature has a training standard deviation > {self.min_std}")
        self.keep_ = torch.from_numpy(keep.astype(np.int64))
        self.feature_names_ = [self.features_in_[i] for i in keep]
        self.n_features_ = len(self.feature_names_)
        self.n_padded_ = math.ceil(self.n_features_ / self.patch_size) * self.patch_size
        self._fitted = True
        if self.mode == "identity":
            return self
        x, uq = self._pre_quantile(torch.from_numpy(raw))
        self.uq_reference_ = float(uq.median())
        n_q = min(self.n_quantiles, self.n_train_)
        if n_q < self.n_quantiles:
            log.info("%s: %d quantiles instead of %d (only %d training patients)", self.kind, n_q,
                     self.n_quantiles, self.n_train_)
        self.quantiles_ = quantile_fit(x, n_q).to(getattr(torch, self.quantile_dtype))
        y = quantile_transform(x, self.quantiles_)
        self.min_ = y.min(dim=0).values
        self.max_ = y.max(dim=0).values
        return self

    # ---------------------------------------------------------------------------------------- transform

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError("OmicsNormalizer is not fitted: call fit(train) or from_state_dict(...)")

    def _aligned(self, df: pd.DataFrame) -> torch.Tensor:
        """``df`` in the training column order, NaN filled: float64 [N, F_in]."""
        cols = pd.Index([str(c) for c in df.columns])
        missing = pd.Index(self.features_in_).difference(cols)
        if len(missing):
            raise ValueError(f"{self.kind}: {len(missing)} of the {len(self.features_in_)} training features are "
                             f"absent, e.g. {list(missing[:3])}")
        idx = cols.get_indexer(self.features_in_)
        arr = df.to_numpy(dtype=np.float64, copy=True)  # our own copy: the steps below work in place
        if not np.array_equal(idx, np.arange(arr.shape[1])):
            arr = arr[:, idx]
        return self._fill(torch.from_numpy(arr))

    def _fill(self, x: torch.Tensor) -> torch.Tensor:
        """NaN -> the training median of the feature, in place on ``x [N, F_in]``."""
        nan = torch.isnan(x)
        if nan.any():
            x[nan] = self.median_.expand_as(x)[nan]
        return x

    def _pre_quantile(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``x [N, F_in]`` (modified in place) -> (kept features, NaN filled, log1p (RNA), divided by each
        row's 75th percentile [N, F]; that divisor [N])."""
        x = self._fill(x)
        if self.keep_.numel() != x.shape[1]:
            x = x[:, self.keep_]
        if self.log1p:
            if (x < 0).any():
                raise ValueError(f"{self.kind}: negative values; the paper's steps expect raw values >= 0 (RNA: "
                                 "FPKM-UQ). For a matrix already normalised set the cohort's normalize: false")
            x.log1p_()
        uq = upper_quartile_scale(x)
        bad = ~(uq > 0) | ~torch.isfinite(uq)
        if bad.any():
            log.warning("%s: %d patient(s) with a 75th percentile <= 0 are not scaled", self.kind, int(bad.sum()))
        uq = torch.where(bad, torch.ones_like(uq), uq)
        return x.div_(uq.unsqueeze(1)), uq

    def _pad(self, x: torch.Tensor) -> np.ndarray:
        out = np.zeros((x.shape[0], self.n_padded_), dtype=np.float32)
        out[:, : self.n_features_] = x.numpy()
        return out

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """``df [N, features_in_]`` (rows any patients) -> float32 ``[N, n_padded_]``, kept features first in
        ``feature_names_`` order, then zeros."""
        self._check_fitted()
        x = self._aligned(df)
        if self.mode == "identity":
            return self._pad(x if self.keep_.numel() == x.shape[1] else x[:, self.keep_])
        y = quantile_transform(self._pre_quantile(x)[0], self.quantiles_)
        rng = self.max_ - self.min_
        y = ((y - self.min_) / torch.where(rng > 0, rng, torch.ones_like(rng))).clamp(0, 1)
        return self._pad(y)

    def fit_transform(self, train: pd.DataFrame) -> np.ndarray:
        return self.fit(train).transform(train)

    def upper_quartiles(self, df: pd.DataFrame) -> np.ndarray:
        """The per-row divisor step 4 uses for ``df`` ([N] float64): pass it to ``inverse_transform`` to undo
        the scaling exactly."""
        self._check_fitted()
        if self.mode == "identity":
            return np.ones(len(df))
        return self._pre_quantile(self._aligned(df))[1].numpy()

    def inverse_transform(self, x: np.ndarray | torch.Tensor, index: Sequence | None = None,
                          row_scale: np.ndarray | None = None) -> pd.DataFrame:
        """``x [N, n_padded_]`` (or ``[N, n_features_]``) -> frame ``[N, feature_names_]`` in raw units.

        Args:
            index: row labels (default 0..N-1).
            row_scale: each row's 75th percentile from :meth:`upper_quartiles`; default the training median
                (then the result is approximate: see the module docstring).
        """
        self._check_fitted()
        y = torch.as_tensor(np.asarray(x), dtype=torch.float64)[:, : self.n_features_]
        if self.mode == "paper":
            y = y.clamp(0, 1) * (self.max_ - self.min_) + self.min_
            y = quantile_inverse(y, self.quantiles_)
            scale = (torch.as_tensor(np.asarray(row_scale), dtype=torch.float64) if row_scale is not None
                     else torch.full((y.shape[0],), self.uq_reference_, dtype=torch.float64))
            y = y * scale.unsqueeze(1)
            if self.log1p:
                y = torch.expm1(y)
        return pd.DataFrame(y.numpy(), index=index, columns=self.feature_names_)

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything fitted, as tensors, lists, strings and numbers (``torch.load(weights_only=True)`` safe)."""
        self._check_fitted()
        state: dict[str, Any] = dict(
            format=_FORMAT, kind=self.kind, mode=self.mode, min_std=self.min_std, n_quantiles=self.n_quantiles,
            patch_size=self.patch_size, quantile_dtype=self.quantile_dtype, n_train=self.n_train_, features_in=list(self.features_in_),
            keep=self.keep_.clone(), median=self.median_.clone(),
        )
        if self.mode == "paper":
            state.update(quantiles=self.quantiles_.clone(), min=self.min_.clone(), max=self.max_.clone(),
                         uq_reference=self.uq_reference_)
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> OmicsNormalizer:
        """Rebuild a fitted normaliser from :meth:`state_dict`'s output."""
        if state.get("format") != _FORMAT:
            raise ValueError(f"not an OmicsNormalizer state (format {state.get('format')!r}, expected {_FORMAT})")
        self = cls(state["kind"], min_std=state["min_std"], n_quantiles=state["n_quantiles"],
                   patch_size=state["patch_size"], mode=state["mode"], quantile_dtype=state["quantile_dtype"])
        self.n_train_ = int(state["n_train"])
        self.features_in_ = list(state["features_in"])
        self.keep_ = state["keep"].clone()
        self.median_ = state["median"].clone()
        self.feature_names_ = [self.features_in_[i] for i in self.keep_.tolist()]
        self.n_features_ = len(self.feature_names_)
        self.n_padded_ = math.ceil(self.n_features_ / self.patch_size) * self.patch_size
        if self.mode == "paper":
            self.quantiles_ = state["quantiles"].clone()
            self.min_, self.max_ = state["min"].clone(), state["max"].clone()
            self.uq_reference_ = float(state["uq_reference"])
        self._fitted = True
        return self

    def __repr__(self) -> str:
        fitted = f", {self.n_features_} -> {self.n_padded_} features" if self._fitted else ", not fitted"
        return f"OmicsNormalizer(kind={self.kind!r}, mode={self.mode!r}{fitted})"
