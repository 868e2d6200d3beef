"""Cohorts given as tables (README "Bring your own matrices") through the real workflow: Snakemake plans them with
no WSI stage when they have no slides, alone or beside GDC cohorts, and one real run ends with Tables 2-4 and the
report holding the cohort's row.
"""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest

from imputmae.cli import main
from imputmae.config import (available_modalities, cohort_modalities, cohort_modality_sets, load_config,
                             merge_config)
from imputmae.data import select_split_patients
from own_tables import ROOT, snakemake_command, tiny_overlay, write_own_tables, write_slide_table


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
    table3 = next(line for line in out.splitlines() if "imputmae table3 " in line)
    assert sorted(re.findall(r"--not-applicable MINE:(\w+)", table3)) == absent
    assert "--no-literature" in table3                                 # no TCGA cohort: no quoted TCGA rows
    # pretraining: the multimodal run on what the tables bring, unimodal runs only for those
    assert jobs["pretrain"] == 1 + len(modalities)
    assert f"pretrain.modalities: no cohort has {', '.join(m for m in ('rna', 'dnam', 'wsi') if m in absent)}" in out
    table2 = next(line for line in out.splitlines() if "imputmae table2" in line)
    assert "--table-cohort MINE" in table2 and "--cohort " not in table2


def test_dry_run_plans_an_own_cohort_beside_a_gdc_cohort(tmp_path):
    tables = {k: str(v) for k, v in write_own_tables(tmp_path / "my").items()}
    out = _dry_run(tmp_path, {"MINE": {"tables": tables}, "BRCA": {"projects": ["TCGA-BRCA"]}})
    jobs = _jobs(out)
    assert jobs["omics_tables"] == 1 and jobs["gdc_manifest"] == 1 and jobs["wsi_qc"] == 1
    assert "res/BRCA/wsi_qc.tsv" in out and "res/MINE/wsi_qc.tsv" not in out
    table2 = next(line for line in out.splitlines() if "imputmae table2" in line)
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
    assert main(["table2", "--results", str(tmp_path / "res"), "--table-cohort", "MINE",
                 "--out", str(tmp_path / "res" / "tables" / "table2")]) == 0
    row = pd.read_csv(tmp_path / "res" / "tables" / "table2.csv").iloc[0]
    assert row["Cohort"] == "MINE" and row["RNA count"] == 10
    assert (row["DNAm"], row["Clinical"], row["WSI"]) == (0.0, 100.0, 0.0)
    assert "no slide table: 0%" in (tmp_path / "res" / "tables" / "table2.md").read_text()


