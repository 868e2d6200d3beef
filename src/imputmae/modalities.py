"""The modality registry: each modality defined once, as one :class:`Modality` entry, in the order every table,
batch and availability mask lists them.

The model, the data, fine-tuning, Table 4, the report, the CLI and the rules iterate over the registry and ask an
entry what it is instead of comparing names. A ``vector`` modality is a patient x feature matrix
``{R}/<cohort>/<name>.parquet`` (normalised by a quantile transform fitted on training patients, cut into 1D patches
of ``omics.<name>.patch_size`` features); an ``image`` modality is a stack of RGB tiles
``{R}/<cohort>/<name>/<patient>.npy`` listed as ``ok`` in ``{R}/<cohort>/<name>_qc.tsv`` (scaled to [0, 1], then
ImageNet-normalised inside the model, cut into 2D patches of ``model.<name>_patch_size`` pixels).

:data:`REGISTRY` holds the built-in three (rna, dnam, wsi; :data:`MODALITIES` their names, the config schema's list).
A library user adds a modality by building an extended registry (:meth:`Registry.extended`) and running the stages
inside :func:`using`; the lookups below (:func:`active`, :func:`names`, :func:`get`, ...) answer from the registry in
use. The override is scoped to the ``with`` block (a :class:`contextvars.ContextVar`, restored on exit, and per
thread: a new thread sees the built-in registry); :data:`REGISTRY` itself is never changed. How to add one for good:
README, "Adding a modality".
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Kind", "Modality", "Registry", "REGISTRY", "MODALITIES", "MODALITY_SETS", "active", "using", "names",
           "get", "is_image", "vector_modalities", "label", "modality_sets"]

Kind = Literal["vector", "image"]


@dataclass(frozen=True)
class Modality:
    """One modality.

    Attributes:
        name: config keys, file names, batch keys (``batch[name]``: vector [B, L] or image [B, 3, H, W]).
        label: how tables and the report print it.
        kind: ``vector`` (a feature matrix) or ``image`` (RGB tiles).
        description: one line for the docs.
        patch_size: the default patch (vector: features per 1D patch; image: pixels per side of a 2D patch) when the
            configuration does not set :attr:`patch_setting`.
        layers: the default encoder depth when the model size table (``config.MODEL_SIZES``) has no
            :attr:`layers_setting` for it.
        log1p: vector normalisation: ``log1p`` of the raw (non-negative) values before the upper-quartile scaling.
        std_filter: vector normalisation: keep only features whose training standard deviation exceeds
            ``omics.<name>.min_std``.
        anchor: a patient enters the outer folds only with this modality (in a cohort where some patient has it).
    """

    name: str
    label: str
    kind: Kind
    description: str = ""
    patch_size: int = 256
    layers: int = 2
    log1p: bool = False
    std_filter: bool = False
    anchor: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("vector", "image"):
            raise ValueError(f"modality {self.name!r}: kind must be 'vector' or 'image', got {self.kind!r}")
        if not self.name.isidentifier() or self.name == "all":
            raise ValueError(f"modality name {self.name!r}: expected an identifier other than 'all'")

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def layers_setting(self) -> str:
        """Its encoder depth's key in ``model`` and ``config.MODEL_SIZES`` (``rna_layers``)."""
        return f"{self.name}_layers"

    @property
    def patch_setting(self) -> tuple[str, ...]:
        """Where the configuration sets its patch: ``("model", "wsi_patch_size")`` for an image,
        ``("omics", "rna", "patch_size")`` for a vector."""
        return ("model", f"{self.name}_patch_size") if self.is_image else ("omics", self.name, "patch_size")

    def matrix_path(self, results: str | Path, cohort: str) -> Path:
        """A vector modality's stage output: ``{results}/{cohort}/{name}.parquet`` (index patient)."""
        return Path(results) / cohort / f"{self.name}.parquet"

    def qc_path(self, results: str | Path, cohort: str) -> Path:
        """An image modality's per-patient status table: ``{results}/{cohort}/{name}_qc.tsv``."""
        return Path(results) / cohort / f"{self.name}_qc.tsv"

    def tiles_path(self, results: str | Path, cohort: str, patient: str) -> Path:
        """An image modality's tiles of one patient: ``{results}/{cohort}/{name}/{patient}.npy``, uint8 [K, H, W, 3]."""
        return Path(results) / cohort / self.name / f"{patient}.npy"


