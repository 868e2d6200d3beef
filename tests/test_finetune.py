"""Fine-tuning on a tiny MAE: exact frozen-feature cache, imputation, no test patient in anything fitted,
save/load/predict round trip, and a small end-to-end run on synthetic tensors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from imputmae.finetune import (FinetuneConfig, PatientInputs, SurvivalModel, baseline_hazard_logits,
                               cls_through_block, complete_inputs, frozen_features, impute_patients, inner_splits,
                               load_survival_model, predict_patients, run_finetune, save_survival_model,
                               split_validation)
from imputmae.survival import concordance_td, hazard_to_survival, interpolate_survival
from imputmae.model import MAEConfig, MultimodalMAE


def tiny_mae(seed: int = 0) -> MultimodalMAE:
    torch.manual_seed(seed)
    cfg = MAEConfig(lengths={"rna": 60, "dnam": 40}, hidden_size=32, num_heads=2, intermediate_size=64,
                    layers={"rna": 2, "dnam": 2, "wsi": 2}, decoder_hidden_size=32, decoder_layers=1, decoder_heads=2,
                    decoder_intermediate_size=64, tile_size=32, patch_sizes={"rna": 16, "dnam": 16, "wsi": 16})
    return MultimodalMAE(cfg).eval()


def synthetic_cohort(n: int = 48, seed: int = 0, missing: bool = True):
    """A latent risk z drives the hazard and (noisily) every modality; some patients lack some modalities."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    patients = [f"SYN-{i:04d}" for i in range(n)]
    t = rng.exponential(1000 * np.exp(-1.2 * z))
    c = rng.exponential(2500, n)
    time, event = np.minimum(t, c).round() + 1, (t <= c).astype(int)
    clinical = pd.DataFrame({"time": time, "event": event}, index=pd.Index(patients, name="patient"))
    inp = PatientInputs(omics={"rna": {}, "dnam": {}})
    for i, p in enumerate(patients):
        sig = 1 / (1 + np.exp(-z[i]))
        if not (missing and i % 7 == 3):
            inp.omics["rna"][p] = np.clip(sig + rng.normal(0, 0.1, 60), 0, 1).astype(np.float32)
        if not (missing and i % 5 == 1):
            inp.omics["dnam"][p] = np.clip(1 - sig + rng.normal(0, 0.1, 40), 0, 1).astype(np.float32)
        if not (missing and i % 4 == 2):
            k = 1 + i % 3
            inp.tiles[p] = (np.clip(sig + rng.normal(0, 0.2, (k, 32, 32, 3)), 0, 1) * 255).astype(np.uint8)
    return patients, inp, clinical


def patient_batch(inp: PatientInputs, p: str) -> dict[str, torch.Tensor]:
    """A complete patient's MAE batch, one row per tile: rna [K, L], dnam [K, L], wsi [K, 3, H, W], available [K, 3]."""
    tiles = torch.from_numpy(inp.tiles[p]).permute(0, 3, 1, 2).float() / 255
    K = tiles.shape[0]
    return {"rna": torch.from_numpy(inp.omics["rna"][p])[None].expand(K, -1),
            "dnam": torch.from_numpy(inp.omics["dnam"][p])[None].expand(K, -1), "wsi": tiles,
            "available": torch.ones(K, 3, dtype=torch.bool)}


def test_frozen_cache_is_exact():
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(12, missing=False)
    mods = ("rna", "dnam", "wsi")
    ff = frozen_features(mae, inp, patients, mods)
    model = SurvivalModel(mae.cfg, mods, 5, 0.0, encoders=mae.encoders).eval()
    with torch.no_grad():
        for i, p in enumerate(patients):
            ref = mae.encode(patient_batch(inp, p))
            for m in mods:
                got = model.embed_modality(m, ff.h(m, i)[None])[0]
                want = ref[m].mean(0) if m == "wsi" else ref[m][0]
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_complete_inputs_imputes_only_missing():
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(14)
    data, imputed = complete_inputs(mae, inp, patients, ("rna", "dnam", "wsi"))
    for i, p in enumerate(patients):
        for m in ("rna", "dnam"):
            assert imputed[m][i] == (not inp.has(p, m))
            if inp.has(p, m):
                np.testing.assert_array_equal(data[m][p].numpy(), inp.omics[m][p])
            else:
                assert data[m][p].shape == (mae.cfg.input_len(m),) and 0 <= float(data[m][p].min())
        assert imputed["wsi"][i] == (p not in inp.tiles)
        assert data["wsi"][p].shape[1:] == (3, 32, 32)
    # a patient without RNA: the reconstruction is the decoder's, from the present modalities
    p = next(p for p in patients if not inp.has(p, "rna") and inp.has(p, "wsi") and inp.has(p, "dnam"))
    tiles = torch.from_numpy(inp.tiles[p]).permute(0, 3, 1, 2).float() / 255
    K = tiles.shape[0]
    ref = mae.impute({"dnam": torch.from_numpy(inp.omics["dnam"][p])[None].expand(K, -1), "wsi": tiles,
                      "available": torch.tensor([[False, True, True]] * K)})["rna"].mean(0)
    torch.testing.assert_close(data["rna"][p], ref)
    zero, imp0 = complete_inputs(mae, inp, patients, ("rna",), missing="zero")
    assert not imp0["rna"].any() and set(zero["rna"]) == {p for p in patients if inp.has(p, "rna")}


