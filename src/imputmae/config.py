"""Load, merge and validate the pipeline configuration.

The schema (``schemas/config.schema.yaml``, linked from ``workflow/schemas/``) closes every section, so an
unknown key, a wrong type or an impossible value stops the run with one line that names the key and what was
expected. Checks that JSON Schema cannot express live in :func:`validate_config`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from imputmae.modalities import MODALITIES

__all__ = ["ConfigError", "load_schema", "merge_config", "validate_config", "load_config", "MODEL_SIZES", "model_dims",
           "cohort_modalities", "cohort_modality_sets", "available_modalities", "last_cohorts", "pretrain_folds",
           "VIT_MAE_SIZE", "cohort_model_size", "model_sizes", "size_cohorts", "pretrain_config", "pretrain_dir",
           "pretrain_jobs", "Deviation", "DEVIATIONS", "deviations_in_force", "deviations_sentence"]


class ConfigError(ValueError):
    """A configuration problem, stated in one line: ``config: <key>: <what was expected>``."""


def load_schema() -> dict[str, Any]:
    """The configuration JSON schema shipped with the package."""
    text = resources.files("imputmae").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base`` key by key (nested mappings merge, everything else replaces).

    This is how Snakemake merges ``--configfile`` over the Snakefile's ``configfile:``; the CLI does the same.
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def last_cohorts(merged: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``merged`` with ``cohorts`` taken whole from the last of ``layers`` that names any: a list of cohorts is a
    choice, not a setting to merge, so ``--configfile my.yaml`` with ``cohorts: {MINE: ...}`` runs MINE alone (name
    TCGA cohorts beside it to run them too), where a key-by-key merge would add config.yaml's three TCGA cohorts."""
    out = dict(merged)
    for layer in layers:
        if isinstance(layer, Mapping) and isinstance(layer.get("cohorts"), Mapping) and layer["cohorts"]:
            out["cohorts"] = copy.deepcopy(dict(layer["cohorts"]))
    return out


def _key_path(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error.absolute_path)
    v = error.validator
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        where = f"{key}." if error.absolute_path else ""
        return f"{where}{extra[0] if extra else '?'}: unknown key (allowed here: {allowed})"
    if v == "required":
        return f"{key}: {error.message}"
    if v == "oneOf" and key.startswith("cohorts."):
        size = error.instance.get("model") if isinstance(error.instance, Mapping) else None
        if size is not None and size not in MODEL_SIZES:
            return (f"{key}.model: got {size!r}, expected one of {list(MODEL_SIZES)} (the model size this cohort "
                    f"is fine-tuned with; leave it out for model.size)")
        return (f"{key}: a cohort is either {{projects: [TCGA-...]}} or {{tables: {{clinical: ..., rna: ..., "
                f"dnam: ...}}, normalize: true|false}}, each with an optional model: small|big|tiny; got "
                f"{error.instance!r}")
    expected = {
        "type": lambda: f"expected {error.validator_value}",
        "enum": lambda: f"expected one of {error.validator_value}",
        "minimum": lambda: f"expected >= {error.validator_value}",
        "maximum": lambda: f"expected <= {error.validator_value}",
        "exclusiveMinimum": lambda: f"expected > {error.validator_value}",
        "exclusiveMaximum": lambda: f"expected < {error.validator_value}",
        "pattern": lambda: f"expected a string matching {error.validator_value}",
        "minItems": lambda: f"expected at least {error.validator_value} item(s)",
        "maxItems": lambda: f"expected at most {error.validator_value} item(s)",
        "uniqueItems": lambda: "expected no repeated items",
        "minLength": lambda: "expected a non-empty string",
    }.get(v)
    if expected is None:
        return f"{key}: {error.message}"
    return f"{key}: got {error.instance!r}, {expected()}"


