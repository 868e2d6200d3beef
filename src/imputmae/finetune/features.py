"""Fine-tuning inputs: each patient's normalised modalities completed by the decoder, and the frozen layers' cache.

:class:`PatientInputs` holds what a patient has; :func:`complete_inputs` imputes what they lack with the pretrained
decoder; :func:`frozen_features` runs every encoder block but the last once per patient (exact: the frozen layers do
not change while fine-tuning), and :func:`collate_batch` pads a batch of those hidden states for the network.
The decisions behind them: docs/finetune.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from imputmae.choices import MissingInputs
from imputmae.modalities import MODALITIES, is_image, vector_modalities
from imputmae.model import MultimodalMAE

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


def collate_batch(frozen: FrozenFeatures, idx: np.ndarray, modalities: Sequence[str]
                  ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Patients ``idx`` of ``frozen`` as one padded batch: feats[m] = (h [B, K_max, 1 + N_m, D], tile_mask [B, K_max],
    present [B] bool), the input of :meth:`SurvivalModel.forward`."""
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
