"""The baselines' inputs: omics vectors, a bag of frozen tile features per patient, an availability mask.

Built once per fold and shared by every baseline row of that fold (:func:`baseline_inputs`):

* RNA [L_rna] and DNAm [L_dnam]: the vectors impuTMAE reads (``PatientInputs.omics``, already normalised to
  [0, 1] by the fold's normalisers, fitted on its training patients), cut to the unpadded lengths of the MAE config;
* tiles [K, F]: each tile through a **named frozen extractor**: ``mae_cls`` (the default) is the fold's pretrained
  WSI encoder, unmasked, its CLS token after the final norm (F = hidden size), the same encoder impuTMAE fine-tunes
  from; ``resnet50`` is an ImageNet ResNet-50 loaded from a local weights file (``weights``), truncated after
  layer3 as CLAM does (F = 1,024; :mod:`imputmae.baselines._resnet`), what CLAM-based baselines used;
* missing modalities: ``missing="impute"`` (the paper's protocol, "we impute missing modalities in prior approaches
  using the proposed method") fills them with the pretrained decoder's reconstruction
  (:func:`imputmae.finetune.features.iter_complete_inputs`, a group of patients at a time, as impuTMAE's own
  fine-tuning does; a missing slide becomes
  one imputed tile) and marks them available; ``missing="zero"`` gives zeros and marks them unavailable.

The baselines are the published networks on the three built-in modalities (:data:`MODALITIES`, whatever the
registry in use holds besides): a further modality is not one of their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from imputmae.modalities import MODALITIES
from imputmae.model import MultimodalMAE

__all__ = ["BaselineInputs", "baseline_inputs", "cls_from_frozen", "collate_inputs", "mae_tile_features",
           "select_top_variance"]

Extractor = Literal["mae_cls", "resnet50"]


@dataclass
class BaselineInputs:
    """Every patient's baseline inputs (rows in ``patients`` order).

    rna: float32 [P, L_rna]; dnam: float32 [P, L_dnam] (zeros where unavailable); tiles: P tensors [K_i, F]
    (one zero row where the slide is unavailable); available: bool [P, 3] in :data:`MODALITIES` order (True: the
    model may use it, present or imputed); imputed: bool [P, 3]; extractor: the tile-feature extractor's name.
    """

    patients: list[str]
    rna: Tensor
    dnam: Tensor
    tiles: list[Tensor]
    available: Tensor
    imputed: Tensor
    extractor: str = "mae_cls"

    def __post_init__(self) -> None:
        P = len(self.patients)
        for name, t in (("rna", self.rna), ("dnam", self.dnam), ("available", self.available),
                        ("imputed", self.imputed)):
            if t.shape[0] != P:
                raise ValueError(f"BaselineInputs.{name} has {t.shape[0]} rows for {P} patients")
        if len(self.tiles) != P:
            raise ValueError(f"BaselineInputs.tiles has {len(self.tiles)} bags for {P} patients")
        if self.available.shape[1] != len(MODALITIES):
            raise ValueError(f"available must be [P, {len(MODALITIES)}] ({', '.join(MODALITIES)})")

    def without_imputed(self) -> BaselineInputs:
        """These inputs with every imputed modality zero-filled and unavailable: what :func:`baseline_inputs`
        gives with ``missing="zero"`` (the present values are shared, not copied)."""
        keep = ~self.imputed
        rna = torch.where(keep[:, MODALITIES.index("rna"), None], self.rna, 0.0)
        dnam = torch.where(keep[:, MODALITIES.index("dnam"), None], self.dnam, 0.0)
        wsi = MODALITIES.index("wsi")
        tiles = [t if keep[i, wsi] else torch.zeros(1, t.shape[1]) for i, t in enumerate(self.tiles)]
        return BaselineInputs(list(self.patients), rna, dnam, tiles, self.available & keep,
                              torch.zeros_like(self.imputed), self.extractor)

    @property
    def tile_dim(self) -> int:
        return int(self.tiles[0].shape[1])

    def index(self, patients: Sequence[str]) -> np.ndarray:
        from imputmae.finetune import patient_rows

        return patient_rows(self.patients, patients, "baseline inputs")


@torch.no_grad()
def mae_tile_features(mae: MultimodalMAE, tiles: Tensor, chunk: int = 64) -> Tensor:
    """tiles: float [K, 3, H, W] in [0, 1] -> the frozen WSI encoder's CLS per tile [K, D] (unmasked, final norm)."""
    mae.eval()
    return torch.cat([mae.encode({"wsi": tiles[i:i + chunk]})["wsi"] for i in range(0, tiles.shape[0], chunk)])


