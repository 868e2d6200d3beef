"""MultiSurv (Vale-Silva & Rohr, Sci. Rep. 2021; luisvalesilva/multisurv ``src/multisurv.py``, ``src/sub_models.py``),
reimplemented on our inputs.

Architecture, as the original: every modality goes through its own fully connected sub-network to a 512-d vector;
the vectors are fused by an element-wise **max** (the original's default fusion); a fully connected block
FC(512, 512, 4) and a linear layer give one output per time interval. The FC blocks follow the original's width
rule: each layer is Dropout(0.5), Linear, ReLU (+ BatchNorm1d on all but the last layer); the first hidden width
is the largest of {128, ..., 16384} strictly below the input size (at least the output size) times a scaling
factor, each next one the largest power of two below the previous (at least the output size):

* RNA  (original mRNA): FC(n_rna, 512, 3), scaling 4; at 1,000 genes 1000 -> 2048 -> 1024 -> 512;
* DNAm: FC(n_dnam, 512, 5), scaling 2; at 5,000 probes 5000 -> 8192 -> 4096 -> 2048 -> 1024 -> 512;
* WSI: FC(F, 512, 1) on the element-wise max over the patient's tiles.

Inputs and what differs from the original (each one written down):

* Genomics: the original feeds the 1,000 most variable mRNA genes and 5,000 most variable probes, a variance
  computed over all samples. Here the same counts are picked among our normalised RNA and DNAm vectors by variance
  over the fold's TRAINING patients only (:meth:`MultiSurv.fit_preprocessing`, saved with the model as buffers);
  on the full vectors the width rule would give ~1.1 B (RNA) and ~1.6 B (DNAm) parameters.
* WSI: the original runs 5 random 299-px patches per patient through an ImageNet ResNeXt-50 (layer4 trainable),
  max-pooled over patches, then FC(2048, 512, 1). Here the patient's bag of frozen tile features [K, F] (from the
  fold's pretrained WSI encoder by default) is max-pooled over its tiles, then FC(F, 512, 1): the CNN is frozen.
* Missing modalities: the original feeds a zero tensor and no mask (modality "data dropout" exists in its dataset
  class but its loaders pass p = 0). Here the default is the paper's protocol: missing inputs imputed by the
  pretrained decoder and marked available; the max runs over the AVAILABLE modalities only (``use_mask``).
  ``MultiSurvConfig(use_mask=False)`` with zero-filled inputs and ``BaselineConfig.modality_dropout > 0`` is the
  original's native zero-filling with modality dropout (its own Table 3 row).
* Output and loss: the original's head is Linear + Sigmoid read as conditional survival probabilities of 30 yearly
  intervals under its own discrete likelihood. Here the same Linear gives T = 20 hazard logits for the project's
  logistic-hazard NLL on cuts fitted on training patients (the same protocol for every Table 3 row).
* Three modalities (RNA, DNAm, WSI) are a subset of the original's six; nothing else changes in the fusion.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imputmae.baselines._inputs import select_top_variance
from imputmae.modalities import MODALITIES

__all__ = ["MultiSurvConfig", "MultiSurv", "fc_widths", "fc_block"]

_WIDTHS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def _below(n: int) -> int:
    """The largest of _WIDTHS strictly below n (128 when none is)."""
    i = bisect_left(_WIDTHS, n)
    return _WIDTHS[0 if i == 0 else i - 1]


def fc_widths(n_in: int, n_out: int, n_layers: int, scaling_factor: int = 4) -> list[int]:
    """The original FC block's layer widths [n_in, h_1, ..., n_out] (module docstring)."""
    if n_layers < 1:
        raise ValueError("n_layers must be positive")
    if n_layers == 1:
        return [n_in, n_out]
    h = max(_below(n_in), n_out)
    if n_layers == 2:
        return [n_in, h, n_out]
    widths = [n_in, h * scaling_factor]
    for _ in range(n_layers - 2):
        widths.append(max(_below(widths[-1]), n_out))
    return widths + [n_out]


