"""Pretraining loop, checkpoints, learning-rate schedule and DDP (Table 4's evaluation: :mod:`imputmae.table4`).

Shaped like facebookresearch/mae (``train_one_epoch`` in engine_pretrain.py, separate from ``main``) and nanoGPT
(DDP from ``RANK``/``WORLD_SIZE``, ``raw_model = model.module``, a pure ``get_lr``).

Exact resume: every random draw of an epoch (sample order, tile, masking noise) is a function of (seed, epoch,
sample index), not of a global generator, so a run resumed from a checkpoint (written at an epoch end, or after
the current step on SIGTERM) trains on exactly the batches an uninterrupted run would. On SIGTERM the loop
finishes its step, writes the checkpoint and :func:`pretrain` returns ``status="preempted"``; the CLI then exits
with :data:`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"), which the cluster wrapper resubmits with ``--resume``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from imputmae.files import atomic_write
from imputmae.data import (PatientDataset, build_arrays, collate, fit_normalizers, load_omics, load_patients,
                           n_features, pretraining_patients, read_splits)
from imputmae.checkpoint import load_checkpoint, save_checkpoint
from imputmae.config import pretrain_folds
from imputmae.modalities import MODALITIES, is_image, vector_modalities
from imputmae.model import MAEConfig, MultimodalMAE
from imputmae.vit_mae import load_vit_mae_weights

__all__ = ["EXIT_PREEMPTED", "get_lr", "param_groups", "train_one_epoch", "pretrain", "run_modalities",
           "folds_to_run", "write_loss_plot"]

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75


def get_lr(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup over ``warmup_steps`` (step 0 gets base_lr/warmup), then half a cosine to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only (not on biases, norms, tokens or embeddings), as MAE does."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or any(k in name for k in ("cls_token", "mask_tokens", "modality_embed"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _is_ddp() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_mean_losses(raw_model: MultimodalMAE, batch: Mapping[str, torch.Tensor],
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
        valid = batch["available"][:, MODALITIES.index(m)].float()   # present: a target (hidden or not)
        per_patch = raw_model.element_weight(m).sum(-1)                          # [N] real elements per patch
        counts.append(((masks[m].float() * valid[:, None]) * per_patch).sum())
    local = torch.stack(counts).detach().double()
    total = local.clone()
    dist.all_reduce(total)
    scale = torch.where(total > 0, world * local / total.clamp_min(1), torch.zeros_like(total))
    scaled = {m: losses[m] * scale[i].to(losses[m].dtype) for i, m in enumerate(raw_model.modalities)}
    present = {m: bool(total[i] > 0) for i, m in enumerate(raw_model.modalities)}
    return torch.stack(list(scaled.values())).sum(), scaled, present


def train_one_epoch(model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer, device: torch.device,
                    epoch: int, *, step: int, lr_fn: Callable[[int], float], modalities: Sequence[str],
                    sums: Mapping[str, float] | None = None, stop: Callable[[], bool] | None = None,
                    on_step: Callable[[int], None] | None = None, progress: bool = True) -> dict[str, Any]:
    """One pass over ``loader`` (batches from :func:`imputmae.data.collate`).

    Returns ``{"step", "batches", "interrupted", "sums"}``; ``sums`` accumulate (loss, loss_<m>, n_<m>, steps)
    from ``sums`` (a resumed epoch's partial sums). Raises FloatingPointError on a non-finite loss.
    """
    from tqdm import tqdm

    model.train()
    acc = {"steps": 0.0, "loss": 0.0, **{f"loss_{m}": 0.0 for m in modalities}, **{f"n_{m}": 0.0 for m in modalities}}
    acc.update(sums or {})
    amp = device.type == "cuda"
    batches, interrupted = 0, False
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for batch in bar:
        lr = lr_fn(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        noise = {m: batch.pop(f"noise_{m}").to(device, non_blocking=True) for m in modalities}
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "index"}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _, masks, losses = model(batch, noise=noise, predict="masked")   # same loss, less work
        if _is_ddp():
            loss, losses, present = _global_mean_losses(model.module, batch, masks, losses)
        else:
            present = {m: bool(batch["available"][:, MODALITIES.index(m)].any()) for m in modalities}
        if not torch.isfinite(loss):
            detail = ", ".join(f"{m}={v.item():.4g}" for m, v in losses.items())
            raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step} ({detail}), lr {lr:.3g}: "
                                     "lower pretrain.lr or check the inputs for NaN")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        batches += 1
        acc["steps"] += 1
        acc["loss"] += loss.item()
        for m in modalities:
            if present[m]:
                acc[f"loss_{m}"] += losses[m].item()
                acc[f"n_{m}"] += 1
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
        if on_step is not None:
            on_step(step)
        if stop is not None and stop():
            interrupted = True
            break
    return {"step": step, "batches": batches, "interrupted": interrupted, "sums": acc}


class _SkipSampler(Sampler[int]):
    """``base`` minus its first ``skip`` indices (resuming inside an epoch)."""

    def __init__(self, base: Sampler[int], skip: int):
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)  # type: ignore[arg-type]


def run_modalities(cfg: Mapping[str, Any], run: str) -> tuple[str, ...]:
    """``multimodal`` -> ``pretrain.modalities``; ``rna``/``dnam``/``wsi`` -> that one (Table 4's unimodal runs)."""
    if run == "multimodal":
        return tuple(m for m in MODALITIES if m in cfg["pretrain"]["modalities"])
    if run not in MODALITIES:
        raise ValueError(f"run: got {run!r}, expected multimodal or one of {MODALITIES}")
    return (run,)


def folds_to_run(cfg: Mapping[str, Any], run: str = "multimodal") -> list[int]:
    """The outer folds pretrained for ``run`` (:func:`imputmae.config.pretrain_folds`)."""
    return pretrain_folds(cfg, run)


def _set_determinism(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)
    if history:
        atomic_write(path, write)


def write_loss_plot(path: str | Path, history: Sequence[Mapping[str, Any]], title: str = "") -> None:
    """Loss curves (total and per modality) against epoch, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(list(history))
    fig, ax = plt.subplots(figsize=(6, 4))
    for col in [c for c in df.columns if c == "loss" or c.startswith("loss_")]:
        ax.plot(df["epoch"], df[col], label=col.replace("loss_", "") if col != "loss" else "total",
                lw=2 if col == "loss" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked-patch MSE")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _train_means(arrays: Any, dataset: PatientDataset, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """Training-patient mean of each modality's model input (the imputation baseline of Table 4)."""
    out = {}
    for j, m in enumerate(MODALITIES):
        if m not in modalities:
            continue
        have = arrays.available[:, j]
        if is_image(m):
            total, n = torch.zeros(3, dataset.tile_size, dataset.tile_size, dtype=torch.float64), 0
            for i in np.flatnonzero(have):
                total += dataset[int(i)]["wsi"].double()
                n += 1
            out[m] = (total / max(n, 1)).float()
        else:
            x = getattr(arrays, m)[have]
            out[m] = torch.from_numpy(x.mean(0) if len(x) else np.zeros(x.shape[1], np.float32)).float()
    return out


def pretrain(cfg: Mapping[str, Any], *, run: str, fold: int, out_dir: str | Path, resume: bool = False,
             device: str | None = None, on_step: Callable[[int], None] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Pretrain one model (``run`` = multimodal | rna | dnam | wsi) on fold ``fold``'s training patients.

    Reads ``{results}/splits.parquet`` and the stage outputs (see :mod:`imputmae.data`); writes
    ``out_dir/checkpoint.pt`` when training completes (``out_dir/last.pt`` every ``pretrain.checkpoint_every``
    epochs and on SIGTERM; ``resume`` continues from it, removed at the end), ``metrics.csv`` (one row
    per epoch: lr, total and per-modality masked-patch MSE) and ``loss.png``. Under torchrun (``WORLD_SIZE`` > 1)
    runs DDP; only rank 0 writes. Returns {"status": "completed" | "preempted", "epoch", "step", "history"}.
    """
    pc = cfg["pretrain"]
    out_dir = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    ddp = world > 1
    if ddp and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    if pc["batch_size"] % world:
        raise ValueError(f"pretrain.batch_size {pc['batch_size']} is not divisible by the {world} DDP ranks")
    _set_determinism(pc["seed"], pc["deterministic"])
    modalities = run_modalities(cfg, run)
    results = Path(cfg["results"])

    # -- data: fold f's training patients; normalisers fitted on exactly them --------------------------------------
    patients = load_patients(results, sorted(cfg["cohorts"]))
    splits = read_splits(results / "splits.parquet")
    train = pretraining_patients(patients, splits, fold, modalities)
    omics = {k: load_omics(results, sorted(cfg["cohorts"]), k) for k in vector_modalities(modalities)}
    normalizers = fit_normalizers(omics, train["patient"].tolist(), cfg)
    arrays = build_arrays(train, omics, normalizers)
    lengths = {k: n_features(normalizers[k], getattr(arrays, k).shape[1]) if k in normalizers else 0
               for k in vector_modalities()}
    mcfg = MAEConfig.from_config(cfg, rna_len=lengths["rna"], dnam_len=lengths["dnam"], modalities=modalities)
    dataset = PatientDataset(arrays, modalities=modalities, n_patches={m: mcfg.n_patches(m) for m in modalities},
                             tile_size=mcfg.tile_size, seed=pc["seed"], modality_dropout=pc["modality_dropout"])
    log.info("run %s fold %d: %d training patients (rna %d, dnam %d, wsi %d), rank %d/%d, device %s", run, fold,
             len(train), *arrays.available.sum(0).tolist(), rank, world, dev)

    # -- model, optimizer, schedule ----------------------------------------------------------------------------
    model = MultimodalMAE(mcfg)
    train_means = _train_means(arrays, dataset, modalities)
    model.init_output_bias(train_means)
    if cfg["model"].get("vit_mae_weights") and "wsi" in modalities:
        load_vit_mae_weights(model, cfg["model"]["vit_mae_weights"])
    model.to(dev)
    optimizer = torch.optim.AdamW(param_groups(model, pc["weight_decay"]), lr=pc["lr"], betas=tuple(pc["betas"]),
                                  foreach=True)   # one kernel per step over all tensors
    per_rank = pc["batch_size"] // world
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=pc["seed"])
    steps_per_epoch = math.ceil(len(sampler) / per_rank)
    total_steps = pc["epochs"] * steps_per_epoch
    warmup_steps = pc["warmup_epochs"] * steps_per_epoch

    def lr_fn(step: int) -> float:
        return get_lr(step, base_lr=pc["lr"], warmup_steps=warmup_steps, total_steps=total_steps)

    start_epoch, step, skip_batches, history, partial = 0, 0, 0, [], None
    # Rolling checkpoints go to last.pt, which is not a Snakemake output (Snakemake deletes the outputs of a failed
    # job, and a preempted job exits non-zero); checkpoint.pt is written once, when training completes.
    final, ckpt = out_dir / "checkpoint.pt", out_dir / "last.pt"
    if resume and not ckpt.is_file() and final.is_file():
        ckpt = final
    if resume and ckpt.is_file():
        ck = load_checkpoint(ckpt, map_location=dev)
        if ck["model_config"] != mcfg.to_dict():
            raise ValueError(f"{ckpt}: written for another model configuration; delete it or drop --resume")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        ex = ck["extra"]
        start_epoch, step, skip_batches = ck["epoch"], ck["step"], int(ex.get("batches_done", 0))
        history, partial = list(ex.get("history", [])), ex.get("partial_sums")
        torch.set_rng_state(ex["torch_rng"].cpu())
        log.info("resumed from %s: epoch %d, step %d (+%d batches)", ckpt, start_epoch, step, skip_batches)
    elif resume:
        log.info("--resume: no checkpoint at %s; starting from scratch", ckpt)
    net: torch.nn.Module = model
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=len(modalities) > 1)   # a batch without some modality leaves its patch embed unused
    raw_model = net.module if ddp else net
    if pc["compile"]:   # compiles on the first step; checkpoints keep saving raw_model (plain parameter names)
        net = torch.compile(net)

    stop_event = threading.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, lambda *_: stop_event.set()) if main_thread else None

    def stop() -> bool:
        flag = torch.tensor([1.0 if stop_event.is_set() else 0.0])
        if ddp:
            flag = flag.to(dev) if dev.type == "cuda" else flag
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def checkpoint(epoch: int, batches_done: int, partial_sums: Mapping[str, float] | None, done: bool = False) -> None:
        if rank != 0:
            return
        save_checkpoint(final if done else out_dir / "last.pt", model=raw_model, optimizer=optimizer, step=step,
                        epoch=epoch, model_config=mcfg,
                        normalizers={k: v.state_dict() for k, v in normalizers.items()},
                        extra={"run": run, "fold": fold, "batches_done": batches_done, "history": history,
                               "partial_sums": dict(partial_sums) if partial_sums else None,
                               "torch_rng": torch.get_rng_state(), "train_means": train_means,
                               "n_train": len(train), "train_patients": arrays.patients,
                               "steps_per_epoch": steps_per_epoch, "epochs": pc["epochs"]})

    status = "completed"
    try:
        for epoch in range(start_epoch, pc["epochs"]):
            t0 = time.perf_counter()
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=per_rank, sampler=_SkipSampler(sampler, skip_batches * per_rank),
                                num_workers=pc["num_workers"], collate_fn=collate,
                                pin_memory=dev.type == "cuda", persistent_workers=False)
            res = train_one_epoch(net, loader, optimizer, dev, epoch, step=step, lr_fn=lr_fn, modalities=modalities,
                                  sums=partial, stop=stop, on_step=on_step, progress=progress and rank == 0)
            step, partial = res["step"], None
            if res["interrupted"] and skip_batches + res["batches"] < steps_per_epoch:
                checkpoint(epoch, skip_batches + res["batches"], res["sums"])
                status = "preempted"
                break
            skip_batches = 0
            s = dict(res["sums"])
            if ddp:   # every rank's mean of the epoch
                t = torch.tensor([s[k] for k in sorted(s)], dtype=torch.float64)
                dist.all_reduce(t)
                s = {k: v / world for k, v in zip(sorted(s), t.tolist())}
            row = {"epoch": epoch + 1, "step": step, "lr": lr_fn(max(step - 1, 0)),
                   "loss": s["loss"] / max(s["steps"], 1),
                   **{f"loss_{m}": (s[f"loss_{m}"] / s[f"n_{m}"] if s[f"n_{m}"] else float("nan")) for m in modalities},
                   "seconds": round(time.perf_counter() - t0, 3)}
            history.append(row)
            if rank == 0:
                log.info("epoch %d/%d: %s", epoch + 1, pc["epochs"],
                         " ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("loss")))
                _write_metrics(out_dir / "metrics.csv", history)
            last = epoch + 1 == pc["epochs"]
            if res["interrupted"] or last or (epoch + 1) % pc["checkpoint_every"] == 0:
                checkpoint(epoch + 1, 0, None, done=last)
                if last and rank == 0:
                    (out_dir / "last.pt").unlink(missing_ok=True)
                if rank == 0:
                    write_loss_plot(out_dir / "loss.png", history, f"pretraining {run}, fold {fold}")
            if res["interrupted"]:
                status = "preempted"
                break
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
    return {"status": status, "epoch": history[-1]["epoch"] if history else start_epoch, "step": step,
            "history": history}
