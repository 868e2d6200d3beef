"""transformers' ViTMAE weights (``facebook/vit-mae-base``, either naming scheme) into our WSI branch, from a local
directory (nothing is downloaded).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from imputmae.model import MultimodalMAE

__all__ = ["vit_mae_state_dict_to_ours", "load_vit_mae_weights"]


log = logging.getLogger(__name__)

_HF_LEGACY = [  # transformers <= 4.x names (what save_pretrained and the Hub's safetensors hold) -> 5.x names
    (r"^vit\.encoder\.layer\.", "vit.layers."),
    (r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def _map_block(hf: Mapping[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    out = {}
    for t in ("weight", "bias"):
        out[f"{dst}.attn.qkv.{t}"] = torch.cat([hf[f"{src}.attention.{n}_proj.{t}"] for n in "qkv"])
        out[f"{dst}.attn.proj.{t}"] = hf[f"{src}.attention.o_proj.{t}"]
        out[f"{dst}.norm1.{t}"] = hf[f"{src}.layernorm_before.{t}"]
        out[f"{dst}.norm2.{t}"] = hf[f"{src}.layernorm_after.{t}"]
        out[f"{dst}.mlp.fc1.{t}"] = hf[f"{src}.mlp.fc1.{t}"]
        out[f"{dst}.mlp.fc2.{t}"] = hf[f"{src}.mlp.fc2.{t}"]
    return out


def vit_mae_state_dict_to_ours(hf_state: Mapping[str, Tensor], *, decoder: bool = True) -> dict[str, Tensor]:
    """Rename a transformers ``ViTMAEForPreTraining`` state dict (either naming scheme) into our WSI branch's keys.

    Encoder -> ``encoders.wsi.*``; with ``decoder``: ``decoder_embed.wsi``, ``mask_tokens.wsi``, ``decoder_pos_wsi``,
    ``decoder_blocks.*``, ``decoder_norm``, ``heads.wsi`` (the linear ``decoder_pred`` becomes the transposed
    convolution's kernel and the per-pixel bias). Shapes are not checked here (see :func:`load_vit_mae_weights`).
    """
    hf = {}
    for k, v in hf_state.items():
        for pat, rep in _HF_LEGACY:
            k = re.sub(pat, rep, k)
        hf[k] = v
    out = {
        "encoders.wsi.cls_token": hf["vit.embeddings.cls_token"],
        "encoders.wsi.pos_embed": hf["vit.embeddings.position_embeddings"],
        "encoders.wsi.proj.weight": hf["vit.embeddings.patch_embeddings.projection.weight"],
        "encoders.wsi.proj.bias": hf["vit.embeddings.patch_embeddings.projection.bias"],
        "encoders.wsi.norm.weight": hf["vit.layernorm.weight"],
        "encoders.wsi.norm.bias": hf["vit.layernorm.bias"],
    }
    n_enc = len({k.split(".")[2] for k in hf if k.startswith("vit.layers.")})
    for i in range(n_enc):
        out.update(_map_block(hf, f"vit.layers.{i}", f"encoders.wsi.blocks.{i}"))
    if decoder:
        w = hf["decoder.decoder_pred.weight"]                                   # [p*p*3, Dd], rows (row, col, c)
        p = math.isqrt(w.shape[0] // 3)
        out.update({
            "decoder_embed.wsi.weight": hf["decoder.decoder_embed.weight"],
            "decoder_embed.wsi.bias": hf["decoder.decoder_embed.bias"],
            "mask_tokens.wsi": hf["decoder.mask_token"],
            "decoder_pos_wsi": hf["decoder.decoder_pos_embed"],
            "decoder_norm.weight": hf["decoder.decoder_norm.weight"],
            "decoder_norm.bias": hf["decoder.decoder_norm.bias"],
            "heads.wsi.deconv.weight": w.T.reshape(-1, p, p, 3).permute(0, 3, 1, 2).contiguous(),  # [Dd, 3, p, p]
            "heads.wsi.pixel_bias": hf["decoder.decoder_pred.bias"],
        })
        n_dec = len({k.split(".")[2] for k in hf if k.startswith("decoder.decoder_layers.")})
        for i in range(n_dec):
            out.update(_map_block(hf, f"decoder.decoder_layers.{i}", f"decoder_blocks.{i}"))
    return out


def load_vit_mae_weights(model: MultimodalMAE, directory: str | Path) -> dict[str, list[str]]:
    """Initialise the WSI branch from a local transformers ViTMAE directory (``config.json`` +
    ``model.safetensors``, e.g. facebook/vit-mae-base). Nothing is downloaded.

    The encoder must match in shape (hidden size, heads, MLP, layers, patch size); decoder weights load only where
    they match (vit-mae-base's decoder is 512 wide: it loads into a 512-wide decoder only). Position tables
    computed for another image size (vit-mae-base: 224 px) are kept as ours: both are the same fixed sine-cosine
    function, evaluated on our grid. The WSI modality embedding is zeroed so that the WSI-only path equals
    transformers' model. Returns {"loaded": [...], "kept": [...]} (our keys left as initialised).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    weights, config_file = directory / "model.safetensors", directory / "config.json"
    if not weights.is_file() or not config_file.is_file():
        raise FileNotFoundError(f"{directory}: expected config.json and model.safetensors of a transformers ViTMAE "
                                "model (e.g. a local copy of facebook/vit-mae-base); nothing is downloaded")
    hf_cfg = json.loads(config_file.read_text())
    if "wsi" not in model.modalities:
        raise ValueError("load_vit_mae_weights: the model has no WSI branch")
    if hf_cfg.get("norm_pix_loss"):
        log.warning("%s: trained with norm_pix_loss; our WSI loss uses plain (ImageNet-normalised) pixels", directory)
    eps = hf_cfg.get("layer_norm_eps", 1e-12)
    if eps != model.cfg.norm_eps:
        log.warning("layer_norm_eps: checkpoint %g, ours %g (outputs differ by O(eps))", eps, model.cfg.norm_eps)
    ours = vit_mae_state_dict_to_ours(load_file(str(weights)))
    own = model.state_dict()
    enc = {k: v for k, v in ours.items() if k.startswith("encoders.wsi.") and k != "encoders.wsi.pos_embed"}
    bad = [f"{k} {tuple(v.shape)} vs ours {tuple(own[k].shape) if k in own else None}"
           for k, v in enc.items() if k not in own or own[k].shape != v.shape]
    if bad or len(enc) != sum(k.startswith("encoders.wsi.") and k != "encoders.wsi.pos_embed" for k in own):
        raise ValueError(f"{directory}: the WSI encoder does not match the configured size: {bad[:3]}")
    load = {k: v for k, v in ours.items() if k in own and own[k].shape == v.shape}
    missing, unexpected = model.load_state_dict(load, strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():
        model.modality_embed[model.modalities.index("wsi")].zero_()
    log.info("vit-mae weights: loaded %d tensors, kept %d of ours", len(load), len(missing))
    return {"loaded": sorted(load), "kept": sorted(missing)}


