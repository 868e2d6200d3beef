"""Cohorts given as tables (README "Bring your own matrices") through the real workflow: Snakemake plans them with
no WSI stage when they have no slides, alone or beside GDC cohorts, and one real run ends with Tables 2-4 and the
report holding the cohort's row.
"""

from __future__ import annotations

import json
import re
import subprocess

import pandas as pd
import pytest

from imputmae.cli import main
from imputmae.config import (available_modalities, cohort_modalities, cohort_modality_sets, load_config,
                             merge_config)
from imputmae.data import select_split_patients
from own_tables import ROOT, snakemake_command, tiny_overlay, write_own_tables


def _jobs(stdout: str) -> dict[str, int]:
    """The dry run's "Job stats" table: rule -> count."""
    stats = stdout[stdout.index("Job stats:"):].splitlines()[3:]
    out = {}
    for line in stats:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        out[m.group(1)] = int(m.group(2))
    return out


def _dry_run(tmp_path, cohorts, **overlay):
    cmd = snakemake_command(tmp_path, tiny_overlay(tmp_path / "res", cohorts, **overlay), "-n", "-p")
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return run.stdout + run.stderr


@pytest.mark.parametrize("modalities", [("rna", "dnam"), ("dnam",)])
def test_dry_run_plans_an_own_cohort_without_any_wsi_stage(tmp_path, modalities):
    tables = {k: str(v) for k, v in write_own_tables(tmp_path / "my", modalities=modalities).items()}
    out = _dry_run(tmp_path, {"MINE": {"tables": tables}}, modality_sets=("rna", "dnam", "wsi", "all"),
                   unimodal=("rna", "dnam", "wsi"))
    jobs = _jobs(out)
    assert "wsi_qc.tsv" not in out and "wsi_tiles" not in jobs and "wsi_qc" not in jobs
    assert not any(r.startswith("gdc_") for r in jobs), jobs          # MINE alone: config.yaml's TCGA cohorts replaced
    assert jobs["omics_tables"] == 1 and jobs["table2"] == 1 and jobs["table3"] == 1 and jobs["report"] == 1
    # fine-tuning: 'all' and each modality the tables bring, 2 folds; the rest is marked in Table 3
    assert jobs["finetune"] == 2 * (1 + len(modalities))
    absent = sorted({"rna", "dnam", "wsi"} - set(modalities))
    table3 = next(line for line in out.splitlines() if "imputmae table3" in line)
    assert sorted(re.findall(r"--not-applicable MINE:(\w+)", table3)) == absent
    assert "--no-literature" in table3                                 # no TCGA cohort: no quoted TCGA rows
    # pretraining: the multimodal run on what the tables bring, unimodal runs only for those
    assert jobs["pretrain"] == 1 + len(modalities)
    assert f"pretrain.modalities: no cohort has {', '.join(m for m in ('rna', 'dnam', 'wsi') if m in absent)}" in out
    table2 = next(line for line in out.splitlines() if "imputmae tables table2" in line)
    assert "--table-cohort MINE" in table2 and "--cohort " not in table2


def test_dry_run_plans_an_own_cohort_beside_a_gdc_cohort(tmp_path):
    tables = {k: str(v) for k, v in write_own_tables(tmp_path / "my").items()}
    out = _dry_run(tmp_path, {"MINE": {"tables": tables}, "BRCA": {"projects": ["TCGA-BRCA"]}})
    jobs = _jobs(out)
    assert jobs["omics_tables"] == 1 and jobs["gdc_manifest"] == 1 and jobs["wsi_qc"] == 1
    assert "res/BRCA/wsi_qc.tsv" in out and "res/MINE/wsi_qc.tsv" not in out
    table2 = next(line for line in out.splitlines() if "imputmae tables table2" in line)
    assert "--cohort BRCA" in table2 and "--table-cohort MINE" in table2
    assert "pretrain.modalities: no cohort has" not in out              # BRCA brings slides: WSI is pretrained


