"""config.rehearsal.yaml runs config.yaml's settings: it validates, it changes only the source, the patients (the
cohorts' projects), the folds and the epochs, and its cohorts are config.yaml's (every key but the projects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from imputmae.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# What the rehearsal may change, and why (config.rehearsal.yaml's comments): the source, the patient count, the
# folds, the epochs (and the checkpoint interval, so that resuming runs within 2 epochs).
ALLOWED = {"results", "gdc.mirror", "gdc.download_dir", "cohorts", "splits.n_folds", "pretrain.epochs",
           "pretrain.warmup_epochs", "pretrain.checkpoint_every", "finetune.epochs", "finetune.warmup_epochs",
           "baselines.settings"}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or prefix in ("cohorts", "baselines.settings"):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def test_the_overlay_validates_and_changes_only_what_it_says():
    real = _flat(load_config([ROOT / "config.yaml"]))
    rehearsal = _flat(load_config([ROOT / "config.yaml", ROOT / "config.rehearsal.yaml"]))
    changed = {k for k in real.keys() | rehearsal.keys() if real.get(k) != rehearsal.get(k)}
    assert changed <= ALLOWED, sorted(changed - ALLOWED)
    assert {"wsi.keep", "wsi.tile_size", "wsi.n_candidates", "model.size", "model.wsi_patch_size"}.isdisjoint(changed)


def test_the_cohorts_are_config_yamls_on_the_demo_projects():
    real = yaml.safe_load((ROOT / "config.yaml").read_text())["cohorts"]
    rehearsal = yaml.safe_load((ROOT / "config.rehearsal.yaml").read_text())["cohorts"]
    assert rehearsal.keys() == real.keys()
    for name, spec in real.items():
        # every setting of the cohort (e.g. the model size it is fine-tuned with) kept; only the projects differ
        assert {k: v for k, v in rehearsal[name].items() if k != "projects"} == \
            {k: v for k, v in spec.items() if k != "projects"}, name
        assert rehearsal[name]["projects"] == [p.replace("TCGA-", "DEMO-") for p in spec["projects"]], name


def test_ci_writes_the_mirror_the_overlay_reads():
    mirror = yaml.safe_load((ROOT / "config.rehearsal.yaml").read_text())["gdc"]["mirror"]
    script = (ROOT / ".ci" / "rehearsal").read_text()
    assert f"imputmae demo-data {mirror} --scale paper $PROJECTS" in script


def test_cis_part_is_config_yamls_small_model_cohorts_with_their_data():
    """config.rehearsal-ci.yaml keeps exactly the cohorts config.yaml fine-tunes with the small model, with every
    setting of theirs; .ci/rehearsal writes exactly their projects, and .ci/run calls it."""
    from imputmae.config import cohort_model_size

    real = load_config([ROOT / "config.yaml"])
    ci = load_config([ROOT / "config.yaml", ROOT / "config.rehearsal.yaml", ROOT / "config.rehearsal-ci.yaml"])
    small = {c for c in real["cohorts"] if cohort_model_size(real, c) == "small"}
    assert small and set(ci["cohorts"]) == small
    full = load_config([ROOT / "config.yaml", ROOT / "config.rehearsal.yaml"])
    for c in small:
        assert ci["cohorts"][c] == full["cohorts"][c]
    changed = {k for k, v in _flat(ci).items() if _flat(full).get(k) != v}
    assert changed == {"cohorts"}, changed
    script = (ROOT / ".ci" / "rehearsal").read_text()
    projects = sorted(p for c in small for p in ci["cohorts"][c]["projects"])
    assert f'PROJECTS="--projects {" ".join(projects)}"' in script
    assert "config.rehearsal.yaml config.rehearsal-ci.yaml" in script
    assert "bash .ci/rehearsal" in (ROOT / ".ci" / "run").read_text()
