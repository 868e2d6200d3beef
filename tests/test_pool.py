"""finetune.pool: a modality's embedding is its CLS token (``cls``, the paper's) or the mean of its patch tokens
after the last block (``mean``, MAE's global pooling). Both read the same frozen cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imputmae.config import load_config, validate_config
from imputmae.finetune import (FinetuneConfig, SurvivalModel, frozen_features, load_survival_model,
                               predict_patients, run_finetune, save_survival_model, training_memory_bytes)
from tests.test_finetune import CFG, _fold, patient_batch, synthetic_cohort, tiny_mae

MODS = ("rna", "dnam", "wsi")


@pytest.mark.parametrize("k", [1, 2])
def test_mean_pool_is_the_encoders_patch_token_mean(k):
    """From the cache (states entering block -k), pool="mean" gives the mean over the N patch tokens of the
    unmasked encoder's normed output (MultimodalMAE.forward_encoder, CLS dropped); WSI: then over tiles."""
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(6, missing=False)
    ff = frozen_features(mae, inp, patients, MODS, trainable_blocks=k)
    model = SurvivalModel(mae.cfg, MODS, 5, 0.0, encoders=mae.encoders, trainable_blocks=k, pool="mean").eval()
    cls_model = SurvivalModel(mae.cfg, MODS, 5, 0.0, encoders=mae.encoders, trainable_blocks=k).eval()
    with torch.no_grad():
        for i, p in enumerate(patients):
            batch = patient_batch(inp, p)
            enc = mae.forward_encoder(batch, 0.0, mae._unmasked_noise(batch))
            for m in MODS:
                latent = enc[m]["latent"]                                      # [K, 1 + N, D]
                assert latent.shape[1] == 1 + mae.cfg.n_patches(m)
                want = latent[:, 1:].mean(1)
                got = model.embed_modality(m, ff.h(m, i)[None])[0]
                torch.testing.assert_close(got, want.mean(0) if m == "wsi" else want[0], rtol=1e-5, atol=1e-5)
                # not the CLS token: the knob changes what the head sees
                assert not torch.allclose(got, cls_model.embed_modality(m, ff.h(m, i)[None])[0], atol=1e-3)


def test_mean_pool_trains_and_round_trips(tmp_path):
    """pool="mean" through run_finetune: the setting is saved in model.pt and reloads to the same predictions,
    which differ from the CLS model's."""
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    res = run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="all", pool="mean", **CFG))
    assert res.state["config"]["pool"] == "mean" and res.model.members[0].pool == "mean"
    save_survival_model(tmp_path / "model.pt", res, mae, {})
    model, mae2, state = load_survival_model(tmp_path / "model.pt")
    assert model.members[0].pool == "mean"
    again = predict_patients(model, mae2, inp, state, test)
    want = res.predictions.set_index("patient").loc[test].filter(regex=r"^s_\d+$").to_numpy()
    np.testing.assert_allclose(again.filter(regex=r"^s_\d+$").to_numpy(), want, rtol=1e-5, atol=1e-6)
    cls = run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="all", **CFG))
    assert not np.allclose(cls.predictions.filter(regex=r"^s_\d+$").to_numpy(),
                           res.predictions.filter(regex=r"^s_\d+$").to_numpy(), atol=1e-4)


def test_bad_pool_is_a_clear_error_and_memory_counts_it():
    mae = tiny_mae()
    with pytest.raises(ValueError, match="finetune.pool 'max'"):
        SurvivalModel(mae.cfg, MODS, 5, encoders=mae.encoders, pool="max")
    patients, inp, clinical = synthetic_cohort(24)
    train, test = _fold(patients)
    with pytest.raises(ValueError, match="finetune.pool 'max'"):
        run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="rna", pool="max", **CFG))
    cls, mean = (training_memory_bytes(mae.cfg, MODS, 8, 4, 1, pool) for pool in ("cls", "mean"))
    assert mean > cls and training_memory_bytes(mae.cfg, MODS, 8, 4) == cls


def test_schema_takes_the_knob():
    cfg = load_config(["config.yaml"])
    assert cfg["finetune"]["pool"] == "cls"
    validate_config({**cfg, "finetune": {**cfg["finetune"], "pool": "mean"}})
    with pytest.raises(Exception, match="pool"):
        validate_config({**cfg, "finetune": {**cfg["finetune"], "pool": "max"}})
