"""One training and evaluation function for every baseline network, with impuTMAE's fine-tuning protocol.

Per fold (:func:`train_baseline`), everything fitted sees the fold's TRAINING patients only:

1. label cuts: :func:`imputmae.survival.fit_cuts` on the training patients (``n_bins`` = 20, the equidistant scheme),
   labels by :func:`imputmae.survival.discretize`;
2. a validation split carved from the training patients (:func:`imputmae.finetune.split_validation`, stratified by
   event, ``val_fraction``); the fold's test patients are never seen before the final prediction;
3. anything the model fits from data (MultiSurv's gene/probe preselection) on the training patients;
4. the hazard head's bias starts at the fit patients' life-table hazards
   (:func:`imputmae.finetune.baseline_hazard_logits`), as impuTMAE's does;
5. loss: :func:`imputmae.survival.nll_logistic_hazard` (pycox convention) plus ``aux_weight`` times the model's
   auxiliary loss (CMTA's alignment term); optimiser, learning rate, epochs and batch size default to each
   baseline's published values (:data:`PUBLISHED`);
6. the epoch kept is the best on the validation patients (``select_on``: the C-index ``cindex`` or the NLL);
7. test metrics by :func:`imputmae.survival.evaluate_survival` (the same Antolini C-index as every Table 3 row).

``modality_dropout`` (MultiSurv's native zero-filling row): during training each patient with two or more available
modalities loses one of them, chosen at random, with that probability (inputs zeroed, marked unavailable).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from imputmae.baselines._inputs import BaselineInputs, collate_inputs
from imputmae.baselines.cmta import CMTA, CMTAConfig
from imputmae.baselines.mome import MoME, MoMEConfig
from imputmae.baselines.multisurv import MultiSurv, MultiSurvConfig
from imputmae.modalities import MODALITIES, REGISTRY
from imputmae.survival import (discretize, evaluate_survival, fold_cuts, hazard_to_survival, nll_logistic_hazard,
                               risk_from_survival)

__all__ = ["BASELINES", "PUBLISHED", "BaselineConfig", "BaselineResult", "build_baseline", "count_parameters",
           "predict_baseline", "train_baseline"]

# name -> (network, its config); one entry per Table 3 baseline network.
BASELINES: dict[str, tuple[type[nn.Module], type]] = {
    "multisurv": (MultiSurv, MultiSurvConfig),
    "cmta": (CMTA, CMTAConfig),
    "mome": (MoME, MoMEConfig),
}

# Each baseline's published training settings (shared/notes/baselines.md, from their code and run scripts).
PUBLISHED: dict[str, dict[str, Any]] = {
    # Adam, no weight decay, lr 5e-3 (their LR range test), 75 epochs, batch 128 (src/model.py, model_training.ipynb)
    "multisurv": dict(optimizer="adam", lr=5e-3, weight_decay=0.0, epochs=75, batch_size=128),
    # run.sh: SGD momentum 0.9, lr 1e-3, wd 1e-5, 30 epochs, batch 1, nll_surv_l1 with alpha 1.0
    "cmta": dict(optimizer="sgd", lr=1e-3, weight_decay=1e-5, epochs=30, batch_size=1, aux_weight=1.0),
    # main.py: Adam lr 2e-4, wd 1e-5, 20 epochs, batch 1 with gradient accumulation over 32 patients
    "mome": dict(optimizer="adam", lr=2e-4, weight_decay=1e-5, epochs=20, batch_size=32),
}


@dataclass
class BaselineConfig:
    """Training settings of one baseline row; :meth:`published` fills the baseline's own defaults."""

    name: Literal["multisurv", "cmta", "mome"] = "multisurv"
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    epochs: int = 20
    batch_size: int = 32
    aux_weight: float = 0.0
    modality_dropout: float = 0.0
    n_bins: int = 20
    cut_scheme: Literal["equidistant", "quantiles"] = "equidistant"
    val_fraction: float = 0.2
    select_on: Literal["cindex", "nll"] = "cindex"
    cindex: Literal["antolini", "adj_antolini", "harrell"] = "antolini"
    n_sub: int = 10
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)   # overrides of the network's config (e.g. use_mask)

    @classmethod
    def published(cls, name: str, **over: Any) -> BaselineConfig:
        if name not in PUBLISHED:
            raise ValueError(f"unknown baseline {name!r}: one of {', '.join(BASELINES)}")
        return cls(name=name, **{**PUBLISHED[name], **over})


