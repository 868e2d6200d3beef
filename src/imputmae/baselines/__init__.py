"""Table 3 baselines, one module each, on our inputs and our protocol.

* :mod:`~imputmae.baselines.cox_pca`: lifelines' penalised Cox model on PCA components (the classical reference);
* :mod:`~imputmae.baselines.multisurv`: MultiSurv (Vale-Silva & Rohr 2021);
* :mod:`~imputmae.baselines.cmta`: CMTA (Zhou & Chen, ICCV 2023);
* :mod:`~imputmae.baselines.mome`: MoME (Xiong et al., MICCAI 2024).

The three networks read :class:`BaselineInputs` (RNA and DNAm vectors as normalised for impuTMAE, a bag of frozen
tile features per patient from a named extractor: the fold's pretrained WSI encoder, or a ResNet-50 from a local
weights file; an availability mask) built by :func:`baseline_inputs`, and are trained and scored by
one function, :func:`train_baseline`, with the protocol of :mod:`imputmae.finetune` (label cuts fitted on training
patients, the logistic-hazard NLL, epoch selection on validation patients only, the same C-index).
"""

from imputmae.baselines._inputs import (BaselineInputs, baseline_inputs, collate_inputs, mae_tile_features,
                                        select_top_variance)
from imputmae.baselines._resnet import ResNet50Features, load_resnet50_features
from imputmae.baselines._train import (BASELINES, BaselineConfig, BaselineResult, build_baseline, count_parameters,
                                       train_baseline)
from imputmae.baselines.cmta import CMTA, CMTAConfig
from imputmae.baselines.cox_pca import (MODALITIES, CoxPCAResult, Modality, fit_cox_pca, load_modality_features,
                                        run_cox_pca_folds, wsi_summary_features)
from imputmae.baselines.mome import MoME, MoMEConfig
from imputmae.baselines.multisurv import MultiSurv, MultiSurvConfig

__all__ = [
    # Cox-PCA reference (was imputmae/baselines.py)
    "CoxPCAResult", "load_modality_features", "wsi_summary_features", "fit_cox_pca", "run_cox_pca_folds",
    "MODALITIES", "Modality",
    # the networks and their shared inputs and training
    "BaselineInputs", "baseline_inputs", "collate_inputs", "mae_tile_features", "select_top_variance",
    "ResNet50Features", "load_resnet50_features",
    "BaselineConfig", "BaselineResult", "train_baseline", "build_baseline", "count_parameters", "BASELINES",
    "MultiSurv", "MultiSurvConfig", "CMTA", "CMTAConfig", "MoME", "MoMEConfig",
]
