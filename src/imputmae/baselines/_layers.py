"""Layers CMTA and MoME share (both build on MCAT's SNN blocks and TransMIL's attention layer).

Attention: both originals use lucidrains' ``NystromAttention`` (qkv without bias, an output projection and dropout,
a depthwise convolution of kernel 33 over the values added to the output). :class:`TokenAttention` has exactly
those parameters but computes **exact** softmax attention (``F.scaled_dot_product_attention``): a bag has at most
a few hundred tokens here (100 tiles per patient at paper scale, against CLAM's thousands of patches), fewer than
CMTA's 128 or MoME's 256 landmarks, where the Nyström approximation saves nothing and only adds the zero tokens it
pads the sequence with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imputmae.modalities import MODALITIES

__all__ = ["snn_block", "TokenAttention", "TransLayer", "GenomicTokens", "genomic_groups", "Group", "bag_tokens",
           "masked_tiles", "keep_available", "xavier_init"]

Group = tuple[str, int, int]   # (modality, start, stop): one genomic token from columns [start, stop) of a vector


def snn_block(dim_in: int, dim_out: int, dropout: float = 0.25) -> nn.Sequential:
    """MCAT's self-normalising block: Linear, ELU, AlphaDropout. [.., dim_in] -> [.., dim_out]."""
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.ELU(), nn.AlphaDropout(dropout))


class TokenAttention(nn.Module):
    """Self-attention with NystromAttention's parameters, computed exactly (module docstring).

    x [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.1, residual_kernel: int = 33):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.res_conv = nn.Conv2d(heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0),
                                  groups=heads, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q, k, v = self.to_qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [B, H, N, d]
        out = F.scaled_dot_product_attention(q, k, v) + self.res_conv(v)
        return self.dropout(self.to_out(out.transpose(1, 2).reshape(B, N, D)))


class TransLayer(nn.Module):
    """Pre-norm attention layer without an MLP (TransMIL's, as CMTA and MoME use it). x [B, N, D] -> [B, N, D].

    norm: ``layer`` (LayerNorm) or ``rms`` (RMSNorm, eps 1e-6); residual: ``plain`` (x + f(x), CMTA) or ``admin``
    (x * omega + f(x), MoME's ``admin_torch.as_module(8)``: omega = sqrt(9 / ln 9 - 1), a constant, not learned).
    """

    def __init__(self, dim: int, norm: Literal["layer", "rms"] = "layer",
                 residual: Literal["plain", "admin"] = "plain", n_residual_layers: int = 8):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm == "layer" else nn.RMSNorm(dim, eps=1e-6)
        self.attn = TokenAttention(dim, heads=8, dropout=0.1)
        n = n_residual_layers + 1
        self.register_buffer("omega", torch.tensor(math.sqrt(n / math.log(n) - 1) if residual == "admin" else 1.0),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.omega + self.attn(self.norm(x))


def genomic_groups(rna_len: int, dnam_len: int, rna_groups: int = 1, dnam_groups: int = 1) -> tuple[Group, ...]:
    """Genomic tokens from our vectors: RNA cut into ``rna_groups`` and DNAm into ``dnam_groups`` contiguous, nearly
    equal column ranges (0 groups: the modality gives no token). Our columns are sorted gene / probe ids, so a range
    is an arbitrary gene set, not one of MCAT's six signature families (which need gene annotations the pipeline
    does not ship); with 1 + 1 each modality is one token."""
    out: list[Group] = []
    for m, L, g in (("rna", rna_len, rna_groups), ("dnam", dnam_len, dnam_groups)):
        if g > L:
            raise ValueError(f"{m}: {g} groups from {L} features")
        edges = [round(i * L / g) for i in range(g + 1)] if g else []
        out += [(m, edges[i], edges[i + 1]) for i in range(g)]
    if not out:
        raise ValueError("genomic_groups: no group (rna_groups and dnam_groups are both 0)")
    return tuple(out)


class GenomicTokens(nn.Module):
    """One SNN per group (MCAT's ``sig_networks``): widths [w_0, ..., w_n]; rna [B, L_rna], dnam [B, L_dnam] ->
    tokens [B, G, w_n] and token_available [B, G] bool (the group's modality is available)."""

    def __init__(self, groups: Sequence[Group], widths: Sequence[int]):
        super().__init__()
        self.groups = tuple((str(m), int(a), int(b)) for m, a, b in groups)
        nets = []
        for _, a, b in self.groups:
            dims = [b - a, *widths]
            nets.append(nn.Sequential(*[snn_block(dims[i], dims[i + 1]) for i in range(len(dims) - 1)]))
        self.nets = nn.ModuleList(nets)

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        avail = torch.stack([batch["available"][:, MODALITIES.index(m)] for m, _, _ in self.groups], dim=1)
        x = [batch[m][:, a:b] * avail[:, j, None] for j, (m, a, b) in enumerate(self.groups)]   # zeros if absent
        return torch.stack([net(v) for net, v in zip(self.nets, x)], dim=1), avail


def keep_available(tokens: Tensor, available: Tensor) -> Tensor:
    """One patient's tokens [N, D] and availability [N] -> the available ones [N', D]; all of them (zero inputs,
    the zero-filling convention) when none is available."""
    return tokens[available] if bool(available.any()) else tokens


def bag_tokens(tokens: Tensor, batch: Mapping[str, Tensor], i: int) -> Tensor:
    """Patient i's pathology tokens [1, N, D] from tokens [B, K, D] (of :func:`masked_tiles`): its real tiles when its
    slide is available, else its first row, computed from a zero input (the zero-filling convention)."""
    mask = batch["tile_mask"][i]
    if bool(batch["available"][i, MODALITIES.index("wsi")]) and bool(mask.any()):
        return tokens[i, mask][None]
    return tokens[i, :1][None]


def masked_tiles(batch: Mapping[str, Tensor]) -> Tensor:
    """The batch's tile features [B, K, F] with zeros wherever ``tile_mask`` is False (padding, unavailable slide)."""
    return batch["tiles"] * batch["tile_mask"][..., None]


def xavier_init(module: nn.Module) -> None:
    """CMTA's initialisation: Xavier-normal Linear weights, zero biases, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