def test_validation_split_is_stratified_and_seeded():
    pts = [f"P{i}" for i in range(40)]
    ev = np.array([1] * 10 + [0] * 30)
    fit, val = split_validation(pts, ev, 0.2, 0)
    assert len(val) == 8 and not set(fit) & set(val) and set(fit) | set(val) == set(pts)
    assert sum(ev[pts.index(p)] for p in val) == 2
    assert split_validation(pts, ev, 0.2, 0) == (fit, val)


CFG = dict(epochs=4, batch_size=8, warmup_epochs=1, lr=1e-3, n_bins=8, val_fraction=0.25, seed=0)


def _fold(patients):
    test = patients[::5]
    return [p for p in patients if p not in test], test


@pytest.mark.parametrize("modset", ["all", "rna", "wsi"])
def test_end_to_end_fold(modset):
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    res = run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset=modset, **CFG), fold=2)
    m = res.metrics
    assert {"antolini", "adj_antolini", "harrell", "ibs", "best_epochs", "validation_antolini"} <= set(m)
    assert all(np.isfinite(m[k]) for k in ("antolini", "adj_antolini", "harrell", "ibs"))
    pred = res.predictions
    assert (pred["fold"] == 2).all() and set(pred["split"]) == {"train", "test"}
    s = pred.filter(like="s_").to_numpy()
    assert s.shape[1] == 8 and (np.diff(s, axis=1) <= 1e-9).all() and ((s >= 0) & (s <= 1)).all()
    te = set(pred.loc[pred["split"] == "test", "patient"])
    (member,) = res.state["members"]
    assert te <= set(test) and not te & (set(member["fit_patients"]) | set(member["val_patients"]))
    assert set(pred.loc[pred["val_member"] == 0, "patient"]) == set(member["val_patients"])
    if modset != "all":  # only patients with the modality
        assert all(inp.has(p, modset) for p in pred["patient"])
    else:
        assert m["n_test_imputed"]["rna"] == sum(not inp.has(p, "rna") for p in te)
    # the cuts are the training patients' cuts
    tr = [p for p in train if modset == "all" or inp.has(p, modset)]
    assert float(res.state["cuts"][-1]) == clinical.loc[tr, "time"].max()


def test_test_patients_do_not_change_the_fitted_state():
    """Perturb every test patient's labels and inputs: cuts, validation split, early stopping and weights stay."""
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    cfg = FinetuneConfig(modset="all", **CFG)
    a = run_finetune(mae, inp, clinical, train, test, cfg)
    clinical2 = clinical.copy()
    clinical2.loc[test, "time"] = clinical2.loc[test, "time"] * 7 + 1000
    clinical2.loc[test, "event"] = 1 - clinical2.loc[test, "event"]
    inp2 = PatientInputs(omics={m: dict(d) for m, d in inp.omics.items()}, tiles=dict(inp.tiles))
    for p in test:
        for m in ("rna", "dnam"):
            if p in inp2.omics[m]:
                inp2.omics[m][p] = 1 - inp2.omics[m][p]
        if p in inp2.tiles:
            inp2.tiles[p] = 255 - inp2.tiles[p]
    b = run_finetune(mae, inp2, clinical2, train, test, cfg)
    torch.testing.assert_close(a.state["cuts"], b.state["cuts"], rtol=0, atol=0)
    for k in ("members", "train_median_risk"):
        assert a.state[k] == b.state[k], k
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=0, atol=0)
    assert a.metrics["antolini"] != b.metrics["antolini"]  # the test data did change


@pytest.mark.parametrize("members", [1, 3])
def test_save_load_predict_round_trip(tmp_path, members):
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    res = run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="all", **{**CFG, "members": members}))
    path = save_survival_model(tmp_path / "model.pt", res, mae, {"rna": {"x": torch.ones(2)}})
    model, mae2, state = load_survival_model(tmp_path)
    assert len(model.members) == members
    assert state["test_patients"] == res.state["test_patients"] and "normalizers" in state
    new = PatientInputs(omics={m: {p: d[p] for p in test if p in d} for m, d in inp.omics.items()},
                        tiles={p: inp.tiles[p] for p in test if p in inp.tiles})
    out = predict_patients(model, mae2, new, state, test)
    ref = res.predictions.set_index("patient").loc[test]
    np.testing.assert_allclose(out["risk"].to_numpy(), ref["risk"].to_numpy(), rtol=1e-5)
    assert out["high_risk"].tolist() == (ref["risk"] > res.metrics["train_median_risk"]).tolist()
    assert path.stat().st_size > 0
    imp = impute_patients(mae2, new, test)
    assert set(imp["rna"]) == {p for p in test if not new.has(p, "rna")}


