"""config.paper.yaml: the paper's text where config.yaml deviates from it, valid over config.yaml, and listed."""

from pathlib import Path

import pandas as pd
import yaml

from imputmae.cli import main
from imputmae.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get(d, dotted):
    for k in dotted.split("."):
        d = d[k]
    return d


def test_paper_overlay_validates_over_config_yaml(capsys):
    assert main(["config", "check", str(ROOT / "config.yaml"), str(ROOT / "config.paper.yaml")]) == 0
    assert "config OK" in capsys.readouterr().out


def test_paper_overlay_changes_only_deviations_each_named_in_config_yaml_and_readme():
    overlay = yaml.safe_load((ROOT / "config.paper.yaml").read_text())
    base = load_config([ROOT / "config.yaml"])
    paper = load_config([ROOT / "config.yaml", ROOT / "config.paper.yaml"])
    config_text = (ROOT / "config.yaml").read_text().splitlines()
    readme = (ROOT / "README.md").read_text()
    keys = dict(_leaves(overlay))
    assert keys == {"pretrain.modality_dropout": 0.0, "omics.rna.min_std": 0.31622776601683794}
    for key, value in keys.items():
        assert _get(paper, key) == value != _get(base, key), key
        leaf = key.rsplit(".", 1)[1]
        line = next(i for i, t in enumerate(config_text) if t.strip().startswith(f"{leaf}:"))
        comment = " ".join(config_text[line:line + 2])
        assert "DEVIATION" in comment, key
        assert f"| `{key}` |" in readme, key
    assert base["pretrain"]["modality_dropout"] == 0.5


def test_one_list_of_deviations_drives_the_overlay_and_table3s_caption():
    """imputmae.config.DEVIATIONS is the list: config.paper.yaml sets exactly those keys to the paper's values, each is
    in force under config.yaml and none under the overlay, and Table 3's caption names those in force."""
    from imputmae.config import DEVIATIONS, deviations_in_force, deviations_sentence
    from imputmae.report import table3_latex, table3_markdown

    overlay = dict(_leaves(yaml.safe_load((ROOT / "config.paper.yaml").read_text())))
    assert overlay == {d.key: d.paper for d in DEVIATIONS}
    base = load_config([ROOT / "config.yaml"])
    paper = load_config([ROOT / "config.yaml", ROOT / "config.paper.yaml"])
    in_force = [(d.key, v) for d, v in deviations_in_force(base)]
    assert in_force == [("pretrain.modality_dropout", 0.5), ("omics.rna.min_std", 0.1)]
    assert deviations_in_force(paper) == [] and deviations_sentence([]) == ""
    table = pd.DataFrame({"model": ["impuTMAE"], "modality": ["all"], "missing": ["x"], "n": ["1"]})
    md = table3_markdown(table, "antolini", deviations=in_force).splitlines()[0]
    assert "Deviations from the paper's text in this run" in md
    assert "pretrain.modality_dropout 0.5; paper: 0" in md and "standard deviation > 0.1" in md
    assert "Deviations" not in table3_markdown(table, "antolini").splitlines()[0]
    assert "pretrain.modality_dropout 0.5" in table3_latex(table, "antolini", deviations=in_force)
