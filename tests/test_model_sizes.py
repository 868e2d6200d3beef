"""The model size per cohort (cohorts.<name>.model): one pooled pretraining per size, on that size's cohorts; each
fine-tuning from its cohort's size; a demo with one size unchanged. Dry runs of this checkout's Snakefile."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from imputmae.config import (ConfigError, load_config, merge_config, model_sizes, pretrain_config, pretrain_dir,
                             pretrain_jobs, size_cohorts, validate_config)

ROOT = Path(__file__).resolve().parents[1]
BASE, DEMO = ROOT / "config.yaml", ROOT / "config.demo.yaml"


def test_config_yaml_fine_tunes_gbmlgg_big_and_brca_ucec_small():
    cfg = load_config([BASE])
    assert model_sizes(cfg) == ["small", "big"]
    assert size_cohorts(cfg, "small") == ["BRCA", "UCEC"] and size_cohorts(cfg, "big") == ["GBMLGG"]
    big = pretrain_config(merge_config(cfg, {"model": {"vit_mae_weights": "/shared/vit-mae-base"}}), "big")
    small = pretrain_config(merge_config(cfg, {"model": {"vit_mae_weights": "/shared/vit-mae-base"}}), "small")
    assert list(big["cohorts"]) == ["GBMLGG"] and big["model"]["size"] == "big"
    assert big["model"]["vit_mae_weights"] == "/shared/vit-mae-base"
    assert list(small["cohorts"]) == ["BRCA", "UCEC"] and small["model"]["size"] == "small"
    assert small["model"]["vit_mae_weights"] is None          # vit-mae-base fits the big WSI encoder only
    assert pretrain_dir(cfg, size="big", run="multimodal", fold=3) == "pretrain/big/multimodal/fold3"
    jobs = pretrain_jobs(cfg)
    assert len(jobs) == 2 * 4 * 5 and ("big", "wsi", 4) in jobs and ("small", "multimodal", 0) in jobs
    with pytest.raises(ValueError, match="tiny"):
        pretrain_config(cfg, "tiny")


def test_one_size_in_use_keeps_todays_paths_and_settings():
    demo = load_config([BASE, DEMO])
    assert model_sizes(demo) == ["tiny"]
    assert pretrain_config(demo, "tiny") == demo        # the pretraining's settings are the whole config's
    assert pretrain_dir(demo, size="tiny", run="multimodal", fold=2) == "pretrain/multimodal/fold2"
    every = merge_config(load_config([BASE]), {"cohorts": {c: {"model": "big"} for c in ("BRCA", "UCEC")}})
    assert model_sizes(every) == ["big"] and pretrain_dir(every, size="big", run="rna", fold=0) == "pretrain/rna/fold0"


@pytest.mark.parametrize("override, expected", [
    ({"cohorts": {"GBMLGG": {"model": "huge"}}},
     "config: cohorts.GBMLGG.model: got 'huge', expected one of ['small', 'big', 'tiny']"),
    ({"cohorts": {"GBMLGG": {"model": "small"}}, "model": {"vit_mae_weights": "/x"}},
     "config: model.vit_mae_weights: set, but no cohort is fine-tuned with the big model"),
    ({"model": {"hidden_size": 256}},   # 256 splits over small's 4 heads, not over big's 12
     "config: model.num_heads: got 12, expected a divisor of model.hidden_size (256) (the big model: GBMLGG)"),
])
def test_model_size_errors_name_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(merge_config(load_config([BASE]), override))
    assert str(info.value).startswith(expected), str(info.value)


# ------------------------------------------------------------------------------------------- dry runs
def _dry_run(tmp_path: Path, *configfiles: Path) -> str:
    """``snakemake -n -p`` of the whole workflow in a scratch folder: the jobs and their shell commands."""
    argv = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n", "-p",
            "--configfile", *map(str, configfiles)]
    run = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return run.stdout + run.stderr


def _commands(out: str, subcommand: str) -> list[list[str]]:
    """Every printed shell command running ``python -m imputmae <subcommand>``, split into words."""
    return [shlex.split(line.split("; ", 3)[-1]) for line in out.splitlines()
            if re.search(rf"-m imputmae {subcommand} ", line)]


def _arg(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def test_config_yaml_dry_run_two_pooled_pretrainings_per_fold_and_each_cohorts_checkpoint(tmp_path):
    out = _dry_run(tmp_path, BASE)
    multimodal = {}
    for words in _commands(out, "pretrain"):
        cfg = json.loads(_arg(words, "--config-json"))
        size = Path(_arg(words, "--out-dir")).parts[-3]
        assert cfg["model"]["size"] == size
        if _arg(words, "--run") == "multimodal":
            multimodal[(size, int(_arg(words, "--fold")))] = sorted(cfg["cohorts"])
    assert multimodal == {**{("small", f): ["BRCA", "UCEC"] for f in range(5)},
                          **{("big", f): ["GBMLGG"] for f in range(5)}}
    for sub in ("finetune", "table3-rows"):
        seen = set()
        for words in _commands(out, sub):
            cohort, fold = _arg(words, "--cohort"), _arg(words, "--fold")
            size = "big" if cohort == "GBMLGG" else "small"
            assert _arg(words, "--checkpoint") == f"results/pretrain/{size}/multimodal/fold{fold}/checkpoint.pt"
            seen.add(cohort)
        assert seen == {"BRCA", "UCEC", "GBMLGG"}, sub
    # mem_mb from the model: the big fine-tuning asks more than the small one (matrices not written yet)
    mem = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"rule finetune:(?:(?!\nrule ).)*?wildcards: cohort=(\w+),.*?mem_mb=(\d+)", out, re.S)}
    assert mem["GBMLGG"] > mem["BRCA"] == mem["UCEC"] > 0
    # the deviations in force reach Table 3's caption
    table3 = _commands(out, "table3")[0]
    assert "pretrain.modality_dropout=0.5" in table3 and "omics.rna.min_std=0.1" in table3


def test_demo_dry_run_pretrains_as_before(tmp_path):
    """One size in use: pretrain/{run}/fold{f} and the settings a single model.size gave (stage_config's)."""
    out = _dry_run(tmp_path, BASE, DEMO)
    demo = load_config([BASE, DEMO])
    expected = json.dumps({s: demo[s] for s in ("results", "cohorts", "splits", "omics", "wsi", "model", "pretrain")},
                          sort_keys=True)
    dirs = set()
    for words in _commands(out, "pretrain"):
        assert _arg(words, "--config-json") == expected
        dirs.add(_arg(words, "--out-dir"))
    assert dirs == {f"results/demo/pretrain/multimodal/fold{f}" for f in range(5)} | {
        f"results/demo/pretrain/{m}/fold0" for m in ("rna", "dnam", "wsi")}
    checkpoints = {_arg(w, "--checkpoint") for w in _commands(out, "finetune")}
    assert checkpoints == {f"results/demo/pretrain/multimodal/fold{f}/checkpoint.pt" for f in range(5)}
    assert "--deviation" in _commands(out, "table3")[0]


def test_table4_by_size_labels_rows_and_columns():
    from imputmae.table4 import table4_by_size, table4_markdown

    def part(v: float):
        table = pd.DataFrame({"WSI": [v, v], "RNA": [v, v], "DNAm": [v, v]},
                             index=pd.Index(["Multimodal pretraining", "Unimodal pretraining"], name="Pretraining"))
        folds = pd.DataFrame({"run": ["multimodal"], "fold": [0], "modality": ["rna"], "mse": [v], "n_test": [3]})
        imputation = pd.DataFrame({"modality": ["rna"], "model_mse": [v], "train_mean_mse": [2 * v],
                                   "ridge_mse": [v], "n_patients": [3], "folds": [1], "ratio": [0.5],
                                   "ridge_ratio": [0.5]})
        return table, folds, imputation

    table, folds, imputation = table4_by_size({"small": part(0.1), "big": part(0.2)},
                                              {"small": ["BRCA", "UCEC"], "big": ["GBMLGG"]})
    assert list(table.index) == ["Multimodal pretraining (small: BRCA, UCEC)", "Unimodal pretraining (small: BRCA, UCEC)",
                                 "Multimodal pretraining (big: GBMLGG)", "Unimodal pretraining (big: GBMLGG)"]
    assert table.loc["Multimodal pretraining (big: GBMLGG)", "RNA"] == 0.2
    assert list(folds["size"]) == ["small", "big"] and list(imputation["size"]) == ["small", "big"]
    md = table4_markdown(table, imputation, n_folds=1)
    assert "| Model | Modality |" in md and "| big | rna |" in md


def test_report_shows_each_sizes_loss_curves(tmp_path):
    """pretrain/{size}/{run}/fold{k}/loss.png (several model sizes) appear in the HTML report, named size/run."""
    import cv2
    import numpy as np

    from imputmae.htmlreport import _pretrain_section

    for size in ("small", "big"):
        d = tmp_path / "pretrain" / size / "multimodal" / "fold0"
        d.mkdir(parents=True)
        cv2.imwrite(str(d / "loss.png"), np.full((8, 8, 3), 200, np.uint8))
    html = _pretrain_section(tmp_path, 64)
    assert "<h4>small/multimodal</h4>" in html and "<h4>big/multimodal</h4>" in html
    assert html.index("big/multimodal") < html.index("small/multimodal")


def test_two_sizes_pretrain_and_table4_end_to_end(tmp_path, monkeypatch):
    """The CLI as the rules call it: each size's pretraining on its own cohorts, then Table 4 with a pair of rows per
    size, each on that size's test patients."""
    from _synthetic_results import small_config, use_stand_in_normalizer, write_results

    from imputmae import data
    from imputmae.checkpoint import load_pretrained
    from imputmae.cli import main

    use_stand_in_normalizer(monkeypatch)
    results = tmp_path / "results"
    write_results(results)
    data.write_splits(data.make_splits(data.select_split_patients(data.load_patients(results, ["A", "B"])), 3, 0),
                      results / "splits.parquet")
    cfg = small_config(results, epochs=1, unimodal=["rna"])
    cfg["cohorts"]["B"]["model"] = "small"
    cfg = validate_config(cfg)
    assert model_sizes(cfg) == ["small", "tiny"]
    for size, run, fold in pretrain_jobs(cfg):
        out = results / pretrain_dir(cfg, size=size, run=run, fold=fold)
        assert main(["pretrain", "--config-json", json.dumps(pretrain_config(cfg, size)), "--run", run, "--fold",
                     str(fold), "--out-dir", str(out), "--no-progress", "--threads", "1"]) == 0
        _, _, meta = load_pretrained(out / "checkpoint.pt")
        cohort = "B" if size == "small" else "A"
        assert {p.split("-")[0] for p in meta["extra"]["train_patients"]} == {cohort}
    assert main(["table4", "--config-json", json.dumps(cfg), "--threads", "1"]) == 0
    table = pd.read_csv(results / "tables" / "table4.csv", index_col=0)
    assert list(table.index) == ["Multimodal pretraining (small: B)", "Unimodal pretraining (small: B)",
                                 "Multimodal pretraining (tiny: A)", "Unimodal pretraining (tiny: A)"]
    folds = pd.read_csv(results / "tables" / "table4_folds.csv")
    splits = data.read_splits(results / "splits.parquet")
    n_test = splits[splits["fold"] == 0].groupby("cohort").size()
    assert folds.groupby("size")["n_test"].max().to_dict() == {"small": n_test["B"], "tiny": n_test["A"]}
    assert "| Model |" in (results / "tables" / "table4.md").read_text()
