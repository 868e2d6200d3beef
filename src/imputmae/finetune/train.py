"""One fold's fine-tuning: patient selection, training-only label cuts, validation split or inner folds, the
training loop with best-epoch selection on validation patients, and the fold's predictions and metrics.
The protocol and its reasons: docs/finetune.md.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from imputmae.choices import CacheDtype, CIndexName, CutScheme, MissingInputs, SelectOn
from imputmae.finetune.features import (FrozenFeatures, MemoryNeeded, PatientInputs, collate_batch,
                                        frozen_features, training_memory_bytes, usable_memory_bytes)
from imputmae.finetune.network import (SurvivalEnsemble, SurvivalModel, baseline_hazard_logits,
                                       check_pool, check_trainable_blocks)
from imputmae.modalities import active, names
from imputmae.model import MultimodalMAE
from imputmae.survival import (breslow_log_increments, cox_partial_nll, discretize, evaluate_survival, fold_cuts,
                               hazard_to_survival, nll_logistic_hazard, risk_from_survival)

log = logging.getLogger(__name__)

ModSet = str                # one of imputmae.modalities.MODALITY_SETS
SurvivalLoss = Literal["nll", "cox"]    # finetune.loss: logistic-hazard NLL (paper) | Cox partial likelihood
Pool = Literal["cls", "mean"]           # finetune.pool: CLS token (paper) | mean of the last block's patch tokens

FORMAT = "imputmae-survival-2"
CONFIG_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "dropout", "n_bins", "cut_scheme",
               "val_fraction", "members", "select_on", "seed", "cache_dtype",
               "cache_dir", "trainable_blocks", "loss", "pool")   # the config's finetune keys FinetuneConfig takes


@dataclass
class FinetuneConfig:
    """Fine-tuning hyperparameters (config ``finetune.*``; ``cindex`` from ``evaluation.cindex``)."""

    modset: ModSet = "all"
    missing: MissingInputs = "impute"
    epochs: int = 20
    batch_size: int = 24
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_epochs: int = 5
    dropout: float = 0.1
    n_bins: int = 20
    cut_scheme: CutScheme = "equidistant"
    val_fraction: float = 0.2
    members: int = 1                         # 1: one validation split (paper); K > 1: K inner folds, K models averaged
    seed: int = 0
    n_sub: int = 10
    fusion_heads: int | None = None          # None: the encoders' number of heads
    cindex: CIndexName = "antolini"                                        # validation (and reported) C-index
    select_on: SelectOn = "cindex"                                          # what picks each member's epoch
    cache_dtype: CacheDtype = "float32"      # the frozen-feature file: float32 exact, float16 half the disk
    cache_dir: str | None = None             # where that file lives (None: $TMPDIR); docs/finetune.md "Memory"
    trainable_blocks: int = 1                # how many of each encoder's last blocks are trained (1: the paper's)
    loss: SurvivalLoss = "nll"               # nll: logistic hazard (paper); cox: partial likelihood + Breslow
    pool: Pool = "cls"                       # a modality's embedding: CLS token (paper) | mean of patch tokens

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], modset: str, **over: Any) -> FinetuneConfig:
        f = cfg["finetune"]
        return cls(**{"modset": modset, "cindex": cfg["evaluation"]["cindex"],
                      **{k: f[k] for k in CONFIG_KEYS if k in f}, **over})   # ``over`` wins

    def modalities(self, available: Sequence[str] | None = None) -> tuple[str, ...]:
        """The model's modalities: ``modset`` alone, or (``all``) those of ``available`` (default: every one of
        the registry in use), in registry order."""
        if self.modset != "all":
            return (self.modset,)
        return tuple(m for m in names() if available is None or m in available)


@torch.no_grad()
def predict_features(model: SurvivalModel | SurvivalEnsemble, frozen: FrozenFeatures, idx: np.ndarray,
                     batch_size: int = 64) -> Tensor:
    """In eval mode: a model's hazard logits, an ensemble's survival curves; [len(idx), T]."""
    model.eval()
    dev = next(model.parameters()).device
    outs = [model(collate_batch(frozen, idx[i:i + batch_size], model.modalities, dev)).float().cpu()
            for i in range(0, len(idx), batch_size)]
    n_bins = model.n_bins if isinstance(model, SurvivalModel) else model.members[0].n_bins
    return torch.cat(outs) if outs else torch.zeros(0, n_bins)


@torch.no_grad()
def refit_baseline(model: SurvivalModel, frozen: FrozenFeatures, fit_idx: np.ndarray, durations: np.ndarray,
                   events: np.ndarray, cuts: np.ndarray, batch_size: int = 64) -> None:
    """``loss="cox"``: set ``model.log_increments`` [T] to Breslow's baseline of the fit patients ``fit_idx`` at
    the model's current log risks (eval mode); durations/events [n] observed, over ``frozen.patients``."""
    model.eval()
    dev = next(model.parameters()).device
    eta = torch.cat([model.log_risk(collate_batch(frozen, fit_idx[i:i + batch_size], model.modalities, dev)).cpu()
                     for i in range(0, len(fit_idx), batch_size)]).double().numpy()
    inc = breslow_log_increments(eta, durations[fit_idx], events[fit_idx], cuts)
    model.log_increments.copy_(torch.from_numpy(inc).to(model.log_increments))


