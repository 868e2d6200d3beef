"""workflow/scripts/benchmark_summary.py on a fake benchmarks folder: per-rule sums, maxima, the job with the peak,
files older than --since left out, "NA" memory, a malformed file named."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _mod():
    spec = importlib.util.spec_from_file_location("benchmark_summary", ROOT / "workflow/scripts/benchmark_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench(folder: Path, rel: str, s: float, rss: str, cpu: float, mtime: float | None = None) -> None:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pss = "NA" if rss == "NA" else float(rss) / 2  # forked workers: RSS counts shared pages once per process
    path.write_text(HEADER + f"{s}\t0:00:{int(s):02d}\t{rss}\t1.0\t1.0\t{pss}\t0\t0\t50\t{cpu}\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@pytest.fixture
def folder(tmp_path):
    b = tmp_path / "benchmarks"
    _bench(b, "finetune/BRCA/wsi/fold0.tsv", 40.0, "900.5", 30.0)
    _bench(b, "finetune/BRCA/rna/fold1.tsv", 10.0, "300.0", 8.0)
    _bench(b, "finetune/UCEC/all/fold0.tsv", 25.0, "1200.0", 20.0)
    _bench(b, "wsi_tiles/BRCA/DEMO-BH-0001.tsv", 7.0, "NA", 5.0)  # too short for psutil to sample
    _bench(b, "splits/splits.tsv", 2.0, "150.0", 1.5, mtime=1_000_000.0)  # an earlier run's
    return b


def test_sums_maxima_and_the_job_with_the_peak(folder):
    m = _mod()
    s = m.summarise(m.read_benchmarks(folder)).set_index("rule")
    assert list(s.index) == ["finetune", "wsi_tiles", "splits"]  # longest summed wall time first
    ft = s.loc["finetune"]
    assert (ft.jobs, ft.wall_s, ft.max_wall_s, ft.cpu_s, ft.max_rss_mb) == (3, 75.0, 40.0, 58.0, 1200.0)
    assert ft.max_rss_job == "UCEC/all/fold0" and ft.max_pss_mb == 600.0
    tiles = s.loc["wsi_tiles"]
    assert tiles.jobs == 1 and tiles.wall_s == 7.0 and tiles.max_rss_job == "" and tiles.max_rss_mb != tiles.max_rss_mb


def test_since_keeps_only_this_runs_files(folder):
    m = _mod()
    jobs = m.read_benchmarks(folder, since=2_000_000.0)
    assert set(jobs["rule"]) == {"finetune", "wsi_tiles"} and len(jobs) == 4


def test_the_printed_table_has_a_row_per_rule_and_a_total(folder, capsys):
    m = _mod()
    assert m.main([str(folder), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| rule | jobs | wall s (sum)")
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| finetune", "| wsi_tiles", "| splits", "| total"]
    assert lines[-1] == "| total | 5 | 84.0 | 40.0 | 64.5 | 1,200 |  | 600 |"
    assert m.main([str(folder), "--since", "9e12"]) == 1
    assert "no benchmark files" in capsys.readouterr().err


def test_a_file_that_is_not_a_benchmark_is_named(tmp_path):
    m = _mod()
    bad = tmp_path / "benchmarks" / "table2" / "table2.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="table2.tsv: not a Snakemake benchmark file"):
        m.read_benchmarks(tmp_path / "benchmarks")
