"""finetune.loss: cox: Cox's partial likelihood and Breslow's baseline, cross-checked against lifelines, and a
fine-tuning fold trained with it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from imputmae.config import load_config, validate_config
from imputmae.finetune import FinetuneConfig, load_survival_model, predict_patients, run_finetune, save_survival_model
from imputmae.survival import breslow_log_increments, cox_hazard_logits, cox_partial_nll, hazard_to_survival
from tests.test_finetune import CFG, _fold, synthetic_cohort, tiny_mae


def _data(n: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t, c = rng.exponential(100 * np.exp(-0.8 * x)), rng.exponential(150, n)
    return x, np.minimum(t, c), (t <= c).astype(float)


def _lifelines_fit(x, time, ev):
    lifelines = pytest.importorskip("lifelines")
    df = pd.DataFrame({"x": x, "T": time, "E": ev})
    return lifelines.CoxPHFitter(penalizer=0.0).fit(df, "T", "E"), df


def test_partial_likelihood_matches_lifelines():
    """No tied times (Efron = Breslow): our mean NLL x events at lifelines' fitted beta is minus its log-likelihood."""
    x, time, ev = _data()
    cph, _ = _lifelines_fit(x, time, ev)
    beta = float(cph.params_["x"])
    nll = float(cox_partial_nll(torch.tensor(beta * x), torch.tensor(time), torch.tensor(ev)))
    assert nll * ev.sum() == pytest.approx(-cph.log_likelihood_, rel=1e-9)
    # and beta is its minimiser: a step either way raises it
    for d in (-0.05, 0.05):
        assert float(cox_partial_nll(torch.tensor((beta + d) * x), torch.tensor(time), torch.tensor(ev))) > nll


def test_partial_likelihood_ties_are_breslow():
    """Tied times: every tied patient is in each one's risk set (a direct double loop as the reference)."""
    x, time, ev = _data(40, seed=3)
    time = np.ceil(time / 20) * 20                       # many ties
    eta = 0.7 * x
    want = np.mean([np.log(np.exp(eta[time >= time[i]]).sum()) - eta[i] for i in np.flatnonzero(ev)])
    got = float(cox_partial_nll(torch.tensor(eta), torch.tensor(time), torch.tensor(ev)))
    assert got == pytest.approx(want, rel=1e-12)
    assert float(cox_partial_nll(torch.tensor(eta), torch.tensor(time), torch.zeros(40, dtype=torch.float64))) == 0


def test_breslow_curves_match_lifelines():
    """S(t | x) = exp(-H0(t) exp(eta)) through the logistic-hazard logits equals lifelines' at its event times."""
    x, time, ev = _data()
    cph, df = _lifelines_fit(x, time, ev)
    beta = float(cph.params_["x"])
    cuts = np.concatenate([[0.0], np.unique(time[ev > 0])[::4]])     # lifelines interpolates between event times
    inc = breslow_log_increments(beta * x, time, ev, cuts)
    surv = hazard_to_survival(cox_hazard_logits(torch.tensor(beta * x), torch.tensor(inc)), eps=0).numpy()
    want = cph.predict_survival_function(df[["x"]], times=cuts[1:]).to_numpy().T
    np.testing.assert_allclose(surv[:, 1:], want, atol=1e-9)   # at 0 lifelines back-fills its first time's value
    np.testing.assert_allclose(surv[:, 0], 1.0, atol=1e-9)


def test_cox_fine_tuning_fold(tmp_path):
    """A fold trained with the partial likelihood: a Breslow baseline from the fit patients, proper curves, a
    concordant ranking of the synthetic risk, and model.pt reloading to the same predictions."""
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    res = run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="all", loss="cox", **CFG))
    member = res.model.members[0]
    assert member.head.out_features == 1 and torch.isfinite(member.log_increments).all()
    assert member.log_increments.max() > -20                  # refitted, not the zeros it starts from
    s = res.predictions.filter(regex=r"^s_\d+$").to_numpy()
    # 1e-6: hazard_to_survival's eps (1e-7 per bin) where a bin has no training death (hazard ~0)
    assert s.shape[1] == 8 and (np.diff(s, axis=1) <= 1e-6).all() and ((s >= 0) & (s <= 1 + 1e-6)).all()
    assert res.metrics["harrell"] > 0.7   # the latent risk is ranked (Antolini on 10 test patients and 8 bins is
    #                                      below 0.5 for the NLL model as well: too few pairs past the cuts)
    assert res.metrics["history"][0][-1]["train_loss"] < res.metrics["history"][0][0]["train_loss"]
    save_survival_model(tmp_path / "model.pt", res, mae, {})
    model, mae2, state = load_survival_model(tmp_path / "model.pt")
    again = predict_patients(model, mae2, inp, state, test).filter(regex=r"^s_\d+$").to_numpy()
    want = res.predictions.set_index("patient").loc[test].filter(regex=r"^s_\d+$").to_numpy()
    np.testing.assert_allclose(again, want, rtol=1e-5, atol=1e-6)


def test_schema_takes_the_loss():
    cfg = load_config(["config.yaml"])
    assert cfg["finetune"]["loss"] == "nll"
    validate_config({**cfg, "finetune": {**cfg["finetune"], "loss": "cox"}})
    with pytest.raises(Exception, match="loss"):
        validate_config({**cfg, "finetune": {**cfg["finetune"], "loss": "deephit"}})