# Table 1 of the paper. The paper prints 756 for the big hidden size; 756 does not split evenly over
# facebook/vit-mae-base's 768-wide weights that the big WSI encoder is initialised from, so we read it as 768.
# Big decoder: Table 1 prints 756 wide, 8 layers, 16 heads, 2048; 756 is not a multiple of 16 heads, and Section 5
# initialises the decoder from vit-mae-base too, whose decoder is 512 wide with 8 layers, 16 heads, 2048: so 512
# (each modality's decoder_embed projects 768 -> 512, as MAE's does).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "small": dict(hidden_size=256, num_heads=4, intermediate_size=1024, rna_layers=6, dnam_layers=6, wsi_layers=4,
                  decoder_hidden_size=256, decoder_layers=3, decoder_heads=4, decoder_intermediate_size=512),
    "big": dict(hidden_size=768, num_heads=12, intermediate_size=3072, rna_layers=6, dnam_layers=6, wsi_layers=12,
                decoder_hidden_size=512, decoder_layers=8, decoder_heads=16, decoder_intermediate_size=2048),
    # CPU-sized for the demo and tests; not a paper configuration.
    "tiny": dict(hidden_size=64, num_heads=4, intermediate_size=128, rna_layers=2, dnam_layers=2, wsi_layers=2,
                 decoder_hidden_size=64, decoder_layers=1, decoder_heads=4, decoder_intermediate_size=128),
}


def model_dims(model_cfg: Mapping[str, Any]) -> dict[str, int]:
    """The model's sizes: the named ``size`` from Table 1, with every non-null field of ``model_cfg`` over it."""
    dims = dict(MODEL_SIZES[model_cfg["size"]])
    for key in dims:
        if model_cfg.get(key) is not None:
            dims[key] = int(model_cfg[key])
    return dims


# A cohort given as tables: which table key brings which modality.
TABLE_MODALITIES: dict[str, str] = {"rna": "rna", "dnam": "dnam", "slides": "wsi"}


def cohort_modalities(cohort: Mapping[str, Any]) -> tuple[str, ...]:
    """The modalities a cohort's configuration can bring, in (rna, dnam, wsi) order: all three for GDC projects
    (a patient may still lack any of them); for tables, those given (``rna``, ``dnam``; ``slides``: wsi)."""
    if "projects" in cohort:
        return MODALITIES
    given = {TABLE_MODALITIES[k] for k in cohort.get("tables", {}) if k in TABLE_MODALITIES}
    return tuple(m for m in MODALITIES if m in given)


def cohort_modality_sets(cfg: Mapping[str, Any], cohort: str) -> list[str]:
    """The ``finetune.modality_sets`` that ``cohort`` is fine-tuned on: ``all``, and each single modality it can
    have (a cohort without slides has no ``wsi`` row in Table 3)."""
    have = cohort_modalities(cfg["cohorts"][cohort])
    return [s for s in cfg["finetune"]["modality_sets"] if s == "all" or s in have]