def test_snakemake_runs_an_own_cohort_end_to_end(tmp_path):
    """The README's own-matrices recipe, as a user runs it: `snakemake --configfile my.yaml` on a cohort of
    RNA, DNAm and clinical tables, no slides, two matrix patients without a clinical row (pretraining only);
    Tables 2-4 and the report hold its row."""
    from test_readme import readme_own_cohort

    mine = readme_own_cohort()["MINE"]                    # the README's recipe, its paths pointed at our tables
    ours = write_own_tables(tmp_path / "my", unlabelled=2)
    assert set(mine["tables"]) == set(ours), mine
    mine["tables"] = {k: str(ours[k]) for k in mine["tables"]}
    overlay = tiny_overlay(tmp_path / "res", {"MINE": mine}, modality_sets=("wsi", "all"), unimodal=())
    run = subprocess.run(snakemake_command(tmp_path, overlay), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    res = tmp_path / "res"
    t2 = pd.read_csv(res / "tables" / "table2.csv")
    assert t2["Cohort"].tolist() == ["MINE"] and t2["WSI"].tolist() == [0.0] and t2["RNA count"].tolist() == [24]
    assert t2["Clinical"].tolist() == [round(100 * 22 / 24, 2)]
    assert pd.read_csv(res / "MINE" / "clinical_qc.tsv", sep="\t")["patient"].tolist() == ["P022", "P023"]
    assert len(pd.read_parquet(res / "splits.parquet")) == 22
    t3 = pd.read_csv(res / "tables" / "table3.csv")
    ours = t3[t3["model"] == "impuTMAE (ours)"].set_index("modality")["MINE"]
    assert ours.index.tolist() == ["all"] and ours.str.match(r"^\d\.\d{3} \[").all()   # no WSI row: no slides
    rows = set(t3["model"])                                 # the rerun baselines and ablations are rows too
    assert {"MultiSurv", "CMTA", "MoME", "impuTMAE, no pretraining", "Cox-PCA, decoder-imputed"} <= rows
    assert "MINE: no WSI (the cohort's tables have none), not fine-tuned." in (res / "tables" / "table3.md").read_text()
    cox_wsi = json.loads((res / "baselines" / "cox" / "MINE" / "wsi" / "fold0" / "metrics.json").read_text())
    assert cox_wsi["n_test"] == 0 and cox_wsi["reason"] == "no patient of MINE has wsi"
    t4 = pd.read_csv(res / "tables" / "table4.csv")
    assert len(t4) >= 1
    assert (res / "figures" / "km_MINE.png").is_file() and (res / "report.html").is_file()
    assert not (res / "MINE" / "wsi_qc.tsv").exists() and not list(res.rglob("wsi_qc.tsv"))
    assert "MINE" in (res / "report.html").read_text()
    # predictions.parquet stands alone: its time grid recomputes the fold's C-index with pycox
    _check_cindex_from_predictions(res / "finetune" / "MINE" / "all" / "fold0")


def _check_cindex_from_predictions(folder):
    """Antolini's C-index of the test rows of ``folder/predictions.parquet`` by pycox, on the curves interpolated
    linearly between the cuts the file carries (10 points per interval, as fine-tuning scores them) by pandas,
    equals metrics.json's."""
    from pycox.evaluation import EvalSurv

    pred = pd.read_parquet(folder / "predictions.parquet")
    cuts = np.asarray(pred.attrs["cuts_days"])
    test = pred[pred["split"] == "test"]
    surv = pd.DataFrame(test[[f"s_{k}" for k in range(cuts.size)]].to_numpy().T, index=cuts)
    grid = np.unique(np.concatenate([np.linspace(a, b, 11)[:-1] for a, b in zip(cuts[:-1], cuts[1:])] + [cuts[-1:]]))
    surv = surv.reindex(np.union1d(cuts, grid)).interpolate(method="index").loc[grid]
    ev = EvalSurv(surv, test["time"].to_numpy(), test["event"].to_numpy().astype(int), censor_surv="km")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert ev.concordance_td("antolini") == pytest.approx(metrics["antolini"], abs=1e-9)


def test_km_figure_shows_the_numbers_at_risk(tmp_path, monkeypatch):
    import lifelines.plotting

    from imputmae.report import plot_km

    calls = []
    real = lifelines.plotting.add_at_risk_counts
    monkeypatch.setattr(lifelines.plotting, "add_at_risk_counts",
                        lambda *fitters, **kw: calls.append(fitters) or real(*fitters, **kw))
    rng = np.random.default_rng(0)
    groups = pd.DataFrame({"time": rng.exponential(800, 30), "event": rng.integers(0, 2, 30),
                           "group": ["high risk"] * 12 + ["low risk"] * 18})
    plot_km(groups, "t", tmp_path / "km.png")
    assert (tmp_path / "km.png").is_file() and len(calls) == 1
    assert [int(f.event_table["at_risk"].iloc[0]) for f in calls[0]] == [18, 12]      # low risk, then high risk


# ---------------------------------------------------------------------------------------------- tables.slides


def test_read_slide_table_resolves_paths_beside_the_table_and_flags_missing_slides(tmp_path):
    from imputmae.omics import read_slide_table

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.svs").write_bytes(b"x")
    pd.DataFrame({"patient": ["P1", "P1", "P2"], "path": ["s/a.svs", str(tmp_path / "s" / "b.svs"), "s/c.tiff"]}
                 ).to_csv(tmp_path / "slides.csv", index=False)
    t = read_slide_table(tmp_path / "slides.csv")
    assert t["path"].tolist() == [str(tmp_path / "s" / n) for n in ("a.svs", "b.svs", "c.tiff")]
    assert t["exists"].tolist() == [True, False, False] and t["row"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("rows,needle", [
    ({"patient": ["P1", "P1"], "path": ["a.svs", "a.svs"]}, "rows 1, 2 (patient P1): slide 'a.svs' listed more"),
    ({"patient": ["P 1"], "path": ["a.svs"]}, "row 1 (patient 'P 1'): a patient id may hold only"),
    ({"patient": ["P1", None], "path": ["a.svs", "b.svs"]}, "row 2: empty patient"),
    ({"case": ["P1"], "path": ["a.svs"]}, "expected columns patient and path"),
])
def test_read_slide_table_errors_name_the_file_row_patient_and_fix(tmp_path, rows, needle):
    from imputmae.omics import read_slide_table

    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    with pytest.raises(ValueError) as err:
        read_slide_table(tmp_path / "slides.csv")
    assert str(err.value).startswith(f"{tmp_path / 'slides.csv'}: ") and needle in str(err.value)
    assert "\n" not in str(err.value)


def _slides_cohort(tmp_path, n_slides=4, missing=("P002",)):
    tables = write_own_tables(tmp_path / "my", n=12)
    tables["slides"] = write_slide_table(tmp_path / "my", [f"P{i:03d}" for i in range(n_slides)], missing=missing)
    return {"MINE": {"tables": {k: str(v) for k, v in tables.items()}}}


def test_own_slides_go_through_the_wsi_stage_and_a_missing_one_through_qc(tmp_path):
    """tables.slides: the same wsi_tiles/wsi_qc rules as GDC slides (run for real on small synthetic slides); a
    path that does not exist gives its patient a QC row naming the table row and the fix, and the run goes on."""
    cohorts = _slides_cohort(tmp_path)
    cmd = snakemake_command(tmp_path, tiny_overlay(tmp_path / "res", cohorts), str(tmp_path / "res/MINE/wsi_qc.tsv"))
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "slides.csv: row 3 (patient P002): slide" in run.stderr and "not found" in run.stderr
    qc = pd.read_csv(tmp_path / "res/MINE/wsi_qc.tsv", sep="\t").set_index("patient")
    assert qc.index.tolist() == ["P000", "P001", "P002", "P003"]
    assert (qc.drop(index="P002")["status"] == "ok").all() and (qc.drop(index="P002")["n_tiles"] == 4).all()
    assert qc.loc["P002", "status"] == (f"slide not found: {tmp_path / 'my/slides/P002-DX1.svs'} "
                                        f"({tmp_path / 'my/slides.csv'} row 3; fix the path or remove the row)")
    assert qc.loc["P002", "n_tiles"] == 0
    assert np.load(tmp_path / "res/MINE/wsi/P000.npy").shape == (4, 64, 64, 3)


def test_dry_run_plans_own_slides_for_table2_splits_and_fine_tuning(tmp_path):
    out = _dry_run(tmp_path, _slides_cohort(tmp_path), modality_sets=("wsi", "all"))
    jobs = _jobs(out)
    assert jobs["wsi_tiles"] == 4 and jobs["wsi_qc"] == 1 and jobs["finetune"] == 4     # wsi and all, 2 folds
    assert "pretrain.modalities: no cohort has" not in out
    table3 = next(line for line in out.splitlines() if "imputmae table3 " in line)
    assert "--not-applicable" not in table3


@pytest.mark.slow
def test_snakemake_runs_an_own_cohort_with_slides_end_to_end(tmp_path):
    """As the fast end-to-end test, with slide rows for 11 of 12 patients (one path missing, so 10 slides): Table 2
    counts the patients with a slide row, Table 3 has a WSI row."""
    overlay = tiny_overlay(tmp_path / "res", _slides_cohort(tmp_path, n_slides=11), modality_sets=("wsi", "all"),
                           unimodal=())
    run = subprocess.run(snakemake_command(tmp_path, overlay), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    t2 = pd.read_csv(tmp_path / "res/tables/table2.csv").iloc[0]
    assert t2["Cohort"] == "MINE" and t2["WSI"] == round(100 * 11 / 12, 2)
    t3 = pd.read_csv(tmp_path / "res/tables/table3.csv")
    ours = t3[t3["model"] == "impuTMAE (ours)"].set_index("modality")["MINE"]
    # a C-index per row (a fold whose few WSI test patients have no comparable pair scores NaN and is left out)
    assert ours.index.tolist() == ["WSI", "all"] and ours.str.match(r"^\d\.\d{3} ").all()


# ---------------------------------------------------------------------------------------------- bad input


def _omics_tables(tables, out, *extra):
    argv = ["omics", "tables", "--cohort", "MINE", "--clinical", str(tables["clinical"]), "--out-dir", str(out)]
    for m in ("rna", "dnam"):
        if m in tables:
            argv += [f"--{m}", str(tables[m])]
    return main(argv + list(extra))


def test_matrix_patients_without_a_clinical_row_serve_pretraining_and_are_listed(tmp_path, caplog):
    t = write_own_tables(tmp_path / "my", n=12, unlabelled=3)
    out = tmp_path / "res" / "MINE"
    assert _omics_tables(t, out) == 0
    qc = pd.read_csv(out / "clinical_qc.tsv", sep="\t")
    assert qc["patient"].tolist() == ["P009", "P010", "P011"] and (qc["project_id"] == "MINE").all()
    assert qc["reason"].iloc[0] == (f"in {t['rna']}, {t['dnam']} but not in the clinical table {t['clinical']}: "
                                    f"no survival label, pretraining only")
    assert "3 patient(s) of the matrices have no row in" in caplog.text
    from imputmae.data import load_patients

    patients = load_patients(tmp_path / "res", ["MINE"]).set_index("patient")
    assert patients.loc["P010", "has_rna"] and pd.isna(patients.loc["P010", "time"])     # pretraining, no label
    assert "P010" not in set(select_split_patients(patients.reset_index())["patient"])


def test_times_that_look_like_months_warn_naming_the_row_and_the_fix(tmp_path, caplog):
    t = write_own_tables(tmp_path / "my", n=8)
    clin = pd.read_csv(t["clinical"])
    clin["time"] = (clin["time"] / 30.44).round(1)
    clin.to_csv(t["clinical"], index=False)
    assert _omics_tables(t, tmp_path / "out") == 0
    r = int(clin["time"].idxmax())
    assert (f"{t['clinical']}: every time is below 200 (longest: row {r + 1}, patient {clin['patient'][r]}, "
            f"{clin['time'][r]}): if these are months, multiply them by 30.44 (times are days)") in caplog.text


@pytest.mark.parametrize("table,mutate,needle", [
    ("clinical", lambda c: c.assign(patient=c["patient"].replace("P003", "P001")),
     "rows 2, 4 (patient 'P001'): the same patient more than once; keep one row per patient"),
    ("clinical", lambda c: c.assign(event=c["event"].where(c.index != 2, 2)),
     "row 3 (patient P002): event 2, expected 0 (censored) or 1 (death)"),
    ("clinical", lambda c: c.assign(event=c["event"].astype(object).where(c.index != 1, "Dead")),
     "row 2 (patient P001): event 'Dead', expected 0 (censored) or 1 (death)"),
    ("rna", lambda m: m.assign(sample=m["sample"].replace("P005", "P000")),
     "rows 1, 6 (patient 'P000'): the same patient more than once"),
])
def test_bad_own_tables_stop_with_one_line_and_write_nothing(tmp_path, capsys, table, mutate, needle):
    t = write_own_tables(tmp_path / "my", n=8)
    sep = "\t" if t[table].suffix == ".tsv" else ","
    mutate(pd.read_csv(t[table], sep=sep)).to_csv(t[table], sep=sep, index=False)
    out = tmp_path / "out"
    assert _omics_tables(t, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"imputmae omics: error: {t[table]}: ") and needle in err[-1], err[-1]
    assert not out.exists() or not any(out.iterdir())                  # nothing half-written