@dataclass
class BaselineResult:
    model: nn.Module
    predictions: pd.DataFrame   # patient, fold, split (train/test), imputed_*, risk, time, event, s_0..s_{T-1}
    metrics: dict[str, Any]
    state: dict[str, Any]       # cuts, patient lists, best epoch, history, config


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (weights, biases, norm affines; not buffers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_baseline(name: str, rna_len: int, dnam_len: int, tile_dim: int, n_bins: int = 20,
                   **model_over: Any) -> nn.Module:
    """The network ``name`` of :data:`BASELINES` for our inputs' sizes."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: one of {', '.join(BASELINES)}")
    net, cfg = BASELINES[name]
    return net(cfg(rna_len=rna_len, dnam_len=dnam_len, tile_dim=tile_dim, n_bins=n_bins, **model_over))


@torch.no_grad()
def predict_baseline(model: nn.Module, bi: BaselineInputs, idx: np.ndarray, batch_size: int = 64) -> Tensor:
    """In eval mode: hazard logits of patients ``idx`` -> [len(idx), T] (CPU)."""
    model.eval()
    dev = next(model.parameters()).device
    out = [model(collate_inputs(bi, idx[i:i + batch_size], dev))[0].float().cpu()
           for i in range(0, len(idx), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.classifier.out_features)


def _drop_modality(batch: dict[str, Tensor], p: float, g: torch.Generator) -> dict[str, Tensor]:
    """Modality dropout: each patient with >= 2 available modalities loses one at random with probability p."""
    avail = batch["available"].clone()
    B = avail.shape[0]
    drop = (torch.rand(B, generator=g) < p) & (avail.sum(1) >= 2).cpu()
    if not bool(drop.any()):
        return batch
    out = dict(batch)
    out["rna"], out["dnam"], out["tile_mask"] = batch["rna"].clone(), batch["dnam"].clone(), batch["tile_mask"].clone()
    scores = torch.rand(B, len(MODALITIES), generator=g).to(avail.device).masked_fill(~avail, -1.0)
    which = scores.argmax(1)
    for i in torch.nonzero(drop).view(-1).tolist():
        m = MODALITIES[int(which[i])]
        if REGISTRY.get(m).is_image:                            # the slide: its tiles masked out
            out["tile_mask"][i] = False
        else:
            out[m][i] = 0.0
        avail[i, int(which[i])] = False
    out["available"] = avail
    return out


def _optimizer(model: nn.Module, cfg: BaselineConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"baseline optimizer must be adam or sgd, got {cfg.optimizer!r}")


@dataclass
class _FoldLabels:
    """One fold's survival labels, indexed by row of the :class:`BaselineInputs` (zeros for other patients).

    cuts [T] (fitted on the training patients); y_idx [P] int64 and y_ev [P] float32 (discretised); t_obs, e_obs
    [P] (days, 0/1); t_tr, e_tr: the training patients' (for IBS's censoring estimate); fit, val: the training
    patients split for epoch selection; *_idx: their rows."""

    cuts: np.ndarray
    y_idx: np.ndarray
    y_ev: np.ndarray
    t_obs: np.ndarray
    e_obs: np.ndarray
    t_tr: np.ndarray
    e_tr: np.ndarray
    train: list[str]
    test: list[str]
    fit: list[str]
    val: list[str]
    fit_idx: np.ndarray
    val_idx: np.ndarray
    train_idx: np.ndarray
    test_idx: np.ndarray


def _fold_labels(bi: BaselineInputs, clinical: pd.DataFrame, train: Sequence[str], test: Sequence[str],
                 cfg: BaselineConfig) -> _FoldLabels:
    """Cuts and the validation split from the training patients only (steps 1-2 of the module docstring)."""
    from imputmae.finetune import split_validation

    known = set(bi.patients) & set(clinical.index)
    train = [p for p in train if p in known]
    test = [p for p in test if p in known]
    t_tr, e_tr, cuts = fold_cuts(clinical, train, test, cfg.n_bins, cfg.cut_scheme,      # training patients only
                                 f"{cfg.name} (patients with inputs and labels)")
    fit, val = split_validation(train, e_tr, cfg.val_fraction, cfg.seed)         # from training patients only
    everyone = train + test
    idx = bi.index(everyone)
    where = dict(zip(everyone, idx))
    n = len(bi.patients)
    y_idx, y_ev = np.zeros(n, np.int64), np.zeros(n, np.float32)
    t_obs, e_obs = np.zeros(n), np.zeros(n)
    t_obs[idx] = clinical.loc[everyone, "time"].to_numpy(float)
    e_obs[idx] = clinical.loc[everyone, "event"].to_numpy(float)
    y_idx[idx], y_ev[idx] = discretize(cuts, t_obs[idx], e_obs[idx])
    rows = {k: np.array([where[p] for p in ps]) for k, ps in (("fit", fit), ("val", val), ("train", train),
                                                                  ("test", test))}
    return _FoldLabels(cuts, y_idx, y_ev, t_obs, e_obs, t_tr, e_tr, train, test, fit, val, rows["fit"], rows["val"],
                       rows["train"], rows["test"])


def _new_baseline(bi: BaselineInputs, labels: _FoldLabels, cfg: BaselineConfig) -> nn.Module:
    """The network for these inputs, its data-fitted preprocessing on the training patients and its hazard bias
    at the fit patients' life-table hazards (steps 3-4)."""
    from imputmae.finetune import baseline_hazard_logits

    n_bins = len(labels.cuts)
    model = build_baseline(cfg.name, bi.rna.shape[1], bi.dnam.shape[1], bi.tile_dim, n_bins, **cfg.model)
    if hasattr(model, "fit_preprocessing"):
        tr = torch.from_numpy(labels.train_idx)
        a = bi.available[tr]
        model.fit_preprocessing(bi.rna[tr][a[:, MODALITIES.index("rna")]], bi.dnam[tr][a[:, MODALITIES.index("dnam")]])
    with torch.no_grad():
        model.classifier.bias.copy_(baseline_hazard_logits(labels.y_idx[labels.fit_idx], labels.y_ev[labels.fit_idx],
                                                           n_bins))
    return model