def test_cls_through_block_equals_the_block():
    mae = tiny_mae()
    blk = mae.encoders["wsi"].blocks[-1]
    h = torch.randn(3, 17, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cls_through_block(blk, h), blk(h)[:, 0], rtol=1e-5, atol=1e-6)


def test_baseline_hazard_logits_life_table():
    idx = np.array([0, 1, 1, 2, 2, 2])
    ev = np.array([1, 1, 0, 1, 0, 0])
    h = torch.sigmoid(baseline_hazard_logits(idx, ev, 4, clip=(1e-6, 1 - 1e-6))).numpy()
    # bin 0: 1 event of 6 at risk; bin 1: 1 of 5; bin 2: 1 of 3; bin 3: nobody at risk -> the lower clip
    np.testing.assert_allclose(h, [1 / 6, 1 / 5, 1 / 3, 1e-6], rtol=1e-5)


def test_zero_filling_with_a_batch_lacking_a_modality():
    """missing="zero": a batch where nobody has WSI still trains (zero WSI embeddings), and is not imputed."""
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    for p in patients[:-3]:  # only the last 3 patients keep tiles: most batches have no WSI
        inp.tiles.pop(p, None)
    res = run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="all", missing="zero", **CFG))
    assert np.isfinite(res.metrics["antolini"]) and not res.predictions.filter(like="imputed_").to_numpy().any()


def test_inner_folds_partition_the_training_patients():
    patients, _, clinical = synthetic_cohort()
    train, _ = _fold(patients)
    ev = clinical.loc[train, "event"].to_numpy()
    splits = inner_splits(train, ev, FinetuneConfig(members=4, seed=3))
    assert len(splits) == 4
    vals = [p for _, val in splits for p in val]
    assert sorted(vals) == sorted(train)                       # each training patient validates exactly one member
    for fit, val in splits:
        assert sorted(fit + val) == sorted(train) and not set(fit) & set(val)
        assert abs(clinical.loc[val, "event"].sum() - ev.sum() / 4) <= 1   # stratified by event
    assert inner_splits(train, ev, FinetuneConfig(members=1, val_fraction=0.25)) == \
        [split_validation(train, ev, 0.25, 0)]
    with pytest.raises(ValueError, match="too few"):
        inner_splits(train[:5], ev[:5], FinetuneConfig(members=3))


