"""Our WSI branch loaded from a transformers ViTMAE checkpoint computes what transformers computes."""

import pytest
import torch

from imputmae.layers import IMAGENET_MEAN, IMAGENET_STD, sincos_2d
from imputmae.model import MAEConfig, MultimodalMAE
from imputmae.vit_mae import load_vit_mae_weights

transformers = pytest.importorskip("transformers")


def _hf_positions(dim, grid):
    """transformers' table for vit-mae-base-style weights: its builder, halves rotated, a CLS row: [1, 1+g*g, dim]."""
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    pe = build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
    return torch.cat([pe[:, dim // 2:], pe[:, :dim // 2]], dim=1)[None].float()


def _hf_model(tmp_path, image_size=64, eps=1e-6):
    cfg = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        decoder_hidden_size=24, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
        decoder_intermediate_size=40, image_size=image_size, patch_size=16, mask_ratio=0.5,
        layer_norm_eps=eps, norm_pix_loss=False)
    torch.manual_seed(0)
    hf = transformers.ViTMAEForPreTraining(cfg).eval()
    with torch.no_grad():   # random init leaves some tensors at zero: make every mapped tensor informative
        hf.decoder.mask_token.normal_()
        hf.decoder.decoder_pred.bias.normal_()
        for p in hf.parameters():
            if p.dim() == 1 and p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        # transformers 5 leaves a fresh model's fixed positions at zero; give them the real sine-cosine tables
        hf.vit.embeddings.position_embeddings.copy_(_hf_positions(32, image_size // 16))
        hf.decoder.decoder_pos_embed.copy_(_hf_positions(24, image_size // 16))
    hf.save_pretrained(tmp_path)
    ours = MultimodalMAE(MAEConfig(
        modalities=("wsi",), hidden_size=32, num_heads=4, intermediate_size=48, wsi_layers=2,
        decoder_hidden_size=24, decoder_layers=2, decoder_heads=4, decoder_intermediate_size=40,
        tile_size=image_size, wsi_patch_size=16, mask_ratio=0.5, norm_eps=eps)).eval()
    return hf, ours


def test_vit_mae_weights_reproduce_transformers(tmp_path):
    hf, ours = _hf_model(tmp_path)
    report = load_vit_mae_weights(ours, tmp_path)
    assert report["kept"] == ["modality_embed"]   # everything else came from the checkpoint (that one is zeroed)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 64, 64, generator=g)
    noise = torch.rand(3, 16, generator=g)
    pixel_values = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = hf(pixel_values=pixel_values, noise=noise)
        latent_hf = hf.vit(pixel_values=pixel_values, noise=noise).last_hidden_state
        batch = {"wsi": x, "available": torch.ones(3, 3, dtype=torch.bool)}
        enc = ours.forward_encoder(batch, 0.5, {"wsi": noise})
        loss, preds, masks, losses = ours(batch, noise={"wsi": noise})
    torch.testing.assert_close(masks["wsi"], out.mask)
    torch.testing.assert_close(enc["wsi"]["latent"], latent_hf, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(preds["wsi"], out.logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-5)
    with torch.no_grad():   # the training step's path (last decoder block and head on masked patches only)
        loss_masked, *_ = ours(batch, noise={"wsi": noise}, predict="masked")
    torch.testing.assert_close(loss_masked, out.loss, atol=1e-6, rtol=1e-5)


def test_sincos_positions_match_transformers():
    """Our 2D positions at 256 px equal the ones transformers builds for a 256 px model (vit-mae-base layout)."""
    ours = MultimodalMAE(MAEConfig(modalities=("wsi",), hidden_size=32, num_heads=4, wsi_layers=1,
                                   decoder_hidden_size=24, decoder_heads=4, decoder_layers=1))
    torch.testing.assert_close(ours.encoders["wsi"].pos_embed, _hf_positions(32, 16))
    torch.testing.assert_close(getattr(ours, "decoder_pos_wsi"), _hf_positions(24, 16))
    torch.testing.assert_close(sincos_2d(32, 16).float(), _hf_positions(32, 16)[0, 1:])


def test_mismatched_encoder_is_refused(tmp_path):
    hf, _ = _hf_model(tmp_path)
    other = MultimodalMAE(MAEConfig(modalities=("wsi",), hidden_size=64, num_heads=4, intermediate_size=48,
                                    wsi_layers=2, decoder_hidden_size=24, decoder_layers=2, decoder_heads=4,
                                    decoder_intermediate_size=40, tile_size=64))
    with pytest.raises(ValueError, match="does not match"):
        load_vit_mae_weights(other, tmp_path)
