"""The shared baseline training: each baseline learns a planted signal, nothing fitted sees the test patients,
runs are seeded, modality dropout, and the inputs built from a (tiny) pretrained MAE."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from imputmae.baselines import BaselineConfig, BaselineInputs, baseline_inputs, collate_inputs, train_baseline
from imputmae.baselines._train import _drop_modality
from imputmae.modalities import MODALITIES

pytestmark = pytest.mark.usefixtures("one_thread")   # per-patient forwards of small models (tests/conftest.py)

L_RNA, L_DNAM, F = 30, 20, 8
# narrow widths and few epochs keep each run to seconds; optimisers and learning rates are the published ones except
# MoME's (2e-4 with 32-patient accumulation gives ~60 steps here: too few to move in 6 epochs; 1e-3 with batches of 8)
FAST = {
    "multisurv": dict(epochs=20, batch_size=32, model=dict(width=32, rna_features=20, dnam_features=10)),
    "cmta": dict(epochs=6, model=dict(dim=32, genomic_hidden=64)),
    "mome": dict(epochs=6, batch_size=8, lr=1e-3, model=dict(dim=64)),
}


def planted_cohort(n: int = 150, seed: int = 0, missing: bool = True):
    """A latent risk z drives the hazard and, noisily, every modality; some patients lack some modalities (zero
    inputs, unavailable). Returns (BaselineInputs, clinical, z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    patients = [f"SYN-{i:04d}" for i in range(n)]
    t = rng.exponential(1000 * np.exp(-2.0 * z))
    c = rng.exponential(2500, n)
    clinical = pd.DataFrame({"time": np.minimum(t, c).round() + 1, "event": (t <= c).astype(int)},
                            index=pd.Index(patients, name="patient"))
    sig = 1 / (1 + np.exp(-z))
    avail = np.ones((n, 3), bool)
    if missing:
        avail[np.arange(n) % 7 == 3, 0] = False
        avail[np.arange(n) % 5 == 1, 1] = False
        avail[np.arange(n) % 4 == 2, 2] = False
    rna = np.clip(sig[:, None] + rng.normal(0, 0.15, (n, L_RNA)), 0, 1) * avail[:, :1]
    dnam = np.clip(1 - sig[:, None] + rng.normal(0, 0.15, (n, L_DNAM)), 0, 1) * avail[:, 1:2]
    w = rng.normal(size=F)
    tiles = [torch.from_numpy((z[i] * w + rng.normal(0, 0.5, (2 + i % 4, F))).astype(np.float32)) if avail[i, 2]
             else torch.zeros(1, F) for i in range(n)]
    bi = BaselineInputs(patients, torch.from_numpy(rna).float(), torch.from_numpy(dnam).float(), tiles,
                        torch.from_numpy(avail), torch.zeros(n, 3, dtype=torch.bool))
    return bi, clinical, z


def _split(patients, n_test=50):
    return patients[n_test:], patients[:n_test]


@pytest.mark.parametrize("name", ["multisurv", "cmta", "mome"])
def test_each_baseline_learns_a_planted_signal(name):
    """Test C-index clearly above chance: the true risk reaches ~0.75 on this cohort; 0.62 leaves a wide margin
    (chosen before running, not tuned), and a model that learned nothing scores 0.5 +- ~0.05."""
    bi, clinical, _ = planted_cohort()
    train, test = _split(bi.patients)
    cfg = BaselineConfig.published(name, **FAST[name])
    res = train_baseline(bi, clinical, train, test, cfg, device="cpu")
    m = res.metrics
    assert m["n_test"] == 50 and m["n_train"] == 100 and m["n_fit"] + m["n_val"] == 100
    assert m["antolini"] > 0.62, m
    assert 0 <= m["best_epoch"] < cfg.epochs and m["n_parameters"] > 0
    test_rows = res.predictions[res.predictions["split"] == "test"]
    assert test_rows["patient"].tolist() == test
    s = test_rows.filter(regex=r"^s_\d+$").to_numpy()
    assert s.shape == (50, len(res.state["cuts"])) and (np.diff(s, axis=1) <= 1e-7).all()


@pytest.mark.parametrize("name", ["multisurv", "cmta", "mome"])
def test_test_patients_do_not_change_the_fitted_state(name):
    """Perturb every test patient's inputs and labels: cuts, validation split, preselection, chosen epoch and the
    weights are identical, and so are the training patients' predictions; only the test rows change."""
    bi, clinical, _ = planted_cohort(50, seed=1)
    train, test = _split(bi.patients, 15)
    cfg = BaselineConfig.published(name, **{**FAST[name], "epochs": 2})
    a = train_baseline(bi, clinical, train, test, cfg, device="cpu")
    t_idx = torch.from_numpy(bi.index(test))
    bi2 = BaselineInputs(bi.patients, bi.rna.clone(), bi.dnam.clone(), [t.clone() for t in bi.tiles],
                         bi.available.clone(), bi.imputed.clone())
    bi2.rna[t_idx] = torch.rand(len(test), L_RNA)
    bi2.dnam[t_idx] = 1.0
    for i in t_idx.tolist():
        bi2.tiles[i] = torch.randn(7, F) * 10
    clinical2 = clinical.copy()
    clinical2.loc[test, "time"] = clinical2.loc[test, "time"] * 7 + 5000
    clinical2.loc[test, "event"] = 1 - clinical2.loc[test, "event"]
    b = train_baseline(bi2, clinical2, train, test, cfg, device="cpu")
    np.testing.assert_array_equal(a.state["cuts"], b.state["cuts"])
    assert a.state["val_patients"] == b.state["val_patients"] and a.state["best_epoch"] == b.state["best_epoch"]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    tr_a = a.predictions[a.predictions["split"] == "train"].filter(regex=r"^s_").to_numpy()
    tr_b = b.predictions[b.predictions["split"] == "train"].filter(regex=r"^s_").to_numpy()
    np.testing.assert_array_equal(tr_a, tr_b)
    assert not np.array_equal(a.predictions.filter(regex=r"^s_").to_numpy(),
                              b.predictions.filter(regex=r"^s_").to_numpy())


def test_same_config_same_result_and_train_test_overlap_is_refused():
    bi, clinical, _ = planted_cohort(60, seed=2)
    train, test = _split(bi.patients, 20)
    cfg = BaselineConfig.published("multisurv", **{**FAST["multisurv"], "epochs": 3})
    a = train_baseline(bi, clinical, train, test, cfg, device="cpu")
    b = train_baseline(bi, clinical, train, test, cfg, device="cpu")
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    with pytest.raises(ValueError, match="both train and test"):
        train_baseline(bi, clinical, train, test + train[:1], cfg, device="cpu")


def test_multisurv_native_zero_fill_with_modality_dropout_learns():
    """MultiSurv's own missing-data row: zero inputs, no mask, one modality dropped at random in training."""
    bi, clinical, _ = planted_cohort()
    train, test = _split(bi.patients)
    fast = FAST["multisurv"]
    cfg = BaselineConfig.published("multisurv", **{**fast, "modality_dropout": 0.3,
                                                   "model": {**fast["model"], "use_mask": False}})
    res = train_baseline(bi, clinical, train, test, cfg, device="cpu")
    assert res.metrics["antolini"] > 0.62


def test_modality_dropout_drops_one_available_modality():
    bi, _, _ = planted_cohort(40, seed=3)
    batch = collate_inputs(bi, np.arange(40))
    out = _drop_modality(batch, 1.0, torch.Generator().manual_seed(0))
    before, after = batch["available"].sum(1), out["available"].sum(1)
    multi = before >= 2
    assert (after[multi] == before[multi] - 1).all() and (after[~multi] == before[~multi]).all()
    assert not (out["available"] & ~batch["available"]).any()
    for i in range(40):
        for j, m in enumerate(MODALITIES):
            if batch["available"][i, j] and not out["available"][i, j]:
                if m == "wsi":
                    assert not out["tile_mask"][i].any()
                else:
                    assert float(out[m][i].abs().sum()) == 0
    assert batch["available"].sum() == before.sum()        # the input batch is not modified


def test_baseline_inputs_from_a_pretrained_mae():
    """Present modalities pass through unchanged; missing ones are imputed (and available) or zero (and not); the
    tile features are the frozen WSI encoder's CLS per tile."""
    from tests.test_finetune import synthetic_cohort, tiny_mae

    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(14)
    imp = baseline_inputs(mae, inp, patients, "impute")
    zero = baseline_inputs(mae, inp, patients, "zero")
    D = mae.cfg.hidden_size
    assert imp.rna.shape == (14, 60) and imp.dnam.shape == (14, 40) and imp.tile_dim == D
    assert bool(imp.available.all())
    for i, p in enumerate(patients):
        for j, m in enumerate(("rna", "dnam")):
            has = inp.has(p, m)
            assert bool(imp.imputed[i, j]) == (not has) and bool(zero.available[i, j]) == has
            if has:
                np.testing.assert_array_equal(imp.__getattribute__(m)[i].numpy(), inp.omics[m][p])
            else:
                assert float(zero.__getattribute__(m)[i].abs().sum()) == 0
        if inp.has(p, "wsi"):
            tiles = torch.from_numpy(inp.tiles[p]).permute(0, 3, 1, 2).float() / 255
            want = mae.encode({"wsi": tiles})["wsi"]
            torch.testing.assert_close(imp.tiles[i], want)
            assert imp.tiles[i].shape == (inp.tiles[p].shape[0], D)
        else:
            assert imp.tiles[i].shape == (1, D) and bool(imp.imputed[i, 2]) and not bool(zero.available[i, 2])


def test_resnet50_extractor_loads_torchvision_layout_weights(tmp_path):
    """Parameter counts of torchvision's resnet50 (25,557,032 with its fc of 2048*1000+1000 = 2,049,000; layer4
    14,964,736), a state dict with an fc and a ``module.`` prefix loads, and baseline_inputs uses it per tile."""
    from imputmae.baselines._resnet import ResNet50Features, load_resnet50_features
    from tests.test_finetune import synthetic_cohort, tiny_mae

    full = ResNet50Features("layer4")
    assert sum(p.numel() for p in full.parameters()) == 25_557_032 - 2_049_000
    torch.manual_seed(0)
    trunc = ResNet50Features("layer3")
    assert sum(p.numel() for p in trunc.parameters()) == 25_557_032 - 2_049_000 - 14_964_736
    for mod in trunc.modules():          # non-trivial running statistics, so that eval mode matters
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    state = {f"module.{k}": v for k, v in full.state_dict().items() if not k.startswith("layer4")}
    state |= {f"module.{k}": v for k, v in trunc.state_dict().items()}
    state |= {"module.fc.weight": torch.zeros(1000, 2048), "module.fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    net = load_resnet50_features(path)
    x = torch.rand(3, 3, 32, 32)
    trunc.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), trunc(x))
    assert net(x).shape == (3, 1024) and not any(p.requires_grad for p in net.parameters())
    torch.save({k: v for k, v in state.items() if "layer3" not in k}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="weights missing"):
        load_resnet50_features(tmp_path / "bad.pth")

    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(6)
    bi = baseline_inputs(mae, inp, patients, "zero", extractor="resnet50", weights=path)
    assert bi.extractor == "resnet50" and bi.tile_dim == 1024
    for i, p in enumerate(patients):
        if inp.has(p, "wsi"):
            tiles = torch.from_numpy(inp.tiles[p]).permute(0, 3, 1, 2).float() / 255
            torch.testing.assert_close(bi.tiles[i], net(tiles))
    with pytest.raises(ValueError, match="needs weights"):
        baseline_inputs(mae, inp, patients, extractor="resnet50")
