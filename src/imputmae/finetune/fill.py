"""Missing modalities filled before the model sees them, for Table 3's ablations and baselines.

* :func:`fit_mean_fill` / :func:`mean_filled_inputs`: the training patients' mean of each modality (the normalised
  omics vector [L_m]; for WSI one mean tile [1, H, W, 3], the pixel-wise mean of every training tile), fitted on the
  fold's TRAINING patients only and given to every patient who lacks the modality (the "training mean" ablation);
* :func:`decoder_filled_inputs`: the fold's pretrained decoder's reconstruction
  (:func:`imputmae.finetune.features.iter_complete_inputs`) written back as ordinary inputs, so that another
  network (impuTMAE's architecture from random initialisation, Cox-PCA) reads the same imputed inputs as the
  pretrained model.

Both return a :class:`PatientInputs` in which every listed patient has every modality, and the bool [P] mask of
what was filled; the model then runs with ``missing="zero"`` (nothing is missing any more).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from imputmae.finetune.features import PatientInputs, ReconCache, iter_complete_inputs
from imputmae.modalities import is_image, names, vector_modalities
from imputmae.model import MultimodalMAE

__all__ = ["fit_mean_fill", "mean_filled_inputs", "decoder_filled_inputs"]


def fit_mean_fill(inputs: PatientInputs, train: Sequence[str]) -> dict[str, np.ndarray]:
    """Per modality, the mean over the TRAINING patients who have it: omics float32 [L_m], WSI uint8 [1, H, W, 3]
    (mean over all their tiles, streamed patient by patient). A modality no training patient has is left out."""
    fill: dict[str, np.ndarray] = {}
    for m in names():
        who = [p for p in train if inputs.has(p, m)]
        if not who:
            continue
        if is_image(m):
            total, count = None, 0
            for p in who:
                t = np.asarray(inputs.tiles[p], np.float64)
                total = t.sum(0) if total is None else total + t.sum(0)
                count += t.shape[0]
            fill[m] = np.round(total / count).clip(0, 255).astype(np.uint8)[None]
        else:
            fill[m] = np.mean([np.asarray(inputs.omics[m][p], np.float64) for p in who], axis=0).astype(np.float32)
    return fill


def _filled(inputs: PatientInputs, patients: Sequence[str], fill_of) -> tuple[PatientInputs, dict[str, np.ndarray]]:
    out = PatientInputs(omics={m: {} for m in vector_modalities()})
    filled = {m: np.zeros(len(patients), bool) for m in names()}
    for i, p in enumerate(patients):
        for m in names():
            value = (inputs.tiles[p] if is_image(m) else inputs.omics[m][p]) if inputs.has(p, m) else fill_of(p, m)
            if value is None:
                continue
            filled[m][i] = not inputs.has(p, m)
            if is_image(m):
                out.tiles[p] = value
            else:
                out.omics[m][p] = value
    return out, filled


def mean_filled_inputs(inputs: PatientInputs, patients: Sequence[str], fill: Mapping[str, np.ndarray]
                       ) -> tuple[PatientInputs, dict[str, np.ndarray]]:
    """``patients``' inputs with each missing modality set to ``fill[m]`` (:func:`fit_mean_fill`)."""
    return _filled(inputs, patients, lambda p, m: fill.get(m))


@torch.no_grad()
def decoder_filled_inputs(mae: MultimodalMAE, inputs: PatientInputs, patients: Sequence[str],
                          recon_cache: ReconCache | None = None) -> tuple[PatientInputs, dict[str, np.ndarray]]:
    """``patients``' inputs with each missing modality set to the pretrained decoder's reconstruction: omics
    float32 [L_pad], a missing slide one imputed tile uint8 [1, H, W, 3] (rounded from the decoder's [0, 1]).
    ``recon_cache``: see :func:`imputmae.finetune.features.iter_complete_inputs`."""
    patients = list(patients)
    mods = [m for m in names() if m in mae.modalities]
    made: dict[str, dict[str, np.ndarray]] = {m: {} for m in mods}
    # a group of patients at a time, keeping only the reconstructions (never a cohort's float tiles)
    for pos, data, imputed in iter_complete_inputs(mae, inputs, patients, mods, "impute", recon_cache=recon_cache):
        for m in mods:
            for j, i in enumerate(pos):
                if imputed[m][j]:
                    x = data[m][patients[i]]
                    made[m][patients[i]] = (   # image: [1, 3, H, W] in [0, 1] -> [1, H, W, 3] uint8, as stored
                        (x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
                        if is_image(m) else x.float().cpu().numpy())

    def recon(p: str, m: str) -> np.ndarray | None:
        return made.get(m, {}).get(p)

    return _filled(inputs, patients, recon)
