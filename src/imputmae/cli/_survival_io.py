"""Shared by the survival commands: reading a results folder's tables, a fold's patients, a fine-tuned model and
its inputs, and writing JSON atomically."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imputmae.cli import UserError
from imputmae.files import atomic_write



def add_fold_arguments(p: argparse.ArgumentParser) -> None:
    """The flags naming one cohort's outer fold and its pretrained checkpoint (finetune, table3-rows)."""
    p.add_argument("--checkpoint", required=True, help="the fold's pretrained checkpoint.pt")
    p.add_argument("--results", required=True, help="the results folder {R} (splits, clinical, omics, tiles)")
    p.add_argument("--cohort", required=True)


def add_model_input_arguments(p: argparse.ArgumentParser, out_help: str) -> None:
    """The flags of the commands that apply a fine-tuned model to new patients' files (predict, impute)."""
    p.add_argument("--model", required=True, help="a fine-tuned model folder (model.pt) or file")
    p.add_argument("inputs", nargs="+", help="rna/dnam tables (.parquet/.csv/.tsv; prefix rna: or dnam: to "
                   "force the modality) and <patient>.npy tile files or folders of them")
    p.add_argument("--out", required=True, help=out_help)


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda t: t.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n"))


def _read_table(path: Path, what: str):
    import pandas as pd

    if not path.exists():
        raise UserError(f"{path}: {what} not found (run the stage that writes it first; see docs/layout.md)")
    return pd.read_parquet(path)


def _fold_patients(results: str, cohort: str, fold: int):
    splits = _read_table(Path(results) / "splits.parquet", "the outer-fold splits")
    s = splits[splits["cohort"] == cohort]
    if s.empty:
        raise UserError(f"{results}/splits.parquet has no patient of cohort {cohort}")
    if fold not in set(s["fold"]):
        raise UserError(f"{results}/splits.parquet: cohort {cohort} has no fold {fold} (folds {sorted(set(s['fold']))})")
    clinical = _read_table(Path(results) / cohort / "clinical.parquet", f"{cohort} clinical labels")
    clinical = clinical.set_index("patient") if "patient" in clinical.columns else clinical
    return s, clinical



def _load_model_and_inputs(args: argparse.Namespace):
    """The fine-tuned model at ``args.model`` -> (model, mae, state, normalizers) and ``args.inputs`` read with
    those normalisers; a missing or unreadable file is a UserError."""
    from imputmae.finetune import load_survival_model, normalizers_from_states, read_user_inputs

    try:
        model, mae, state = load_survival_model(args.model)
        normalizers = normalizers_from_states(state["normalizers"])
        inputs = read_user_inputs(args.inputs, normalizers)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    return model, mae, state, normalizers, inputs


