"""finetune.trainable_blocks: how many of each encoder's last blocks fine-tuning trains. k = 2 on the tiny MAE
(2 layers per modality) trains the whole encoder, from hidden states entering block 0; k = 1 is the former path."""

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
def test_cache_and_blocks_reproduce_the_encoder(k):
    """The cached states entering block -k, through the model's k copied blocks, give encode()'s CLS exactly."""
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(6, missing=False)
    ff = frozen_features(mae, inp, patients, MODS, trainable_blocks=k)
    model = SurvivalModel(mae.cfg, MODS, 5, 0.0, encoders=mae.encoders, trainable_blocks=k).eval()
    n_trainable = {m: sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and m in n.split("."))
                   for m in MODS}
    per_block = sum(p.numel() for p in mae.encoders["rna"].blocks[-1].parameters())
    assert n_trainable["rna"] == k * per_block
    with torch.no_grad():
        for i, p in enumerate(patients):
            ref = mae.encode(patient_batch(inp, p))
            for m in MODS:
                got = model.embed_modality(m, ff.h(m, i)[None])[0]
                torch.testing.assert_close(got, ref[m].mean(0) if m == "wsi" else ref[m][0], rtol=1e-5, atol=1e-5)


def test_two_blocks_train_both_and_round_trip(tmp_path):
    """k = 2: both blocks move, the frozen norm does not, model.pt reloads to the same predictions."""
    mae = tiny_mae()
    patients, inp, clinical = synthetic_cohort()
    train, test = _fold(patients)
    res = run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="all", trainable_blocks=2, **CFG))
    member = res.model.members[0]
    for m in MODS:
        for src, got in ((mae.encoders[m].blocks[0], member.earlier_blocks[m][0]),
                         (mae.encoders[m].blocks[1], member.last_blocks[m])):
            assert any(not torch.equal(x, y) for x, y in zip(src.parameters(), got.parameters()))
        torch.testing.assert_close(member.final_norms[m].weight, mae.encoders[m].norm.weight)
    assert res.state["config"]["trainable_blocks"] == 2
    save_survival_model(tmp_path / "model.pt", res, mae, {})
    model, mae2, state = load_survival_model(tmp_path / "model.pt")
    again = predict_patients(model, mae2, inp, state, test)
    want = res.predictions.set_index("patient").loc[test].filter(regex=r"^s_\d+$").to_numpy()
    np.testing.assert_allclose(again.filter(regex=r"^s_\d+$").to_numpy(), want, rtol=1e-5, atol=1e-6)


def test_one_block_has_the_former_state_dict():
    """k = 1 adds no module: the same parameter names as before the knob (model.pt's survival weights)."""
    mae = tiny_mae()
    keys = set(SurvivalModel(mae.cfg, MODS, 5, encoders=mae.encoders).state_dict())
    assert not any(k.startswith("earlier_blocks") for k in keys)
    assert {k.split(".")[0] for k in keys} == {"last_blocks", "final_norms", "modality_embed", "fusion_norm",
                                               "fusion", "head_norm", "head"}


def test_too_many_blocks_is_a_clear_error():
    mae = tiny_mae()
    with pytest.raises(ValueError, match=r"finetune.trainable_blocks 3.*rna 2"):
        SurvivalModel(mae.cfg, MODS, 5, encoders=mae.encoders, trainable_blocks=3)
    patients, inp, clinical = synthetic_cohort(24)
    train, test = _fold(patients)
    with pytest.raises(ValueError, match="finetune.trainable_blocks 0"):
        run_finetune(mae, inp, clinical, train, test, FinetuneConfig(modset="rna", trainable_blocks=0, **CFG))


def test_memory_estimate_grows_with_blocks():
    mae = tiny_mae()
    one, two = (training_memory_bytes(mae.cfg, MODS, 8, 4, k) for k in (1, 2))
    assert two > one and training_memory_bytes(mae.cfg, MODS, 8, 4) == one


def test_schema_takes_the_knob():
    cfg = load_config(["config.yaml"])
    assert cfg["finetune"]["trainable_blocks"] == 1
    validate_config({**cfg, "finetune": {**cfg["finetune"], "trainable_blocks": 2}})
    with pytest.raises(Exception, match="trainable_blocks"):
        validate_config({**cfg, "finetune": {**cfg["finetune"], "trainable_blocks": 0}})
