"""The fitted omics normaliser: against scikit-learn and by hand, no leakage, saved and reloaded safely."""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.preprocessing import QuantileTransformer

from imputmae.normalize import (
    OmicsNormalizer,
    quantile_fit,
    quantile_inverse,
    quantile_transform,
    upper_quartile_scale,
)


def _rna(n: int, g: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.5, 4.0, (n, g)) * rng.uniform(0.5, 2.0, (n, 1))  # per-patient depth
    x[:, :10] = 0.02 * rng.uniform(size=(n, 10))                     # near-constant genes: filtered
    x[:, 10:20] = np.round(x[:, 10:20])                              # ties
    return pd.DataFrame(x, index=[f"P{i:03d}" for i in range(n)], columns=[f"ENSG{j:011d}" for j in range(g)])


def _dnam(n: int, g: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.beta(0.5, 0.5, (n, g))
    x[rng.uniform(size=x.shape) < 0.05] = np.nan
    return pd.DataFrame(x, index=[f"P{i:03d}" for i in range(n)], columns=[f"cg{j:08d}" for j in range(g)])


# ------------------------------------------------------------------------ quantile transform vs scikit-learn


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_quantiles", [7, 50, 120])
def test_quantile_transform_matches_sklearn(seed, n_quantiles):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(120, 30))
    train[:, :6] = np.round(train[:, :6] * 2)   # ties
    train[:, 6] = 1.5                           # a constant feature
    test = rng.normal(scale=3.0, size=(80, 30))  # many values outside the training range
    test[:, :6] = np.round(test[:, :6] * 2)
    test[:3, 6] = [1.5, 0.0, 9.0]
    qt = QuantileTransformer(n_quantiles=n_quantiles, output_distribution="uniform", subsample=None).fit(train)
    q = quantile_fit(torch.from_numpy(train), n_quantiles)
    np.testing.assert_allclose(q.numpy(), qt.quantiles_.T, rtol=0, atol=1e-12)
    for data in (train, test):
        ours = quantile_transform(torch.from_numpy(data), q).numpy()
        np.testing.assert_allclose(ours, qt.transform(data), rtol=0, atol=1e-12)
    assert ((test > train.max(0)) <= (quantile_transform(torch.from_numpy(test), q).numpy() == 1)).all()
    u = rng.uniform(size=(40, 30))
    np.testing.assert_allclose(quantile_inverse(torch.from_numpy(u), q).numpy(), qt.inverse_transform(u),
                               rtol=0, atol=1e-12)


def test_upper_quartile_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 1.0, 9.0, 10.0]], dtype=torch.float64)
    # linear percentile: position 0.75 * 4 = 3 -> the 4th smallest value
    assert upper_quartile_scale(x).tolist() == [4.0, 9.0]
    y = torch.tensor([[4.0, 1.0, 3.0, 2.0]], dtype=torch.float64)  # position 2.25: 3 + 0.25 * (4 - 3)
    assert upper_quartile_scale(y).tolist() == [3.25]
    rng = np.random.default_rng(0)
    z = rng.gamma(2, 2, (7, 33))
    np.testing.assert_allclose(upper_quartile_scale(torch.from_numpy(z)).numpy(), np.percentile(z, 75, axis=1))


@pytest.mark.parametrize("dtype,atol", [("float64", 1e-6), ("float32", 1 / 29)])  # float32: one quantile step
def test_rna_steps_by_hand_against_numpy_and_sklearn(dtype, atol):
    df = _rna(40)
    train, test = df.iloc[:30], df.iloc[30:]
    norm = OmicsNormalizer("rna", min_std=0.1, n_quantiles=1000, patch_size=64, quantile_dtype=dtype).fit(train)
    keep = train.columns[train.std(ddof=1) > 0.1]           # pandas' std on raw FPKM-UQ, as DRIM
    assert norm.feature_names_ == list(keep) and len(keep) == 290
    assert norm.quantiles_.shape == (290, 30)                # min(n_quantiles, n_train)

    def pre(d):
        v = np.log1p(d[keep].to_numpy())
        return v / np.percentile(v, 75, axis=1, keepdims=True)

    qt = QuantileTransformer(n_quantiles=30, output_distribution="uniform").fit(pre(train))
    lo, hi = qt.transform(pre(train)).min(0), qt.transform(pre(train)).max(0)
    for d in (train, test):
        want = np.clip((qt.transform(pre(d)) - lo) / np.where(hi > lo, hi - lo, 1), 0, 1)
        got = norm.transform(d)
        assert got.dtype == np.float32 and got.shape == (len(d), 320)  # 290 padded to 5 patches of 64
        np.testing.assert_allclose(got[:, :290], want, rtol=0, atol=atol)
        assert (got[:, 290:] == 0).all()
    np.testing.assert_array_equal(norm.upper_quartiles(test),
                                  np.percentile(np.log1p(test[keep].to_numpy()), 75, axis=1))


