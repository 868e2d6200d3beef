"""The enumerated settings, each defined once: a ``Literal`` for the library's signatures and its values as a tuple
for the CLI's ``choices=``. The config schema's ``enum`` lists are tested against these (tests/test_config.py).

No heavy imports here: every CLI parser reads this module.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["CutScheme", "CIndexName", "SelectOn", "MissingInputs", "OnMalformed", "CUT_SCHEME_CHOICES",
           "CINDEX_CHOICES", "SELECT_ON_CHOICES", "MISSING_CHOICES", "ON_MALFORMED_CHOICES",
           "CacheDtype", "CACHE_DTYPE_CHOICES"]

CutScheme = Literal["equidistant", "quantiles"]                 # finetune.cut_scheme: label cuts, fitted on training
CIndexName = Literal["antolini", "adj_antolini", "harrell"]     # evaluation.cindex: the one Table 3 shows
SelectOn = Literal["cindex", "nll"]                             # finetune.select_on: what picks each model's epoch
MissingInputs = Literal["impute", "zero"]                       # fine-tuning's missing modalities: decoder or zeros
OnMalformed = Literal["error", "qc"]                            # omics.on_malformed
CacheDtype = Literal["float32", "float16"]                      # finetune.cache_dtype: the frozen-feature file

CUT_SCHEME_CHOICES: tuple[str, ...] = get_args(CutScheme)
CINDEX_CHOICES: tuple[str, ...] = get_args(CIndexName)
SELECT_ON_CHOICES: tuple[str, ...] = get_args(SelectOn)
MISSING_CHOICES: tuple[str, ...] = get_args(MissingInputs)
ON_MALFORMED_CHOICES: tuple[str, ...] = get_args(OnMalformed)
CACHE_DTYPE_CHOICES: tuple[str, ...] = get_args(CacheDtype)
