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
    ours = MultimodalMAE(MAEConfig.from_dict(dict(
        modalities=("wsi",), hidden_size=32, num_heads=4, intermediate_size=48, wsi_layers=2,
        decoder_hidden_size=24, decoder_layers=2, decoder_heads=4, decoder_intermediate_size=40,
        tile_size=image_size, wsi_patch_size=16, mask_ratio=0.5, norm_eps=eps))).eval()
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
    ours = MultimodalMAE(MAEConfig.from_dict(dict(modalities=("wsi",), hidden_size=32, num_heads=4, wsi_layers=1,
                                   decoder_hidden_size=24, decoder_heads=4, decoder_layers=1)))
    torch.testing.assert_close(ours.encoders["wsi"].pos_embed, _hf_positions(32, 16))
    torch.testing.assert_close(getattr(ours, "decoder_pos_wsi"), _hf_positions(24, 16))
    torch.testing.assert_close(sincos_2d(32, 16).float(), _hf_positions(32, 16)[0, 1:])


def test_mismatched_encoder_is_refused(tmp_path):
    hf, _ = _hf_model(tmp_path)
    other = MultimodalMAE(MAEConfig.from_dict(dict(modalities=("wsi",), hidden_size=64, num_heads=4, intermediate_size=48,
                                    wsi_layers=2, decoder_hidden_size=24, decoder_layers=2, decoder_heads=4,
                                    decoder_intermediate_size=40, tile_size=64)))
    with pytest.raises(ValueError, match="does not match"):
        load_vit_mae_weights(other, tmp_path)


# -- the big model: vit-mae-base into the WSI encoder AND the decoder, the rest of the model new ------------------

def _block_keys(prefix, n):
    names = [f"{p}.{t}" for p in ("attn.qkv", "attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2")
             for t in ("weight", "bias")]
    return [f"{prefix}.{i}.{n_}" for i in range(n) for n_ in names]


def _expected_new(layers, positions_new):
    """Written out independently of vit_mae.py: what a ViTMAE checkpoint cannot provide."""
    keys = ["modality_embed"]
    for m in ("rna", "dnam"):
        keys += [f"encoders.{m}.{k}" for k in ("cls_token", "pos_embed", "proj.weight", "proj.bias", "norm.weight",
                                                 "norm.bias")]
        keys += _block_keys(f"encoders.{m}.blocks", layers)
        keys += [f"decoder_embed.{m}.weight", f"decoder_embed.{m}.bias", f"mask_tokens.{m}", f"decoder_pos_{m}",
                 f"heads.{m}.weight", f"heads.{m}.bias"]
    if positions_new:
        keys += ["encoders.wsi.pos_embed", "decoder_pos_wsi"]
    return sorted(keys)


def _multimodal(image_size=64):
    return MultimodalMAE(MAEConfig.from_dict(dict(
        rna_len=40, dnam_len=50, rna_patch=8, dnam_patch=16, rna_layers=2, dnam_layers=2,
        hidden_size=32, num_heads=4, intermediate_size=48, wsi_layers=2,
        decoder_hidden_size=24, decoder_layers=2, decoder_heads=4, decoder_intermediate_size=40,
        tile_size=image_size, wsi_patch_size=16, mask_ratio=0.5, norm_eps=1e-6))).eval()


def test_vit_mae_loads_wsi_encoder_and_decoder_of_the_multimodal_model(tmp_path):
    """Reduced dims with vit-mae-base's shape rules (decoder narrower than the encoders: 32 -> 24 as 768 -> 512)."""
    hf, _ = _hf_model(tmp_path)
    ours = _multimodal()
    report = load_vit_mae_weights(ours, tmp_path)
    assert report["kept"] == _expected_new(2, positions_new=False)
    state, theirs = ours.state_dict(), hf.state_dict()
    # every mapped tensor equal after loading, named from transformers' side (legacy or 5.x key names)
    def hf_key(*names):
        return next(n for n in names if n in theirs)
    for i in range(2):
        q = theirs[hf_key(f"decoder.decoder_layers.{i}.attention.attention.query.weight",
                          f"decoder.decoder_layers.{i}.attention.q_proj.weight")]
        torch.testing.assert_close(state[f"decoder_blocks.{i}.attn.qkv.weight"][:24], q, rtol=0, atol=0)
        fc2 = theirs[hf_key(f"vit.encoder.layer.{i}.output.dense.weight", f"vit.layers.{i}.mlp.fc2.weight")]
        torch.testing.assert_close(state[f"encoders.wsi.blocks.{i}.mlp.fc2.weight"], fc2, rtol=0, atol=0)
    for ours_key, hf_name in (("decoder_embed.wsi.weight", "decoder.decoder_embed.weight"),
                              ("mask_tokens.wsi", "decoder.mask_token"),
                              ("decoder_norm.weight", "decoder.decoder_norm.weight"),
                              ("heads.wsi.pixel_bias", "decoder.decoder_pred.bias"),
                              ("encoders.wsi.cls_token", "vit.embeddings.cls_token")):
        torch.testing.assert_close(state[ours_key], theirs[hf_name], rtol=0, atol=0)
    from imputmae.vit_mae import vit_mae_state_dict_to_ours
    mapped = vit_mae_state_dict_to_ours(theirs)
    assert sorted(mapped) == report["loaded"]
    for k in report["loaded"]:
        torch.testing.assert_close(state[k], mapped[k], rtol=0, atol=0)
    # the loaded encoder computes what transformers computes with masking disabled (ratio 0, identity order)
    hf.config.mask_ratio = 0.0
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    identity = torch.arange(16, dtype=torch.float32).expand(2, 16)
    pixel_values = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        latent_hf = hf.vit(pixel_values=pixel_values, noise=identity).last_hidden_state
        available = torch.tensor([[False, False, True]] * 2)
        latent = ours.forward_encoder({"wsi": x, "available": available}, 0.0, {"wsi": identity})["wsi"]["latent"]
    assert latent.shape == (2, 17, 32)
    torch.testing.assert_close(latent, latent_hf, atol=1e-5, rtol=1e-4)


