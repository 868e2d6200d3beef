"""The survival network on the pretrained encoders (paper Section 3.3): each modality's last encoder block
(trainable; ``trainable_blocks`` > 1: the last that many) and final norm (frozen), one fusion self-attention layer
over the modality tokens, and a linear head to T logistic-hazard logits (``loss="cox"``: to one log relative risk,
whose curves come from a Breslow baseline fitted on the fit patients); :class:`SurvivalEnsemble` averages K
members' survival curves (docs/finetune.md). A modality's embedding is its CLS token (the paper's) or, with
``pool="mean"``, the mean of its patch tokens (MAE's global pooling).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from imputmae.model import MAEConfig, MultimodalMAE
from imputmae.survival import cox_hazard_logits, hazard_to_survival

def cls_through_block(block: nn.Module, h: Tensor) -> Tensor:
    """The CLS row of ``block(h)`` computed alone: h [B, 1 + N, D] -> [B, D]. Exact (:meth:`Block.forward_rows`: only
    the CLS query attends, only the CLS row goes through the MLP), and O(N) instead of O(N^2) attention and N times
    less MLP work: only the CLS token is used downstream."""
    return block.forward_rows(h, torch.zeros(h.shape[0], 1, dtype=torch.long, device=h.device))[:, 0]


def check_pool(pool: str) -> str:
    """``pool`` when it is ``cls`` or ``mean``, else ValueError naming the setting."""
    if pool not in ("cls", "mean"):
        raise ValueError(f"finetune.pool {pool!r}: cls (the CLS token, the paper's) or mean (the patch tokens' mean)")
    return pool


def check_trainable_blocks(mae_cfg: MAEConfig, modalities: Sequence[str], k: int) -> int:
    """``k`` when every modality's encoder has at least k blocks (k >= 1), else ValueError naming the setting."""
    layers = {m: mae_cfg.layers[m] for m in modalities}
    if not isinstance(k, int) or k < 1 or any(k > n for n in layers.values()):
        raise ValueError(f"finetune.trainable_blocks {k!r}: must be an integer from 1 to the encoders' number of "
                         f"layers ({', '.join(f'{m} {n}' for m, n in layers.items())}): lower it or pick a deeper "
                         f"model.size")
    return k


