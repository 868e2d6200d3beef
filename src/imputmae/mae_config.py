"""The model's sizes (:class:`MAEConfig`): shared ones as fields, per-modality ones as mappings keyed by modality,
built from the pipeline config in one place (:meth:`MAEConfig.from_config`) and stored in every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from imputmae.modalities import MODALITIES, Kind, active, get, names

__all__ = ["MAEConfig", "config_patch_sizes"]


@dataclass
class MAEConfig:
    """Sizes of the model, shared ones as fields and per-modality ones as mappings {modality: value}.

    Attributes:
        modalities: the model's modalities, in registry order (:mod:`imputmae.modalities`).
        lengths: {vector modality: feature count L_m}; inputs are zero-padded to whole patches, the padding is
            excluded from the loss.
        layers: {modality: encoder depth}; missing entries take the registry entry's default.
        patch_sizes: {modality: patch}: features per 1D patch (vector, P_m = patch) or pixels per side of a 2D patch
            (image, P_m = 3 * patch**2); missing entries take the registry entry's default.
        kinds: {modality: "vector" | "image"}, filled from the registry in use; stored so that a checkpoint
            describes its own model.
        tile_size: an image input's side, H = W (pixels).

    ``from_dict`` also reads the named fields of checkpoints written before the mappings (``rna_len``,
    ``dnam_layers``, ``wsi_patch_size``, ...).
    """

    modalities: tuple[str, ...] = MODALITIES
    lengths: dict[str, int] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)
    patch_sizes: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, Kind] = field(default_factory=dict)
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 1024
    decoder_hidden_size: int = 256
    decoder_layers: int = 3
    decoder_heads: int = 4
    decoder_intermediate_size: int = 512
    tile_size: int = 256
    mask_ratio: float = 0.5
    norm_eps: float = 1e-6          # facebookresearch/mae; transformers' ViTMAE uses 1e-12 (negligible difference)

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        known = names()
        bad = [m for m in self.modalities if m not in known and m not in self.kinds]
        if bad or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities: got {list(self.modalities)}, expected a non-empty subset of {known}")
        mods = self.modalities
        # canonical form: exactly the model's modalities in each mapping, defaults from the registry entries
        self.kinds = {m: self.kinds.get(m) or get(m).kind for m in mods}
        self.layers = {m: int(self.layers.get(m, get(m).layers if m in known else 0)) for m in mods}
        self.patch_sizes = {m: int(self.patch_sizes.get(m, get(m).patch_size if m in known else 0)) for m in mods}
        self.lengths = {m: int(self.lengths.get(m, 0)) for m in mods if self.kinds[m] == "vector"}
        for m in mods:
            if self.kinds[m] not in ("vector", "image"):
                raise ValueError(f"kinds[{m!r}]: got {self.kinds[m]!r}, expected 'vector' or 'image'")
            if self.layers[m] <= 0 or self.patch_sizes[m] <= 0:
                raise ValueError(f"{m}: layers {self.layers[m]} and patch size {self.patch_sizes[m]} must be > 0")
            if self.kinds[m] == "vector" and self.lengths[m] <= 0:
                raise ValueError(f"lengths[{m!r}]: got {self.lengths[m]}, expected the number of {m} features (> 0)")
            if self.kinds[m] == "image" and self.tile_size % self.patch_sizes[m]:
                raise ValueError(f"patch_sizes[{m!r}] {self.patch_sizes[m]} does not divide tile_size {self.tile_size}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], lengths: Mapping[str, int],
                    modalities: Sequence[str] | None = None) -> MAEConfig:
        """Build from the pipeline config (``model``, ``omics``, ``wsi`` sections and ``pretrain.modalities``) and
        the vector modalities' feature counts {m: L_m}.

        The one place where the config's per-modality keys become the mappings: depth ``model.<m>_layers`` over
        the size table's (``config.model_dims``), patch at the entry's :attr:`Modality.patch_setting`
        (``omics.<m>.patch_size``, ``model.<m>_patch_size``); the registry entry's defaults where neither is set."""
        from imputmae.config import model_dims

        reg = active()
        mods = tuple(modalities) if modalities is not None else tuple(cfg["pretrain"]["modalities"])
        mods = tuple(m for m in reg.names if m in mods)
        dims = model_dims(cfg["model"])
        shared = {k: v for k, v in dims.items() if k not in {e.layers_setting for e in reg}}
        layers = {m: int(dims.get(reg.get(m).layers_setting, reg.get(m).layers)) for m in mods}
        patch_sizes = config_patch_sizes(cfg, mods)
        return cls(modalities=mods, lengths={m: int(lengths[m]) for m in reg.vectors(mods)}, layers=layers,
                   patch_sizes=patch_sizes, **shared, tile_size=int(cfg["wsi"]["tile_size"]),
                   mask_ratio=float(cfg["model"]["mask_ratio"]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MAEConfig:
        """From :meth:`to_dict`'s output, or from a checkpoint's config of the earlier format (one field per
        modality: ``<m>_len``, ``<m>_layers``, ``<m>_patch``, ``<m>_patch_size``)."""
        own = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in own}
        kw["modalities"] = tuple(d.get("modalities", MODALITIES))
        for key, suffixes in (("lengths", ("_len",)), ("layers", ("_layers",)),
                              ("patch_sizes", ("_patch", "_patch_size"))):
            mapping = dict(kw.get(key) or {})
            for m in kw["modalities"]:
                for suffix in suffixes:
                    if f"{m}{suffix}" in d and m not in mapping:
                        mapping[m] = d[f"{m}{suffix}"]
            kw[key] = mapping
        return cls(**kw)

    def is_image(self, m: str) -> bool:
        return self.kinds[m] == "image"

    def patch(self, m: str) -> int:
        """Modality m's patch: features per patch (vector) or pixels per side (image)."""
        return self.patch_sizes[m]

    def grid(self, m: str) -> int:
        """An image modality's patches per side: tile_size // patch."""
        return self.tile_size // self.patch_sizes[m]

    def n_patches(self, m: str) -> int:
        """N_m, the tokens of modality m."""
        if self.is_image(m):
            return self.grid(m) ** 2
        return math.ceil(self.lengths[m] / self.patch(m))

    def patch_dim(self, m: str) -> int:
        """P_m, the elements of one patch."""
        return 3 * self.patch(m) ** 2 if self.is_image(m) else self.patch(m)

    def input_len(self, m: str) -> int:
        """Length of the zero-padded vector input, N_m * P_m."""
        return self.n_patches(m) * self.patch(m)


def config_patch_sizes(cfg: Mapping[str, Any], modalities: Sequence[str] | None = None) -> dict[str, int]:
    """{m: patch size} from the pipeline config, each at its entry's :attr:`Modality.patch_setting`, the entry's
    default where unset; ``modalities``: the registry's names when None."""
    reg = active()
    return {m: int(_setting(cfg, reg.get(m).patch_setting, reg.get(m).patch_size))
            for m in (reg.names if modalities is None else modalities)}


def _setting(cfg: Mapping[str, Any], path: Sequence[str], default: int) -> int:
    """The config value at ``path`` (e.g. ``("omics", "rna", "patch_size")``), ``default`` where a level is absent."""
    node: Any = cfg
    for key in path:
        if not isinstance(node, Mapping) or node.get(key) is None:
            return default
        node = node[key]
    return int(node)
