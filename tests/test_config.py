"""The configuration schema: the shipped files validate, and each kind of mistake gives one line naming the key."""

from pathlib import Path

import pytest
import yaml

from imputmae.cli import main
from imputmae.config import ConfigError, load_config, merge_config, model_dims, pretrain_folds, validate_config

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "config.yaml"
DEMO = ROOT / "config.demo.yaml"


@pytest.fixture
def cfg() -> dict:
    return load_config([BASE])


def test_shipped_configs_validate():
    real = load_config([BASE])
    assert sorted(real["cohorts"]) == ["BRCA", "GBMLGG", "UCEC"]
    assert real["cohorts"]["GBMLGG"]["projects"] == ["TCGA-GBM", "TCGA-LGG"]
    demo = load_config([BASE, DEMO])
    assert demo["cohorts"]["GBMLGG"]["projects"] == ["DEMO-GBM", "DEMO-LGG"]
    # the demo overlay changes only what it names
    assert demo["pretrain"]["weight_decay"] == real["pretrain"]["weight_decay"] == 1e-2
    assert real["pretrain"]["lr"] == 1e-4 and demo["pretrain"]["per_fold"] is True
    assert demo["wsi"]["keep"] == 4 and real["wsi"]["keep"] == 100


def test_pretrain_folds_unimodal_runs_on_the_first_n_folds():
    real = load_config([BASE])
    demo = load_config([BASE, DEMO])
    bench = load_config([BASE, DEMO, ROOT / "config.benchmark.yaml"])
    assert pretrain_folds(real, "multimodal") == pretrain_folds(real, "rna") == [0, 1, 2, 3, 4]
    assert pretrain_folds(demo, "multimodal") == [0, 1, 2, 3, 4] and pretrain_folds(demo, "wsi") == [0]
    assert pretrain_folds(bench, "dnam") == [0, 1, 2, 3, 4]      # the benchmark cohort: Table 4 on every fold
    assert pretrain_folds(merge_config(real, {"pretrain": {"per_fold": False}}), "rna") == [0]
    assert demo["wsi"]["tile_jobs"] == "cohort" and real["wsi"]["tile_jobs"] == "patient"


def test_paper_hyperparameters_are_the_defaults(cfg):
    assert cfg["model"]["mask_ratio"] == 0.5
    assert cfg["pretrain"]["batch_size"] == 256 and cfg["pretrain"]["warmup_epochs"] == 50
    assert cfg["pretrain"]["betas"] == [0.9, 0.95]
    ft = cfg["finetune"]
    assert (ft["epochs"], ft["batch_size"], ft["lr"], ft["weight_decay"], ft["warmup_epochs"], ft["dropout"],
            ft["n_bins"]) == (20, 24, 1e-4, 1e-2, 5, 0.1, 20)
    assert cfg["omics"]["rna"]["patch_size"] == 256 and cfg["omics"]["dnam"]["patch_size"] == 512
    assert cfg["omics"]["n_quantiles"] == 10_000 and cfg["wsi"]["n_candidates"] == 1000
    small = model_dims({"size": "small"})
    assert (small["hidden_size"], small["num_heads"], small["intermediate_size"], small["wsi_layers"]) == (256, 4, 1024, 4)
    assert (small["decoder_layers"], small["decoder_intermediate_size"]) == (3, 512)
    big = model_dims({"size": "big", "wsi_layers": 6})
    assert (big["hidden_size"], big["num_heads"], big["wsi_layers"], big["decoder_heads"]) == (768, 12, 6, 16)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"model": {"mask_ratio": 1.5}}, "config: model.mask_ratio: got 1.5, expected < 1"),
        ({"model": {"mask_ratio": 0}}, "config: model.mask_ratio: got 0, expected > 0"),
        ({"model": {"wsi_patch_size": 15}}, "config: model.wsi_patch_size: got 15, expected a divisor of wsi.tile_size (256)"),
        ({"pretrain": {"epochs": "ten"}}, "config: pretrain.epochs: got 'ten', expected integer"),
        ({"pretrain": {"epoch": 3}}, "config: pretrain.epoch: unknown key"),
        ({"bogus": 1}, "config: bogus: unknown key"),
        ({"finetune": {"cut_scheme": "km"}}, "config: finetune.cut_scheme: got 'km', expected one of ['equidistant', 'quantiles']"),
        ({"wsi": {"median_blur": 8}}, "config: wsi.median_blur: got 8, expected an odd kernel size"),
        ({"wsi": {"tile_jobs": "slide"}}, "config: wsi.tile_jobs: got 'slide', expected one of ['patient', 'cohort']"),
        ({"pretrain": {"unimodal_folds": 0}}, "config: pretrain.unimodal_folds: got 0"),
        ({"model": {"hidden_size": 90}}, "config: model.num_heads: got 4, expected a divisor of model.hidden_size (90)"),
        ({"cohorts": {"X": {"projekts": ["TCGA-X"]}}}, "config: cohorts.X: a cohort is either"),
    ],
)
def test_errors_name_the_key_and_the_expectation(cfg, override, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(merge_config(cfg, override))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected), message


def test_bring_your_own_cohort_validates(cfg):
    byo = merge_config(cfg, {"cohorts": {"MINE": {"tables": {"rna": "a.csv", "clinical": "c.csv"}, "normalize": False}}})
    assert validate_config(byo)["cohorts"]["MINE"]["normalize"] is False
    with pytest.raises(ConfigError, match="cohorts.MINE"):
        validate_config(merge_config(cfg, {"cohorts": {"MINE": {"tables": {"clinical": "c.csv"}}}}))


def test_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    out = merge_config(base, {"a": {"b": 5}, "d": [2, 3]})
    assert out == {"a": {"b": 5, "c": 2}, "d": [2, 3]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


def test_cli_check_prints_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"mask_ratio": 2}}))
    assert main(["config", "check", str(BASE), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "imputmae config: error: config: model.mask_ratio: got 2, expected < 1"
    assert main(["config", "check", str(BASE), str(DEMO)]) == 0
    assert "config OK" in capsys.readouterr().out


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        load_config([tmp_path / "nope.yaml"])


@pytest.mark.parametrize("section, key, choices", [
    ("evaluation", "cindex", "CINDEX_CHOICES"), ("finetune", "cut_scheme", "CUT_SCHEME_CHOICES"),
    ("finetune", "select_on", "SELECT_ON_CHOICES"), ("omics", "on_malformed", "ON_MALFORMED_CHOICES"),
    ("finetune", "cache_dtype", "CACHE_DTYPE_CHOICES")])
def test_schema_enums_are_the_library_choices(section, key, choices):
    """The schema and imputmae.choices (the library's Literals and the CLI's choices=) list the same values."""
    from imputmae import choices as ch
    from imputmae.config import load_schema

    assert tuple(load_schema()["properties"][section]["properties"][key]["enum"]) == getattr(ch, choices)