@dataclass(frozen=True)
class Registry:
    """An ordered, immutable set of :class:`Modality` entries (the order of tables, batches and masks)."""

    entries: tuple[Modality, ...]

    def __post_init__(self) -> None:
        seen = [m.name for m in self.entries]
        if len(set(seen)) != len(seen) or not seen:
            raise ValueError(f"a registry needs one or more modalities with distinct names, got {seen}")

    def __iter__(self) -> Iterator[Modality]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.entries)

    def get(self, name: str) -> Modality:
        """The entry of ``name``; a ValueError naming the known modalities otherwise."""
        for m in self.entries:
            if m.name == name:
                return m
        raise ValueError(f"unknown modality {name!r}; expected one of {self.names}")

    def index(self, name: str) -> int:
        """``name``'s column in availability masks [B, M] (its position in the registry)."""
        return self.names.index(self.get(name).name)

    def vectors(self, among: Sequence[str] | None = None) -> tuple[str, ...]:
        """The vector modalities (among ``among``, default all), in registry order."""
        return tuple(m.name for m in self.entries if not m.is_image and (among is None or m.name in among))

    def images(self, among: Sequence[str] | None = None) -> tuple[str, ...]:
        """The image modalities (among ``among``, default all), in registry order."""
        return tuple(m.name for m in self.entries if m.is_image and (among is None or m.name in among))

    def extended(self, *entries: Modality) -> Registry:
        """A new registry: these entries after this one's (this registry is unchanged)."""
        return Registry((*self.entries, *entries))


REGISTRY = Registry((
    Modality("rna", "RNA", "vector", "RNA-seq, STAR - Counts FPKM-UQ of protein-coding genes", patch_size=256,
             layers=6, log1p=True, std_filter=True, anchor=True),
    Modality("dnam", "DNAm", "vector", "DNA methylation, SeSAMe beta values of the 27k/450k probe overlap",
             patch_size=512, layers=6),
    Modality("wsi", "WSI", "image", "whole-slide image, 256 px tiles at 20x", patch_size=16, layers=4),
))
# The built-in modalities' names: the config schema's `modality` list and the rules'.
MODALITIES: tuple[str, ...] = REGISTRY.names
# Table 3's rows: one model per modality, and one with every modality ("all").
MODALITY_SETS: tuple[str, ...] = (*MODALITIES, "all")

_ACTIVE: contextvars.ContextVar[Registry] = contextvars.ContextVar("imputmae_modalities", default=REGISTRY)


def active() -> Registry:
    """The registry in use: :data:`REGISTRY`, or the one given to the enclosing :func:`using` block."""
    return _ACTIVE.get()


@contextlib.contextmanager
def using(registry: Registry) -> Iterator[Registry]:
    """Run the stages with ``registry`` (e.g. ``REGISTRY.extended(Modality("clin", "Clinical", "vector"))``) inside
    the block; the previous registry is back on exit, whatever happens in it."""
    token = _ACTIVE.set(registry)
    try:
        yield registry
    finally:
        _ACTIVE.reset(token)


def names() -> tuple[str, ...]:
    """The names of the registry in use, in order (the columns of ``available``)."""
    return active().names


def get(name: str) -> Modality:
    """The entry of ``name`` in the registry in use; a ValueError naming the known modalities otherwise."""
    return active().get(name)


def is_image(name: str) -> bool:
    return get(name).is_image


def vector_modalities(among: Sequence[str] | None = None) -> tuple[str, ...]:
    """The vector (feature-matrix) modalities of the registry in use (among ``among``), in registry order."""
    return active().vectors(among)


def modality_sets() -> tuple[str, ...]:
    """Table 3's rows for the registry in use: each modality, then ``all``."""
    return (*names(), "all")


def label(name: str) -> str:
    """How tables print ``name`` (``all`` for the set of every modality)."""
    return "all" if name == "all" else get(name).label
