"""Cluster execution: the training launcher, preemption through the Snakemake rule, the single-cohort rerun.

The preemption test runs the ``pretrain`` rule's own shell command through Snakemake (local executor), sends
SIGTERM to the job's whole process group as Slurm does to a job step (``--signal=TERM@...``, or a preemption),
and reruns the same Snakemake command as the profile-level retry would. The engine's in-process resume test is in
test_engine.py; this one checks what the engine cannot: that the rule's command lets the signal reach the trainer,
that Snakemake leaves ``last.pt`` alone when it cleans up the failed job, and that the rerun resumes from it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from _synthetic_results import small_config, write_results
from imputmae import data
from imputmae.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TARGET = "results/pretrain/multimodal/fold0/checkpoint.pt"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _workdir(path: Path, epochs: int) -> Path:
    """A Snakemake working directory: results/ (the synthetic stage outputs and splits) and config.yaml."""
    path.mkdir(parents=True)
    results = path / "results"
    write_results(results)
    splits = data.make_splits(data.select_split_patients(data.load_patients(results, ["A", "B"])), 3, 0)
    data.write_splits(splits, results / "splits.parquet")
    cfg = small_config(Path("results"), epochs=epochs, checkpoint_every=5, unimodal=[])
    cfg["omics"]["n_quantiles"] = 20
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return path


def _snakemake(workdir: Path, *extra: str) -> list[str]:
    # --allowed-rules: the synthetic stage outputs and splits are given (no GDC stage ran)
    return [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--cores", "1", TARGET,
            "--allowed-rules", "pretrain", *extra]


def _metrics(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=["seconds"])


def test_train_launcher_follows_granted_gpus(tmp_path):
    """One process for 0 or 1 GPU, torchrun over N > 1; exec, so the trainer gets the job's signals itself."""
    work = _workdir(tmp_path / "w", epochs=1)
    for gpus, expected in ((0, "exec python -m imputmae pretrain"), (1, "exec python -m imputmae pretrain"),
                           (4, "exec torchrun --standalone --nproc_per_node=4 -m imputmae pretrain")):
        out = subprocess.run(_snakemake(work, "-n", "-p", "--set-resources", f"pretrain:gpu={gpus}"),
                             capture_output=True, text=True, env=_env(), check=True).stdout
        cmd = next(line for line in out.splitlines() if "imputmae pretrain" in line)
        assert expected in cmd, cmd


def test_pretrain_rule_resumes_after_sigterm(tmp_path):
    """SIGTERM mid-training -> exit 75 and last.pt (kept by Snakemake) -> the rerun ends equal to an uninterrupted run."""
    epochs = 40
    full = _workdir(tmp_path / "full", epochs)
    subprocess.run(_snakemake(full), env=_env(), check=True, capture_output=True)

    part = _workdir(tmp_path / "part", epochs)
    run_dir = part / "results/pretrain/multimodal/fold0"
    proc = subprocess.Popen(_snakemake(part), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:   # a few epochs in: the handler is installed
        m = run_dir / "metrics.csv"
        if m.is_file() and len(pd.read_csv(m)) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGTERM)          # Snakemake and the trainer, as slurmstepd signals a job step
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "exit status 75" in out, out[-3000:]
    log = (part / "logs/pretrain/multimodal/fold0.log").read_text()
    assert "preempted at epoch" in log
    assert (run_dir / "last.pt").is_file()       # not an output: Snakemake's cleanup of the failed job keeps it
    assert not (run_dir / "checkpoint.pt").exists()
    interrupted = load_checkpoint(run_dir / "last.pt")
    assert 3 <= interrupted["epoch"] < epochs

    subprocess.run(_snakemake(part), env=_env(), check=True, capture_output=True)   # what the retry runs
    assert "resumed from" in (part / "logs/pretrain/multimodal/fold0.log").read_text()
    assert not (run_dir / "last.pt").exists()
    a = load_checkpoint(full / TARGET)
    b = load_checkpoint(part / TARGET)
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == epochs
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma, mb = _metrics(full / "results/pretrain/multimodal/fold0/metrics.csv"), _metrics(run_dir / "metrics.csv")
    assert len(ma) == epochs
    pd.testing.assert_frame_equal(ma, mb, check_exact=False, rtol=1e-12)


# ------------------------------------------------------------------------------------------ one-cohort rerun

SMALL_DEMO = """\
results: results/demo
demo: {seed: 0, out: results/demo/mirror, n_patients: {DEMO-BRCA: 8, DEMO-UCEC: 12, DEMO-GBM: 6, DEMO-LGG: 6}}
gdc: {download_dir: results/demo/gdc_data, workers: 1}
cohorts:
  BRCA: {projects: [DEMO-BRCA]}
  UCEC: {projects: [DEMO-UCEC]}
  GBMLGG: {projects: [DEMO-GBM, DEMO-LGG]}
wsi: {n_candidates: 20, keep: 2, threads: 1}
omics: {n_quantiles: 50}
splits: {n_folds: 2}
model: {size: tiny}
pretrain: {per_fold: false, unimodal: [], epochs: 1, warmup_epochs: 0, batch_size: 8, num_workers: 0,
           deterministic: true}
finetune: {modality_sets: [all], epochs: 1, batch_size: 8, warmup_epochs: 0}
"""


def _state(results: Path) -> dict[str, tuple[int, bytes]]:
    import hashlib

    return {str(p.relative_to(results)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).digest())
            for p in sorted(results.rglob("*")) if p.is_file()}


@pytest.mark.slow   # ~80 s on 2 cores: a whole (tiny) demo, then the rerun
def test_rerun_one_cohort_touches_nothing_else(tmp_path):
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (tmp_path / "small.yaml").write_text(SMALL_DEMO)
    opts = ["--cores", "2", "--configfile", "small.yaml", "-q"]
    subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *opts], cwd=tmp_path, env=_env(), check=True,
                   capture_output=True)
    results = tmp_path / "results/demo"
    before = _state(results)
    time.sleep(1.1)   # coarse file-system clocks
    out = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/rerun_cohort.py"), "UCEC", *opts],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    after = _state(results)

    def ucec(path: str) -> bool:
        return path.startswith(("UCEC/", "finetune/UCEC/", "baselines/cox/UCEC/"))

    # the shared tables with a row per cohort (and Table 3's Kaplan-Meier figures, the HTML report) are rebuilt
    shared = {p for p in before if p.startswith(("tables/table2", "tables/table3", "figures/km_", "report.html"))}
    others = [p for p in before if not ucec(p) and p not in shared]
    assert any(p.startswith("BRCA/wsi/") for p in others) and "splits.parquet" in others
    assert any(p.startswith("pretrain/") for p in others)
    changed = [p for p in others if after.get(p) != before[p]]
    assert not changed, changed[:10]
    # every output of the cohort's own jobs was rewritten (downloaded data are verified and kept)
    mine = [p for p in before if ucec(p)]
    assert len(mine) > 30
    stale = [p for p in mine if after[p][0] == before[p][0]]
    assert not stale, stale[:10]
    assert all(after[p][0] > before[p][0] for p in shared if p.startswith("tables/table2."))
    assert set(after) == set(before)
