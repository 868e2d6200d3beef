"""Host memory a training job needs, from what the workflow knows before it starts: the model size, the batch, the
tiles per patient and the shapes of the omics matrices it reads (their Parquet footers, not their data).

The rules ask Slurm for these figures (``mem_mb``), and ``imputmae pretrain`` checks them against the job's limit
before it loads anything, so that too little memory is one line naming the rule, the figure and the setting
instead of a kernel OOM kill. The formulas and their measurements: docs/scaling.md, "Memory per job".
No torch here: the workflow evaluates these when it schedules a job.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imputmae.config import model_dims
from imputmae.mae_config import config_patch_sizes
from imputmae.modalities import MODALITIES, is_image

__all__ = ["MIB", "MatrixShape", "matrix_shape", "parameter_count", "pretrain_memory", "finetune_memory",
           "rows_memory", "to_mem_mb", "cohort_omics_shapes", "check_pretrain_memory"]

MIB = 2**20

# Measured (BENCHMARKS.md "Pretraining memory": the data stage of a pretraining, load_omics + fit_normalizers +
# build_arrays, at 300 and 600 patients x 45,940 columns, and the whole job with benchmarks/bench_pretrain_memory.py):
# peak RSS grows by BYTES_PER_OMICS_VALUE per patient and omics column (the float32 matrices, the normalisers'
# float64 copies of the training rows, their quantiles, the model-ready arrays) and by BYTES_PER_OMICS_COLUMN per
# column of each matrix file read, whatever its rows (reading and stacking wide frames: 2.7 GiB for two cohorts'
# 45,940 columns that hold 55 MB of values); CPU_BASE_MIB: interpreter, torch, one batch.
BYTES_PER_OMICS_VALUE = 49
BYTES_PER_OMICS_COLUMN = 31_000
CPU_BASE_MIB = 600
# Assumed, not measured (no GPU in the sessions that wrote this): a CUDA process's host-side libraries and context.
GPU_BASE_MIB = 3000
WORKER_MIB = 500          # each DataLoader worker's own (copy-on-write) pages: interpreter heap touched by refcounts
BYTES_PER_PARAMETER = 16  # fp32 weights, gradients and AdamW's two moments (host-side on CPU; a GPU job holds them
                          # on the device, the host a checkpoint's copy of 12 B while it is written or read)
SAFETY = 1.25             # asked of Slurm over the estimate
BASELINES_MIB = 1024      # Table 3's rerun baselines (MultiSurv, CMTA, MoME) and their activations: assumed


@dataclass(frozen=True)
class MatrixShape:
    """rows (patients) x columns (features) of one omics matrix."""

    rows: int
    columns: int

    @property
    def values(self) -> int:
        return self.rows * self.columns


def matrix_shape(path: str | Path) -> MatrixShape:
    """The shape of a patients x features ``.parquet`` matrix from its footer (index columns not counted)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(str(path))
    schema = meta.schema.to_arrow_schema()
    index = set()
    if schema.metadata and b"pandas" in schema.metadata:
        import json

        index = {c for c in json.loads(schema.metadata[b"pandas"]).get("index_columns", []) if isinstance(c, str)}
    return MatrixShape(int(meta.num_rows), int(meta.num_columns) - len(index))


def _block(width: int, mlp: int) -> int:
    """Parameters of one pre-norm transformer block: qkv, projection, two norms, the MLP."""
    return 4 * width * width + 2 * width * mlp + 9 * width + mlp


def parameter_count(model_cfg: Mapping[str, Any], patches: Mapping[str, int],
                    modalities: Sequence[str] = MODALITIES) -> int:
    """The MAE's parameter count for ``model_cfg`` (the config's ``model`` section at one size) with the patch sizes
    ``patches`` ({rna: 256, dnam: 512, wsi: 16}: values per omics patch, pixels per image patch side); equal to
    ``sum(p.numel() for p in MultimodalMAE(...).parameters())`` (tests/test_memory.py)."""
    d = model_dims(model_cfg)
    width, dec = d["hidden_size"], d["decoder_hidden_size"]
    n = len(modalities) * dec                                              # modality embeddings (decoder width)
    for m in modalities:
        patch = 3 * patches[m] ** 2 if is_image(m) else patches[m]         # values per patch
        layers = d[f"{m}_layers"]
        n += width + patch * width + width + layers * _block(width, d["intermediate_size"]) + 2 * width
        n += width * dec + dec + dec                                       # decoder_embed, mask token
        n += dec * patch + patch                                           # head (WSI: kernel + per-pixel bias)
    n += d["decoder_layers"] * _block(dec, d["decoder_intermediate_size"]) + 2 * dec
    return n


