"""Several modality sets of one cohort and outer fold fine-tuned in one process (``finetune.one_job_per_fold``).

Each set's result is the one :func:`imputmae.finetune.run_finetune` gives when run alone (same bytes: same
patients, same order, same seeds); what is shared is the process (interpreter, torch, the checkpoint, the inputs)
and the frozen-layer features, computed once for the patients of ``all`` and read by every set:

* a single-modality set (``rna``, ``dnam``, ``wsi``) uses only patients who have that modality, whose features for it
  are their own inputs through the frozen blocks, one patient at a time (:func:`frozen_features`): the same values
  whatever other patients are computed beside them;
* ``all`` reads the shared store exactly as its own run would have written it (the same patient list).

The decoder's imputation uses its own seeded generator (:meth:`MultimodalMAE.impute`), so computing the features
before a set's run leaves the global random state, and with it the set's model initialisation, unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pandas as pd
import torch

from imputmae.finetune.features import FrozenFeatures, frozen_features
from imputmae.finetune.train import (FinetuneConfig, FinetuneResult, check_memory, frozen_rows_max, run_finetune,
                                     select_patients)
from imputmae.model import MultimodalMAE

__all__ = ["shared_features", "iter_finetune_sets"]


def shared_features(mae: MultimodalMAE, inputs, clinical: pd.DataFrame, train: Sequence[str], test: Sequence[str],
                    cfg: FinetuneConfig, device: torch.device) -> FrozenFeatures:
    """The frozen features of the ``all`` set's patients (training then test, those with a label and any
    modality), every modality of the MAE, missing ones filled as ``cfg.missing`` says: what
    :func:`run_finetune` computes for ``modset="all"``. Checks the memory of a training batch first, as it does."""
    cfg_all = replace(cfg, modset="all")
    mods = cfg_all.modalities(mae.modalities)
    everyone = [p for p in select_patients(inputs, train, "all") if p in clinical.index] + \
               [p for p in select_patients(inputs, test, "all") if p in clinical.index]
    check_memory(frozen_rows_max(inputs, everyone, mods), mae, mods, cfg_all, device)
    return frozen_features(mae, inputs, everyone, mods, cfg.missing, cache_dtype=cfg.cache_dtype,
                           cache_dir=cfg.cache_dir, trainable_blocks=cfg.trainable_blocks)


def iter_finetune_sets(mae: MultimodalMAE, inputs, clinical: pd.DataFrame, train: Sequence[str],
                       test: Sequence[str], modsets: Sequence[str], cfg: FinetuneConfig, fold: int = 0,
                       device: str | torch.device | None = None) -> Iterator[tuple[str, FinetuneResult]]:
    """Fine-tune each of ``modsets`` on one fold, yielding (modset, result) as each finishes (so that the caller
    writes it before the next one trains: one model in memory at a time).

    mae: the fold's pretrained MAE; inputs: its :class:`PatientInputs`; clinical: index patient, columns time (days)
    and event; cfg: the shared settings (its ``modset`` is replaced per set). Each result's metrics hold
    ``cpu_seconds`` (process CPU of its run plus ``shared_cpu_seconds``, the shared feature pass). A ValueError from one set (too few
    patients with its modality, say) is raised naming the set; the sets before it have been yielded.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mae = mae.to(device)
    t0 = time.process_time()
    features = shared_features(mae, inputs, clinical, train, test, cfg, device) if len(modsets) > 1 else None
    shared = round(time.process_time() - t0, 3)
    try:
        for modset in modsets:
            t0 = time.process_time()
            try:
                res = run_finetune(mae, inputs, clinical, train, test, replace(cfg, modset=modset), fold=fold,
                                   features=features, device=device)
            except ValueError as exc:
                raise ValueError(f"{modset}: {exc}") from None
            # Table 3's CPU s per fold: the set's own run plus the shared frozen-feature pass it read
            res.metrics.update(cpu_seconds=round(time.process_time() - t0 + shared, 3), shared_cpu_seconds=shared)
            yield modset, res
    finally:
        if features is not None:
            for store in features.store.values():
                store.close()
