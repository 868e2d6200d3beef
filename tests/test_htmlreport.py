"""The HTML report (imputmae.htmlreport, ``imputmae report``) on a small synthetic results folder."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from imputmae import __version__
from imputmae.cli import main
from imputmae.htmlreport import build_report, find_cohorts, markdown_blocks, png_data_uri, wsi_status_counts

ODD = "TCGA-<b>&1"   # a patient id that must be escaped
IMG = '<img src="data:image/png;base64,'

TABLE3_MD = """\
Table 3: Antolini's C-index on the held-out test patients, mean ± std over folds (number of folds).

| model | modality | A | B |
|---|---|---|---|
| impuTMAE (ours) | all | 0.700 ± 0.010 (2) | 0.650 ± 0.020 (2) |

- Modality sets: 'all' uses every patient.
- oracle: Harrell's C-index of the true risk.
"""
TABLE4_MD = """\
# Table 4: reconstruction MSE

Masked-patch MSE on each fold's
test patients.

| Pretraining | RNA |
| --- | --- |
| Multimodal pretraining | 0.1 |

Paper (Table 4): multimodal 0.0039.

## Whole-modality imputation (multimodal model)

Each modality removed from test patients.

| Modality | decoder MSE |
| --- | --- |
| rna | 0.2 |
"""


def _png(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    assert cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _tsv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, sep="\t", index=False)


def _results(root: Path) -> Path:
    """Cohort A: every stage output, a slide that failed QC, an excluded omics file and patient; cohort B: only
    its KM figure and an empty omics QC table."""
    r = root / "results"
    t = r / "tables"
    t.mkdir(parents=True)
    (t / "table2.csv").write_text("Cohort,DNAm,Clinical,WSI,RNA count\nA,97.44,100.0,75.0,4\nB,50.0,50.0,0.0,2\n")
    (t / "table3.csv").write_text("model,modality,source,A,B\nimpuTMAE (ours),all,this run,0.700 ± 0.010 (2),"
                                  "0.650 ± 0.020 (2)\n", encoding="utf-8")
    (t / "table3.md").write_text(TABLE3_MD, encoding="utf-8")
    (t / "table4.csv").write_text("Pretraining,RNA\nMultimodal pretraining,0.0858571\n")
    (t / "table4_imputation.csv").write_text("modality,model_mse\nrna,0.0876913\n")
    (t / "table4.md").write_text(TABLE4_MD)
    _png(r / "figures" / "km_A.png", 48, 60, 1)
    _png(r / "figures" / "km_B.png", 48, 60, 2)
    for run, folds in [("multimodal", (0, 1, 10)), ("rna", (0,))]:
        for k in folds:
            _png(r / "pretrain" / run / f"fold{k}" / "loss.png", 40, 60, 10 + k)
    a = r / "A"
    _tsv(a / "wsi_qc.tsv", [dict(patient="TCGA-01", slide="s1.svs", status="ok"),
                            dict(patient="TCGA-02", slide="s2.svs", status="cannot open: Unsupported file"),
                            dict(patient=ODD, slide="s3.svs", status="ok"),
                            dict(patient="TCGA-04", slide="s4.svs", status="ok")],
         ["patient", "slide", "status"])
    _tsv(a / "omics_qc.tsv", [dict(patient="TCGA-03", modality="rna", file="/abs/secret/dir/x.rna.tsv",
                                   reason="line 7: 'abc' is not a number <value> & more")],
         ["patient", "modality", "file", "reason"])
    _tsv(a / "clinical_qc.tsv", [dict(patient="TCGA-05", project_id="P-A", reason="dead without days_to_death")],
         ["patient", "project_id", "reason"])
    for i, p in enumerate(["TCGA-04", "TCGA-01", "TCGA-02", ODD]):
        _png(a / "wsi" / f"{p}.png", 300 if p == "TCGA-01" else 40, 280 if p == "TCGA-01" else 50, 20 + i)
    _tsv(r / "B" / "omics_qc.tsv", [], ["patient", "modality", "file", "reason"])
    return r


def _section(text: str, anchor: str) -> str:
    """The HTML from the heading with id ``anchor`` to the next <h2>."""
    start = text.index(f'id="{anchor}"')
    end = text.find("<h2", start)
    return text[start:end if end >= 0 else None]


def _cohort(text: str, cohort: str) -> str:
    start = text.index(f'id="qc-{cohort}"')
    end = text.find("<h3", start)
    return text[start:end if end >= 0 else None]


def _images(text: str) -> list[np.ndarray]:
    out = []
    for b64 in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', text):
        out.append(cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED))
    return out


def test_every_section_shows_its_inputs(tmp_path):
    r = _results(tmp_path)
    text = build_report(r, n_thumbnails=3)
    assert text.startswith("<!DOCTYPE html>") and text.endswith("</html>\n")
    assert "not produced" not in _section(text, "table2") + _section(text, "table3") + _section(text, "table4")
    # tables: the CSV cells, and the Markdown captions and notes around them
    t2 = _section(text, "table2")
    assert "<td>A</td>" in t2 and '<td class="num">97.44</td>' in t2
    t3 = _section(text, "table3")
    assert "<td>0.700 ± 0.010 (2)</td>" in t3 and "<td>0.650 ± 0.020 (2)</td>" in t3
    assert "Antolini&#x27;s C-index on the held-out test patients" in t3
    assert "<li>Modality sets: &#x27;all&#x27; uses every patient.</li>" in t3
    t4 = _section(text, "table4")
    assert '<td class="num">0.0858571</td>' in t4 and '<td class="num">0.0876913</td>' in t4   # CSV, not the md
    order = [t4.index(s) for s in ("<h4>Table 4: reconstruction MSE</h4>", "Masked-patch MSE on each fold",
                                   "0.0858571", "Paper (Table 4)", "Whole-modality imputation", "0.0876913")]
    assert order == sorted(order)   # the Markdown's text stays beside its own table
    assert "Masked-patch MSE on each fold&#x27;s test patients." in t4   # wrapped lines joined
    # figures: one embedded PNG per KM figure and loss curve, folds in numeric order
    km = _section(text, "km")
    assert km.count(IMG) == 2 and "A (figures/km_A.png)" in km and "B (figures/km_B.png)" in km
    pre = _section(text, "pretraining")
    assert pre.count(IMG) == 4
    assert pre.index("multimodal, fold0") < pre.index("multimodal, fold1") < pre.index("multimodal, fold10") \
        < pre.index("rna, fold0")
    # quality control: counts by status, the failed slide, the excluded file and patient with their reasons
    qa = _cohort(text, "A")
    assert "3 of 4 patients with a diagnostic slide have usable tiles" in qa
    assert '<tr><td>ok</td><td class="num">3</td></tr>' in qa
    assert '<tr><td>cannot open: Unsupported file</td><td class="num">1</td></tr>' in qa
    assert "<td>TCGA-02</td><td>cannot open: Unsupported file</td>" in qa
    assert "<td>TCGA-03</td><td>rna</td><td>x.rna.tsv</td>" in qa
    assert "line 7: &#x27;abc&#x27; is not a number &lt;value&gt; &amp; more" in qa
    assert "<td>TCGA-05</td><td>P-A</td><td>dead without days_to_death</td>" in qa
    # thumbnails: at most 3, the first patients in sorted order, captioned with their QC status
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", qa)
    assert captions == ["TCGA-01: ok", "TCGA-02: cannot open: Unsupported file", "TCGA-04: ok"]
    assert qa.count(IMG) == 3 and "3 of 4 patients, in patient order" in qa
    assert text.count(IMG) == 2 + 4 + 3
    # cohort B has no WSI/clinical QC: said so; its empty omics QC table: said so
    qb = _cohort(text, "B")
    assert "WSI QC: not produced (B/wsi_qc.tsv not found)." in qb
    assert "None (<code>B/omics_qc.tsv</code> is empty)" in qb
    assert "not produced (B/clinical_qc.tsv not found)" in qb
    # header
    assert "<td>A, B</td>" in text and f"<td>{__version__}</td>" in text


def test_thumbnails_are_downscaled_and_figures_kept(tmp_path):
    r = _results(tmp_path)
    text = build_report(r, cohorts=["A"], n_thumbnails=12, thumbnail_px=64)
    thumbs = _images(_cohort(text, "A"))
    assert len(thumbs) == 4
    assert thumbs[0].shape == (64, 60, 3)            # TCGA-01: 300 x 280 -> longer side 64
    assert thumbs[1].shape == (40, 50, 3)            # small ones are embedded as they are
    assert (r / "A" / "wsi" / "TCGA-02.png").read_bytes() == base64.b64decode(
        png_data_uri(r / "A" / "wsi" / "TCGA-02.png").split(",", 1)[1])
    km = _images(_section(text, "km"))
    assert [k.shape for k in km] == [(48, 60, 3)]   # only the cohorts asked for
    assert 'id="qc-B"' not in text
    none = build_report(r, cohorts=["A"], n_thumbnails=0)
    assert _cohort(none, "A").count(IMG) == 0


def test_missing_inputs_say_not_produced(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = build_report(empty)
    for anchor, line in [("table2", "Table 2: modality availability: not produced (tables/table2.csv not found)"),
                         ("table3", "not produced (tables/table3.csv not found)"),
                         ("table4", "not produced (tables/table4.csv, tables/table4_imputation.csv not found)"),
                         ("km", "Kaplan-Meier figures: not produced"),
                         ("pretraining", "Pretraining loss curves: not produced"),
                         ("qc", "Quality control: not produced (no cohort folder found)")]:
        assert line in _section(text, anchor), anchor
    assert IMG not in text
    # one of two Table 4 files, a KM figure of one cohort, and a picture that is not an image
    r = _results(tmp_path)
    (r / "tables" / "table4_imputation.csv").unlink()
    (r / "tables" / "table2.csv").write_text("")
    (r / "A" / "wsi" / "TCGA-01.png").write_bytes(b"not a png")
    text = build_report(r, cohorts=["A", "C"], n_thumbnails=2)
    assert "tables/table4_imputation.csv: not produced" in _section(text, "table4")
    assert "0.0858571" in _section(text, "table4")
    assert "tables/table2.csv: could not be read (EmptyDataError)" in _section(text, "table2")
    assert "Kaplan-Meier figure of C: not produced (figures/km_C.png not found)" in _section(text, "km")
    assert "A/wsi/TCGA-01.png: not a readable image" in _cohort(text, "A")
    assert "WSI QC: not produced (C/wsi_qc.tsv not found)" in _cohort(text, "C")


def test_text_from_the_results_is_escaped(tmp_path):
    r = _results(tmp_path)
    text = build_report(r)
    assert ODD not in text and "<b>" not in text
    assert html.escape(ODD) in _cohort(text, "A")   # in the thumbnail caption
    assert "<value>" not in text and "&lt;value&gt; &amp; more" in text
    assert "/abs/secret" not in text     # a file column shows the file name only


def test_same_results_same_bytes_wherever_they_are(tmp_path):
    r = _results(tmp_path / "one")
    cfg = tmp_path / "config.demo.yaml"
    cfg.write_text("results: results/demo\n")
    a = build_report(r, config_files=[cfg])
    assert a == build_report(r, config_files=[cfg])
    moved = tmp_path / "elsewhere" / "deeper" / "res"
    shutil.copytree(r, moved)
    os.utime(moved / "tables" / "table3.csv", (0, 0))      # mtimes do not matter either
    assert build_report(moved, config_files=[cfg]) == a
    assert str(tmp_path) not in a
    assert "<code>config.demo.yaml</code> (SHA-256 " in a
    cfg.write_text("results: results/other\n")             # a different configuration is visible
    assert build_report(r, config_files=[cfg]) != a


def test_cli_writes_the_report_atomically(tmp_path, monkeypatch):
    r = _results(tmp_path)
    out = tmp_path / "site" / "report.html"
    cfg = tmp_path / "config.yaml"
    cfg.write_text("results: results\n")
    argv = ["report", "--results", str(r), "--out", str(out), "--cohorts", "A", "B", "--config", str(cfg),
            "--thumbnails", "2"]
    assert main(argv) == 0
    expected = build_report(r, cohorts=["A", "B"], config_files=[cfg], n_thumbnails=2)
    assert out.read_bytes() == expected.encode("utf-8")
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]

    # the new report goes to a temporary name first: if the rename never happens, the old one is intact
    out.write_text("previous report")
    renames = []

    def failing_replace(src, dst):
        renames.append((Path(src), Path(dst), Path(src).read_bytes()))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        main(argv)
    assert out.read_text() == "previous report"
    (src, dst, written), = renames
    assert dst == out and src.parent == out.parent and src != out
    assert written == expected.encode("utf-8")              # written completely before the rename
    assert not src.exists()                                 # and the temporary file removed after the failure


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imputmae report: error:") and "results folder not found" in err[-1]
    r = _results(tmp_path)
    assert main(["report", "--results", str(r), "--out", str(tmp_path / "r.html"), "--config",
                 str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: configuration file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--results", str(r), "--out", str(tmp_path / "r.html"), "--thumbnails", "-1"])
    assert not (tmp_path / "r.html").exists()


def test_helpers(tmp_path):
    r = _results(tmp_path)
    assert find_cohorts(r) == ["A", "B"]     # folders with stage outputs, and KM figures' cohorts
    counts = wsi_status_counts(pd.DataFrame({"status": ["z reason", "ok", "a reason", "z reason", "ok", "ok"]}))
    assert counts.to_dict("list") == {"status": ["ok", "z reason", "a reason"], "patients": [3, 2, 1]}
    blocks = markdown_blocks("# Title\n\n**Bold** caption\nwrapped\n\n| a |\n|---|\n| 1 |\n\n- note one\n  more\n")
    assert blocks == [("heading", "Title"), ("paragraph", "Bold caption wrapped"), ("table", ""),
                      ("item", "note one more")]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    assert png_data_uri(bad) is None
    jpg = tmp_path / "x.jpg"
    cv2.imwrite(str(jpg), np.zeros((10, 20, 3), np.uint8))
    uri = png_data_uri(jpg)                  # another format is re-encoded as PNG
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]).startswith(b"\x89PNG")


def test_snakemake_plans_the_report_from_every_file_it_shows(tmp_path):
    """Dry run of the demo: rule report reads the tables, KM figures, loss curves and QC tables, names the
    configuration files in their merge order, and `all` builds it."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "config.yaml", tmp_path / "config.yaml")
    shutil.copy(root / "config.demo.yaml", tmp_path / "config.demo.yaml")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(tmp_path),
                          "-n", "-p", "--configfile", "config.demo.yaml"], capture_output=True, text=True, env=env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    job = dry.stdout[dry.stdout.index("rule report:"):]
    job = job[:job.index("\n\n")] if "\n\n" in job else job
    inputs = job[job.index("input:"):job.index("\n", job.index("input:"))]
    for f in ["tables/table2.csv", "tables/table3.csv", "tables/table3.md", "tables/table4.csv",
              "tables/table4_imputation.csv", "figures/km_BRCA.png", "figures/km_UCEC.png",
              "pretrain/multimodal/fold4/loss.png", "pretrain/wsi/fold0/loss.png", "GBMLGG/wsi_qc.tsv",
              "UCEC/omics_qc.tsv", "BRCA/clinical_qc.tsv"]:
        assert f"results/demo/{f}" in inputs, f
    assert "output: results/demo/report.html" in job
    cmd = next(line for line in job.splitlines() if "imputmae report" in line)
    assert re.search(r"--config config\.yaml \S*config\.demo\.yaml > logs/report/report\.log", cmd), cmd
    all_job = dry.stdout[dry.stdout.index("rule all:"):]
    assert "results/demo/report.html" in all_job[:all_job.index("\n", all_job.index("input:"))]
