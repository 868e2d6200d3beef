"""MoME, mixture of multimodal experts with biased progressive encoding (Xiong et al., MICCAI 2024;
BearCleverProud/MoME ``models/model_mome.py``, ``MoMETransformer``, sizes small/small, 2 bottleneck tokens),
reimplemented on our inputs.

Architecture, as the original:

* pathology tokens: each tile feature through Linear(F, 512)-ReLU-Dropout(.25); genomic tokens: one SNN per group
  (F_g -> 512 -> 512);
* a MoME layer encodes a stream x1 with a reference stream x2 through one of four experts chosen by a router:
  TransFusion (a TransLayer with RMSNorm over [x1; x2], keeping x1's tokens), BottleneckTransFusion (a TransLayer
  over [n_b bottleneck tokens; x2] keeps the bottlenecks, a second over [x1; those] keeps x1), AddFusion
  (SNN(RMSNorm x1) + token-mean of SNN(RMSNorm x2)), DropX2 (x1 unchanged); the router sums the token means of
  Linear-RMSNorm-GELU of each stream and maps them to 4 logits (softmax);
* progressive encoding: path <- MoME(path, omic), omic <- MoME(omic, path), twice (four layers);
* head: [cls; path; omic] -> TransLayer (LayerNorm) -> its first token -> Linear(512, T);
* TransLayers use the Admin residual x * omega + f(x) (``admin_torch.as_module(8)``, a constant omega) and
  exact attention with NystromAttention's parameters (:mod:`imputmae.baselines._layers`).

Differences from the original code, each on purpose:

* **the router is trained.** In the original, ``MoME.forward`` passes ``hard`` into the router's ``temp`` and then
  runs the argmax expert without multiplying by its gate, so no gradient reaches the router and the choice stays
  at its random initialisation. Here hard routing (the default, as published) multiplies the chosen expert's output
  by the straight-through gate ``1 - g.detach() + g`` (value 1, gradient of g), and soft routing is the gate-weighted
  sum of all four experts;
* the bottleneck tokens and the multimodal CLS are, as in the original, random and not learned (``torch.rand``), but
  drawn from a seeded generator and kept as buffers in the state dict, so a reloaded model has the same ones;
* BottleneckTransFusion's RMSNorm, which the original builds and never uses, is not built (512 parameters per
  layer fewer; the parameter-count test states the arithmetic).

Adapting the two-stream design to three modalities, and to our inputs (the original in brackets):

* **pathology = the WSI tile bag; genomics = tokens from RNA and from DNAm** (one token per modality by default,
  :func:`imputmae.baselines._layers.genomic_groups`) [six MCAT signature groups; no DNAm];
* tile features from our frozen extractor [CLAM ResNet-50, 1,024-d];
* missing modalities: imputed by the pretrained decoder (paper protocol) or zeros, tokens of an unavailable
  modality left out (an unavailable slide: one zero feature) [both required];
* one patient at a time through the network; a batch of B patients averages their losses, which is the
  original's gradient accumulation (gc = 32) when B = 32;
* T = 20 hazard logits for the project's logistic-hazard NLL on training cuts [4 whole-cohort quantile bins].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imputmae.baselines._layers import (GenomicTokens, Group, TransLayer, bag_tokens, genomic_groups, keep_available,
                                        masked_tiles, snn_block)

__all__ = ["MoMEConfig", "MoME", "MoMELayer", "Router"]


@dataclass
class MoMEConfig:
    """groups: the genomic tokens (None: one per modality); hard: top-1 routing (published) or soft."""

    rna_len: int
    dnam_len: int
    tile_dim: int
    n_bins: int = 20
    groups: Sequence[Group] | None = None
    dim: int = 512
    n_bottlenecks: int = 2
    hard: bool = True
    seed: int = 0

    def genomic_groups(self) -> tuple[Group, ...]:
        return tuple(self.groups) if self.groups is not None else genomic_groups(self.rna_len, self.dnam_len)


def _rms_linear_gelu(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.RMSNorm(dim, eps=1e-6), nn.GELU())


class Router(nn.Module):
    """x1 [1, N1, D], x2 [1, N2, D] -> gates [1, n_experts] (softmax)."""

    def __init__(self, dim: int, n_experts: int = 4):
        super().__init__()
        self.fc1, self.fc2 = _rms_linear_gelu(dim), _rms_linear_gelu(dim)
        self.classifier = nn.Linear(dim, n_experts)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.classifier(self.fc1(x1).mean(1) + self.fc2(x2).mean(1)).softmax(-1)


class MoMELayer(nn.Module):
    """Encode x1 [1, N1, D] with reference x2 [1, N2, D] -> [1, N1, D] through the routed expert(s)."""

    def __init__(self, dim: int, n_bottlenecks: int, hard: bool, generator: torch.Generator):
        super().__init__()
        self.hard = hard
        self.trans_fusion = TransLayer(dim, norm="rms", residual="admin")
        self.bottleneck_attn = nn.ModuleList([TransLayer(dim, residual="admin"), TransLayer(dim, residual="admin")])
        self.register_buffer("bottleneck", torch.rand(1, n_bottlenecks, dim, generator=generator))
        self.add_norms = nn.ModuleList([nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)])
        self.add_snns = nn.ModuleList([snn_block(dim, dim), snn_block(dim, dim)])
        self.router = Router(dim, 4)

    def expert(self, k: int, x1: Tensor, x2: Tensor) -> Tensor:
        n1 = x1.shape[1]
        if k == 0:      # TransFusion
            return self.trans_fusion(torch.cat([x1, x2], dim=1))[:, :n1]
        if k == 1:      # BottleneckTransFusion
            nb = self.bottleneck.shape[1]
            b = self.bottleneck_attn[1](torch.cat([self.bottleneck.to(x1.dtype), x2], dim=1))[:, :nb]
            return self.bottleneck_attn[0](torch.cat([x1, b], dim=1))[:, :n1]
        if k == 2:      # AddFusion
            return (self.add_snns[0](self.add_norms[0](x1))
                    + self.add_snns[1](self.add_norms[1](x2)).mean(1, keepdim=True))
        return x1       # DropX2

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        gates = self.router(x1, x2)[0]                                           # [4]
        if self.hard:
            k = int(gates.argmax())
            return self.expert(k, x1, x2) * (1 - gates[k].detach() + gates[k])  # straight-through gate
        return sum(gates[k] * self.expert(k, x1, x2) for k in range(4))


class MoME(nn.Module):
    """Batch (:func:`imputmae.baselines.collate_inputs`) -> (phi [B, T] hazard logits, aux 0.0)."""

    def __init__(self, cfg: MoMEConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        g = torch.Generator().manual_seed(cfg.seed)
        self.wsi_net = nn.Sequential(nn.Linear(cfg.tile_dim, d), nn.ReLU(), nn.Dropout(0.25))
        self.sig_networks = GenomicTokens(cfg.genomic_groups(), [d, d])
        self.layers = nn.ModuleList(MoMELayer(d, cfg.n_bottlenecks, cfg.hard, g) for _ in range(4))  # p1 g1 p2 g2
        self.multi_layer = TransLayer(d, residual="admin")
        self.register_buffer("cls_multimodal", torch.rand(1, 1, d, generator=g))
        self.classifier = nn.Linear(d, cfg.n_bins)

    def forward_one(self, path: Tensor, omic: Tensor) -> Tensor:
        """One patient: path tokens [1, N, d], genomic tokens [1, G, d] -> phi [1, T]."""
        path = self.layers[0](path, omic)
        omic = self.layers[1](omic, path)
        path = self.layers[2](path, omic)
        omic = self.layers[3](omic, path)
        h = self.multi_layer(torch.cat([self.cls_multimodal.to(path.dtype), path, omic], dim=1))[:, 0]
        return self.classifier(h)

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        path = self.wsi_net(masked_tiles(batch))                                      # [B, K, d]
        omic, omic_avail = self.sig_networks(batch)                              # [B, G, d], [B, G]
        phis = []
        for i in range(path.shape[0]):
            phis.append(self.forward_one(bag_tokens(path, batch, i), keep_available(omic[i], omic_avail[i])[None]))
        phi = torch.cat(phis)
        return phi, phi.new_zeros(())