def test_vit_mae_at_another_image_size_keeps_our_positions(tmp_path):
    """vit-mae-base is 224 px, our tiles 256 px: the position tables are ours (the same sine-cosine function)."""
    _hf_model(tmp_path, image_size=32)
    ours = _multimodal(image_size=64)
    before = ours.state_dict()["decoder_pos_wsi"].clone()
    report = load_vit_mae_weights(ours, tmp_path)
    assert report["kept"] == _expected_new(2, positions_new=True)
    torch.testing.assert_close(ours.state_dict()["decoder_pos_wsi"], before, rtol=0, atol=0)


def test_vit_mae_into_a_mismatched_decoder_is_refused(tmp_path):
    _hf_model(tmp_path)
    wide = MultimodalMAE(MAEConfig.from_dict(dict(modalities=("wsi",), hidden_size=32, num_heads=4, intermediate_size=48,
                                   wsi_layers=2, decoder_hidden_size=32, decoder_layers=2, decoder_heads=4,
                                   decoder_intermediate_size=40, tile_size=64)))
    with pytest.raises(ValueError, match="decoder does not match.*model.decoder_hidden_size"):
        load_vit_mae_weights(wide, tmp_path)
    heads = MultimodalMAE(MAEConfig.from_dict(dict(modalities=("wsi",), hidden_size=32, num_heads=4, intermediate_size=48,
                                    wsi_layers=2, decoder_hidden_size=24, decoder_layers=2, decoder_heads=2,
                                    decoder_intermediate_size=40, tile_size=64)))
    with pytest.raises(ValueError, match="model.decoder_heads: got 2, the checkpoint has 4"):
        load_vit_mae_weights(heads, tmp_path)


def test_vit_mae_base_keys_at_the_real_size():
    """At vit-mae-base's real dims (no weights: meta tensors), our big model takes every one of its tensors."""
    from imputmae.config import model_dims
    from imputmae.vit_mae import match_vit_mae

    big = model_dims({"size": "big"})
    assert (big["decoder_hidden_size"], big["decoder_layers"], big["decoder_heads"],
            big["decoder_intermediate_size"]) == (512, 8, 16, 2048)
    with torch.device("meta"):
        hf = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig())   # vit-mae-base: 224 px
        ours = MultimodalMAE(MAEConfig.from_dict(dict(rna_len=16304, dnam_len=25978, **big)))
    load, new = match_vit_mae(ours.state_dict(), hf.state_dict())
    assert new == _expected_new(6, positions_new=True)
    # baselines.md: 111,907,840 values, 252,160 of them the two 224 px position tables (ours are recomputed)
    assert sum(v.numel() for v in load.values()) == 111_907_840 - 252_160
    with torch.device("meta"):
        old = MultimodalMAE(MAEConfig.from_dict(dict(rna_len=16304, dnam_len=25978, **{**big, "decoder_hidden_size": 768})))
    with pytest.raises(ValueError, match="decoder does not match"):
        match_vit_mae(old.state_dict(), hf.state_dict())


def test_checkpoint_of_a_vit_mae_initialised_model_loads_weights_only(tmp_path):
    from imputmae.checkpoint import load_pretrained, save_checkpoint

    _hf_model(tmp_path / "hf")
    ours = _multimodal()
    load_vit_mae_weights(ours, tmp_path / "hf")
    save_checkpoint(tmp_path / "ck.pt", model=ours, optimizer=None, step=0, epoch=0, model_config=ours.cfg,
                    normalizers={})
    again, _, _ = load_pretrained(tmp_path / "ck.pt")   # torch.load(weights_only=True)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)
