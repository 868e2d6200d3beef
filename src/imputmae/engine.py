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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from imputmae.files import atomic_write
from imputmae.data import (OmicsArrays, PatientDataset, build_arrays, collate, fit_normalizers, load_omics,
                           load_patients, n_features, pretraining_patients, read_splits)
from imputmae.checkpoint import load_checkpoint, save_checkpoint
from imputmae.config import pretrain_folds
from imputmae.ddp import Ranks, global_mean_losses, init_ranks, is_ddp, stop_flag, wrap_model
from imputmae.modalities import active, is_image, names, vector_modalities
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
        if is_ddp():
            loss, losses, present = global_mean_losses(model.module, batch, masks, losses)
        else:
            present = {m: bool(batch["available"][:, active().index(m)].any()) for m in modalities}
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
    """``multimodal`` -> ``pretrain.modalities``; a modality's name -> that one (Table 4's unimodal runs)."""
    known = names()
    if run == "multimodal":
        return tuple(m for m in known if m in cfg["pretrain"]["modalities"])
    if run not in known:
        raise ValueError(f"run: got {run!r}, expected multimodal or one of {known}")
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


def _train_means(arrays: OmicsArrays, dataset: PatientDataset, modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """Training-patient mean of each modality's model input (the imputation baseline of Table 4): a vector
    modality's [L_m], an image modality's [3, T, T] (over the dataset's tile of each patient)."""
    out = {}
    for m in arrays.modalities:
        if m not in modalities:
            continue
        have = arrays.available[:, arrays.column(m)]
        if is_image(m):
            total, n = torch.zeros(3, dataset.tile_size, dataset.tile_size, dtype=torch.float64), 0
            for i in np.flatnonzero(have):
                total += dataset[int(i)][m].double()
                n += 1
            out[m] = (total / max(n, 1)).float()
        else:
            x = arrays.vectors[m][have]
            out[m] = torch.from_numpy(x.mean(0) if len(x) else np.zeros(x.shape[1], np.float32)).float()
    return out


@dataclass
class _FoldData:
    """One fold's training patients: their table, the normalisers fitted on exactly them, their arrays, the model
    configuration those arrays give, and the dataset over them."""

    train: pd.DataFrame
    normalizers: dict[str, Any]
    arrays: OmicsArrays
    model_config: MAEConfig
    dataset: PatientDataset


def _fold_data(cfg: Mapping[str, Any], fold: int, modalities: Sequence[str]) -> _FoldData:
    """Fold ``fold``'s training patients with any of ``modalities`` (never its test patients) and what is fitted on
    them."""
    pc = cfg["pretrain"]
    results = Path(cfg["results"])
    cohorts = sorted(cfg["cohorts"])
    patients = load_patients(results, cohorts)
    splits = read_splits(results / "splits.parquet")
    train = pretraining_patients(patients, splits, fold, modalities)
    omics = {k: load_omics(results, cohorts, k) for k in vector_modalities(modalities)}
    normalizers = fit_normalizers(omics, train["patient"].tolist(), cfg)
    arrays = build_arrays(train, omics, normalizers)
    lengths = {k: n_features(normalizers[k], arrays.vectors[k].shape[1]) for k in normalizers}
    mcfg = MAEConfig.from_config(cfg, lengths, modalities=modalities)
    dataset = PatientDataset(arrays, modalities=modalities, n_patches={m: mcfg.n_patches(m) for m in modalities},
                             tile_size=mcfg.tile_size, seed=pc["seed"], modality_dropout=pc["modality_dropout"])
    return _FoldData(train, normalizers, arrays, mcfg, dataset)


def _resume(path: Path, model: MultimodalMAE, optimizer: torch.optim.Optimizer, mcfg: MAEConfig,
            device: torch.device) -> dict[str, Any]:
    """Load ``path`` into ``model`` and ``optimizer`` -> {epoch, step, skip_batches, history, partial}.

    Raises:
        ValueError: the checkpoint was written for another model configuration.
    """
    ck = load_checkpoint(path, map_location=device)
    if MAEConfig.from_dict(ck["model_config"]) != mcfg:
        raise ValueError(f"{path}: written for another model configuration; delete it or drop --resume")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    ex = ck["extra"]
    torch.set_rng_state(ex["torch_rng"].cpu())
    log.info("resumed from %s: epoch %d, step %d (+%d batches)", path, ck["epoch"], ck["step"],
             int(ex.get("batches_done", 0)))
    return {"epoch": ck["epoch"], "step": ck["step"], "skip_batches": int(ex.get("batches_done", 0)),
            "history": list(ex.get("history", [])), "partial": ex.get("partial_sums")}


def _epoch_row(res: Mapping[str, Any], epoch: int, lr: float, modalities: Sequence[str], ranks: Ranks,
               seconds: float) -> dict[str, Any]:
    """metrics.csv's row of a finished epoch: lr, the total and per-modality mean losses (means over ranks)."""
    s = dict(res["sums"])
    if ranks.ddp:   # every rank's mean of the epoch
        t = torch.tensor([s[k] for k in sorted(s)], dtype=torch.float64)
        dist.all_reduce(t)
        s = {k: v / ranks.world for k, v in zip(sorted(s), t.tolist())}
    return {"epoch": epoch + 1, "step": res["step"], "lr": lr, "loss": s["loss"] / max(s["steps"], 1),
            **{f"loss_{m}": (s[f"loss_{m}"] / s[f"n_{m}"] if s[f"n_{m}"] else float("nan")) for m in modalities},
            "seconds": round(seconds, 3)}


@dataclass
class _Loop:
    """The state the epoch loop of :func:`pretrain` reads and updates, and its two steps: one epoch, one checkpoint.

    ``step``, ``skip_batches`` (batches of the current epoch already trained, when resumed inside it), ``history``
    (metrics.csv's rows) and ``partial`` (a resumed epoch's partial loss sums) change as it trains."""

    pc: Mapping[str, Any]
    run: str
    fold: int
    out_dir: Path
    ranks: Ranks
    data: _FoldData
    model: MultimodalMAE
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sampler: DistributedSampler
    steps_per_epoch: int
    lr_fn: Callable[[int], float]
    train_means: dict[str, torch.Tensor]
    step: int = 0
    skip_batches: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: Mapping[str, float] | None = None

    def checkpoint(self, epoch: int, batches_done: int, partial_sums: Mapping[str, float] | None,
                   done: bool = False) -> None:
        """Rank 0 writes ``last.pt`` (``checkpoint.pt`` when ``done``) with everything an exact resume needs."""
        if self.ranks.rank != 0:
            return
        arrays = self.data.arrays
        save_checkpoint(self.out_dir / ("checkpoint.pt" if done else "last.pt"), model=self.model,
                        optimizer=self.optimizer, step=self.step, epoch=epoch, model_config=self.data.model_config,
                        normalizers={k: v.state_dict() for k, v in self.data.normalizers.items()},
                        extra={"run": self.run, "fold": self.fold, "batches_done": batches_done,
                               "history": self.history, "partial_sums": dict(partial_sums) if partial_sums else None,
                               "torch_rng": torch.get_rng_state(), "train_means": self.train_means,
                               "n_train": len(self.data.train), "train_patients": arrays.patients,
                               "steps_per_epoch": self.steps_per_epoch, "epochs": self.pc["epochs"]})

    def epoch(self, epoch: int, stop: Callable[[], bool], on_step: Callable[[int], None] | None,
              progress: bool) -> bool:
        """Train epoch ``epoch`` (the rest of it, when resumed inside it), log it and checkpoint as configured;
        -> True when SIGTERM interrupted it (its checkpoint is then written)."""
        t0 = time.perf_counter()
        pc, rank, dev = self.pc, self.ranks.rank, self.ranks.device
        per_rank = pc["batch_size"] // self.ranks.world
        self.data.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        loader = DataLoader(self.data.dataset, batch_size=per_rank,
                            sampler=_SkipSampler(self.sampler, self.skip_batches * per_rank),
                            num_workers=pc["num_workers"], collate_fn=collate, pin_memory=dev.type == "cuda",
                            persistent_workers=False)
        modalities = self.model.modalities
        res = train_one_epoch(self.net, loader, self.optimizer, dev, epoch, step=self.step, lr_fn=self.lr_fn,
                              modalities=modalities, sums=self.partial, stop=stop, on_step=on_step,
                              progress=progress and rank == 0)
        self.step, self.partial = res["step"], None
        if res["interrupted"] and self.skip_batches + res["batches"] < self.steps_per_epoch:
            self.checkpoint(epoch, self.skip_batches + res["batches"], res["sums"])
            return True
        self.skip_batches = 0
        row = _epoch_row(res, epoch, self.lr_fn(max(self.step - 1, 0)), modalities, self.ranks,
                         time.perf_counter() - t0)
        self.history.append(row)
        if rank == 0:
            log.info("epoch %d/%d: %s", epoch + 1, pc["epochs"],
                     " ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith("loss")))
            _write_metrics(self.out_dir / "metrics.csv", self.history)
        last = epoch + 1 == pc["epochs"]
        if res["interrupted"] or last or (epoch + 1) % pc["checkpoint_every"] == 0:
            self.checkpoint(epoch + 1, 0, None, done=last)
            if last and rank == 0:
                (self.out_dir / "last.pt").unlink(missing_ok=True)
            if rank == 0:
                write_loss_plot(self.out_dir / "loss.png", self.history, f"pretraining {self.run}, fold {self.fold}")
        return bool(res["interrupted"])


def _new_model(cfg: Mapping[str, Any], data: _FoldData, device: torch.device
               ) -> tuple[MultimodalMAE, dict[str, torch.Tensor]]:
    """The fold's model on ``device``, its heads starting at the training means (also returned: Table 4's
    imputation baseline); the image encoder from ``model.vit_mae_weights`` when set."""
    model = MultimodalMAE(data.model_config)
    train_means = _train_means(data.arrays, data.dataset, model.modalities)
    model.init_output_bias(train_means)
    if cfg["model"].get("vit_mae_weights") and "wsi" in model.modalities:   # facebook/vit-mae-base: an image model
        load_vit_mae_weights(model, cfg["model"]["vit_mae_weights"])
    return model.to(device), train_means


def _start(cfg: Mapping[str, Any], run: str, fold: int, out_dir: Path, ranks: Ranks, resume: bool
           ) -> tuple[_Loop, int]:
    """Data, model, optimizer, schedule and sampler of one pretraining, resumed from ``out_dir``'s checkpoint when
    asked (``last.pt``, else a finished ``checkpoint.pt``)."""
    pc = cfg["pretrain"]
    modalities = run_modalities(cfg, run)
    data = _fold_data(cfg, fold, modalities)
    counts = ", ".join(f"{m} {n}" for m, n in zip(data.arrays.modalities, data.arrays.available.sum(0).tolist()))
    log.info("run %s fold %d: %d training patients (%s), rank %d/%d, device %s", run, fold, len(data.train), counts,
             ranks.rank, ranks.world, ranks.device)
    model, train_means = _new_model(cfg, data, ranks.device)
    optimizer = torch.optim.AdamW(param_groups(model, pc["weight_decay"]), lr=pc["lr"], betas=tuple(pc["betas"]),
                                  foreach=True)   # one kernel per step over all tensors
    sampler = DistributedSampler(data.dataset, num_replicas=ranks.world, rank=ranks.rank, shuffle=True,
                                 seed=pc["seed"])
    steps_per_epoch = math.ceil(len(sampler) / (pc["batch_size"] // ranks.world))
    total_steps, warmup_steps = pc["epochs"] * steps_per_epoch, pc["warmup_epochs"] * steps_per_epoch

    def lr_fn(step: int) -> float:
        return get_lr(step, base_lr=pc["lr"], warmup_steps=warmup_steps, total_steps=total_steps)

    state: dict[str, Any] = {}
    # Rolling checkpoints go to last.pt, which is not a Snakemake output (Snakemake deletes the outputs of a failed
    # job, and a preempted job exits non-zero); checkpoint.pt is written once, when training completes.
    final, ckpt = out_dir / "checkpoint.pt", out_dir / "last.pt"
    if resume and not ckpt.is_file() and final.is_file():
        ckpt = final
    if resume and ckpt.is_file():
        state = _resume(ckpt, model, optimizer, data.model_config, ranks.device)
    elif resume:
        log.info("--resume: no checkpoint at %s; starting from scratch", ckpt)
    net = wrap_model(model, ranks, len(modalities), pc["compile"])
    loop = _Loop(pc, run, fold, out_dir, ranks, data, model, net, optimizer, sampler, steps_per_epoch, lr_fn,
                 train_means, step=state.get("step", 0), skip_batches=state.get("skip_batches", 0),
                 history=state.get("history", []), partial=state.get("partial"))
    return loop, state.get("epoch", 0)


def pretrain(cfg: Mapping[str, Any], *, run: str, fold: int, out_dir: str | Path, resume: bool = False,
             device: str | None = None, on_step: Callable[[int], None] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Pretrain one model (``run`` = multimodal or a modality's name) on fold ``fold``'s training patients.

    Reads ``{results}/splits.parquet`` and the stage outputs (see :mod:`imputmae.data`); writes
    ``out_dir/checkpoint.pt`` when training completes (``out_dir/last.pt`` every ``pretrain.checkpoint_every``
    epochs and on SIGTERM; ``resume`` continues from it, removed at the end), ``metrics.csv`` (one row
    per epoch: lr, total and per-modality masked-patch MSE) and ``loss.png``. Under torchrun (``WORLD_SIZE`` > 1)
    runs DDP; only rank 0 writes. Returns {"status": "completed" | "preempted", "epoch", "step", "history"}.
    """
    pc = cfg["pretrain"]
    ranks = init_ranks(device)
    if pc["batch_size"] % ranks.world:
        raise ValueError(f"pretrain.batch_size {pc['batch_size']} is not divisible by the {ranks.world} DDP ranks")
    _set_determinism(pc["seed"], pc["deterministic"])
    loop, start_epoch = _start(cfg, run, fold, Path(out_dir), ranks, resume)

    stop_event = threading.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, lambda *_: stop_event.set()) if main_thread else None
    stop = stop_flag(stop_event, ranks)
    status = "completed"
    try:
        for epoch in range(start_epoch, pc["epochs"]):
            if loop.epoch(epoch, stop, on_step, progress):
                status = "preempted"
                break
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_handler)
    history = loop.history
    return {"status": status, "epoch": history[-1]["epoch"] if history else start_epoch, "step": loop.step,
            "history": history}