def test_min_max_by_hand_constant_feature_and_clipping():
    # DNAm (no log, no filter), 3 training patients. Every row is a permutation of {0.1, 0.2, 0.5, 0.9} with
    # c = 0.5 fixed, so every row's 75th percentile is 0.5 + 0.25 * 0.4 = 0.6 and c stays constant after scaling.
    train = pd.DataFrame([[0.1, 0.2, 0.5, 0.9], [0.2, 0.9, 0.5, 0.1], [0.9, 0.1, 0.5, 0.2]],
                         columns=["a", "b", "c", "d"])
    norm = OmicsNormalizer("dnam", n_quantiles=3, patch_size=4, quantile_dtype="float64").fit(train)
    assert norm.upper_quartiles(train).tolist() == pytest.approx([0.6, 0.6, 0.6])
    # 3 quantiles = the 3 values: ranks 0, 1/2, 1; a constant feature gives 0 (max == min: no division by zero)
    want = [[0, 0.5, 0, 1], [0.5, 1, 0, 0], [1, 0, 0, 0.5]]
    np.testing.assert_allclose(norm.transform(train), want, atol=1e-7)
    # a new patient: row 75th percentile 0.9 -> scaled [1, 1, 0.556, 0.056]; a and b inside their training
    # range [1/6, 3/2]; c below the constant 5/6 -> 0; d below 1/6 -> clipped to 0
    y = norm.transform(pd.DataFrame([[0.9, 0.9, 0.5, 0.05]], columns=list("abcd")))[0]
    inside = 0.5 + 0.5 * (1 - 0.2 / 0.6) / (0.9 / 0.6 - 0.2 / 0.6)  # between the 1/3 and 3/2 knots
    np.testing.assert_allclose(y, [inside, inside, 0, 0], atol=1e-6)
    y = norm.transform(pd.DataFrame([[0.01, 0.05, 0.05, 0.99]], columns=list("abcd")))[0]  # 75th pct 0.285
    assert y[0] == 0 and y[3] == 1  # below and above the training range: clipped


def test_dnam_nan_filled_with_training_median():
    df = _dnam(50)
    train, test = df.iloc[:40], df.iloc[40:].copy()
    norm = OmicsNormalizer("dnam", n_quantiles=1000, patch_size=512).fit(train)
    med = train.median()  # pandas skips NaN: the training median per probe
    np.testing.assert_allclose(norm.median_.numpy(), med.to_numpy())
    test.iloc[0, :5] = np.nan
    filled = test.copy()
    filled.iloc[0, :5] = med.iloc[:5].to_numpy()
    np.testing.assert_array_equal(norm.transform(test), norm.transform(filled))
    out = norm.transform(df)
    assert np.isfinite(out).all() and out.shape == (50, 512)
    assert norm.n_features_ == 200  # DNAm keeps every probe (min_std is RNA only)


def test_output_for_training_patients_does_not_depend_on_test_patients():
    df = _rna(60, seed=3)
    train = df.iloc[:45]
    a = OmicsNormalizer("rna", n_quantiles=10_000, patch_size=256).fit(train)
    out_a = a.transform(train)
    # other patients added, altered wildly, removed: the fitted state and the training output stay identical
    altered = df.copy()
    altered.iloc[45:] = altered.iloc[45:] * 100 + 7
    b = OmicsNormalizer("rna", n_quantiles=10_000, patch_size=256).fit(altered.loc[train.index])
    for key, value in a.state_dict().items():
        other = b.state_dict()[key]
        assert (torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other), key
    for frame in (df, altered, pd.concat([altered.iloc[45:], train])):
        out = pd.DataFrame(b.transform(frame), index=frame.index).loc[train.index].to_numpy()
        np.testing.assert_array_equal(out, out_a)