def select_patients(inputs: PatientInputs, patients: Sequence[str], modset: str) -> list[str]:
    """The patients a modality set uses: those with that modality, or (``all``) those with any."""
    if modset == "all":
        return [p for p in patients if any(inputs.has(p, m) for m in names())]
    return [p for p in patients if inputs.has(p, modset)]


def split_validation(patients: Sequence[str], events: np.ndarray, fraction: float, seed: int
                     ) -> tuple[list[str], list[str]]:
    """Carve a validation set from TRAINING patients, stratified by event (falls back to unstratified when a class
    has fewer than 2 patients). Returns (fit, validation)."""
    from sklearn.model_selection import train_test_split

    patients = list(patients)
    n_val = max(2, int(round(fraction * len(patients))))
    if len(patients) - n_val < 2:
        raise ValueError(f"{len(patients)} training patients: too few to carve a validation split")
    strat = events if np.bincount(events.astype(int), minlength=2).min() >= 2 else None
    fit, val = train_test_split(patients, test_size=n_val, random_state=seed, stratify=strat)
    return list(fit), list(val)


def inner_splits(patients: Sequence[str], events: np.ndarray, cfg: FinetuneConfig
                 ) -> list[tuple[list[str], list[str]]]:
    """The (fit, validation) patient lists of each member, all from TRAINING patients: ``members == 1``, one split
    of ``val_fraction`` (:func:`split_validation`); K > 1, K stratified inner folds (each training patient validates
    exactly one member; unstratified when a class has fewer than K patients)."""
    if cfg.members == 1:
        return [split_validation(patients, events, cfg.val_fraction, cfg.seed)]
    from sklearn.model_selection import KFold, StratifiedKFold

    patients = list(patients)
    if len(patients) < 2 * cfg.members:
        raise ValueError(f"{len(patients)} training patients: too few for {cfg.members} inner folds")
    strat = np.bincount(events.astype(int), minlength=2).min() >= cfg.members
    kf = (StratifiedKFold if strat else KFold)(n_splits=cfg.members, shuffle=True, random_state=cfg.seed)
    return [([patients[i] for i in a], [patients[i] for i in b])
            for a, b in kf.split(np.zeros(len(patients)), events.astype(int) if strat else None)]


def _cindex(name: str, surv: np.ndarray, cuts: np.ndarray, t: np.ndarray, e: np.ndarray, n_sub: int) -> float:
    from imputmae.survival import concordance_harrell, concordance_td, interpolate_survival

    if name == "harrell":
        return concordance_harrell(t, e, risk_from_survival(surv))
    grid, times = interpolate_survival(surv, cuts, n_sub)
    return concordance_td(t, e, grid, times, name)


def _batch_loss(model: SurvivalModel, batch: Mapping[str, tuple[Tensor, Tensor, Tensor]], loss: SurvivalLoss,
                labels: tuple[Tensor, Tensor]) -> Tensor:
    """One batch's training loss: nll, labels (idx_durations [B], discretised events [B]); cox, labels (observed
    times [B], events [B]) and the partial likelihood on the log risks (the baseline is refitted after the epoch)."""
    if loss == "cox":
        return cox_partial_nll(model.log_risk(batch), *labels)
    return nll_logistic_hazard(model(batch), *labels)


