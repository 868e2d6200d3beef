"""The modality registry: each modality defined once, in :data:`REGISTRY`, in the order every table lists them.

The model, the data, fine-tuning, Table 4, the report, the CLI and the rules iterate over this registry and ask an
entry what it is (:attr:`Modality.kind`) instead of comparing names: a ``vector`` modality is a patient x feature
matrix ``{R}/<cohort>/<name>.parquet`` (normalised by a quantile transform fitted on training patients, cut into
1D patches of ``omics.<name>.patch_size``); an ``image`` modality is a stack of RGB tiles
``{R}/<cohort>/<name>/<patient>.npy`` listed as ``ok`` in ``{R}/<cohort>/<name>_qc.tsv`` (scaled to [0, 1], then
ImageNet-normalised inside the model, cut into 2D patches of ``model.<name>_patch_size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Kind", "Modality", "REGISTRY", "MODALITIES", "get", "is_image", "vector_modalities", "label",
           "MODALITY_SETS"]

Kind = Literal["vector", "image"]


@dataclass(frozen=True)
class Modality:
    """One modality: ``name`` (config keys, file names, batch keys), ``label`` (tables and report), ``kind``."""

    name: str
    label: str
    kind: Kind
    description: str = ""

    @property
    def is_image(self) -> bool:
        return self.kind == "image"


REGISTRY: tuple[Modality, ...] = (
    Modality("rna", "RNA", "vector", "RNA-seq, STAR - Counts FPKM-UQ of protein-coding genes"),
    Modality("dnam", "DNAm", "vector", "DNA methylation, SeSAMe beta values of the 27k/450k probe overlap"),
    Modality("wsi", "WSI", "image", "whole-slide image, 256 px tiles at 20x"),
)
MODALITIES: tuple[str, ...] = tuple(m.name for m in REGISTRY)
# Table 3's rows: one model per modality, and one with every modality ("all").
MODALITY_SETS: tuple[str, ...] = (*MODALITIES, "all")

_BY_NAME = {m.name: m for m in REGISTRY}


def get(name: str) -> Modality:
    """The registry entry of ``name``; a ValueError naming the known modalities otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; expected one of {MODALITIES}") from None


def is_image(name: str) -> bool:
    return get(name).is_image


def vector_modalities(names: tuple[str, ...] | list[str] = MODALITIES) -> tuple[str, ...]:
    """The vector (feature-matrix) modalities among ``names``, in registry order."""
    return tuple(m for m in MODALITIES if m in names and not is_image(m))


def label(name: str) -> str:
    """How tables print ``name`` (``all`` for the set of every modality)."""
    return "all" if name == "all" else get(name).label
