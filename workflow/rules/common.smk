# Shared by the workflow: validation, the cohort table, paths, and the list of final targets.
import json
import sys
from pathlib import Path

# Rules run the CLI from this checkout's sources, installed or not, in whatever environment runs the job
# (the project venv, or a stage's conda env from envs/ under --use-conda).
SRC = str(Path(workflow.basedir) / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from snakemake.settings.types import DeploymentMethod  # noqa: E402

from imputmae.config import ConfigError, validate_config  # noqa: E402

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

# Each rule file appends the final outputs (paths, or functions of wildcards returning paths) to TARGETS.
TARGETS = []


def all_targets(wildcards):
    out = []
    for t in TARGETS:
        out.extend([t] if isinstance(t, str) else t(wildcards))
    return out


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

