"""transformers' ViTMAE weights (``facebook/vit-mae-base``, either naming scheme) into our WSI encoder and the
decoder, from a local directory (nothing is downloaded).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from imputmae.model import MultimodalMAE

__all__ = ["vit_mae_state_dict_to_ours", "vit_mae_new_keys", "match_vit_mae", "load_vit_mae_weights"]


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


# Our keys that a ViTMAE checkpoint provides (the WSI branch and the shared decoder) ...
_WSI_BRANCH = ("encoders.wsi.", "decoder_embed.wsi.", "mask_tokens.wsi", "decoder_pos_wsi", "decoder_blocks.",
               "decoder_norm.", "heads.wsi.")
# ... and, of those, the fixed sine-cosine tables: ours are kept when the checkpoint's image size differs
_POSITIONS = ("encoders.wsi.pos_embed", "decoder_pos_wsi")


def vit_mae_new_keys(own_keys: Iterable[str], same_grid: bool) -> list[str]:
    """Our state-dict keys that a ViTMAE checkpoint does not provide (they keep our initialisation): the RNA and
    DNAm branches (encoders, ``decoder_embed``, mask tokens, positions, heads), ``modality_embed`` and, unless the
    checkpoint was trained at our tile size (``same_grid``; vit-mae-base: 224 px), the two WSI position tables."""
    own_keys = list(own_keys)
    new = [k for k in own_keys if not k.startswith(_WSI_BRANCH)]
    if not same_grid:
        new += [k for k in own_keys if k in _POSITIONS]
    return sorted(new)


def match_vit_mae(own: Mapping[str, Tensor], hf_state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Our state dict (shapes only are read) and a transformers ``ViTMAEForPreTraining`` state dict -> (the tensors
    to load, under our keys; the keys that stay new, :func:`vit_mae_new_keys`).

    Every key of our WSI encoder and decoder must be provided with our shape (the decoder too: ``decoder_embed``
    projects the encoders' width onto the checkpoint's decoder width, 768 -> 512 for vit-mae-base).

    Raises:
        ValueError: naming the first mismatching keys and the ``model.*`` settings to change.
    """
    ours = vit_mae_state_dict_to_ours(hf_state)
    same_grid = all(k in own and own[k].shape == ours[k].shape for k in _POSITIONS)
    new = vit_mae_new_keys(own, same_grid)
    load = {k: v for k, v in ours.items() if k not in new}
    bad = [f"{k} {tuple(v.shape)} vs ours {tuple(own[k].shape) if k in own else None}"
           for k, v in load.items() if k not in own or own[k].shape != v.shape]
    bad += [f"{k}: not in the checkpoint" for k in sorted(set(own) - set(load) - set(new))]
    if bad:
        if any(b.startswith("encoders.wsi.") for b in bad):
            what = ("the WSI encoder does not match the configured size (model.size, hidden_size, num_heads, "
                    "intermediate_size, wsi_layers, wsi_patch_size)")
        else:
            what = ("the decoder does not match the configured size (model.decoder_hidden_size, decoder_layers, "
                    "decoder_intermediate_size; vit-mae-base's: 512, 8, 2048, model.size big's)")
        raise ValueError(f"{what}: {'; '.join(bad[:3])}")
    return load, new


def load_vit_mae_weights(model: MultimodalMAE, directory: str | Path) -> dict[str, list[str]]:
    """Initialise the WSI encoder and the decoder from a local transformers ViTMAE directory (``config.json`` +
    ``model.safetensors``, e.g. facebook/vit-mae-base). Nothing is downloaded.

    Encoder and decoder must match the checkpoint in shape and heads (:func:`match_vit_mae`); loaded with
    ``strict=False`` and an assertion that exactly :func:`vit_mae_new_keys` stayed new (MAE's main_finetune.py).
    Position tables computed for another image size (vit-mae-base: 224 px) are kept as ours: both are the same
    fixed sine-cosine function, evaluated on our grid. The WSI modality embedding is zeroed so that the WSI-only
    path equals transformers' model. Returns {"loaded": [...], "kept": [...]} (our keys left as initialised).
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
    for theirs, default, key in (("num_attention_heads", 12, "num_heads"),
                                 ("decoder_num_attention_heads", 16, "decoder_heads")):
        if hf_cfg.get(theirs, default) != getattr(model.cfg, key):
            raise ValueError(f"{directory}: model.{key}: got {getattr(model.cfg, key)}, the checkpoint has "
                             f"{hf_cfg.get(theirs, default)} ({theirs} in config.json)")
    if hf_cfg.get("norm_pix_loss"):
        log.warning("%s: trained with norm_pix_loss; our WSI loss uses plain (ImageNet-normalised) pixels", directory)
    eps = hf_cfg.get("layer_norm_eps", 1e-12)
    if eps != model.cfg.norm_eps:
        log.warning("layer_norm_eps: checkpoint %g, ours %g (outputs differ by O(eps))", eps, model.cfg.norm_eps)
    try:
        load, new = match_vit_mae(model.state_dict(), load_file(str(weights)))
    except ValueError as exc:
        raise ValueError(f"{directory}: {exc}") from None
    missing, unexpected = model.load_state_dict(load, strict=False)
    assert not unexpected and sorted(missing) == new, (unexpected, sorted(set(missing) ^ set(new)))
    with torch.no_grad():
        model.modality_embed[model.modalities.index("wsi")].zero_()
    log.info("vit-mae weights: loaded %d tensors, kept %d of ours", len(load), len(new))
    return {"loaded": sorted(load), "kept": new}
