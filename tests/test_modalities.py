"""The modality registry: one definition that the schema, the model and the rules follow."""

import pytest
import torch

from imputmae import modalities as reg
from imputmae.config import load_schema
from imputmae.model import MAEConfig, MultimodalMAE


def test_schema_lists_the_registry():
    schema = load_schema()
    assert tuple(schema["$defs"]["modality"]["enum"]) == reg.MODALITIES
    assert tuple(schema["properties"]["finetune"]["properties"]["modality_sets"]["items"]["enum"]) == reg.MODALITY_SETS


def test_entries_and_lookup():
    assert [m.kind for m in reg.REGISTRY] == ["vector", "vector", "image"]
    assert reg.vector_modalities() == ("rna", "dnam") and reg.is_image("wsi")
    assert [reg.label(m) for m in reg.MODALITY_SETS] == ["RNA", "DNAm", "WSI", "all"]
    with pytest.raises(ValueError, match="unknown modality 'mri'"):
        reg.get("mri")


def test_available_follows_the_registry_length():
    cfg = MAEConfig(lengths={"rna": 20, "dnam": 30}, hidden_size=16, num_heads=2, intermediate_size=16,
                    layers={m: 1 for m in reg.MODALITIES}, decoder_hidden_size=16, decoder_layers=1, decoder_heads=2,
                    decoder_intermediate_size=16, tile_size=16, patch_sizes={m: 8 for m in reg.MODALITIES})
    model = MultimodalMAE(cfg)
    B = 2
    batch = {"rna": torch.rand(B, 20), "dnam": torch.rand(B, 30), "wsi": torch.rand(B, 3, 16, 16),
             "available": torch.tensor([[True, False, True], [False, True, True]])}
    assert batch["available"].shape[1] == len(reg.MODALITIES)
    loss, preds, masks, losses = model(batch)
    assert torch.isfinite(loss) and set(preds) == set(reg.MODALITIES)
