"""Pretraining checkpoints: written atomically, read with ``weights_only=True`` (no code is executed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imputmae.files import atomic_write
from imputmae.model import MAEConfig, MultimodalMAE

__all__ = ["save_checkpoint", "load_checkpoint", "load_pretrained"]



def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                    epoch: int, model_config: MAEConfig | Mapping[str, Any], normalizers: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then rename).

    Everything stored loads with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts.
    ``normalizers`` are the normalisers' ``state_dict()`` values; ``model_config`` a :class:`MAEConfig` or its dict.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = model.module if hasattr(model, "module") else model
    cfg = model_config.to_dict() if isinstance(model_config, MAEConfig) else dict(model_config)
    state = {"model": raw.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "step": int(step), "epoch": int(epoch), "model_config": cfg, "normalizers": dict(normalizers),
             "extra": dict(extra or {}), "format": "imputmae-mae-1"}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    ck = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != "imputmae-mae-1":
        raise ValueError(f"{path}: not an imputmae pretraining checkpoint")
    return ck


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[MultimodalMAE, dict[str, Any], dict[str, Any]]:
    """-> (model in eval mode, normaliser states {modality: state_dict}, meta {step, epoch, model_config, extra})."""
    ck = load_checkpoint(path, map_location)
    model = MultimodalMAE(MAEConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    model.eval()
    meta = {k: ck[k] for k in ("step", "epoch", "model_config", "extra")}
    return model, ck["normalizers"], meta