def train_survival(model: SurvivalModel, frozen: FrozenFeatures, fit_idx: np.ndarray, val_idx: np.ndarray,
                   idx_durations: np.ndarray, label_events: np.ndarray, durations: np.ndarray,
                   events: np.ndarray, cuts: np.ndarray, cfg: FinetuneConfig) -> dict[str, Any]:
    """Train on ``fit_idx``; after each epoch score the validation patients; keep the best epoch's weights.

    Arrays over ``frozen.patients``: idx_durations/label_events (from :func:`discretize`, for the loss) and the
    observed durations/events (for the validation C-index). Returns {best_epoch, best_val (the selection score: the
    C-index, or minus the NLL), val_surv (the best epoch's validation curves [len(val_idx), T]), history}.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(fit_idx) // cfg.batch_size))
    warmup = cfg.warmup_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    dev = next(model.parameters()).device
    y_idx = torch.from_numpy(idx_durations).to(dev)
    y_ev = torch.from_numpy(label_events.astype(np.float32)).to(dev)
    t_obs, e_obs = torch.from_numpy(durations).to(dev), torch.from_numpy(events.astype(np.float32)).to(dev)
    best = {"epoch": -1, "val": -np.inf, "state": copy.deepcopy(model.state_dict()), "surv": None}
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = fit_idx[torch.randperm(len(fit_idx), generator=g).numpy()]
        total, n = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            b = perm[i:i + cfg.batch_size]
            bt = torch.from_numpy(b).to(dev)
            loss = _batch_loss(model, collate_batch(frozen, b, model.modalities, dev), cfg.loss,
                               (y_idx[bt], y_ev[bt]) if cfg.loss == "nll" else (t_obs[bt], e_obs[bt]))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite fine-tuning loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(b), n + len(b)
        if cfg.loss == "cox":
            refit_baseline(model, frozen, fit_idx, durations, events, cuts, cfg.batch_size)
        phi = predict_features(model, frozen, val_idx, cfg.batch_size)
        surv = hazard_to_survival(phi).numpy()
        val = _cindex(cfg.cindex, surv, cuts, durations[val_idx], events[val_idx], cfg.n_sub)
        vt = torch.from_numpy(val_idx)
        val_nll = float(nll_logistic_hazard(phi, y_idx[vt].cpu(), y_ev[vt].cpu()))
        score = val if cfg.select_on == "cindex" else -val_nll
        val_score = score if np.isfinite(score) else -np.inf
        history.append({"epoch": epoch, "train_loss": total / max(n, 1), f"val_{cfg.cindex}": val,
                        "val_nll": val_nll})
        if val_score > best["val"]:
            best = {"epoch": epoch, "val": val_score, "state": copy.deepcopy(model.state_dict()), "surv": surv}
    model.load_state_dict(best["state"])
    if best["surv"] is None:  # no epoch scored (every score NaN): the curves of the weights kept
        best["surv"] = hazard_to_survival(predict_features(model, frozen, val_idx)).numpy()
    return {"best_epoch": int(best["epoch"]), "best_val": float(best["val"]), "val_surv": best["surv"],
            "history": history}


def frozen_rows_max(inputs: PatientInputs, patients: Sequence[str], modalities: Sequence[str]) -> int:
    """The most rows (tiles) one patient has among ``patients``: the batch's K_max (1 without slides)."""
    with_tiles = bool(active().images(modalities))
    return max([len(inputs.tiles[p]) for p in patients if p in inputs.tiles and with_tiles] or [1])


def check_memory(k_max: int, mae: MultimodalMAE, modalities: Sequence[str], cfg: FinetuneConfig,
                 device: torch.device) -> int:
    """Raise :class:`MemoryNeeded` (naming the rule, the figure and the setting) before any work when a training
    batch of ``cfg.batch_size`` patients with ``k_max`` tiles would not fit the job's memory (host: the cgroup or
    Slurm limit, else what the system has available; CUDA: the device's free memory). Returns the estimate."""
    need = training_memory_bytes(mae.cfg, modalities, cfg.batch_size, k_max, cfg.trainable_blocks,
                                 cfg.pool)
    if device.type == "cuda":
        have, where = torch.cuda.mem_get_info(device)[0], f"{device} (free)"
    else:
        have, where = usable_memory_bytes()
    if need > have:
        raise MemoryNeeded(f"finetune: a training batch of {cfg.batch_size} patients x {k_max} tiles needs about "
                           f"{need / 2**30:.1f} GiB, {where} has {have / 2**30:.1f} GiB: lower finetune.batch_size "
                           f"or give the rule more memory (its resources mem_mb, or a larger GPU)")
    return need


@dataclass
class FinetuneResult:
    model: SurvivalEnsemble
    predictions: pd.DataFrame   # patient, fold, split (train/test), val_member, imputed_*, risk, s_0..s_{T-1}, ...;
                                # attrs["cuts_days"]: the T label cuts (days) the s_k are at
    metrics: dict[str, Any]
    state: dict[str, Any]       # what model.pt holds besides the weights