def test_state_dict_round_trip_weights_only():
    df = _dnam(30)
    norm = OmicsNormalizer("dnam", n_quantiles=100, patch_size=64).fit(df.iloc[:20])
    state = norm.state_dict()
    buf = io.BytesIO()
    torch.save({"normalizer": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["normalizer"]
    allowed = (torch.Tensor, list, str, int, float, type(None))
    assert all(isinstance(v, allowed) for v in loaded.values())
    again = OmicsNormalizer.from_state_dict(loaded)
    np.testing.assert_array_equal(again.transform(df), norm.transform(df))
    assert again.feature_names_ == norm.feature_names_ and again.n_padded_ == norm.n_padded_
    with pytest.raises(ValueError, match="not an OmicsNormalizer state"):
        OmicsNormalizer.from_state_dict({"format": "something else"})


def test_inverse_transform_round_trip():
    df = _rna(50, seed=5)
    train = df.iloc[:40]
    norm = OmicsNormalizer("rna", n_quantiles=10_000, patch_size=128).fit(train)
    x = norm.transform(train)
    exact = norm.inverse_transform(x, index=train.index, row_scale=norm.upper_quartiles(train))
    assert list(exact.columns) == norm.feature_names_ and list(exact.index) == list(train.index)
    np.testing.assert_allclose(exact.to_numpy(), train[norm.feature_names_].to_numpy(), rtol=1e-4, atol=1e-4)
    # without the per-row scale the training median is used: right on average, not per patient
    approx = norm.inverse_transform(x)
    ratio = np.log1p(approx.to_numpy()).sum(1) / np.log1p(train[norm.feature_names_].to_numpy()).sum(1)
    assert 0.7 < np.median(ratio) < 1.3


def test_identity_mode_pads_only():
    df = _rna(10, g=70)
    norm = OmicsNormalizer("rna", patch_size=32, mode="identity").fit(df.iloc[:6])
    out = norm.transform(df)
    assert out.shape == (10, 96) and norm.feature_names_ == list(df.columns)
    np.testing.assert_array_equal(out[:, :70], df.to_numpy(np.float32))
    assert (out[:, 70:] == 0).all()
    np.testing.assert_allclose(norm.inverse_transform(out).to_numpy(), df.to_numpy(np.float32))
    state = OmicsNormalizer.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(state.transform(df), out)


def test_columns_aligned_by_name_and_missing_ones_refused():
    df = _dnam(20, g=30)
    norm = OmicsNormalizer("dnam", n_quantiles=50, patch_size=16).fit(df.iloc[:15])
    shuffled = df[df.columns[::-1]].assign(extra=1.0)
    np.testing.assert_array_equal(norm.transform(shuffled), norm.transform(df))
    with pytest.raises(ValueError, match="absent"):
        norm.transform(df.drop(columns=df.columns[3]))


def test_fewer_quantiles_when_fewer_patients_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="imputmae.normalize"):
        norm = OmicsNormalizer("dnam", n_quantiles=10_000).fit(_dnam(25))
    assert norm.quantiles_.shape[1] == 25 and "25 quantiles instead of 10000" in caplog.text


def test_negative_rna_refused_with_the_fix():
    df = _rna(10) - 5
    with pytest.raises(ValueError, match="normalize: false"):
        OmicsNormalizer("rna").fit(df)


def test_from_config():
    cfg = dict(n_quantiles=10_000, rna=dict(min_std=0.1, patch_size=256), dnam=dict(patch_size=512))
    r = OmicsNormalizer.from_config("rna", cfg)
    d = OmicsNormalizer.from_config("dnam", cfg, already_normalized=True)
    assert (r.kind, r.min_std, r.patch_size, r.mode) == ("rna", 0.1, 256, "paper")
    assert (d.kind, d.min_std, d.patch_size, d.mode) == ("dnam", None, 512, "identity")


@pytest.mark.parametrize("kind", ["rna", "dnam"])
def test_inputs_are_not_modified(kind):
    df = (_rna if kind == "rna" else _dnam)(20, 40)
    df.iloc[:, 3] = np.nan  # never observed in training: filled with 0
    before = df.copy()
    norm = OmicsNormalizer(kind, n_quantiles=10, patch_size=16).fit(df.iloc[:15])
    out = norm.transform(df)
    norm.upper_quartiles(df)
    pd.testing.assert_frame_equal(df, before)
    assert np.isfinite(out).all() and float(norm.median_[3]) == 0.0
