"""Memory per job (imputmae.memory): the parameter count equals the model's, the fine-tuning batch term equals the
job's own estimate, the figures grow with what they should (and not with what they should not), and a pretraining
given too little memory stops with the rule, the figure and the setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from imputmae.config import load_config, merge_config
from imputmae.finetune.features import MemoryNeeded, training_memory_bytes
from imputmae.memory import (MatrixShape, check_pretrain_memory, finetune_memory, matrix_shape, parameter_count,
                             pretrain_memory, rows_memory, to_mem_mb)
from imputmae.memory import _finetune_batch_bytes
from imputmae.model import MAEConfig, MultimodalMAE

ROOT = Path(__file__).resolve().parents[1]
RNA, DNAM = 16_304, 25_978


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config([ROOT / "config.yaml"])


@pytest.mark.parametrize("size", ["small", "big", "tiny"])
def test_parameter_count_is_the_models(cfg, size):
    c = merge_config(cfg, {"model": {"size": size}})
    with torch.device("meta"):
        model = MultimodalMAE(MAEConfig.from_config(c, {"rna": RNA, "dnam": DNAM}))
    patches = {"rna": 256, "dnam": 512, "wsi": 16}
    assert parameter_count(c["model"], patches) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size, batch, k", [("small", 24, 100), ("big", 4, 7)])
def test_finetune_batch_term_is_the_jobs_own_estimate(cfg, size, batch, k):
    c = merge_config(cfg, {"model": {"size": size}})
    mcfg = MAEConfig.from_config(c, {"rna": RNA, "dnam": DNAM})
    omics = {"rna": MatrixShape(10, RNA), "dnam": MatrixShape(10, DNAM)}
    assert _finetune_batch_bytes(c, omics, batch, k) == training_memory_bytes(mcfg, ("rna", "dnam", "wsi"), batch, k)


def test_figures_grow_with_the_data_and_not_with_fine_tuning_patients(cfg):
    one = {"rna": [MatrixShape(500, 19_962)], "dnam": [MatrixShape(480, DNAM)]}
    two = {"rna": [MatrixShape(500, 19_962)] * 2, "dnam": [MatrixShape(480, DNAM)] * 2}
    small, big = (merge_config(cfg, {"model": {"size": s}}) for s in ("small", "big"))
    grow = pretrain_memory(small, two, gpu=True) - pretrain_memory(small, one, gpu=True)
    assert grow == 49 * (500 * 19_962 + 480 * DNAM) + 31_000 * (19_962 + DNAM)   # a second cohort's values and columns
    assert pretrain_memory(big, one, gpu=True) > pretrain_memory(small, one, gpu=True)
    # fine-tuning: the omics rows are the only term with patients (24 B a value); the batch of K tiles is not
    few = {"rna": MatrixShape(100, RNA), "dnam": MatrixShape(100, DNAM)}
    many = {"rna": MatrixShape(1000, RNA), "dnam": MatrixShape(1000, DNAM)}
    grow = finetune_memory(small, many, gpu=True) - finetune_memory(small, few, gpu=True)
    assert grow == 24 * 900 * (RNA + DNAM)
    more_tiles = merge_config(small, {"wsi": {"keep": 200}})
    assert finetune_memory(more_tiles, few, gpu=True) > finetune_memory(small, few, gpu=True)
    assert rows_memory(small, few, 1000, gpu=True) > rows_memory(small, few, 100, gpu=True)
    # mem_mb: 25% over the estimate, rounded up to 100 MiB, x1, x1.5, x2 per attempt
    assert [to_mem_mb(2**30, a) for a in (1, 2, 3)] == [1300, 1950, 2600]


def test_matrix_shape_reads_the_footer(tmp_path):
    df = pd.DataFrame(np.zeros((7, 5), np.float32), index=pd.Index([f"p{i}" for i in range(7)], name="patient"),
                      columns=list("abcde"))
    df.to_parquet(tmp_path / "rna.parquet")
    assert matrix_shape(tmp_path / "rna.parquet") == MatrixShape(7, 5)


def test_pretraining_given_too_little_memory_names_the_rule_figure_and_setting(cfg, tmp_path):
    c = merge_config(cfg, {"results": str(tmp_path)})
    (tmp_path / "BRCA").mkdir()
    pd.DataFrame(np.zeros((30, 40), np.float32), index=pd.Index([f"p{i}" for i in range(30)], name="patient"),
                 columns=[f"g{j}" for j in range(40)]).to_parquet(tmp_path / "BRCA" / "rna.parquet")
    need = check_pretrain_memory(c, gpu=True, have=(2**50, "plenty"))
    with pytest.raises(MemoryNeeded) as info:
        check_pretrain_memory(c, gpu=True, have=(need - 1, "the Slurm job (SLURM_MEM_PER_NODE)"))
    msg = str(info.value)
    assert msg.startswith("pretrain: about ") and "30 patients x 40 omics columns" in msg
    assert "SLURM_MEM_PER_NODE" in msg and "mem_mb" in msg and "pretrain.batch_size" in msg
