"""Every command block of README.md is executed or checked, so that a recipe that no longer works fails CI.

Each command of the README's ```bash blocks is mapped to a runnable form (the mapping below; a command it does not
know fails the test, so a new recipe needs a mapping):
- ``snakemake`` (every profile and configfile shown): a dry run (``-n``) of this checkout's Snakefile in a scratch
  working directory; ``rerun_cohort.py``: with ``--dry-run``. The real run of the own-matrices recipe is
  tests/test_own_tables.py, whose cohort comes from the README's YAML block (:func:`readme_own_cohort`).
- ``imputmae --help`` and ``imputmae config check`` (``my.yaml``: the README's own-matrices block): run.
- ``imputmae gdc ...`` (manifest, select, download, clinical): run in order on the demo mirror (``--api URL`` ->
  ``--mirror``, TCGA-GBM/LGG -> DEMO-GBM/LGG).
- the other ``imputmae`` commands (tables, omics, wsi, predict, impute): parsed by the real CLI parser, so a renamed
  or removed option or a new required one fails here; their behaviour is run by test_gdc, test_omics,
  test_light_commands, test_wsi and test_finetune on files made there.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imputmae.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# `make test` is this suite; `make demo` is the demo's snakemake command, dry-run below.
COVERED_ELSEWHERE = {"make test", "make demo"}


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks: comments dropped, continuation lines joined, ``[optional]``
    parts left out."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"\[[^\]]*\]", "", line).strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


def readme_own_cohort() -> dict:
    """The README's own-matrices ``cohorts:`` block (YAML)."""
    section = README[README.index("## Bring your own matrices"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return yaml.safe_load(block)["cohorts"]


def _kind(cmd: str) -> str:
    words = cmd.split()
    if cmd in COVERED_ELSEWHERE:
        return "covered"
    if words[0].endswith("snakemake"):
        return "snakemake"
    if words[0].endswith("python") and words[1] == "workflow/scripts/rerun_cohort.py":
        return "rerun"
    if words[0].endswith("imputmae"):
        return "gdc" if words[1] == "gdc" else "cli"
    raise AssertionError(f"README command without a mapping in tests/test_readme.py: {cmd}")


def test_every_readme_command_has_a_mapping():
    cmds = readme_commands()
    kinds = {c: _kind(c) for c in cmds}
    assert {"snakemake", "rerun", "gdc", "cli"} <= set(kinds.values()), kinds
    assert len(cmds) >= 20


def _workdir(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir(exist_ok=True)
    for name in ("config.yaml", "config.demo.yaml"):
        (w / name).write_text((ROOT / name).read_text())
    return w


def _snakemake_argv(cmd: str) -> list[str]:
    words = shlex.split(cmd)[1:]
    args = []
    for i, w in enumerate(words):
        args.append(str(ROOT / w) if i and words[i - 1] == "--profile" else w)
    if "-n" not in args and "--dry-run" not in args:
        args.append("-n")
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]


def test_readme_snakemake_and_rerun_recipes_dry_run(tmp_path):
    w = _workdir(tmp_path)
    seen = set()
    for cmd in readme_commands():
        kind = _kind(cmd)
        if kind == "snakemake":
            argv = _snakemake_argv(cmd)
        elif kind == "rerun":
            words = shlex.split(cmd)[1:]
            words = [str(ROOT / "workflow/scripts/rerun_cohort.py")] + [
                str(ROOT / x) if i and words[i - 1] == "--profile" else x for i, x in enumerate(words[1:], 1)]
            if "--dry-run" not in words:
                words.append("--dry-run")
            argv = [sys.executable, *words]
            (w / "results").mkdir(exist_ok=True)
            (w / "results" / "splits.parquet").write_bytes(b"")   # the script asks for a first full run
        else:
            continue
        key = tuple(argv)
        if key in seen:
            continue
        seen.add(key)
        run = subprocess.run(argv, cwd=w, capture_output=True, text=True)
        assert run.returncode == 0, f"README: {cmd}\n{(run.stdout + run.stderr)[-2000:]}"
        assert "This was a dry-run" in run.stdout + run.stderr, cmd
    assert len(seen) >= 5


def test_readme_config_check_and_help_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"cohorts": readme_own_cohort()}))
    cmds = [c for c in readme_commands() if _kind(c) == "cli" and c.split()[1] in ("config", "--help")]
    assert len(cmds) == 2
    for cmd in cmds:
        argv = shlex.split(cmd)[1:]
        if argv == ["--help"]:
            with pytest.raises(SystemExit) as exit_:
                main(argv)
            assert exit_.value.code == 0 and "COMMAND" in capsys.readouterr().out
        else:
            assert main(argv) == 0, cmd


def test_readme_gdc_commands_run_on_the_demo_mirror(demo_mirror, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmds = [c for c in readme_commands() if _kind(c) == "gdc"]
    assert [c.split()[2] for c in cmds] == ["manifest", "select", "download", "clinical"]
    for cmd in cmds:
        argv = shlex.split(cmd.replace("TCGA-", "DEMO-"))[1:]
        if "--api" in argv:
            i = argv.index("--api")
            argv[i:i + 2] = ["--mirror", str(demo_mirror)]
        if argv[1] == "download":
            argv.append("--no-progress")
        assert main(argv) == 0, cmd
    assert (tmp_path / "data/gdc/download_wsi.tsv").is_file() and (tmp_path / "clinical_qc.tsv").is_file()


def test_readme_other_cli_commands_parse():
    parser = build_parser()
    cmds = [c for c in readme_commands() if _kind(c) == "cli" and c.split()[1] not in ("config", "--help")]
    assert {c.split()[1] for c in cmds} == {"table2", "omics", "wsi", "predict", "impute"}
    for cmd in cmds:
        argv = shlex.split(cmd.replace("--api ...", "--api https://api.gdc.cancer.gov"))[1:]
        args = parser.parse_args(argv)                   # SystemExit(2) on an unknown or missing option
        assert callable(args.func), cmd
