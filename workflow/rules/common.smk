# Shared by the workflow: validation, the cohort table, paths, and the list of final targets.
import functools
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

# Rules run the CLI from this checkout's sources, installed or not, in whatever environment runs the job
# (the project venv, or a stage's conda env from envs/ under --use-conda).
SRC = str(Path(workflow.basedir) / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from snakemake.settings.types import DeploymentMethod  # noqa: E402

from imputmae.config import (ConfigError, available_modalities, cohort_modalities,  # noqa: E402
                              cohort_modality_sets, cohort_model_size, deviations_in_force, last_cohorts,
                              model_sizes, pretrain_config, pretrain_dir, pretrain_jobs, size_cohorts,
                              validate_config)
from imputmae.gdc import usable_downloads  # noqa: E402
from imputmae.modalities import MODALITIES, MODALITY_SETS, is_image  # noqa: E402

# `cohorts` comes whole from the last --configfile (or --config) naming any, as `imputmae config check` reads it:
# `--configfile my.yaml` with `cohorts: {MINE: ...}` runs MINE alone, not beside config.yaml's TCGA cohorts.
_LAYERS = [yaml.safe_load(Path(f).read_text()) or {} for f in workflow.config_settings.configfiles]
config.update(last_cohorts(config, [*_LAYERS, dict(workflow.config_settings.config)]))

try:
    validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# Every shell command runs `python -m imputmae ...` (the imputmae CLI) with this checkout's sources first on the
# path; without --use-conda, `python` is the interpreter running Snakemake (the project's .venv).
_USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_PATH = "" if _USE_CONDA else f'export PATH="{Path(sys.executable).parent}:$PATH"; '
shell.prefix(f'set -euo pipefail; {_PATH}export PYTHONPATH="{SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; ')
RESULTS = config["results"]
COHORTS = sorted(config["cohorts"])
GDC_COHORTS = [c for c in COHORTS if "projects" in config["cohorts"][c]]
TABLE_COHORTS = [c for c in COHORTS if "tables" in config["cohorts"][c]]
# The modalities each cohort can bring (GDC: all three; tables: those given) and the cohorts with slides, the only
# ones with a WSI stage (wsi_qc.tsv): a cohort without slides simply has no WSI.
COHORT_MODALITIES = {c: cohort_modalities(config["cohorts"][c]) for c in COHORTS}
WSI_COHORTS = [c for c in COHORTS if "wsi" in COHORT_MODALITIES[c]]
# Pretraining (and so fine-tuning's imputation) uses only the modalities some cohort brings.
_AVAILABLE = available_modalities(config)
for _key in ("modalities", "unimodal"):
    _dropped = [m for m in config["pretrain"][_key] if m not in _AVAILABLE]
    if _dropped:
        logger.info(f"pretrain.{_key}: no cohort has {', '.join(_dropped)} (every cohort is given as tables without it); "
                    f"pretraining without it")
        config["pretrain"][_key] = [m for m in config["pretrain"][_key] if m in _AVAILABLE]
if not config["pretrain"]["modalities"]:
    raise WorkflowError(f"config: pretrain.modalities: no cohort has any of them (the cohorts bring "
                        f"{', '.join(_AVAILABLE)})")

# Each rule file appends the final outputs (paths, or functions of wildcards returning paths) to TARGETS.
TARGETS = []


def all_targets(wildcards):
    out = []
    for t in TARGETS:
        out.extend([t] if isinstance(t, str) else t(wildcards))
    return out


def deviation_args():
    """`` --deviation KEY=VALUE`` for each deviation from the paper's text in force (Table 3's caption names them)."""
    return "".join(f" --deviation {shlex.quote(f'{d.key}={json.dumps(v)}')}" for d, v in deviations_in_force(config))


def gdc_source_args():
    """--mirror DIR when the job reads a local gdc-client copy (the demo's, or one on shared storage), else --api."""
    if config.get("demo"):
        return f"--mirror {config['demo']['out']}"
    if config["gdc"]["mirror"]:
        return f"--mirror {config['gdc']['mirror']}"
    return f"--api {config['gdc']['api']}"


def as_json(obj):
    """A config section as one JSON argument (shell-quote it with {params.x:q})."""
    return json.dumps(obj, sort_keys=True)


def stage_config(*sections):
    """Only the named top-level sections, as one JSON argument: a step's params then change (and the step reruns)
    only when a setting it reads changes."""
    return as_json({s: config[s] for s in sections if s in config})



# ------------------------------------------------------------------------------------------- GDC stage
import pandas as pd  # noqa: E402

GDC_MODALITIES = list(MODALITIES)


def gdc_request_args():
    """Retries, timeout and token of every GDC request (the token file's path only; its content is never shown)."""
    g = config["gdc"]
    args = f"--retries {g['retries']} --timeout {g['timeout_s']}"
    if g["token_file"]:
        args += f" --token-file {shlex.quote(g['token_file'])}"
    return args


def gdc_source_inputs(wildcards):
    """The demo mirror must exist before anything reads it."""
    return [rules.demo_data.output.files, rules.demo_data.output.cases] if config.get("demo") else []


def gdc_project_args(wildcards):
    return " ".join(f"--project {shlex.quote(p)}" for p in config["cohorts"][wildcards.cohort]["projects"])


def selected_files(cohort, modality):
    """The selected rows of ``cohort`` for ``modality`` (rna, dnam, wsi), read after the gdc_select checkpoint."""
    path = checkpoints.gdc_select.get(cohort=cohort).output[0]
    df = pd.read_parquet(path)
    return df[df["modality"] == modality].reset_index(drop=True)


def download_report(cohort, modality):
    """Path of the download report of ``cohort``/``modality`` (one row per selected file, with its status)."""
    return f"{RESULTS}/{cohort}/gdc/download_{modality}.tsv"


def downloaded_files(cohort, modality):
    """The selected rows of ``cohort``/``modality`` whose files were downloaded and verified (report status
    ``downloaded`` or ``present``), read after the gdc_download checkpoint; ``local_path`` from the report."""
    table = pd.read_csv(checkpoints.gdc_download.get(cohort=cohort, modality=modality).output[0], sep="\t",
                         dtype={"file_id": str, "local_path": str, "status": str})
    ok = table[usable_downloads(table["status"])].set_index("file_id")["local_path"]
    rows = selected_files(cohort, modality)
    rows = rows[rows["file_id"].isin(ok.index)].copy()
    rows["local_path"] = rows["file_id"].map(ok)
    return rows.reset_index(drop=True)


# ------------------------------------------------------------------------------------------- WSI stage
from imputmae.omics import read_slide_table  # noqa: E402


def slide_rows(cohort):
    """Every slide of ``cohort``: patient, file_name, local_path, available (bool), reason (why not available).

    GDC: the selected diagnostic slides (after the gdc_select checkpoint), available once their download is
    verified (gdc_download checkpoint). Own tables: the rows of ``tables.slides`` (read when the DAG is built),
    available when the file exists; a missing one is named with its table row and the fix, and goes to QC."""
    if cohort in GDC_COHORTS:
        rows = selected_files(cohort, "wsi")[["patient", "file_name", "file_id"]].copy()
        ok = downloaded_files(cohort, "wsi").set_index("file_id")["local_path"]
        rows["local_path"] = rows["file_id"].map(ok)
        rows["available"] = rows["local_path"].notna()
        rows["reason"] = f"not downloaded (see {download_report(cohort, 'wsi')})"
        return rows.drop(columns="file_id")
    return _table_slides(cohort).copy()


@functools.cache
def _table_slides(cohort):
    """slide_rows of a cohort given as tables, read (and its missing slides logged) once per Snakemake run."""
    table = config["cohorts"][cohort]["tables"]["slides"]
    try:
        rows = read_slide_table(table)
    except ValueError as exc:
        raise WorkflowError(f"cohorts.{cohort}.tables.slides: {exc}") from None
    rows = rows.rename(columns={"path": "local_path", "exists": "available"})
    rows["reason"] = [f"slide not found: {p} ({table} row {r}; fix the path or remove the row)"
                      for p, r in zip(rows["local_path"], rows["row"])]
    for r in rows[~rows["available"]].itertuples():
        logger.warning(f"{table}: row {r.row} (patient {r.patient}): slide {r.local_path} not found; its WSI goes "
                       f"to QC as missing (fix the path or remove the row)")
    return rows


def slide_sources(wildcards):
    """What decides a cohort's slides: the GDC selection and download report, or the user's slide table."""
    c = wildcards.cohort
    if c in GDC_COHORTS:
        return {"report": download_report(c, "wsi"), "selected": f"{RESULTS}/{c}/gdc/selected.parquet"}
    return {"slide_table": config["cohorts"][c]["tables"]["slides"]}


# ------------------------------------------------------------------------------------------- Cluster (training)
def train_launcher(wildcards, resources):
    """The launcher of training jobs, ``exec torchrun --standalone --nproc_per_node=N -m imputmae`` when
    the job was granted N > 1 GPUs (``resources.gpu``: the rule's, or the profile's set-resources), else
    ``exec python -m imputmae`` (one GPU, or none). ``exec``: the trainer replaces the job's shell, so the SIGTERM
    Slurm sends before a time limit or a preemption (the profile's ``--signal=TERM@...``) reaches it directly; it
    writes ``last.pt`` and exits 75, and the next attempt (profile-level ``retries``) resumes from it."""
    try:
        n = int(resources.get("gpu", 0) or 0)
    except (TypeError, ValueError):   # a GPU model string such as "a100:2" is not a count
        n = int(str(resources.get("gpu")).rsplit(":", 1)[-1] or 1)
    if n > 1:
        return f"exec torchrun --standalone --nproc_per_node={n} -m imputmae"
    return "exec python -m imputmae"


# ------------------------------------------------------------------------------------------- Cluster (one-cohort rerun)
# workflow/scripts/rerun_cohort.py sets IMPUTMAE_KEEP_POOLED=1 while it rebuilds one cohort's models and the shared
# tables: the jobs that pool every cohort (splits, pretraining, Table 4) then take their stage inputs as ancient(),
# so the cohort's regenerated matrices do not make them rerun. Unset (every other run), mtimes count as usual.
KEEP_POOLED = os.environ.get("IMPUTMAE_KEEP_POOLED") == "1"


def pooled_input(files):
    """``files`` as inputs of a pooled job: ancient() during a one-cohort rerun, unchanged otherwise."""
    return ancient(files) if KEEP_POOLED else files


# ------------------------------------------------------------------------------------------- fine-tuning stage
def finetune_checkpoint(wildcards):
    """The multimodal pretraining a cohort's fine-tuning (and its Table 3 rows) starts from: that of the cohort's
    model size (cohorts.<name>.model, default model.size) and of the fold (fold 0 without pretrain.per_fold)."""
    fold = wildcards.fold if config["pretrain"]["per_fold"] else 0
    size = cohort_model_size(config, wildcards.cohort)
    return f"{RESULTS}/{pretrain_dir(config, size=size, run='multimodal', fold=fold)}/checkpoint.pt"


# ------------------------------------------------------------------------------------------- memory per job
# mem_mb of the training rules (Slurm's --mem), from what a job can know when it is scheduled: the model size,
# the batch, K tiles, and the shapes of the omics matrices it reads (their Parquet footers). Snakemake evaluates
# these once while building the DAG (matrices not written yet: the figure without them) and again when the job's
# inputs exist, before it is submitted. Formulas and measurements: docs/scaling.md, "Memory per job".
from imputmae.memory import (finetune_memory, matrix_shape, pretrain_memory, rows_memory,  # noqa: E402
                             to_mem_mb)

_TRAIN_ON_GPU = not config.get("demo")   # the rules' gpu resource: none in the CPU demo


def _shapes(paths):
    """The shapes of those of ``paths`` that exist (a matrix not written yet counts as empty)."""
    return [matrix_shape(p) for p in paths if os.path.isfile(p)]


def _omics_inputs(input):
    """{rna: [shape per cohort], dnam: [...]} of a job's matrix inputs."""
    named = dict(input.items())
    out = {}
    for m in MODALITIES:
        if m in named and not is_image(m):
            paths = named[m] if isinstance(named[m], list) else [named[m]]
            out[m] = _shapes([str(p) for p in paths])
    return out


def _cohort_config(cohort):
    return pretrain_config(config, cohort_model_size(config, cohort))


def finetune_mem_mb(wildcards, input, attempt):
    omics = {m: s[0] for m, s in _omics_inputs(input).items() if s}
    return to_mem_mb(finetune_memory(_cohort_config(wildcards.cohort), omics, gpu=_TRAIN_ON_GPU), attempt)


def rows_mem_mb(wildcards, input, attempt):
    omics = {m: s[0] for m, s in _omics_inputs(input).items() if s}
    clinical = _shapes([str(input.clinical)])
    patients = clinical[0].rows if clinical else 0
    return to_mem_mb(rows_memory(_cohort_config(wildcards.cohort), omics, patients, gpu=_TRAIN_ON_GPU), attempt)


def modality_tables(cohort):
    """{name: path} of each registry modality's stage output for ``cohort``: a vector modality's matrix
    ``<m>.parquet`` (always written: empty for a cohort without it), an image modality's QC table ``<m>_qc.tsv``
    (which lists its tile files) when the cohort can have that modality."""
    return {f"{m}_qc" if is_image(m) else m: f"{RESULTS}/{cohort}/{m}_qc.tsv" if is_image(m)
            else f"{RESULTS}/{cohort}/{m}.parquet" for m in MODALITIES
            if not is_image(m) or m in COHORT_MODALITIES[cohort]}


def cohort_stage_outputs(wildcards):
    """The stage outputs of docs/layout.md that fine-tuning and the baseline read for one cohort (its WSI QC
    table only when the cohort has slides)."""
    c = wildcards.cohort
    return {"splits": f"{RESULTS}/splits.parquet", "clinical": f"{RESULTS}/{c}/clinical.parquet",
            **modality_tables(c)}