class SurvivalModel(nn.Module):
    """Last encoder blocks (trainable) + fusion self-attention + linear hazard head; see the module docstring.

    ``trainable_blocks`` (k >= 1, at most every modality's number of encoder layers): how many of each encoder's
    last blocks are trained; the inputs are the hidden states entering block -k (:func:`frozen_features` with the
    same k). Blocks -k .. -2 run on every token (``earlier_blocks``, present only when k > 1, so that k = 1 keeps
    the state dict of before the knob), the last one on the CLS row alone.

    ``pool="mean"``: a modality's embedding is the mean over its N patch tokens (CLS excluded) of the last block's
    output through the frozen final norm, as MAE's fine-tuning pools (``global_pool``); the last block then runs
    on every token instead of the CLS row alone (N times its MLP work: cheap on omics, costly on WSI tiles).

    ``loss="cox"``: the head gives one log relative risk eta (:meth:`log_risk`) and :meth:`forward` turns it into
    the logits of S(t) = exp(-H0(t) exp(eta)) with the buffer ``log_increments`` [T] (Breslow's H0 between the
    cuts, set by the training loop on the fit patients: :func:`imputmae.survival.breslow_log_increments`).
    """

    def __init__(self, mae_cfg: MAEConfig, modalities: Sequence[str], n_bins: int, dropout: float = 0.1,
                 fusion_heads: int | None = None, encoders: nn.ModuleDict | None = None, trainable_blocks: int = 1,
                 loss: str = "nll", pool: str = "cls"):
        super().__init__()
        D = mae_cfg.hidden_size
        self.modalities = tuple(modalities)
        self.mae_cfg = mae_cfg
        if loss not in ("nll", "cox"):
            raise ValueError(f"finetune.loss {loss!r}: nll (logistic-hazard NLL) or cox (partial likelihood)")
        self.loss, self.n_bins, self.pool = loss, n_bins, check_pool(pool)
        self.trainable_blocks = check_trainable_blocks(mae_cfg, self.modalities, trainable_blocks)
        # Only each modality's last k blocks and (frozen) final norm; copied from the pretrained encoders when given.
        src = encoders if encoders is not None else MultimodalMAE(
            MAEConfig.from_dict({**mae_cfg.to_dict(), "modalities": list(self.modalities)})).encoders
        self.last_blocks = nn.ModuleDict({m: copy.deepcopy(src[m].blocks[-1]) for m in self.modalities})
        if trainable_blocks > 1:
            self.earlier_blocks = nn.ModuleDict({m: copy.deepcopy(src[m].blocks[-trainable_blocks:-1])
                                                 for m in self.modalities})
        self.final_norms = nn.ModuleDict({m: copy.deepcopy(src[m].norm) for m in self.modalities})
        for p in self.final_norms.parameters():
            p.requires_grad_(False)
        self.modality_embed = nn.Parameter(torch.zeros(len(self.modalities), D))
        self.dropout = nn.Dropout(dropout)
        self.fusion_norm = nn.LayerNorm(D)
        self.fusion = nn.MultiheadAttention(D, fusion_heads or mae_cfg.num_heads, dropout=dropout, batch_first=True)
        self.head_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, n_bins if loss == "nll" else 1)
        if loss == "cox":
            self.register_buffer("log_increments", torch.zeros(n_bins))
        nn.init.normal_(self.modality_embed, std=0.02)

    def embed_modality(self, m: str, h: Tensor, tile_mask: Tensor | None = None) -> Tensor:
        """h: [B, K, 1 + N, D] frozen hidden states (entering block -trainable_blocks), tile_mask [B, K] (1 = real
        tile) -> each row's CLS (``pool="mean"``: its patch tokens' mean) [B * K, D], averaged over tiles [B, D]."""
        B, K, T, D = h.shape
        x = h.reshape(B * K, T, D)
        if self.trainable_blocks > 1:
            for blk in self.earlier_blocks[m]:
                x = blk(x)
        if self.pool == "cls":
            cls = self.final_norms[m](cls_through_block(self.last_blocks[m], x)).reshape(B, K, D)
        else:
            cls = self.final_norms[m](self.last_blocks[m](x))[:, 1:].mean(1).reshape(B, K, D)
        if tile_mask is None:
            return cls.mean(1)
        w = tile_mask.to(cls.dtype)[..., None]
        return (cls * w).sum(1) / w.sum(1).clamp_min(1)

    def forward(self, feats: Mapping[str, tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """feats[m] = (h [B, K, 1+N, D], tile_mask [B, K], present [B] bool) -> hazard logits phi [B, T]."""
        out = self._head(feats)
        return out if self.loss == "nll" else cox_hazard_logits(out[:, 0], self.log_increments)

    def log_risk(self, feats: Mapping[str, tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """``loss="cox"``: the log relative risk eta [B] (what the partial likelihood trains)."""
        if self.loss != "cox":
            raise ValueError("log_risk: only a model with loss='cox' has one")
        return self._head(feats)[:, 0]

    def _head(self, feats: Mapping[str, tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """The head's output: [B, T] hazard logits (nll) or [B, 1] log relative risk (cox)."""
        tokens = []
        for i, m in enumerate(self.modalities):
            h, tile_mask, present = feats[m]
            e = self.embed_modality(m, h, tile_mask) * present[:, None].to(h.dtype)
            tokens.append(e + self.modality_embed[i])
        x = self.dropout(torch.stack(tokens, dim=1))                          # [B, M, D]
        y = self.fusion_norm(x)
        x = x + self.fusion(y, y, y, need_weights=False)[0]
        return self.head(self.dropout(self.head_norm(x).mean(1)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class SurvivalEnsemble(nn.Module):
    """K :class:`SurvivalModel` members (one per inner fold; K = 1: the paper's single model); the prediction is
    the mean of the members' survival curves."""

    def __init__(self, members: Sequence[SurvivalModel]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.modalities = members[0].modalities

    def forward(self, feats: Mapping[str, tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """feats as :meth:`SurvivalModel.forward` -> survival at the cuts [B, T], averaged over the members."""
        return torch.stack([hazard_to_survival(m(feats)) for m in self.members]).mean(0)


def baseline_hazard_logits(idx_durations: np.ndarray, events: np.ndarray, n_bins: int,
                           clip: tuple[float, float] = (1e-3, 0.5)) -> Tensor:
    """logit of the life-table hazard per bin, d_k / n_k (events at bin k over patients with index >= k), of the
    given (training) labels, clipped to ``clip``: the initial bias of the hazard head -> [n_bins]."""
    idx = np.asarray(idx_durations, dtype=np.int64)
    d = np.bincount(idx, weights=np.asarray(events, dtype=float), minlength=n_bins)[:n_bins]
    at_risk = np.cumsum(np.bincount(idx, minlength=n_bins)[:n_bins][::-1])[::-1]
    h = np.clip(np.divide(d, at_risk, out=np.zeros(n_bins), where=at_risk > 0), *clip)
    return torch.from_numpy(np.log(h / (1 - h))).float()