def _patches(cfg: Mapping[str, Any]) -> dict[str, int]:
    return config_patch_sizes(cfg)


def pretrain_memory(cfg: Mapping[str, Any], omics: Mapping[str, Sequence[MatrixShape]], *, gpu: bool) -> int:
    """Peak host bytes of one pretraining job (:func:`imputmae.engine.pretrain`) on the cohorts of ``cfg`` (the
    size's configuration, :func:`imputmae.config.pretrain_config`), whose omics matrices have the shapes ``omics``
    ({rna: [one per cohort], dnam: [...]}). The part that grows with the cohort is the omics one
    (:data:`BYTES_PER_OMICS_VALUE` per patient and column, :data:`BYTES_PER_OMICS_COLUMN` per column); tiles are memory-mapped and read one per sample; the
    loader holds ``2 * num_workers + 2`` batches of float32 samples (a tile and each omics row)."""
    pc = cfg["pretrain"]
    values = sum(s.values for shapes in omics.values() for s in shapes)
    columns = sum(s.columns for shapes in omics.values() for s in shapes)
    sample = 4 * (3 * cfg["wsi"]["tile_size"] ** 2 + sum(max((s.columns for s in shapes), default=0)
                                                         for shapes in omics.values()))
    in_flight = (2 * pc["num_workers"] + 2) * pc["batch_size"] * sample
    params = parameter_count(cfg["model"], _patches(cfg), pc["modalities"])
    return int((GPU_BASE_MIB if gpu else CPU_BASE_MIB) * MIB + pc["num_workers"] * WORKER_MIB * MIB
               + BYTES_PER_OMICS_VALUE * values + BYTES_PER_OMICS_COLUMN * columns + BYTES_PER_PARAMETER * params
               + in_flight)