@dataclass
class _FoldLabels:
    """Labels indexed by row of the frozen features (zeros for patients outside the fold): idx_durations [n] int64 and
    label_events [n] float32 (discretised at the cuts: the loss's), durations [n] and events [n] (observed: model
    selection and metrics); ``where``: patient -> row."""

    idx_durations: np.ndarray
    label_events: np.ndarray
    durations: np.ndarray
    events: np.ndarray
    where: dict[str, int]

    def rows(self, patients: Sequence[str]) -> np.ndarray:
        return np.array([self.where[p] for p in patients])


def _fold_labels(frozen: FrozenFeatures, clinical: pd.DataFrame, everyone: Sequence[str], cuts: np.ndarray
                 ) -> _FoldLabels:
    pos = frozen.index(everyone)
    t_all = clinical.loc[everyone, "time"].to_numpy(float)
    e_all = clinical.loc[everyone, "event"].to_numpy(float)
    idx_d, ev = discretize(cuts, t_all, e_all)
    n = len(frozen.patients)
    idx_durations_all, events_all, durations_all = np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n)
    idx_durations_all[pos], events_all[pos], durations_all[pos] = idx_d, e_all, t_all
    label_events_all = np.zeros(n, np.float32)
    label_events_all[pos] = ev
    return _FoldLabels(idx_durations_all, label_events_all, durations_all, events_all, dict(zip(everyone, pos)))


def _train_members(mae: MultimodalMAE, frozen: FrozenFeatures, labels: _FoldLabels, members_split: Sequence[Any],
                   mods: Sequence[str], cuts: np.ndarray, cfg: FinetuneConfig, device: torch.device
                   ) -> tuple[list[SurvivalModel], list[dict[str, Any]], dict[str, int], np.ndarray]:
    """One member per (fit, validation) split of the training patients -> (members, their states, training
    patient -> the member that validated on it, each validation patient's curve from its member [n, T])."""
    members, member_state = [], []
    val_member: dict[str, int] = {}
    val_surv = np.zeros((len(frozen.patients), len(cuts)))
    for k, (fit, val) in enumerate(members_split):
        fit_idx, val_idx = labels.rows(fit), labels.rows(val)
        model = SurvivalModel(mae.cfg, mods, len(cuts), cfg.dropout, cfg.fusion_heads, mae.encoders,
                              cfg.trainable_blocks, cfg.loss, cfg.pool)
        with torch.no_grad():  # start from the fit patients' discrete hazards, not from hazard 0.5 in every bin
            if cfg.loss == "nll":
                model.head.bias.copy_(baseline_hazard_logits(labels.idx_durations[fit_idx],
                                                             labels.label_events[fit_idx], len(cuts)))
        model = model.to(device)
        # the loss uses the discretised labels; model selection and metrics use the observed (time, event)
        try:
            info = train_survival(model, frozen, fit_idx, val_idx, labels.idx_durations, labels.label_events,
                                  labels.durations, labels.events, cuts, replace(cfg, seed=cfg.seed + k))
        except torch.OutOfMemoryError as err:
            raise MemoryNeeded(f"finetune: {device} ran out of memory training batches of {cfg.batch_size} "
                               f"patients: lower finetune.batch_size (the figure it needed: {err})") from err
        val_surv[val_idx] = info["val_surv"]
        val_member.update({p: k for p in val})
        members.append(model)
        member_state.append({"fit_patients": list(fit), "val_patients": list(val),
                             "best_epoch": info["best_epoch"], "best_val": info["best_val"],
                             "history": info["history"]})
    return members, member_state, val_member, val_surv


def _fold_predictions(surv: np.ndarray, risk: np.ndarray, frozen: FrozenFeatures, labels: _FoldLabels,
                      all_idx: np.ndarray, n_train: int, mods: Sequence[str], val_member: Mapping[str, int],
                      cuts: np.ndarray, fold: int) -> pd.DataFrame:
    """predictions.parquet's table: patient, fold, split, val_member, imputed_<m>, risk, time, event, s_0..s_{T-1}
    (training patients first), the cut times in ``attrs``."""
    pts = [frozen.patients[i] for i in all_idx]
    pred = pd.DataFrame(surv, columns=[f"s_{k}" for k in range(len(cuts))])
    pred.insert(0, "event", labels.events[all_idx].astype(int))
    pred.insert(0, "time", labels.durations[all_idx])
    pred.insert(0, "risk", risk)
    for m in mods:
        pred.insert(0, f"imputed_{m}", frozen.imputed[m][all_idx])
    pred.insert(0, "val_member", [val_member.get(p, -1) for p in pts])
    pred.insert(0, "split", ["train"] * n_train + ["test"] * (len(all_idx) - n_train))
    pred.insert(0, "fold", int(fold))
    pred.insert(0, "patient", pts)
    pred.attrs["cuts_days"] = [float(c) for c in cuts]   # s_k is S at cuts_days[k]; kept in predictions.parquet
    return pred


