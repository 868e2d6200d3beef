"""Table 3's rerun rows on one fold (imputmae.baselines.rows) and the mean fill (imputmae.finetune.fill): every row
trains and scores the fold's test patients, and nothing fitted moves when the test patients' inputs and labels do."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from imputmae.baselines.rows import ROWS, run_fold_rows
from imputmae.finetune import FinetuneConfig, PatientInputs
from imputmae.finetune.fill import fit_mean_fill, mean_filled_inputs
from imputmae.model import MAEConfig, MultimodalMAE

pytestmark = pytest.mark.usefixtures("one_thread")

N, L = 48, 32
FAST = {"multisurv": dict(epochs=2, batch_size=16, model=dict(width=16, rna_features=16, dnam_features=16)),
        "cmta": dict(epochs=1, model=dict(dim=16, genomic_hidden=16)),
        "mome": dict(epochs=1, batch_size=8, model=dict(dim=16))}
CFG = FinetuneConfig(epochs=2, batch_size=8, warmup_epochs=1, lr=1e-3, n_bins=5, val_fraction=0.25, seed=0)


def cohort(seed: int = 0):
    """N patients, a latent risk in every modality; some lack RNA, DNAm or a slide; the test fold is every 4th."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=N)
    patients = [f"P{i:03d}" for i in range(N)]
    t = rng.exponential(1000 * np.exp(-z))
    c = rng.exponential(2500, N)
    clinical = pd.DataFrame({"time": np.minimum(t, c).round() + 1, "event": (t <= c).astype(int)},
                            index=pd.Index(patients, name="patient"))
    sig = 1 / (1 + np.exp(-z))
    inp = PatientInputs(omics={"rna": {}, "dnam": {}})
    for i, p in enumerate(patients):
        if i % 7 != 3:
            inp.omics["rna"][p] = np.clip(sig[i] + rng.normal(0, .1, L), 0, 1).astype(np.float32)
        if i % 5 != 1:
            inp.omics["dnam"][p] = np.clip(1 - sig[i] + rng.normal(0, .1, L), 0, 1).astype(np.float32)
        if i % 3 != 2:
            inp.tiles[p] = (np.clip(sig[i] + rng.normal(0, .2, (2, 32, 32, 3)), 0, 1) * 255).astype(np.uint8)
    test = patients[::4]
    train = [p for p in patients if p not in test]
    return inp, clinical, train, test


def tiny_mae() -> MultimodalMAE:
    torch.manual_seed(0)
    return MultimodalMAE(MAEConfig.from_dict(dict(rna_len=L, dnam_len=L, hidden_size=16, num_heads=2, intermediate_size=32,
                                   rna_layers=2, dnam_layers=2, wsi_layers=2, decoder_hidden_size=16,
                                   decoder_layers=1, decoder_heads=2, decoder_intermediate_size=32, tile_size=32,
                                   wsi_patch_size=16, rna_patch=16, dnam_patch=16)))


def cox_raw(inp: PatientInputs) -> dict[str, pd.DataFrame]:
    from imputmae.baselines import wsi_summary_features

    out = {m: pd.DataFrame.from_dict(inp.omics[m], orient="index") for m in ("rna", "dnam")}
    out["wsi"] = pd.DataFrame.from_dict({p: wsi_summary_features(t) for p, t in inp.tiles.items()}, orient="index")
    return out


class _Identity:   # the Cox row maps reconstructions back to raw units: here the inputs are the raw units
    def __init__(self):
        self.n_features_ = L

    def inverse_transform(self, x, index=None):
        return pd.DataFrame(np.asarray(x)[:, :L], index=index)


def _run(inp, clinical, train, test, rows=tuple(ROWS)):
    return run_fold_rows(list(rows), tiny_mae(), inp, clinical, train, test, CFG, fold=0, baseline_over=FAST,
                         cox_features=cox_raw(inp), normalizers={"rna": _Identity(), "dnam": _Identity()},
                         cox_params={"n_components": 3, "penalizer": 0.5, "n_bins": 5}, device="cpu")


@pytest.fixture(scope="module")
def runs():
    n = torch.get_num_threads()
    torch.set_num_threads(1)   # module scope runs before the one_thread fixture: both runs of the leakage test alike
    try:
        inp, clinical, train, test = cohort()
        yield (inp, clinical, train, test), _run(inp, clinical, train, test)
    finally:
        torch.set_num_threads(n)


def test_every_row_scores_the_same_test_patients(runs):
    (inp, clinical, train, test), res = runs
    assert set(res) == set(ROWS)
    for name, r in res.items():
        got = r.predictions.loc[r.predictions["split"] == "test", "patient"]
        assert sorted(got) == sorted(test), name                     # one test set for every row of the fold
        assert np.isfinite(r.metrics["antolini"]) and r.metrics["n_test"] == len(test), name
        assert len(r.predictions.attrs["cuts_days"]) == r.predictions.filter(regex=r"^s_\d+$").shape[1], name
        assert r.metrics["n_parameters"] > 0 and r.metrics["cpu_seconds"] > 0, name
        lab = clinical.loc[r.predictions["patient"]]
        np.testing.assert_array_equal(r.predictions["time"].to_numpy(), lab["time"].to_numpy(), err_msg=name)


def test_nothing_fitted_sees_the_test_patients(runs):
    """Perturb every test patient's inputs and labels: every row's training-patient curves and cuts are unchanged."""
    (inp, clinical, train, test), before = runs
    rng = np.random.default_rng(1)
    inp2 = PatientInputs(omics={m: dict(d) for m, d in inp.omics.items()}, tiles=dict(inp.tiles))
    for p in test:
        for m in ("rna", "dnam"):
            if p in inp2.omics[m]:
                inp2.omics[m][p] = rng.random(L).astype(np.float32)
        if p in inp2.tiles:
            inp2.tiles[p] = rng.integers(0, 256, inp2.tiles[p].shape, dtype=np.uint8)
    clin2 = clinical.copy()
    clin2.loc[test, "time"] = rng.integers(1, 20000, len(test))
    clin2.loc[test, "event"] = 1 - clin2.loc[test, "event"]
    after = _run(inp2, clin2, train, test)
    for name in ROWS:
        a, b = before[name].predictions, after[name].predictions
        assert a.attrs["cuts_days"] == b.attrs["cuts_days"], name
        s = a.filter(regex=r"^s_\d+$").columns
        ta, tb = a[a["split"] == "train"], b[b["split"] == "train"]
        np.testing.assert_allclose(ta[s].to_numpy(), tb[s].to_numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_mean_fill_is_the_training_mean_and_marks_what_it_filled():
    inp, _, train, test = cohort()
    fill = fit_mean_fill(inp, train)
    have = [p for p in train if p in inp.omics["rna"]]
    np.testing.assert_allclose(fill["rna"], np.mean([inp.omics["rna"][p] for p in have], 0), rtol=1e-6)
    assert fill["wsi"].shape == (1, 32, 32, 3) and fill["wsi"].dtype == np.uint8
    out, filled = mean_filled_inputs(inp, test, fill)
    for i, p in enumerate(test):
        assert all(out.has(p, m) for m in ("rna", "dnam", "wsi"))
        assert filled["rna"][i] == (p not in inp.omics["rna"])
        if filled["rna"][i]:
            np.testing.assert_array_equal(out.omics["rna"][p], fill["rna"])
