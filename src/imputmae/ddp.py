"""Data-parallel training pieces of pretraining (nanoGPT's: ranks from torchrun's ``RANK``/``WORLD_SIZE``, the
model wrapped in DDP, ``raw_model = net.module``): where a process trains, the global-mean loss scaling, the SIGTERM
flag shared by every rank.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imputmae.modalities import active
from imputmae.model import MultimodalMAE

__all__ = ["Ranks", "init_ranks", "is_ddp", "global_mean_losses", "stop_flag", "wrap_model"]


def is_ddp() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_mean_losses(raw_model: MultimodalMAE, batch: Mapping[str, torch.Tensor],
                        masks: Mapping[str, torch.Tensor], losses: Mapping[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, bool]]:
    """Rescale each rank's per-modality mean so that DDP's gradient average is the gradient of the global mean.

    Ranks count different numbers of target elements (modality sets differ; masked omics patches hold different
    amounts of padding), so the plain average of per-rank means is not the global batch's mean. Each rank's mean
    is multiplied by ``world * n_local / n_global`` (counts all-reduced; constants for autograd). Also returns
    whether any rank's batch had each modality.
    """
    world = dist.get_world_size()
    counts = []
    for m in raw_model.modalities:
        valid = batch["available"][:, active().index(m)].float()   # present: a target (hidden or not)
        per_patch = raw_model.element_weight(m).sum(-1)                          # [N] real elements per patch
        counts.append(((masks[m].float() * valid[:, None]) * per_patch).sum())
    local = torch.stack(counts).detach().double()
    total = local.clone()
    dist.all_reduce(total)
    scale = torch.where(total > 0, world * local / total.clamp_min(1), torch.zeros_like(total))
    scaled = {m: losses[m] * scale[i].to(losses[m].dtype) for i, m in enumerate(raw_model.modalities)}
    present = {m: bool(total[i] > 0) for i, m in enumerate(raw_model.modalities)}
    return torch.stack(list(scaled.values())).sum(), scaled, present


@dataclass
class Ranks:
    """Where this process trains: its device, its rank and the number of DDP ranks (1: no DDP)."""

    device: torch.device
    rank: int
    world: int

    @property
    def ddp(self) -> bool:
        return self.world > 1


def init_ranks(device: str | None) -> Ranks:
    """The device and DDP rank from torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (the process group started
    when there are several ranks)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Ranks(dev, rank, world)


def stop_flag(event: threading.Event, ranks: Ranks) -> Callable[[], bool]:
    """A callable that says whether any rank received SIGTERM (all-reduced under DDP)."""
    def stop() -> bool:
        flag = torch.tensor([1.0 if event.is_set() else 0.0])
        if ranks.ddp:
            flag = flag.to(ranks.device) if ranks.device.type == "cuda" else flag
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
    return stop


def wrap_model(model: MultimodalMAE, ranks: Ranks, n_modalities: int, compile: bool) -> torch.nn.Module:
    """The module that trains: DDP around ``model`` with several ranks, ``torch.compile`` when asked (compiles on
    the first step; checkpoints keep saving ``model``, with plain parameter names)."""
    net: torch.nn.Module = model
    if ranks.ddp:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None,
            find_unused_parameters=n_modalities > 1)   # a batch without some modality leaves its patch embed unused
    return torch.compile(net) if compile else net