def _fit_epochs(model: nn.Module, bi: BaselineInputs, labels: _FoldLabels, cfg: BaselineConfig,
                device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train ``cfg.epochs`` epochs on the fit patients, scoring each on the validation patients (steps 5-6) ->
    (best: {epoch, val, state}, history: one row per epoch)."""
    opt = _optimizer(model, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    yi, ye = torch.from_numpy(labels.y_idx).to(device), torch.from_numpy(labels.y_ev).to(device)
    fit_idx, val_idx = labels.fit_idx, labels.val_idx
    best = {"epoch": -1, "val": -np.inf, "state": copy.deepcopy(model.state_dict())}
    history = []
    n_batches = max(1, -(-len(fit_idx) // cfg.batch_size))
    for epoch in range(cfg.epochs):
        model.train()
        perm = fit_idx[torch.randperm(len(fit_idx), generator=g).numpy()]
        total = 0.0
        for b in np.array_split(perm, n_batches):              # balanced batches: BatchNorm never sees one patient
            batch = collate_inputs(bi, b, device)
            if cfg.modality_dropout > 0:
                batch = _drop_modality(batch, cfg.modality_dropout, g)
            phi, aux = model(batch)
            bt = torch.from_numpy(b).to(device)
            loss = nll_logistic_hazard(phi, yi[bt], ye[bt]) + cfg.aux_weight * aux
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{cfg.name}: non-finite training loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        phi = predict_baseline(model, bi, val_idx)
        vt = torch.from_numpy(val_idx)
        val_nll = float(nll_logistic_hazard(phi, yi[vt].cpu(), ye[vt].cpu()))
        val_c = evaluate_survival(hazard_to_survival(phi).numpy(), labels.cuts, labels.t_obs[val_idx],
                                  labels.e_obs[val_idx], cfg.n_sub)[cfg.cindex]
        score = val_c if cfg.select_on == "cindex" else -val_nll
        history.append({"epoch": epoch, "train_loss": total / len(fit_idx), f"val_{cfg.cindex}": val_c,
                        "val_nll": val_nll})
        if np.isfinite(score) and score > best["val"]:
            best = {"epoch": epoch, "val": float(score), "state": copy.deepcopy(model.state_dict())}
    return best, history


def _predictions(surv: np.ndarray, bi: BaselineInputs, labels: _FoldLabels, fold: int) -> pd.DataFrame:
    """The fold's predictions table: patient, fold, split, imputed_<m>, risk, time, event, s_0..s_{T-1}; training
    patients first, then test patients."""
    all_idx = np.concatenate([labels.train_idx, labels.test_idx])
    pred = pd.DataFrame(surv, columns=[f"s_{k}" for k in range(len(labels.cuts))])
    pred.insert(0, "event", labels.e_obs[all_idx].astype(int))
    pred.insert(0, "time", labels.t_obs[all_idx])
    pred.insert(0, "risk", risk_from_survival(surv))
    for j, m in reversed(list(enumerate(MODALITIES))):
        pred.insert(0, f"imputed_{m}", bi.imputed[all_idx, j].numpy())
    pred.insert(0, "split", ["train"] * len(labels.train_idx) + ["test"] * len(labels.test_idx))
    pred.insert(0, "fold", int(fold))
    pred.insert(0, "patient", [bi.patients[i] for i in all_idx])
    return pred


def train_baseline(bi: BaselineInputs, clinical: pd.DataFrame, train: Sequence[str], test: Sequence[str],
                   cfg: BaselineConfig, fold: int = 0, device: str | torch.device | None = None) -> BaselineResult:
    """Train baseline ``cfg.name`` on one fold and score its test patients (protocol: module docstring).

    bi: the fold's inputs (:func:`imputmae.baselines.baseline_inputs`, every patient of train and test);
    clinical: index patient, columns time (days) and event (0/1).
    """
    t0 = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    labels = _fold_labels(bi, clinical, train, test, cfg)
    model = _new_baseline(bi, labels, cfg).to(device)
    best, history = _fit_epochs(model, bi, labels, cfg, device)
    model.load_state_dict(best["state"])
    t_train = time.perf_counter() - t0
    train_idx, test_idx = labels.train_idx, labels.test_idx
    surv = hazard_to_survival(predict_baseline(model, bi, np.concatenate([train_idx, test_idx]))).numpy()
    metrics: dict[str, Any] = evaluate_survival(surv[len(train_idx):], labels.cuts, labels.t_obs[test_idx],
                                                labels.e_obs[test_idx], cfg.n_sub, labels.t_tr, labels.e_tr)
    metrics.update(model=cfg.name, fold=int(fold), n_parameters=count_parameters(model), n_train=len(train_idx),
                   n_fit=len(labels.fit_idx), n_val=len(labels.val_idx), n_test=len(test_idx),
                   n_test_events=int(labels.e_obs[test_idx].sum()), best_epoch=int(best["epoch"]),
                   best_val=float(best["val"]), select_on=cfg.select_on, device=str(device),
                   extractor=bi.extractor, seconds_train=round(t_train, 3),
                   n_test_imputed={m: int(bi.imputed[test_idx, j].sum()) for j, m in enumerate(MODALITIES)})
    state = {"cuts": labels.cuts, "train_patients": labels.train, "test_patients": labels.test,
             "fit_patients": labels.fit, "val_patients": labels.val, "best_epoch": int(best["epoch"]),
             "history": history, "config": asdict(cfg)}
    return BaselineResult(model, _predictions(surv, bi, labels, fold), metrics, state)
