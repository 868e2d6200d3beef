"""The fine-tuned model's file (``model.pt``) and its use on new patients: risk, survival curves and imputations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from imputmae.files import atomic_write
from imputmae.finetune.features import PatientInputs, frozen_features, iter_complete_inputs
from imputmae.finetune.network import SurvivalEnsemble, SurvivalModel
from imputmae.finetune.train import FinetuneResult, predict_features
from imputmae.model import MAEConfig, MultimodalMAE
from imputmae.survival import risk_from_survival

FORMAT = "imputmae-survival-2"


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
                                            cfg["fusion_heads"], mae.encoders, cfg.get("trainable_blocks", 1),
                                            cfg.get("loss", "nll"), cfg.get("pool", "cls"))
                                for _ in st["members"]])
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
    frozen = frozen_features(mae, inputs, patients, model.modalities, state["config"]["missing"],
                             trainable_blocks=state["config"].get("trainable_blocks", 1))
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
    out: dict[str, dict[str, Tensor]] = {m: {} for m in mae.modalities}
    for pos, data, imputed in iter_complete_inputs(mae, inputs, patients, mae.modalities, "impute"):
        for m in mae.modalities:   # keep only the reconstructions, not the patients' own (large) inputs
            out[m].update({patients[i]: data[m][patients[i]] for j, i in enumerate(pos) if imputed[m][j]})
    return out
