"""Table 4's ridge reference (:func:`imputmae.table4.ridge_predict`) is scikit-learn's RidgeCV on the whole targets,
fitted through the targets' row space instead of materialising a [targets, features] coefficient matrix."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV

from imputmae.table4 import ridge_predict

ALPHAS = np.logspace(-2, 4, 13)


@pytest.mark.parametrize("n, p, q", [(12, 300, 200), (40, 30, 500), (25, 400, 8)])
def test_same_alpha_and_predictions_as_ridgecv(n, p, q):
    rng = np.random.default_rng(n + p + q)
    x = rng.random((n + 7, p)).astype(np.float32)
    w = rng.normal(size=(p, q)) * (rng.random(q) < 0.3)
    y = np.clip(x @ w / p + 0.5 + rng.normal(0, 0.05, (n + 7, q)), 0, 1).astype(np.float32)
    full = RidgeCV(alphas=ALPHAS).fit(x[:n], y[:n])
    np.testing.assert_allclose(ridge_predict(x[:n], y[:n], x[n:], ALPHAS), full.predict(x[n:]), rtol=1e-6,
                               atol=1e-6)


def test_the_alpha_is_the_whole_targets_leave_one_out_choice():
    """A problem where RidgeCV picks an interior alpha: the projected fit picks the same one."""
    from sklearn.linear_model import RidgeCV as R

    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 60))
    y = x[:, :5] @ rng.normal(size=(5, 90)) + rng.normal(0, 2.0, (30, 90))
    full = R(alphas=ALPHAS).fit(x, y)
    assert ALPHAS[0] < full.alpha_ < ALPHAS[-1]
    mean = y.mean(0)
    _, sv, vt = np.linalg.svd(y - mean, full_matrices=False)
    assert R(alphas=ALPHAS).fit(x, (y - mean) @ vt.T).alpha_ == full.alpha_