def run_finetune(mae: MultimodalMAE, inputs: PatientInputs, clinical: pd.DataFrame, train: Sequence[str],
                 test: Sequence[str], cfg: FinetuneConfig, fold: int = 0,
                 features: FrozenFeatures | None = None, device: str | torch.device | None = None,
                 reuse: FrozenFeatures | None = None) -> FinetuneResult:
    """One fold: select patients, fit cuts on training patients, split validation, cache, train, evaluate.

    clinical: index patient, columns time (days) and event (0/1). ``features`` may be passed to reuse a cache
    computed with the same MAE, modalities, ``missing`` and ``trainable_blocks`` for a superset of the patients;
    ``reuse``, features of the same MAE from which the patients' own inputs are copied (:func:`frozen_features`).
    ``device``: default CUDA when available (each batch is read from the frozen-feature file and copied there),
    else CPU.
    """
    t0 = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mae = mae.to(device)
    torch.manual_seed(cfg.seed)
    mods = cfg.modalities(mae.modalities)
    check_trainable_blocks(mae.cfg, mods, cfg.trainable_blocks)   # before the feature pass, not after it
    check_pool(cfg.pool)
    train = [p for p in select_patients(inputs, train, cfg.modset) if p in clinical.index]
    test = [p for p in select_patients(inputs, test, cfg.modset) if p in clinical.index]
    t_tr, e_tr, cuts = fold_cuts(clinical, train, test, cfg.n_bins, cfg.cut_scheme,      # training patients only
                                 f"{cfg.modset} (patients with the modality)")
    members_split = inner_splits(train, e_tr, cfg)                                # from training patients only
    everyone = train + test
    check_memory(frozen_rows_max(inputs, everyone, mods), mae, mods, cfg, device)
    frozen = features or frozen_features(mae, inputs, everyone, mods, cfg.missing, cache_dtype=cfg.cache_dtype,
                                         cache_dir=cfg.cache_dir, trainable_blocks=cfg.trainable_blocks,
                                         reuse=reuse)
    t_cache = time.perf_counter() - t0
    labels = _fold_labels(frozen, clinical, everyone, cuts)
    train_idx, test_idx = labels.rows(train), labels.rows(test)
    members, member_state, val_member, val_surv = _train_members(mae, frozen, labels, members_split, mods, cuts, cfg,
                                                                 device)
    ensemble = SurvivalEnsemble(members)
    t_train = time.perf_counter() - t0 - t_cache
    vidx = np.array([labels.where[p] for p in train if p in val_member])
    validation = _cindex(cfg.cindex, val_surv[vidx], cuts, labels.durations[vidx], labels.events[vidx], cfg.n_sub)
    all_idx = np.concatenate([train_idx, test_idx])
    surv = predict_features(ensemble, frozen, all_idx, cfg.batch_size).numpy()
    metrics: dict[str, Any] = evaluate_survival(surv[len(train_idx):], cuts, labels.durations[test_idx],
                                                labels.events[test_idx], cfg.n_sub, t_tr, e_tr)
    risk = risk_from_survival(surv)
    metrics.update(
        fold=int(fold), modset=cfg.modset, missing=cfg.missing, members=len(members), n_train=len(train_idx),
        n_fit=[len(m["fit_patients"]) for m in member_state], n_val=[len(m["val_patients"]) for m in member_state],
        n_test=len(test_idx), n_test_events=int(labels.events[test_idx].sum()),
        best_epochs=[m["best_epoch"] for m in member_state], best_vals=[m["best_val"] for m in member_state],
        select_on=cfg.select_on, n_validation=len(vidx), **{f"validation_{cfg.cindex}": validation},
        device=str(device), train_median_risk=float(np.median(risk[: len(train_idx)])),
        n_test_imputed={m: int(frozen.imputed[m][test_idx].sum()) for m in mods},
        seconds_cache=round(t_cache, 3), seconds_train=round(t_train, 3),
        history=[m.pop("history") for m in member_state])
    pred = _fold_predictions(surv, risk, frozen, labels, all_idx, len(train_idx), mods, val_member, cuts, fold)
    state = {"cuts": torch.from_numpy(cuts), "train_patients": list(train), "test_patients": list(test),
             "members": member_state, "config": asdict(cfg), "modalities": list(mods),
             "train_median_risk": metrics["train_median_risk"], "fold": int(fold)}
    return FinetuneResult(ensemble, pred, metrics, state)