def available_modalities(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The modalities at least one cohort can bring: pretraining (multimodal and unimodal runs) uses only these,
    so that a run on own tables without slides trains no WSI encoder on nothing and imputes no WSI from it."""
    have = {m for c in cfg["cohorts"].values() for m in cohort_modalities(c)}
    return tuple(m for m in MODALITIES if m in have)


def pretrain_folds(cfg: Mapping[str, Any], run: str = "multimodal") -> list[int]:
    """The outer folds pretrained for ``run``: every fold (``pretrain.per_fold``; fold 0 alone otherwise); Table 4's
    unimodal runs (``run`` != multimodal) only the first ``pretrain.unimodal_folds`` of them when that is set (the
    demo: 1), and Table 4 then compares multimodal with unimodal on those folds alone."""
    pc = cfg["pretrain"]
    folds = list(range(cfg["splits"]["n_folds"])) if pc["per_fold"] else [0]
    if run != "multimodal" and pc.get("unimodal_folds") is not None:
        folds = folds[: pc["unimodal_folds"]]
    return folds


# ---------------------------------------------------------------------------------------- model size per cohort
# The paper fine-tunes GBM+LGG with the big model and BRCA, UCEC with the small one (Section 5). A cohort names its
# size (``cohorts.<name>.model``, default ``model.size``); each size in use gets one pooled multimodal pretraining
# (and Table 4's unimodal runs) per fold, on the cohorts fine-tuned at that size only: the cheapest choice, and a
# cohort's model then never depends on cohorts fine-tuned at another size. When every cohort shares one size the
# runs, their paths and their settings are those of a single ``model.size`` (``pretrain/{run}/fold{f}``).

VIT_MAE_SIZE = "big"   # the one size whose WSI encoder and decoder have vit-mae-base's shapes (model.vit_mae_weights)


def cohort_model_size(cfg: Mapping[str, Any], cohort: str) -> str:
    """The model size ``cohort`` is fine-tuned with: ``cohorts.<cohort>.model``, else ``model.size``."""
    return str(cfg["cohorts"][cohort].get("model") or cfg["model"]["size"])


def model_sizes(cfg: Mapping[str, Any]) -> list[str]:
    """The model sizes some cohort is fine-tuned with, in :data:`MODEL_SIZES` order (one pretraining each)."""
    used = {cohort_model_size(cfg, c) for c in cfg["cohorts"]}
    return [s for s in MODEL_SIZES if s in used]


def size_cohorts(cfg: Mapping[str, Any], size: str) -> list[str]:
    """The cohorts fine-tuned at ``size`` (sorted): what that size's pretraining pools."""
    return sorted(c for c in cfg["cohorts"] if cohort_model_size(cfg, c) == size)


def pretrain_config(cfg: Mapping[str, Any], size: str) -> dict[str, Any]:
    """The configuration ``size``'s pretraining (and its Table 4 evaluation) runs with: ``cohorts`` restricted to
    :func:`size_cohorts`, ``model.size`` set to ``size``, ``model.vit_mae_weights`` kept for :data:`VIT_MAE_SIZE`
    only, ``pretrain.modalities``/``unimodal`` restricted to what those cohorts bring. With one size in use this is
    ``cfg`` itself (equal key for key), so a one-size run's settings, and the jobs' parameters, are unchanged.

    Raises:
        ValueError: ``size`` is not one of :func:`model_sizes`.
    """
    if size not in model_sizes(cfg):
        raise ValueError(f"model size {size!r}: no cohort is fine-tuned with it (sizes in use: "
                         f"{', '.join(model_sizes(cfg))})")
    out = copy.deepcopy(dict(cfg))
    out["cohorts"] = {c: out["cohorts"][c] for c in size_cohorts(cfg, size)}
    out["model"] = {**out["model"], "size": size}
    if size != VIT_MAE_SIZE:
        out["model"]["vit_mae_weights"] = None
    have = available_modalities(out)
    out["pretrain"] = {**out["pretrain"], **{k: [m for m in out["pretrain"][k] if m in have]
                                             for k in ("modalities", "unimodal")}}
    return out


def pretrain_dir(cfg: Mapping[str, Any], *, size: str, run: str, fold: int | str) -> str:
    """A pretraining's folder under ``results``: ``pretrain/{run}/fold{fold}`` when one size is in use (every
    cohort's), ``pretrain/{size}/{run}/fold{fold}`` when several are. Strings pass through, so
    ``pretrain_dir(cfg, size="{size}", run="{run}", fold="{fold}")`` is the workflow's wildcard pattern."""
    if len(model_sizes(cfg)) > 1:
        return f"pretrain/{size}/{run}/fold{fold}"
    return f"pretrain/{run}/fold{fold}"


def pretrain_jobs(cfg: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(size, run, fold) of every pretraining: per size in use, the multimodal run on :func:`pretrain_folds` and
    Table 4's unimodal runs (``pretrain.unimodal``, restricted to the modalities of that size's cohorts)."""
    jobs = []
    for size in model_sizes(cfg):
        sub = pretrain_config(cfg, size)
        for run in ["multimodal", *sub["pretrain"]["unimodal"]]:
            jobs += [(size, run, f) for f in pretrain_folds(sub, run)]
    return jobs


# ------------------------------------------------------------------------------- deviations from the paper
@dataclass(frozen=True)
class Deviation:
    """A default of config.yaml that is not the paper's text (its comment says DEVIATION; config.paper.yaml sets
    ``paper`` back). ``short``: how Table 3's caption names it."""

    key: str          # dotted config key
    paper: Any        # the paper's value (config.paper.yaml)
    short: str        # "<what we do> (paper: <what it says>)", for Table 3's caption


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("pretrain.modality_dropout", 0.0,
              "pretraining hides one whole modality of a patient with two or more, with probability {value} "
              "(pretrain.modality_dropout {value}; paper: 0, masked patches only)"),
    Deviation("omics.rna.min_std", 0.31622776601683794,
              "genes kept at training standard deviation > {value} (DRIM's code; paper: variance > 0.1)"),
)


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        cfg = cfg[key]
    return cfg


def deviations_in_force(cfg: Mapping[str, Any]) -> list[tuple[Deviation, Any]]:
    """(deviation, the value ``cfg`` has) for each of :data:`DEVIATIONS` that ``cfg`` does not set to the paper's."""
    return [(d, _get(cfg, d.key)) for d in DEVIATIONS if _get(cfg, d.key) != d.paper]