@torch.no_grad()
def baseline_inputs(mae: MultimodalMAE, inputs, patients: Sequence[str],
                    missing: Literal["impute", "zero"] = "impute", extractor: Extractor = "mae_cls",
                    weights: str | Path | None = None, max_tiles: int | None = None,
                    chunk: int = 64, frozen=None, trainable_blocks: int = 1,
                    recon_cache=None) -> BaselineInputs:
    """The fold's baseline inputs from impuTMAE's (``inputs``: :class:`imputmae.finetune.PatientInputs`).

    ``mae``: the fold's pretrained model (imputation, and the ``mae_cls`` extractor); ``weights``: the ResNet-50
    state dict for ``extractor="resnet50"``. See the module docstring.

    Work shared with impuTMAE's rows of the same fold (:mod:`imputmae.baselines.rows`): ``frozen``, the same
    ``mae``'s :class:`~imputmae.finetune.FrozenFeatures` (hidden states before its last ``trainable_blocks``
    blocks): a real slide found there gets its ``mae_cls`` features from those states through the last blocks and
    the final norm (the encoder's remaining layers only; equal to the full pass up to float rounding);
    ``recon_cache``: reconstructions shared with other imputing calls
    (:func:`~imputmae.finetune.features.iter_complete_inputs`).
    """
    from imputmae.finetune.features import iter_complete_inputs

    patients = list(patients)
    dev = next(mae.parameters()).device
    if extractor == "mae_cls":
        def features(x: Tensor) -> Tensor:
            return mae_tile_features(mae, x, chunk)

        D = mae.cfg.hidden_size
    elif extractor == "resnet50":
        if weights is None:
            raise ValueError("extractor 'resnet50' needs weights: the path of a torchvision ResNet-50 state dict")
        from imputmae.baselines._resnet import load_resnet50_features

        net = load_resnet50_features(weights).to(dev)

        def features(x: Tensor) -> Tensor:
            return torch.cat([net(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])

        D = net.out_features
    else:
        raise ValueError(f"extractor {extractor!r}: 'mae_cls' (the fold's pretrained WSI encoder) or 'resnet50'")
    mods = [m for m in MODALITIES if m in mae.modalities]     # a model pretrained without slides has no WSI
    lengths = {m: mae.cfg.lengths.get(m, 0) for m in ("rna", "dnam")}
    omics = {m: torch.zeros(len(patients), lengths[m]) for m in ("rna", "dnam")}
    tiles: list[Tensor] = [torch.zeros(1, D)] * len(patients)
    avail = torch.zeros(len(patients), len(MODALITIES), dtype=torch.bool)
    imp = torch.zeros(len(patients), len(MODALITIES), dtype=torch.bool)
    known = frozen.own_rows("wsi") if frozen is not None and extractor == "mae_cls" and "wsi" in mods else {}
    # a group of patients at a time: only the tile features [K, F] are kept, never a cohort's float tiles
    for pos, data, imputed in iter_complete_inputs(mae, inputs, patients, mods, missing, max_tiles,
                                                   recon_cache=recon_cache):
        for j, i in enumerate(pos):
            p = patients[i]
            for m in ("rna", "dnam"):
                if m in data and p in data[m]:
                    omics[m][i] = data[m][p][: lengths[m]].float().cpu()
            if "wsi" in data and p in data["wsi"]:
                if p in known and not imputed["wsi"][j]:
                    h = frozen.h("wsi", known[p])[:max_tiles].to(dev)
                    tiles[i] = torch.cat([cls_from_frozen(mae.encoders["wsi"], h[s:s + chunk], trainable_blocks)
                                          for s in range(0, h.shape[0], chunk)]).cpu()
                else:
                    tiles[i] = features(data["wsi"][p].to(dev)).cpu()
            for k, m in enumerate(MODALITIES):
                avail[i, k] = m in data and p in data[m]
                imp[i, k] = bool(imputed[m][j]) if m in imputed else False
    return BaselineInputs(patients, omics["rna"], omics["dnam"], tiles, avail, imp, extractor)


@torch.no_grad()
def cls_from_frozen(enc, h: Tensor, trainable_blocks: int = 1) -> Tensor:
    """Frozen hidden states h [K, 1 + N, D] (before ``enc``'s last ``trainable_blocks`` blocks) -> the unmasked
    encoder's CLS after its final norm [K, D]: what :func:`mae_tile_features` computes from the tiles."""
    for blk in enc.blocks[len(enc.blocks) - trainable_blocks:]:
        h = blk(h)
    return enc.norm(h)[:, 0]


def collate_inputs(bi: BaselineInputs, idx: np.ndarray, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """A batch of patients ``idx`` [B]: rna [B, L_rna], dnam [B, L_dnam], tiles [B, K, F] (zero-padded to the
    largest bag), tile_mask [B, K] bool (True: a real tile of an available slide), available [B, 3] bool."""
    idx = np.asarray(idx, dtype=np.int64)
    t = torch.from_numpy(idx)
    bags = [bi.tiles[i] for i in idx]
    K = max(b.shape[0] for b in bags)
    tiles = bags[0].new_zeros(len(idx), K, bi.tile_dim)
    mask = torch.zeros(len(idx), K, dtype=torch.bool)
    wsi = MODALITIES.index("wsi")
    for j, b in enumerate(bags):
        tiles[j, : b.shape[0]] = b
        mask[j, : b.shape[0]] = bool(bi.available[idx[j], wsi])
    return {"rna": bi.rna[t].to(device), "dnam": bi.dnam[t].to(device), "tiles": tiles.to(device),
            "tile_mask": mask.to(device), "available": bi.available[t].to(device)}


def select_top_variance(x: Tensor, k: int) -> Tensor:
    """Indices [min(k, L)] (increasing) of the k columns of x [N, L] with the largest variance over its rows, the
    rows being TRAINING patients (MultiSurv's gene/probe preselection, computed there over all samples)."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"select_top_variance needs [N >= 2, L] training rows, got {tuple(x.shape)}")
    k = min(int(k), x.shape[1])
    return torch.topk(x.double().var(0), k).indices.sort().values
