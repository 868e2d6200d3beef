""".ci/check_outputs.py's Table 3 check: every row of config.yaml's baselines.rows (and impuTMAE, Cox-PCA) per cohort,
with a finite C-index, CI and paired difference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _check():
    spec = importlib.util.spec_from_file_location("check_outputs", ROOT / ".ci" / "check_outputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.check_table3_rows


def _cells(tmp_path: Path, rows: list[dict]) -> Path:
    (tmp_path / "tables").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "tables" / "table3_cells.csv", index=False)
    return tmp_path


def test_every_row_present_and_finite_passes_and_a_gap_or_nan_fails(tmp_path):
    keys = ["impuTMAE", "cox_pca", *yaml.safe_load((ROOT / "config.yaml").read_text())["baselines"]["rows"]]
    good = [{"key": k, "modality": "all", "cohort": "A", "estimate": .6, "lower": .5, "upper": .7,
             **({} if k == "impuTMAE" else {"difference": .01, "diff_lower": -.1, "diff_upper": .1, "p": .8})}
            for k in keys]
    check = _check()
    assert check(_cells(tmp_path / "ok", good)) == []
    errors = check(_cells(tmp_path / "gap", good[:-1] + [{**good[-1], "upper": float("nan")}, ]))
    assert len(errors) == 1 and f"{keys[-1]} (all): upper not finite" in errors[0]
    errors = check(_cells(tmp_path / "missing", good[:-1]))
    assert len(errors) == 1 and f"A has no row {keys[-1]} (all)" in errors[0]
