"""Survival fine-tuning on the pretrained multimodal MAE (paper Section 3.3 and 4), evaluation, and use.

The survival model (:class:`SurvivalModel`), per modality set (``rna``, ``dnam``, ``wsi``, ``all``):

1. inputs: the patient's normalised modalities; in ``all`` every missing modality is first **imputed** by the
   pretrained multimodal decoder (:meth:`MultimodalMAE.impute`) from the ones present (``missing="zero"`` instead
   gives a missing modality a zero embedding: DRIM/MultiSurv's zero filling, kept for the benchmark);
2. each modality's pretrained encoder, unmasked, **frozen except its last block** (the final LayerNorm stays
   frozen too); the CLS token is the modality embedding; for WSI the CLS tokens of **all** the patient's tiles are
   averaged;
3. the modality embeddings as tokens (plus a learned modality embedding), dropout, **one multi-head self-attention
   layer** (pre-norm, residual), mean over tokens, **a linear head to T hazard logits** (T = ``n_bins``).

Exact caching: the frozen layers do not change during fine-tuning, so each patient's hidden states *entering* the
last block (and the imputed inputs behind them) are computed once (:func:`frozen_features`); only the last blocks,
the fusion layer and the head run in the training loop. tests/test_finetune.py checks that the cached path gives
exactly :meth:`MultimodalMAE.encode`'s CLS embeddings; benchmarks/bench_finetune.py measures the speed-up.

Which patients (a decision, written down): a single-modality set uses only the patients who **have** that
modality (train, validation and test alike): no imputed data enters a unimodal row. ``all`` uses every patient of
the cohort with at least one modality. Metrics state n_train/n_test; :mod:`benchmarks.bench_finetune` compares
``all`` with each single modality on the same test patients.

Honesty: label cuts, early stopping and (upstream) the normalisers are fitted on the fold's training patients only;
the validation split used for model selection is carved from the fold's training patients (stratified by event,
``val_fraction``) and never touches the fold's test patients. The patient lists are saved in ``model.pt``.
Training: AdamW (lr, weight decay), linear warmup over ``warmup_epochs`` then constant lr (the paper fixes lr),
``epochs`` epochs, batch ``batch_size``; the epoch with the best validation score is kept: the C-index
``cindex`` (``select_on: cindex``, the paper's "early stopping on best c-index") or the logistic-hazard NLL
(``select_on: nll``: on ~5 validation patients a C-index moves in steps of 1/10 pairs, the NLL does not).

Members (ours; ``members: 1`` is the paper): with K > 1 the training patients are split into K stratified inner
folds; member k fits on the other K - 1 and keeps its best epoch on fold k, and the prediction is the mean of the K
members' survival curves (:class:`SurvivalEnsemble`). Every training patient then validates exactly one member, so
``validation_<cindex>`` in the metrics is an out-of-fold C-index over all the training patients, not over a
fifth of them: a figure to compare settings by without touching the test patients.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from imputmae.choices import CIndexName, CutScheme, MissingInputs, SelectOn
from imputmae.files import atomic_write
from imputmae.modalities import MODALITIES, is_image, vector_modalities
from imputmae.model import MAEConfig, MultimodalMAE
from imputmae.survival import (discretize, evaluate_survival, fold_cuts, hazard_to_survival, nll_logistic_hazard,
                               risk_from_survival)

__all__ = [
    "FinetuneConfig", "PatientInputs", "FrozenFeatures", "SurvivalModel", "SurvivalEnsemble", "cls_through_block",
    "baseline_hazard_logits", "complete_inputs", "frozen_features",
    "select_patients", "split_validation", "inner_splits", "train_survival", "predict_features", "run_finetune", "FinetuneResult",
    "save_survival_model", "load_survival_model", "predict_patients", "impute_patients",
    "normalizers_from_states", "normalize_omics", "load_cohort_inputs", "read_user_inputs", "imputed_tables",
]

log = logging.getLogger(__name__)

ModSet = str                # one of imputmae.modalities.MODALITY_SETS

FORMAT = "imputmae-survival-2"
CONFIG_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "dropout", "n_bins", "cut_scheme",
               "val_fraction", "members", "select_on", "seed")   # the config's finetune keys FinetuneConfig takes


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

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], modset: str, **over: Any) -> FinetuneConfig:
        f = cfg["finetune"]
        return cls(**{"modset": modset, "cindex": cfg["evaluation"]["cindex"],
                      **{k: f[k] for k in CONFIG_KEYS if k in f}, **over})   # ``over`` wins

    def modalities(self, available: Sequence[str] = MODALITIES) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in available) if self.modset == "all" else (self.modset,)


@dataclass
class PatientInputs:
    """Normalised model inputs of a set of patients (what the MAE was pretrained on).

    ``omics[m]``: {patient: float32 [L_m]} in [0, 1]; ``tiles``: {patient: uint8 [K, H, W, 3]} (docs/layout.md).
    A patient absent from a mapping does not have that modality.
    """

    omics: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    tiles: dict[str, np.ndarray] = field(default_factory=dict)

    def has(self, patient: str, m: str) -> bool:
        return patient in self.tiles if is_image(m) else patient in self.omics.get(m, {})

    def patients(self) -> list[str]:
        out = set(self.tiles)
        for d in self.omics.values():
            out |= set(d)
        return sorted(out)


def _tiles_to_tensor(tiles: np.ndarray) -> Tensor:
    """uint8 [K, H, W, 3] -> float [K, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(tiles, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def complete_inputs(mae: MultimodalMAE, inputs: PatientInputs, patients: Sequence[str],
                    modalities: Sequence[str], missing: MissingInputs = "impute",
                    max_tiles: int | None = None) -> tuple[dict[str, dict[str, Tensor]], dict[str, np.ndarray]]:
    """Every patient's model input for each of ``modalities``, imputing the missing ones with the decoder.

    Returns (data, imputed): data[m][patient] = omics [L_pad] or tiles [K, 3, H, W] (float), absent when the
    patient lacks m and ``missing == "zero"``; imputed[m] = bool [P] (the modality was reconstructed).
    A patient with tiles has its missing omics imputed from each tile together with its omics, then averaged over
    tiles; a patient without tiles gets one imputed tile.
    """
    mae.eval()
    dev = next(mae.parameters()).device
    data: dict[str, dict[str, Tensor]] = {m: {} for m in modalities}
    imputed = {m: np.zeros(len(patients), bool) for m in modalities}
    for i, p in enumerate(patients):
        have = {m: inputs.has(p, m) for m in MODALITIES}
        if not any(have.values()):
            raise ValueError(f"patient {p}: no modality available")
        tiles = _tiles_to_tensor(inputs.tiles[p][:max_tiles]).to(dev) if have["wsi"] else None
        omics = {m: torch.from_numpy(np.asarray(inputs.omics[m][p], np.float32)).to(dev)
                 for m in vector_modalities() if have[m]}
        need = [m for m in modalities if not have[m]]
        recon: dict[str, Tensor] = {}
        if need and missing == "impute":
            K = tiles.shape[0] if tiles is not None else 1
            batch: dict[str, Tensor] = {"available": torch.tensor([[have[m] for m in MODALITIES]] * K, device=dev)}
            for m, x in omics.items():
                batch[m] = x[None].expand(K, -1)
            if tiles is not None:
                batch["wsi"] = tiles
            out = mae.impute(batch)
            recon = {m: out[m].mean(0) if not is_image(m) else out[m][:1] for m in need}
        for m in modalities:
            if have[m]:
                data[m][p] = tiles if is_image(m) else omics[m]
            elif m in recon:
                data[m][p] = recon[m]
                imputed[m][i] = True
    return data, imputed


def patient_rows(order: Sequence[str], patients: Sequence[str], what: str) -> np.ndarray:
    """Row positions [len(patients)] (int64) of ``patients`` in ``order``; a KeyError names the absent ones."""
    pos = {p: i for i, p in enumerate(order)}
    absent = [p for p in patients if p not in pos]
    if absent:
        raise KeyError(f"no {what} for patients {absent[:5]}")
    return np.array([pos[p] for p in patients], dtype=np.int64)


@dataclass
class FrozenFeatures:
    """Hidden states entering each encoder's last block, per patient: h[m][i] = [K_i, 1 + N_m, D] (K = 1 for omics,
    the number of tiles for WSI); ``present[m]`` bool [P] (False: zero embedding); ``imputed[m]`` bool [P]."""

    patients: list[str]
    h: dict[str, list[Tensor | None]]
    present: dict[str, np.ndarray]
    imputed: dict[str, np.ndarray]

    def index(self, patients: Sequence[str]) -> np.ndarray:
        return patient_rows(self.patients, patients, "features")


def _frozen_hidden(enc: nn.Module, x: Tensor) -> Tensor:
    """Unmasked encoder input through all blocks but the last: x [K, ...] -> [K, 1 + N, D] (exact: as ``encode``)."""
    tokens = enc.embed(x)
    cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    h = torch.cat([cls, tokens], dim=1)
    for blk in enc.blocks[:-1]:
        h = blk(h)
    return h


@torch.no_grad()
def frozen_features(mae: MultimodalMAE, inputs: PatientInputs, patients: Sequence[str], modalities: Sequence[str],
                    missing: MissingInputs = "impute", chunk: int = 64,
                    max_tiles: int | None = None) -> FrozenFeatures:
    """Impute (when asked) and run the frozen layers once per patient; see :class:`FrozenFeatures`."""
    from tqdm.auto import tqdm

    patients = list(patients)
    data, imputed = complete_inputs(mae, inputs, patients, modalities, missing, max_tiles)
    h: dict[str, list[Tensor | None]] = {}
    present = {}
    for m in modalities:
        enc = mae.encoders[m]
        h[m] = []
        for p in tqdm(patients, desc=f"frozen {m}", leave=False, disable=len(patients) < 50):
            if p not in data[m]:
                h[m].append(None)
                continue
            x = data[m][p]
            x = x if is_image(m) else x[None]
            x = mae._input({m: x}, m)
            h[m].append(torch.cat([_frozen_hidden(enc, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]))
        present[m] = np.array([t is not None for t in h[m]])
    return FrozenFeatures(patients, h, present, imputed)


def cls_through_block(block: nn.Module, h: Tensor) -> Tensor:
    """The CLS row of ``block(h)`` computed alone: h [B, 1 + N, D] -> [B, D]. Exact (:meth:`Block.forward_rows`: only
    the CLS query attends, only the CLS row goes through the MLP), and O(N) instead of O(N^2) attention and N times
    less MLP work: only the CLS token is used downstream."""
    return block.forward_rows(h, torch.zeros(h.shape[0], 1, dtype=torch.long, device=h.device))[:, 0]


class SurvivalModel(nn.Module):
    """Last encoder blocks (trainable) + fusion self-attention + linear hazard head; see the module docstring."""

    def __init__(self, mae_cfg: MAEConfig, modalities: Sequence[str], n_bins: int, dropout: float = 0.1,
                 fusion_heads: int | None = None, encoders: nn.ModuleDict | None = None):
        super().__init__()
        D = mae_cfg.hidden_size
        self.modalities = tuple(modalities)
        self.mae_cfg = mae_cfg
        # Only each modality's last block and (frozen) final norm; copied from the pretrained encoders when given.
        src = encoders if encoders is not None else MultimodalMAE(
            MAEConfig.from_dict({**mae_cfg.to_dict(), "modalities": list(self.modalities)})).encoders
        self.last_blocks = nn.ModuleDict({m: copy.deepcopy(src[m].blocks[-1]) for m in self.modalities})
        self.final_norms = nn.ModuleDict({m: copy.deepcopy(src[m].norm) for m in self.modalities})
        for p in self.final_norms.parameters():
            p.requires_grad_(False)
        self.modality_embed = nn.Parameter(torch.zeros(len(self.modalities), D))
        self.dropout = nn.Dropout(dropout)
        self.fusion_norm = nn.LayerNorm(D)
        self.fusion = nn.MultiheadAttention(D, fusion_heads or mae_cfg.num_heads, dropout=dropout, batch_first=True)
        self.head_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, n_bins)
        nn.init.normal_(self.modality_embed, std=0.02)

    def embed_modality(self, m: str, h: Tensor, tile_mask: Tensor | None = None) -> Tensor:
        """h: [B, K, 1 + N, D] frozen hidden states, tile_mask [B, K] (1 = real tile) -> CLS mean over tiles [B, D]."""
        B, K, T, D = h.shape
        cls = self.final_norms[m](cls_through_block(self.last_blocks[m], h.reshape(B * K, T, D))).reshape(B, K, D)
        if tile_mask is None:
            return cls.mean(1)
        w = tile_mask.to(cls.dtype)[..., None]
        return (cls * w).sum(1) / w.sum(1).clamp_min(1)

    def forward(self, feats: Mapping[str, tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """feats[m] = (h [B, K, 1+N, D], tile_mask [B, K], present [B] bool) -> hazard logits phi [B, T]."""
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


def _collate(frozen: FrozenFeatures, idx: np.ndarray, modalities: Sequence[str]
             ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    out = {}
    for m in modalities:
        hs = [frozen.h[m][i] for i in idx]
        ref = next((t for t in hs if t is not None), None)
        if ref is None:  # nobody in the batch has m (missing="zero"): shapes from anyone; embeddings zeroed below
            ref = next((t for t in frozen.h[m] if t is not None), None)
            if ref is None:
                raise ValueError(f"no patient has {m}")
        K = max((t.shape[0] for t in hs if t is not None), default=1)
        h = ref.new_zeros(len(idx), K, *ref.shape[1:])
        mask = ref.new_zeros(len(idx), K)
        for j, t in enumerate(hs):
            if t is not None:
                h[j, : t.shape[0]] = t
                mask[j, : t.shape[0]] = 1
        out[m] = (h, mask, torch.from_numpy(frozen.present[m][idx]).to(ref.device))
    return out


@torch.no_grad()
def predict_features(model: SurvivalModel | SurvivalEnsemble, frozen: FrozenFeatures, idx: np.ndarray,
                     batch_size: int = 64) -> Tensor:
    """In eval mode: a model's hazard logits, an ensemble's survival curves; [len(idx), T]."""
    model.eval()
    outs = [model(_collate(frozen, idx[i:i + batch_size], model.modalities)).float().cpu()
            for i in range(0, len(idx), batch_size)]
    head = model.head if isinstance(model, SurvivalModel) else model.members[0].head
    return torch.cat(outs) if outs else torch.zeros(0, head.out_features)


def select_patients(inputs: PatientInputs, patients: Sequence[str], modset: str) -> list[str]:
    """The patients a modality set uses: those with that modality, or (``all``) those with any."""
    if modset == "all":
        return [p for p in patients if any(inputs.has(p, m) for m in MODALITIES)]
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
    best = {"epoch": -1, "val": -np.inf, "state": copy.deepcopy(model.state_dict()), "surv": None}
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = fit_idx[torch.randperm(len(fit_idx), generator=g).numpy()]
        total, n = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            b = perm[i:i + cfg.batch_size]
            phi = model(_collate(frozen, b, model.modalities))
            bt = torch.from_numpy(b).to(dev)
            loss = nll_logistic_hazard(phi, y_idx[bt], y_ev[bt])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite fine-tuning loss at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(b), n + len(b)
        phi = predict_features(model, frozen, val_idx)
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


@dataclass
class FinetuneResult:
    model: SurvivalEnsemble
    predictions: pd.DataFrame   # patient, fold, split (train/test), val_member, imputed_*, risk, s_0..s_{T-1}, ...;
                                # attrs["cuts_days"]: the T label cuts (days) the s_k are at
    metrics: dict[str, Any]
    state: dict[str, Any]       # what model.pt holds besides the weights


def run_finetune(mae: MultimodalMAE, inputs: PatientInputs, clinical: pd.DataFrame, train: Sequence[str],
                 test: Sequence[str], cfg: FinetuneConfig, fold: int = 0,
                 features: FrozenFeatures | None = None, device: str | torch.device | None = None) -> FinetuneResult:
    """One fold: select patients, fit cuts on training patients, split validation, cache, train, evaluate.

    clinical: index patient, columns time (days) and event (0/1). ``features`` may be passed to reuse a cache
    computed with the same MAE, modalities and ``missing`` for a superset of the patients. ``device``: default
    CUDA when available (the frozen-feature cache then lives on the GPU), else CPU.
    """
    t0 = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mae = mae.to(device)
    torch.manual_seed(cfg.seed)
    mods = cfg.modalities(mae.modalities)
    train = [p for p in select_patients(inputs, train, cfg.modset) if p in clinical.index]
    test = [p for p in select_patients(inputs, test, cfg.modset) if p in clinical.index]
    t_tr, e_tr, cuts = fold_cuts(clinical, train, test, cfg.n_bins, cfg.cut_scheme,      # training patients only
                                 f"{cfg.modset} (patients with the modality)")
    members_split = inner_splits(train, e_tr, cfg)                                # from training patients only
    everyone = train + test
    frozen = features or frozen_features(mae, inputs, everyone, mods, cfg.missing)
    t_cache = time.perf_counter() - t0
    pos = frozen.index(everyone)
    t_all = clinical.loc[everyone, "time"].to_numpy(float)
    e_all = clinical.loc[everyone, "event"].to_numpy(float)
    idx_d, ev = discretize(cuts, t_all, e_all)
    # arrays over frozen.patients
    n = len(frozen.patients)
    idx_durations_all, events_all, durations_all = np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n)
    idx_durations_all[pos], events_all[pos], durations_all[pos] = idx_d, e_all, t_all
    label_events_all = np.zeros(n, np.float32)
    label_events_all[pos] = ev
    where = dict(zip(everyone, pos))
    train_idx = np.array([where[p] for p in train])
    test_idx = np.array([where[p] for p in test])
    members, member_state = [], []
    val_member = {}                                     # training patient -> the member that validated on it
    val_surv = np.zeros((n, len(cuts)))                 # each validation patient's curve from its member
    for k, (fit, val) in enumerate(members_split):
        fit_idx = np.array([where[p] for p in fit])
        val_idx = np.array([where[p] for p in val])
        model = SurvivalModel(mae.cfg, mods, len(cuts), cfg.dropout, cfg.fusion_heads, mae.encoders)
        with torch.no_grad():  # start from the fit patients' discrete hazards, not from hazard 0.5 in every bin
            model.head.bias.copy_(baseline_hazard_logits(idx_durations_all[fit_idx], label_events_all[fit_idx], len(cuts)))
        model = model.to(device)
        # the loss uses the discretised labels; model selection and metrics use the observed (time, event)
        info = train_survival(model, frozen, fit_idx, val_idx, idx_durations_all, label_events_all, durations_all, events_all, cuts,
                              replace(cfg, seed=cfg.seed + k))
        val_surv[val_idx] = info["val_surv"]
        val_member.update({p: k for p in val})
        members.append(model)
        member_state.append({"fit_patients": list(fit), "val_patients": list(val),
                             "best_epoch": info["best_epoch"], "best_val": info["best_val"],
                             "history": info["history"]})
    ensemble = SurvivalEnsemble(members)
    t_train = time.perf_counter() - t0 - t_cache
    vidx = np.array([where[p] for p in train if p in val_member])
    validation = _cindex(cfg.cindex, val_surv[vidx], cuts, durations_all[vidx], events_all[vidx], cfg.n_sub)
    all_idx = np.concatenate([train_idx, test_idx])
    surv = predict_features(ensemble, frozen, all_idx).numpy()
    s_te = surv[len(train_idx):]
    metrics: dict[str, Any] = evaluate_survival(s_te, cuts, durations_all[test_idx], events_all[test_idx], cfg.n_sub,
                                                t_tr, e_tr)
    risk = risk_from_survival(surv)
    metrics.update(
        fold=int(fold), modset=cfg.modset, missing=cfg.missing, members=len(members), n_train=len(train_idx),
        n_fit=[len(m["fit_patients"]) for m in member_state], n_val=[len(m["val_patients"]) for m in member_state],
        n_test=len(test_idx), n_test_events=int(events_all[test_idx].sum()),
        best_epochs=[m["best_epoch"] for m in member_state], best_vals=[m["best_val"] for m in member_state],
        select_on=cfg.select_on, n_validation=len(vidx), **{f"validation_{cfg.cindex}": validation},
        device=str(device), train_median_risk=float(np.median(risk[: len(train_idx)])),
        n_test_imputed={m: int(frozen.imputed[m][test_idx].sum()) for m in mods},
        seconds_cache=round(t_cache, 3), seconds_train=round(t_train, 3),
        history=[m.pop("history") for m in member_state])
    pts = [frozen.patients[i] for i in all_idx]
    pred = pd.DataFrame(surv, columns=[f"s_{k}" for k in range(len(cuts))])
    pred.insert(0, "event", events_all[all_idx].astype(int))
    pred.insert(0, "time", durations_all[all_idx])
    pred.insert(0, "risk", risk)
    for m in mods:
        pred.insert(0, f"imputed_{m}", frozen.imputed[m][all_idx])
    pred.insert(0, "val_member", [val_member.get(p, -1) for p in pts])
    pred.insert(0, "split", ["train"] * len(train_idx) + ["test"] * len(test_idx))
    pred.insert(0, "fold", int(fold))
    pred.insert(0, "patient", pts)
    pred.attrs["cuts_days"] = [float(c) for c in cuts]   # s_k is S at cuts_days[k]; kept in predictions.parquet
    state = {"cuts": torch.from_numpy(cuts), "train_patients": list(train), "test_patients": list(test),
             "members": member_state, "config": asdict(cfg), "modalities": list(mods),
             "train_median_risk": metrics["train_median_risk"], "fold": int(fold)}
    return FinetuneResult(ensemble, pred, metrics, state)


# ----------------------------------------------------------------------------------------------------------------
# the saved model and its use on new patients


def save_survival_model(path: str | Path, result: FinetuneResult, mae: MultimodalMAE,
                        normalizers: Mapping[str, Any]) -> Path:
    """``model.pt``: survival weights, the pretrained MAE (for imputation and the frozen layers), the normaliser
    states, label cuts, patient lists and the early-stopping choice; loads with ``weights_only=True``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "survival": result.model.state_dict(), "mae": mae.state_dict(),
             "mae_config": mae.cfg.to_dict(), "normalizers": dict(normalizers), **result.state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_survival_model(path: str | Path) -> tuple[SurvivalEnsemble, MultimodalMAE, dict[str, Any]]:
    """-> (survival ensemble, MAE, state: cuts, normalizers, patient lists, config, ...); ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no fine-tuned model (expected model.pt written by `imputmae finetune`)")
    st = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(st, dict) or st.get("format") != FORMAT:
        found = st.get("format") if isinstance(st, dict) else None
        raise ValueError(f"{path}: not an imputmae survival model of format {FORMAT}"
                         + (f" (found {found}: fine-tune it again with this version)" if found else ""))
    mae = MultimodalMAE(MAEConfig.from_dict(st["mae_config"]))
    mae.load_state_dict(st["mae"])
    mae.eval()
    cfg = st["config"]
    model = SurvivalEnsemble([SurvivalModel(mae.cfg, st["modalities"], int(st["cuts"].numel()), cfg["dropout"],
                                            cfg["fusion_heads"], mae.encoders) for _ in st["members"]])
    model.load_state_dict(st["survival"])
    model.eval()
    return model, mae, st


@torch.no_grad()
def predict_patients(model: SurvivalEnsemble, mae: MultimodalMAE, inputs: PatientInputs, state: Mapping[str, Any],
                     patients: Sequence[str] | None = None) -> pd.DataFrame:
    """Risk and survival curve at the cuts for new patients, from whatever modalities they have.

    Missing modalities the model uses are imputed by the decoder (``missing`` from the model's config). Returns
    patient, risk, high_risk (above the training median), imputed_* and s_0..s_{T-1}; cut times in ``attrs``.
    """
    patients = list(patients) if patients is not None else inputs.patients()
    frozen = frozen_features(mae, inputs, patients, model.modalities, state["config"]["missing"])
    surv = predict_features(model, frozen, np.arange(len(patients))).numpy()
    risk = risk_from_survival(surv)
    out = pd.DataFrame(surv, columns=[f"s_{k}" for k in range(surv.shape[1])])
    for m in reversed(model.modalities):
        out.insert(0, f"imputed_{m}", frozen.imputed[m])
    out.insert(0, "high_risk", risk > float(state["train_median_risk"]))
    out.insert(0, "risk", risk)
    out.insert(0, "patient", patients)
    out.attrs["cuts_days"] = [float(c) for c in state["cuts"]]
    return out


@torch.no_grad()
def impute_patients(mae: MultimodalMAE, inputs: PatientInputs, patients: Sequence[str] | None = None
                    ) -> dict[str, dict[str, Tensor]]:
    """The reconstructed missing modalities: {m: {patient: omics [L_pad] or one tile [3, H, W]}} (model space)."""
    patients = list(patients) if patients is not None else inputs.patients()
    data, imputed = complete_inputs(mae, inputs, patients, mae.modalities, "impute")
    return {m: {p: data[m][p] for i, p in enumerate(patients) if imputed[m][i]} for m in mae.modalities}


# ----------------------------------------------------------------------------------------------------------------
# inputs from the pipeline's files (docs/layout.md) or a user's files


def normalizers_from_states(states: Mapping[str, Any]) -> dict[str, Any]:
    """{modality: OmicsNormalizer} from the states saved with a model (``imputmae.normalize``)."""
    from imputmae.normalize import OmicsNormalizer

    return {m: OmicsNormalizer.from_state_dict(s) for m, s in states.items() if m in vector_modalities() and s}


def normalize_omics(normalizer: Any, df: pd.DataFrame, source: str = "table") -> dict[str, np.ndarray]:
    """Raw omics frame (index patient, columns features) -> {patient: float32 [L_pad]} via the fitted normaliser.

    Features the normaliser was fitted on but absent from ``df`` are set to NaN (then the training median) and
    counted in the log; extra columns are ignored. Rows that are entirely NaN count as not having the modality.
    """
    want = list(normalizer.features_in_)
    have = pd.Index([str(c) for c in df.columns])
    df = df.set_axis(have, axis=1)
    absent = pd.Index(want).difference(have)
    if len(absent) == len(want):
        raise ValueError(f"{source}: none of the {len(want)} {normalizer.kind} features the model was trained on "
                         f"(e.g. {want[:3]}) is a column")
    if len(absent):
        log.warning("%s: %d of %d %s features absent, filled with the training median", source, len(absent),
                    len(want), normalizer.kind)
    df = df.reindex(columns=want)
    df = df[~df.isna().all(axis=1)]
    x = normalizer.transform(df)
    return {str(p): x[i] for i, p in enumerate(df.index)}


def load_cohort_inputs(results: str | Path, cohort: str, normalizers: Mapping[str, Any],
                       patients: Sequence[str] | None = None) -> PatientInputs:
    """The cohort's normalised inputs: ``{R}/{cohort}/{rna,dnam}.parquet`` through the fold's normalisers (fitted
    on its training patients at pretraining) and the tiles of the patients ``wsi_qc.tsv`` marks ``ok``
    (``{R}/{cohort}/wsi/{patient}.npy``, memory-mapped), with the availability rules of
    :func:`imputmae.data.load_patients` (the ones pretraining used)."""
    from imputmae.data import load_patients

    root = Path(results) / cohort
    table = load_patients(results, [cohort])
    if patients is not None:
        table = table[table["patient"].isin(set(patients))]
    inp = PatientInputs(omics={})
    for m in vector_modalities():
        who = table.loc[table[f"has_{m}"], "patient"]
        if m not in normalizers or who.empty:
            continue
        path = root / f"{m}.parquet"
        df = pd.read_parquet(path)
        if df.index.name != "patient" and "patient" in df.columns:
            df = df.set_index("patient")
        df.index = df.index.astype(str)
        inp.omics[m] = normalize_omics(normalizers[m], df[df.index.isin(set(who))], str(path))
    for p, f in table.loc[table["has_wsi"], ["patient", "wsi_path"]].itertuples(index=False):
        tiles = np.load(f, mmap_mode="r")
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"{f}: expected uint8 tiles [K, H, W, 3], got shape {tiles.shape}")
        if tiles.shape[0] > 0:
            inp.tiles[p] = tiles
    return inp


def read_user_inputs(paths: Sequence[str | Path], normalizers: Mapping[str, Any]) -> PatientInputs:
    """New patients' files for ``predict`` / ``impute``.

    Each path is a table (.parquet, .csv, .tsv: first column the patient id, then features in raw units) or tiles
    (``<patient>.npy``, uint8 [K, H, W, 3]); a folder is searched for ``*.npy``. A table's modality is the one
    whose training features it shares most columns with; prefix ``rna:`` or ``dnam:`` to say it explicitly.
    """
    inp = PatientInputs(omics={})
    for raw in paths:
        s = str(raw)
        forced = None
        if s.split(":", 1)[0] in MODALITIES and ":" in s:
            forced, s = s.split(":", 1)
        path = Path(s)
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise ValueError(f"{path}: a folder with no <patient>.npy tile files")
        else:
            files = [path]
        for f in files:
            if not f.exists():
                raise FileNotFoundError(f"{f}: no such file")
            if f.suffix == ".npy":
                tiles = np.load(f, mmap_mode="r")
                if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8 or tiles.shape[0] == 0:
                    raise ValueError(f"{f}: expected uint8 tiles [K, H, W, 3] (as `imputmae wsi` writes), got "
                                     f"{tiles.dtype} {tiles.shape}")
                inp.tiles[f.stem] = tiles
                continue
            if f.suffix == ".parquet":
                df = pd.read_parquet(f)
                if "patient" in df.columns:
                    df = df.set_index("patient")
            elif f.suffix in (".csv", ".tsv", ".txt"):
                df = pd.read_csv(f, sep="," if f.suffix == ".csv" else "\t", index_col=0)
            else:
                raise ValueError(f"{f}: unknown input type (expected .parquet, .csv, .tsv or <patient>.npy)")
            df.index = df.index.astype(str)
            m = forced or max(normalizers, key=lambda k: len(set(map(str, df.columns))
                                                           & set(normalizers[k].features_in_)))
            if m not in normalizers:
                raise ValueError(f"{f}: the model has no {m} normaliser")
            inp.omics.setdefault(m, {}).update(normalize_omics(normalizers[m], df, str(f)))
    return inp


def imputed_tables(imputed: Mapping[str, Mapping[str, Tensor]], normalizers: Mapping[str, Any]
                   ) -> dict[str, pd.DataFrame | dict[str, np.ndarray]]:
    """Reconstructions back to the original feature space: omics via ``OmicsNormalizer.inverse_transform``
    (per-patient upper-quartile scale: the training median, see imputmae.normalize), tiles to uint8 [1, H, W, 3]."""
    out: dict[str, Any] = {}
    for m, d in imputed.items():
        if not d:
            continue
        pts = sorted(d)
        if is_image(m):
            out[m] = {p: (d[p].clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
                      for p in pts}
        else:
            x = torch.stack([d[p] for p in pts]).numpy()
            out[m] = normalizers[m].inverse_transform(x, index=pd.Index(pts, name="patient")).astype(np.float32)
    return out
