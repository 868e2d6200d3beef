"""CMTA, cross-modal translation and alignment (Zhou & Chen, ICCV 2023; FT-ZHOU-ZZZ/CMTA ``models/cmta/network.py``),
reimplemented on our inputs (``small`` size, ``concat`` fusion, the ``nll_surv_l1`` loss of the published runs).

Architecture, as the original:

* pathology: each tile feature through Linear(F, 256)-ReLU-Dropout(.25)-Linear(256, 256)-ReLU-Dropout(.25);
* genomics: one token per group through an SNN (Linear(s, 1024)-ELU-AlphaDropout(.25), then 1024 -> 256);
* an encoder per stream: pathology (Transformer_P) pads its tokens to a square grid by repeating the first ones,
  prepends a learned CLS, then TransLayer, PPEG (depthwise 7/5/3 convolutions + identity on the grid), TransLayer,
  LayerNorm; genomics (Transformer_G): CLS, two TransLayers, LayerNorm, no positions;
* translation: single-head cross-attention, pathology tokens querying genomic tokens ("P in G") and the reverse;
* a decoder per stream (same designs) on the translated tokens; its CLS is kept;
* fusion: concat[(P_enc + P_dec) / 2, (G_enc + G_dec) / 2] -> Linear(512, 256)-ReLU-Linear(256, 256)-ReLU ->
  Linear(256, T); Xavier-normal initialisation;
* auxiliary loss (``nll_surv_l1``): alpha * [L1(P_enc.detach(), P_dec) + L1(G_enc.detach(), G_dec)] on the CLS
  tokens, added to the survival loss (``BaselineConfig.aux_weight``: the published alpha 1.0 of BLCA, GBMLGG, UCEC).

Adapting the two-stream design to three modalities, and to our inputs (what the original does in brackets):

* the two streams stay: **pathology = the WSI tile bag; genomics = tokens from RNA and from DNAm**
  (:func:`imputmae.baselines._layers.genomic_groups`: by default one token for the whole RNA vector and one for the
  whole DNAm vector; ``rna_groups``/``dnam_groups`` cut each into contiguous column ranges) [six MCAT signature
  groups of ``_rnaseq/_cnv/_mut`` columns, StandardScaler-ed; DNAm is not used];
* tile features from our frozen extractor (F = its width) [CLAM ResNet-50, 1,024-d, 20x, every patch];
* exact attention with NystromAttention's parameters (:mod:`imputmae.baselines._layers`) [Nyström, 128 landmarks];
* missing modalities: inputs imputed by the pretrained decoder (paper protocol) or zeros; the tokens of an
  unavailable modality are left out of both streams (an unavailable slide: one zero feature) [both modalities
  required; a patient without a slide crashes];
* patients go through the network one at a time (the original's batch size 1); a batch of B patients averages
  their losses, i.e. gradient accumulation over B;
* T = 20 hazard logits for the project's logistic-hazard NLL on training cuts [4 quantile bins of the whole cohort,
  the mahmoodlab NLL].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imputmae.baselines._layers import (GenomicTokens, Group, TransLayer, bag_tokens, genomic_groups, keep_available,
                                        masked_tiles, xavier_init)

__all__ = ["CMTAConfig", "CMTA", "PPEG", "PathologyTransformer", "GenomicTransformer"]


@dataclass
class CMTAConfig:
    """groups: the genomic tokens (:data:`~imputmae.baselines._layers.Group`); None: one per modality."""

    rna_len: int
    dnam_len: int
    tile_dim: int
    n_bins: int = 20
    groups: Sequence[Group] | None = None
    dim: int = 256
    genomic_hidden: int = 1024

    def genomic_groups(self) -> tuple[Group, ...]:
        return tuple(self.groups) if self.groups is not None else genomic_groups(self.rna_len, self.dnam_len)


class PPEG(nn.Module):
    """TransMIL's positional encoding: x [B, 1 + H*W, D] (CLS first) -> same, grid convolved (7, 5, 3) + identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, x: Tensor, side: int) -> Tensor:
        B, _, D = x.shape
        grid = x[:, 1:].transpose(1, 2).reshape(B, D, side, side)
        grid = grid + sum(conv(grid) for conv in self.proj)
        return torch.cat([x[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


class PathologyTransformer(nn.Module):
    """Transformer_P: tokens [B, N, D] -> (cls [B, D], tokens [B, S*S, D]), S = ceil(sqrt(N))."""

    def __init__(self, dim: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.layer1, self.layer2 = TransLayer(dim), TransLayer(dim)
        self.pos_layer = PPEG(dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        side = math.isqrt(x.shape[1] - 1) + 1 if x.shape[1] > 1 else 1           # ceil(sqrt(N))
        add = side * side - x.shape[1]
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x, x[:, :add]], dim=1)
        h = self.norm(self.layer2(self.pos_layer(self.layer1(h), side)))
        return h[:, 0], h[:, 1:]


class GenomicTransformer(nn.Module):
    """Transformer_G: tokens [B, G, D] -> (cls [B, D], tokens [B, G, D])."""

    def __init__(self, dim: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.layer1, self.layer2 = TransLayer(dim), TransLayer(dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.norm(self.layer2(self.layer1(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1))))
        return h[:, 0], h[:, 1:]


class CMTA(nn.Module):
    """Batch (:func:`imputmae.baselines.collate_inputs`) -> (phi [B, T] hazard logits, aux: the mean L1 alignment
    loss over the batch, a scalar)."""

    def __init__(self, cfg: CMTAConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.pathomics_fc = nn.Sequential(nn.Linear(cfg.tile_dim, d), nn.ReLU(), nn.Dropout(0.25),
                                          nn.Linear(d, d), nn.ReLU(), nn.Dropout(0.25))
        self.genomics_fc = GenomicTokens(cfg.genomic_groups(), [cfg.genomic_hidden, d])
        self.pathomics_encoder, self.pathomics_decoder = PathologyTransformer(d), PathologyTransformer(d)
        self.genomics_encoder, self.genomics_decoder = GenomicTransformer(d), GenomicTransformer(d)
        self.p_in_g = nn.MultiheadAttention(d, 1, batch_first=True)
        self.g_in_p = nn.MultiheadAttention(d, 1, batch_first=True)
        self.mm = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU())
        self.classifier = nn.Linear(d, cfg.n_bins)
        xavier_init(self)

    def forward_one(self, path: Tensor, gen: Tensor) -> tuple[Tensor, Tensor]:
        """One patient: path tokens [1, N, d], genomic tokens [1, G, d] -> (phi [1, T], aux [])."""
        p_cls, p_tok = self.pathomics_encoder(path)
        g_cls, g_tok = self.genomics_encoder(gen)
        p_in_g = self.p_in_g(p_tok, g_tok, g_tok, need_weights=False)[0]
        g_in_p = self.g_in_p(g_tok, p_tok, p_tok, need_weights=False)[0]
        p_dec, _ = self.pathomics_decoder(p_in_g)
        g_dec, _ = self.genomics_decoder(g_in_p)
        fused = self.mm(torch.cat([(p_cls + p_dec) / 2, (g_cls + g_dec) / 2], dim=1))
        aux = F.l1_loss(p_dec, p_cls.detach()) + F.l1_loss(g_dec, g_cls.detach())
        return self.classifier(fused), aux

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        path = self.pathomics_fc(masked_tiles(batch))                                 # [B, K, d]
        gen, gen_avail = self.genomics_fc(batch)                                 # [B, G, d], [B, G]
        phis, auxes = [], []
        for i in range(path.shape[0]):
            phi, aux = self.forward_one(bag_tokens(path, batch, i), keep_available(gen[i], gen_avail[i])[None])
            phis.append(phi)
            auxes.append(aux)
        return torch.cat(phis), torch.stack(auxes).mean()