def test_ensemble_averages_its_members_and_scores_out_of_fold():
    """members=3: the prediction is the mean of the members' survival curves; the validation C-index is that of
    each training patient's curve from the member that did not fit on it; the test patients are in no member."""
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    cfg = FinetuneConfig(modset="all", **{**CFG, "members": 3})
    res = run_finetune(mae, inp, clinical, train, test, cfg)
    pred = res.predictions.set_index("patient")
    assert len(res.model.members) == 3 and len(res.metrics["best_epochs"]) == 3
    assert sorted(pred.index[pred["val_member"] >= 0]) == sorted(train)
    ff = frozen_features(mae, inp, train + test, ("rna", "dnam", "wsi"))
    from imputmae.finetune import collate_batch as _collate
    idx = ff.index(train + test)
    feats = _collate(ff, idx, ("rna", "dnam", "wsi"))
    with torch.no_grad():
        curves = torch.stack([hazard_to_survival(m.eval()(feats)) for m in res.model.members])
    surv = pred.loc[train + test].filter(like="s_").to_numpy()
    np.testing.assert_allclose(surv, curves.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    own = curves[torch.as_tensor(pred.loc[train, "val_member"].to_numpy()), torch.arange(len(train))].numpy()
    grid, times = interpolate_survival(own, res.state["cuts"].numpy(), cfg.n_sub)
    t, e = clinical.loc[train, "time"].to_numpy(float), clinical.loc[train, "event"].to_numpy(float)
    assert res.metrics["validation_antolini"] == pytest.approx(concordance_td(t, e, grid, times, "antolini"))
    for member in res.state["members"]:
        assert not set(member["fit_patients"] + member["val_patients"]) & set(test)


@pytest.mark.parametrize("select_on", ["cindex", "nll"])
def test_each_member_keeps_its_best_validation_epoch(select_on):
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    cfg = FinetuneConfig(modset="rna", select_on=select_on, **{**CFG, "epochs": 6, "members": 2})
    res = run_finetune(mae, inp, clinical, train, test, cfg)
    for best, history in zip(res.metrics["best_epochs"], res.metrics["history"]):
        score = [h["val_antolini"] if select_on == "cindex" else -h["val_nll"] for h in history]
        assert best == int(np.argmax(score))          # the first epoch with the best score
    assert res.metrics["select_on"] == select_on


def test_batched_imputation_matches_one_patient_at_a_time():
    """Groups of many patients (rows=64) give the inputs that one patient at a time (rows=1: what fine-tuning did
    before the memory work) gives: same patients imputed, same reconstructions to float rounding."""
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(20)
    mods = ("rna", "dnam", "wsi")
    from imputmae.finetune import iter_complete_inputs

    def collect(rows):
        data, imputed = {m: {} for m in mods}, {m: np.zeros(len(patients), bool) for m in mods}
        groups = 0
        for pos, d, imp in iter_complete_inputs(mae, inp, patients, mods, rows=rows):
            groups += 1
            for m in mods:
                data[m].update(d[m])
                imputed[m][pos] = imp[m]
        return data, imputed, groups

    one, imp1, n1 = collect(1)
    many, imp64, n64 = collect(64)
    assert n1 == len(patients) and n64 < n1
    for m in mods:
        np.testing.assert_array_equal(imp1[m], imp64[m])
        assert set(one[m]) == set(many[m]) == set(patients)
        for p in patients:
            torch.testing.assert_close(many[m][p], one[m][p], rtol=1e-5, atol=1e-6)


def test_cache_file_holds_the_frozen_hidden_states(tmp_path):
    """The store's rows are the frozen blocks' output: float32 bit for bit against a per-patient computation;
    float16 within its rounding; patients without the modality (missing="zero") have no rows."""
    from imputmae.finetune.features import _frozen_hidden

    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(10)
    ff = frozen_features(mae, inp, patients, ("rna", "wsi"), missing="zero", cache_dir=tmp_path)
    half = frozen_features(mae, inp, patients, ("rna", "wsi"), missing="zero", cache_dir=tmp_path,
                           cache_dtype="float16")
    assert list(tmp_path.iterdir()) == []          # unlinked at once: nothing left behind
    with torch.no_grad():
        for i, p in enumerate(patients):
            for m in ("rna", "wsi"):
                if not inp.has(p, m):
                    assert ff.h(m, i) is None and not ff.present[m][i]
                    continue
                x = (torch.from_numpy(inp.tiles[p]).permute(0, 3, 1, 2).float() / 255 if m == "wsi"
                     else torch.from_numpy(inp.omics[m][p])[None])
                want = _frozen_hidden(mae.encoders[m], mae._input({m: x}, m))
                torch.testing.assert_close(ff.h(m, i), want, rtol=0, atol=0)
                torch.testing.assert_close(half.h(m, i), want, rtol=1e-3, atol=1e-3)
    assert half.nbytes * 2 == ff.nbytes


def test_float16_cache_changes_predictions_within_tolerance():
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    runs = [run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="all", cache_dtype=d, **CFG))
            for d in ("float32", "float16")]
    s32, s16 = (r.predictions.filter(like="s_").to_numpy() for r in runs)
    np.testing.assert_allclose(s16, s32, atol=2e-3)


def test_tiles_are_read_from_file_when_used(tmp_path):
    from imputmae.finetune import TileFile

    tiles = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "P1.npy", tiles)
    tf = TileFile(tmp_path / "P1.npy")
    assert tf.shape == (5, 32, 32, 3) and len(tf) == 5 and tf.ndim == 4
    np.testing.assert_array_equal(tf[:3], tiles[:3])
    np.testing.assert_array_equal(np.asarray(tf), tiles)


def test_too_large_a_job_fails_naming_the_rule_the_figure_and_the_setting(tmp_path, monkeypatch):
    from collections import namedtuple

    from imputmae.finetune import FeatureStore, MemoryNeeded, check_memory

    mae = tiny_mae()
    with pytest.raises(MemoryNeeded, match=r"finetune: a training batch of 10000000 patients x 100 tiles needs "
                                           r"about [\d.]+ GiB.*finetune.batch_size.*mem_mb"):
        check_memory(100, mae, ("rna", "wsi"), FinetuneConfig(batch_size=10_000_000), torch.device("cpu"))
    assert check_memory(100, mae, ("rna", "wsi"), FinetuneConfig(batch_size=2), torch.device("cpu")) > 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda _: usage(10, 10, 1000))
    with pytest.raises(MemoryNeeded, match=r"cache of wsi needs [\d.]+ GiB in .*finetune.cache_dir.*float16"):
        FeatureStore([100, 100], (257, 256), folder=tmp_path, what="wsi")