def deviations_sentence(deviations: Sequence[tuple[str, Any]]) -> str:
    """Table 3's sentence naming the deviations in force, from (key, value) pairs (:func:`deviations_in_force`);
    ``""`` when there are none (config.paper.yaml). Raises KeyError for a key not in :data:`DEVIATIONS`."""
    known = {d.key: d for d in DEVIATIONS}
    if not deviations:
        return ""
    parts = [known[key].short.format(value=value) for key, value in deviations]
    return ("Deviations from the paper's text in this run (README, \"The paper's settings\"; config.paper.yaml "
            "sets them back): " + "; ".join(parts) + ".")


def _semantic_errors(cfg: Mapping[str, Any]) -> list[str]:
    """Cross-key rules, for the sections present (a stage may be handed only the sections it reads)."""
    errs: list[str] = []
    wsi, model = cfg.get("wsi"), cfg.get("model")
    if wsi is not None and model is not None and wsi["tile_size"] % model["wsi_patch_size"]:
        errs.append(f"model.wsi_patch_size: got {model['wsi_patch_size']}, expected a divisor of "
                    f"wsi.tile_size ({wsi['tile_size']})")
    if wsi is not None:
        if wsi["median_blur"] % 2 == 0:
            errs.append(f"wsi.median_blur: got {wsi['median_blur']}, expected an odd kernel size")
        if not wsi["score_v_min"] < wsi["score_v_max"]:
            errs.append(f"wsi.score_v_max: got {wsi['score_v_max']}, expected > wsi.score_v_min ({wsi['score_v_min']})")
        if wsi["keep"] > wsi["n_candidates"]:
            errs.append(f"wsi.keep: got {wsi['keep']}, expected <= wsi.n_candidates ({wsi['n_candidates']})")
    cohorts = cfg.get("cohorts")
    sizes = ([model["size"]] if cohorts is None else model_sizes(cfg)) if model is not None else []
    for size in sizes:
        dims = model_dims({**model, "size": size})
        for enc, heads in (("hidden_size", "num_heads"), ("decoder_hidden_size", "decoder_heads")):
            if dims[enc] % dims[heads]:
                which = f" (the {size} model: {', '.join(size_cohorts(cfg, size))})" if len(sizes) > 1 else ""
                errs.append(f"model.{heads}: got {dims[heads]}, expected a divisor of model.{enc} ({dims[enc]})"
                            + which)
    if model is not None and cohorts is not None and model.get("vit_mae_weights") and VIT_MAE_SIZE not in sizes:
        errs.append(f"model.vit_mae_weights: set, but no cohort is fine-tuned with the {VIT_MAE_SIZE} model (the one "
                    f"whose WSI encoder and decoder have vit-mae-base's shapes): set model.size or "
                    f"cohorts.<name>.model to {VIT_MAE_SIZE}, or vit_mae_weights to null")
    for stage in ("pretrain", "finetune"):
        s = cfg.get(stage)
        if s is not None and s["warmup_epochs"] > s["epochs"]:
            errs.append(f"{stage}.warmup_epochs: got {s['warmup_epochs']}, expected <= {stage}.epochs ({s['epochs']})")
    return errs


def validate_config(config: Mapping[str, Any], sections: Sequence[str] | None = None) -> dict[str, Any]:
    """Validate ``config`` against the schema and the cross-key rules; return it unchanged as a plain dict.

    Args:
        sections: validate a partial configuration holding only these top-level sections (what a pipeline step
            reads: rules hand each step only its sections, so that editing another stage's settings does not
            rerun it). None: the whole configuration, every section required.

    Raises:
        ConfigError: one line, ``config: <dotted.key>: got <value>, expected <what>``, for the first problem.
    """
    cfg = dict(config)
    schema = load_schema()
    if sections is not None:
        schema = {**schema, "required": sorted(sections)}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"config: {_describe(best)}")
    sem = _semantic_errors(cfg)
    if sem:
        raise ConfigError(f"config: {sem[0]}")
    return cfg


def load_config(paths: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read YAML files in order, merge each over the previous (then ``overrides``), and validate; ``cohorts``
    comes whole from the last file naming any (:func:`last_cohorts`), as in the workflow.

    Raises:
        ConfigError: a file that does not exist or is not a YAML mapping, or any validation problem.
    """
    merged: dict[str, Any] = {}
    layers: list[Mapping[str, Any]] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"config: {path}: no such file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: {path}: expected a mapping of keys at the top level")
        merged = merge_config(merged, data)
        layers.append(data)
    if overrides:
        merged = merge_config(merged, overrides)
        layers.append(overrides)
    return validate_config(last_cohorts(merged, layers))