def test_cohorts_come_whole_from_the_last_file_naming_them(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("cohorts:\n  MINE: {tables: {rna: r.csv, clinical: c.csv}}\nsplits: {n_folds: 3}\n")
    other = tmp_path / "other.yaml"
    other.write_text("splits: {seed: 4}\n")
    cfg = load_config([ROOT / "config.yaml", own, other])
    assert list(cfg["cohorts"]) == ["MINE"] and cfg["splits"] == {"n_folds": 3, "seed": 4}
    assert set(load_config([ROOT / "config.yaml", other])["cohorts"]) == {"BRCA", "UCEC", "GBMLGG"}


def test_cohort_modalities_follow_the_tables_given():
    base = load_config([ROOT / "config.yaml"])
    cfg = merge_config(base, {})
    cfg["cohorts"] = {"MINE": {"tables": {"dnam": "d.tsv", "clinical": "c.csv"}},
                      "BRCA": {"projects": ["TCGA-BRCA"]}}
    assert cohort_modalities(cfg["cohorts"]["MINE"]) == ("dnam",)
    assert cohort_modalities(cfg["cohorts"]["BRCA"]) == ("rna", "dnam", "wsi")
    assert cohort_modality_sets(cfg, "MINE") == ["dnam", "all"]
    assert cohort_modality_sets(cfg, "BRCA") == ["rna", "dnam", "wsi", "all"]
    assert available_modalities(cfg) == ("rna", "dnam", "wsi")
    del cfg["cohorts"]["BRCA"]
    assert available_modalities(cfg) == ("dnam",)


def test_a_cohort_without_rna_splits_its_patients_with_any_modality():
    patients = pd.DataFrame({
        "patient": ["a1", "a2", "a3", "m1", "m2", "m3"], "cohort": ["A"] * 3 + ["MINE"] * 3,
        "time": [10.0, 20.0, None, 5.0, 6.0, None], "event": [1, 0, None, 1, 0, None],
        "has_rna": [True, False, True, False, False, False], "has_dnam": [True, True, True, True, False, True],
        "has_wsi": [False] * 6})
    chosen = select_split_patients(patients)
    # A has RNA: labels and RNA (a2 lacks RNA); MINE has none: labels and any modality (m2 has nothing)
    assert chosen["patient"].tolist() == ["a1", "m1"]


def test_table2_counts_an_own_cohort_from_its_matrices(tmp_path):
    t = write_own_tables(tmp_path / "my", n=10)
    out = tmp_path / "res" / "MINE"
    assert main(["omics", "tables", "--cohort", "MINE", "--clinical", str(t["clinical"]), "--rna", str(t["rna"]),
                 "--out-dir", str(out)]) == 0
    assert main(["tables", "table2", "--results", str(tmp_path / "res"), "--table-cohort", "MINE",
                 "--out", str(tmp_path / "res" / "tables" / "table2")]) == 0
    row = pd.read_csv(tmp_path / "res" / "tables" / "table2.csv").iloc[0]
    assert row["Cohort"] == "MINE" and row["RNA count"] == 10
    assert (row["DNAm"], row["Clinical"], row["WSI"]) == (0.0, 100.0, 0.0)
    assert "no slide table: 0%" in (tmp_path / "res" / "tables" / "table2.md").read_text()


def test_snakemake_runs_an_own_cohort_end_to_end(tmp_path):
    """The README's own-matrices recipe, as a user runs it: `snakemake --configfile my.yaml` on a cohort of
    RNA, DNAm and clinical tables, no slides; Tables 2-4 and the report hold its row."""
    tables = {k: str(v) for k, v in write_own_tables(tmp_path / "my").items()}
    overlay = tiny_overlay(tmp_path / "res", {"MINE": {"tables": tables}}, modality_sets=("wsi", "all"),
                           unimodal=())
    run = subprocess.run(snakemake_command(tmp_path, overlay), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    res = tmp_path / "res"
    t2 = pd.read_csv(res / "tables" / "table2.csv")
    assert t2["Cohort"].tolist() == ["MINE"] and t2["WSI"].tolist() == [0.0] and t2["RNA count"].tolist() == [24]
    t3 = pd.read_csv(res / "tables" / "table3.csv")
    ours = t3[t3["model"] == "impuTMAE (ours)"].set_index("modality")["MINE"]
    assert ours.index.tolist() == ["all"] and ours.str.endswith("(2)").all()   # no WSI row: no slides
    assert "MINE: no WSI (the cohort's tables have none), not fine-tuned." in (res / "tables" / "table3.md").read_text()
    cox_wsi = json.loads((res / "baselines" / "cox" / "MINE" / "wsi" / "fold0" / "metrics.json").read_text())
    assert cox_wsi["n_test"] == 0 and cox_wsi["reason"] == "no patient of MINE has wsi"
    t4 = pd.read_csv(res / "tables" / "table4.csv")
    assert len(t4) >= 1
    assert (res / "figures" / "km_MINE.png").is_file() and (res / "report.html").is_file()
    assert not (res / "MINE" / "wsi_qc.tsv").exists() and not list(res.rglob("wsi_qc.tsv"))
    assert "MINE" in (res / "report.html").read_text()