def fc_block(n_in: int, n_out: int, n_layers: int, scaling_factor: int = 4, dropout: float = 0.5) -> nn.Sequential:
    """[B, n_in] -> [B, n_out]: per layer Dropout, Linear, ReLU, and BatchNorm1d on all layers but the last."""
    w = fc_widths(n_in, n_out, n_layers, scaling_factor)
    layers: list[nn.Module] = []
    for i in range(len(w) - 1):
        layers += [nn.Dropout(dropout), nn.Linear(w[i], w[i + 1]), nn.ReLU()]
        if i < len(w) - 2:
            layers.append(nn.BatchNorm1d(w[i + 1]))
    return nn.Sequential(*layers)


@dataclass
class MultiSurvConfig:
    """rna_len/dnam_len: our vectors' lengths; rna_features/dnam_features: how many the training-variance
    preselection keeps (the original's 1,000 and 5,000; 0 = all); tile_dim: F of the tile features."""

    rna_len: int
    dnam_len: int
    tile_dim: int
    n_bins: int = 20
    rna_features: int = 1000
    dnam_features: int = 5000
    width: int = 512
    use_mask: bool = True


class MultiSurv(nn.Module):
    """Batch (:func:`imputmae.baselines.collate_inputs`) -> (phi [B, T] hazard logits, aux 0.0)."""

    def __init__(self, cfg: MultiSurvConfig):
        super().__init__()
        self.cfg = cfg
        k_rna = min(cfg.rna_features or cfg.rna_len, cfg.rna_len)
        k_dnam = min(cfg.dnam_features or cfg.dnam_len, cfg.dnam_len)
        self.register_buffer("rna_index", torch.arange(k_rna))
        self.register_buffer("dnam_index", torch.arange(k_dnam))
        self.submodels = nn.ModuleDict({
            "rna": fc_block(k_rna, cfg.width, 3, scaling_factor=4),
            "dnam": fc_block(k_dnam, cfg.width, 5, scaling_factor=2),
            "wsi": fc_block(cfg.tile_dim, cfg.width, 1),
        })
        self.fc_block = fc_block(cfg.width, cfg.width, 4)
        self.classifier = nn.Linear(cfg.width, cfg.n_bins)

    @torch.no_grad()
    def fit_preprocessing(self, rna: Tensor, dnam: Tensor) -> None:
        """Keep the most variable genes / probes of TRAINING patients: rna [N, L_rna], dnam [N, L_dnam] (the rows
        that have the modality; with fewer than two, the first columns stay selected)."""
        for index, x in ((self.rna_index, rna), (self.dnam_index, dnam)):
            if x.shape[0] >= 2:
                index.copy_(select_top_variance(x, index.numel()))

    def embed(self, batch: Mapping[str, Tensor]) -> Tensor:
        """-> modality vectors [B, 3, width] in :data:`MODALITIES` order."""
        tiles, mask = batch["tiles"], batch["tile_mask"]
        pooled = tiles.masked_fill(~mask[..., None], float("-inf")).amax(1)     # [B, F]: max over real tiles
        pooled = torch.where(mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))
        x = {"rna": batch["rna"][:, self.rna_index], "dnam": batch["dnam"][:, self.dnam_index], "wsi": pooled}
        return torch.stack([self.submodels[m](x[m]) for m in MODALITIES], dim=1)

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        h = self.embed(batch)                                                    # [B, 3, width]
        if self.cfg.use_mask:
            avail = batch["available"].bool()
            avail = torch.where(avail.any(1, keepdim=True), avail, torch.ones_like(avail))
            h = h.masked_fill(~avail[..., None], float("-inf"))
        fused = h.amax(1)                                                        # [B, width]
        return self.classifier(self.fc_block(fused)), fused.new_zeros(())
