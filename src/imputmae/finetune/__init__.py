"""Survival fine-tuning on the pretrained multimodal MAE (paper Sections 3.3 and 4), its evaluation and use.

features (inputs, decoder imputation, the frozen-layer cache) -> network (last blocks, fusion, hazard head) -> train
(one fold: cuts, validation, best epoch, predictions) -> inference (model.pt, new patients); inputs reads files.
Decisions and their reasons: docs/finetune.md.
"""

from imputmae.finetune.features import (FeatureStore, FrozenFeatures, MemoryNeeded, PatientInputs, TileFile,
                                        collate_batch, complete_inputs, frozen_features, iter_complete_inputs,
                                        patient_rows, training_memory_bytes, usable_memory_bytes)
from imputmae.finetune.inference import (FORMAT, impute_patients, load_survival_model, predict_patients,
                                         save_survival_model)
from imputmae.finetune.inputs import (imputed_tables, load_cohort_inputs, normalize_omics, normalizers_from_states,
                                      read_user_inputs)
from imputmae.finetune.network import SurvivalEnsemble, SurvivalModel, baseline_hazard_logits, cls_through_block
from imputmae.finetune.train import (CONFIG_KEYS, FinetuneConfig, FinetuneResult, check_memory, frozen_rows_max,
                                     inner_splits, predict_features, run_finetune, select_patients, split_validation,
                                     train_survival)

__all__ = [
    "FinetuneConfig", "PatientInputs", "FrozenFeatures", "SurvivalModel", "SurvivalEnsemble", "cls_through_block",
    "baseline_hazard_logits", "complete_inputs", "frozen_features", "collate_batch", "patient_rows",
    "select_patients", "split_validation", "inner_splits", "train_survival", "predict_features", "run_finetune",
    "FinetuneResult", "save_survival_model", "load_survival_model", "predict_patients", "impute_patients",
    "normalizers_from_states", "normalize_omics", "load_cohort_inputs", "read_user_inputs", "imputed_tables",
    "FORMAT", "CONFIG_KEYS", "FeatureStore", "MemoryNeeded", "TileFile", "iter_complete_inputs",
    "training_memory_bytes", "usable_memory_bytes", "check_memory", "frozen_rows_max",
]
