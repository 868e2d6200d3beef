"""Starting the ``imputmae`` command stays light: every Snakemake job starts one, so a heavy import at parser time
(torch, lifelines, pandas: ~4.6 CPU-s) is paid by every job of the pipeline, light ones (GDC, omics) included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imputmae.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "pandas", "numpy", "sklearn", "scipy", "lifelines", "matplotlib", "pyarrow")


def test_building_the_parser_imports_no_heavy_library():
    code = ("import sys\nfrom imputmae.cli import build_parser\nbuild_parser()\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at parser time: {out.stdout.strip()}"


def test_table3_rows_names_an_unknown_row_and_the_known_ones(tmp_path, capsys):
    rc = main(["table3-rows", "--checkpoint", str(tmp_path / "c.pt"), "--results", str(tmp_path), "--cohort", "X",
               "--fold", "0", "--rows", "multisurv", "nosuchrow", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "nosuchrow" in err and "cmta" in err and "multisurv," in err
    assert not (tmp_path / "out").exists()