def _finetune_batch_bytes(cfg: Mapping[str, Any], omics: Mapping[str, MatrixShape], batch: int, tiles: int,
                          gpu: bool = False) -> int:
    """A fine-tuning step's host bytes. CPU: :func:`imputmae.finetune.features.training_memory_bytes` from the
    config (tests/test_memory.py checks that they agree): per modality the batch of hidden states
    [B, K, 1 + N, D] float32, six times (what autograd keeps, and the collated copy), + 256 MiB. GPU: the collated
    batch alone is built on the host before it is copied to the device (the rest is device memory, which the job
    checks itself: ``check_memory``)."""
    dims = model_dims(cfg["model"])
    patches = _patches(cfg)
    per = 0
    for m in MODALITIES:
        if is_image(m):
            n = (cfg["wsi"]["tile_size"] // patches[m]) ** 2
            per += tiles * (1 + n) * dims["hidden_size"]
        elif m in omics:
            per += (1 + math.ceil(omics[m].columns / patches[m])) * dims["hidden_size"]
    return (1 if gpu else 6) * 4 * batch * per + 2**28


def finetune_memory(cfg: Mapping[str, Any], omics: Mapping[str, MatrixShape], *, gpu: bool) -> int:
    """Peak host bytes of one fine-tuning job (``imputmae finetune``) of one cohort at the model size of ``cfg``
    (``model.size`` set to the cohort's): the training batch of ``finetune.batch_size`` patients with ``wsi.keep``
    tiles (it does not grow with the cohort: tiles are read when used, the frozen states live in a temporary file),
    the pretrained checkpoint, and the cohort's normalised omics rows (4 B each, plus the normalisers' float64
    transform of them: 24 B per value in all, and :data:`BYTES_PER_OMICS_COLUMN` per column read)."""
    params = parameter_count(cfg["model"], _patches(cfg), cfg["pretrain"]["modalities"])
    values = sum(s.values for s in omics.values())
    columns = sum(s.columns for s in omics.values())
    return int((GPU_BASE_MIB if gpu else CPU_BASE_MIB) * MIB + BYTES_PER_PARAMETER * params + 24 * values
               + BYTES_PER_OMICS_COLUMN * columns
               + _finetune_batch_bytes(cfg, omics, cfg["finetune"]["batch_size"], cfg["wsi"]["keep"], gpu))


def rows_memory(cfg: Mapping[str, Any], omics: Mapping[str, MatrixShape], patients: int, *, gpu: bool) -> int:
    """Peak host bytes of one ``table3_rows`` job: a fine-tuning job's, plus the baselines' shared inputs, which
    are kept for every patient of the cohort: the omics rows twice (decoder-imputed and zero-filled, float32) and
    ``wsi.keep`` tile features of the model's width (float32); and :data:`BASELINES_MIB` for the baseline models
    themselves (assumed: the demo's largest, MoME, has 19.9 M trainable parameters, 0.3 GiB at 16 B each, and the
    demo's whole job peaked at 1.13 GB)."""
    width = model_dims(cfg["model"])["hidden_size"]
    per_patient = 2 * 4 * sum(s.columns for s in omics.values()) + 4 * cfg["wsi"]["keep"] * width
    return finetune_memory(cfg, omics, gpu=gpu) + per_patient * patients + BASELINES_MIB * MIB


def to_mem_mb(nbytes: int, attempt: int = 1) -> int:
    """Slurm's ``mem_mb`` (MiB, as ``--mem`` reads it) for an estimate: :data:`SAFETY` over it, rounded up to
    100 MiB, growing by half per attempt (a retry after an out-of-memory kill): x1, x1.5, x2."""
    return int(math.ceil(nbytes * SAFETY / MIB / 100) * 100) * (1 + attempt) // 2


def cohort_omics_shapes(results: str | Path, cohorts: Sequence[str]) -> dict[str, list[MatrixShape]]:
    """{rna: [shape per cohort], dnam: [...]} of the matrices under ``results/<cohort>/`` that exist."""
    out: dict[str, list[MatrixShape]] = {}
    for m in MODALITIES:
        if not is_image(m):
            paths = [Path(results) / c / f"{m}.parquet" for c in cohorts]
            out[m] = [matrix_shape(p) for p in paths if p.is_file()]
    return out


def check_pretrain_memory(cfg: Mapping[str, Any], *, gpu: bool, have: tuple[int, str] | None = None) -> int:
    """Raise :class:`imputmae.finetune.MemoryNeeded` (naming the rule, the figure and the settings) before a
    pretraining loads anything when :func:`pretrain_memory` of its cohorts exceeds the job's memory (``have``:
    (bytes, where); default the Slurm or cgroup limit, else what the machine has available). Returns the estimate."""
    from imputmae.finetune.features import MemoryNeeded, usable_memory_bytes

    shapes = cohort_omics_shapes(cfg["results"], sorted(cfg["cohorts"]))
    procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))   # torchrun: every process on the node holds the data
    need = procs * pretrain_memory(cfg, shapes, gpu=gpu)
    limit, where = have if have is not None else usable_memory_bytes()
    if need > limit:
        patients = max((sum(s.rows for s in v) for v in shapes.values()), default=0)
        columns = sum(max((s.columns for s in v), default=0) for v in shapes.values())
        pc = cfg["pretrain"]
        raise MemoryNeeded(
            f"pretrain: about {need / 2**30:.1f} GiB of host memory needed ({patients} patients x {columns} omics "
            f"columns, the {cfg['model']['size']} model, batches of {pc['batch_size']}, {pc['num_workers']} loader "
            f"workers, {procs} process(es); docs/scaling.md, \"Memory per job\"), {where} has {limit / 2**30:.1f} GiB: give the rule "
            f"more memory (its resources mem_mb: `set-resources: pretrain: mem_mb:` in the profile) or lower "
            f"pretrain.batch_size or pretrain.num_workers")
    return need
