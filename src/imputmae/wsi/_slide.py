"""The ``wsi:`` settings, and opening a slide with its resolution (mpp)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openslide

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TileSettings:
    """The ``wsi:`` section of the configuration (same names, same defaults as config.yaml)."""

    tile_size: int = 256
    target_mpp: float = 0.5
    default_mpp: float | None = None
    thumbnail_downsample: int = 32
    pen_saturation: int = 160
    median_blur: int = 9
    min_tissue_fraction: float = 0.5
    max_pen_fraction: float = 0.02
    n_candidates: int = 1000
    keep: int = 100
    score_s_min: int = 130
    score_v_min: int = 40
    score_v_max: int = 170
    threads: int = 4
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TileSettings:
        """Settings from a mapping with a subset of the fields (the rest: the defaults).

        Raises:
            ValueError: an unknown key, or a value the configuration's checks reject (the config schema and
                :func:`imputmae.config.validate_config`, the one place the ``wsi:`` settings are checked), one line
                naming the key.
        """
        from imputmae.config import ConfigError, validate_config

        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown wsi setting(s) {unknown}; allowed: {sorted(names)}")
        settings = cls(**dict(values))
        try:
            validate_config({"wsi": dataclasses.asdict(settings)}, sections=["wsi"])
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("config: ")) from None
        return settings


class SlideError(Exception):
    """A slide that cannot be used (unopenable, unreadable, no mpp); ``str(exc)`` is the QC reason."""


@dataclass
class Slide:
    """An opened slide and its resolution. ``mpp``: microns per level-0 pixel; ``mpp_source``: where it came from."""

    path: Path
    handle: openslide.OpenSlide
    mpp: float
    mpp_source: str

    @property
    def name(self) -> str:
        return self.path.name

    def close(self) -> None:
        self.handle.close()


def open_slide(path: str | Path, default_mpp: float | None = None) -> Slide:
    """Open ``path`` with OpenSlide and find its level-0 resolution.

    mpp from ``openslide.mpp-x``; else 10 / ``openslide.objective-power`` (Aperio ``AppMag``: 20x -> 0.5,
    40x -> 0.25); else ``default_mpp`` with a warning. Raises :class:`SlideError` when the file is missing, is not a
    slide OpenSlide reads, or has no resolution and no default.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError("cannot open: file not found")
    try:
        handle = openslide.OpenSlide(path)
    except openslide.OpenSlideError as exc:  # includes OpenSlideUnsupportedFormatError
        raise SlideError(f"cannot open: {_one_line(exc) or type(exc).__name__}") from exc
    props = handle.properties
    mpp = _positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
    source = openslide.PROPERTY_NAME_MPP_X
    if mpp is None:
        power = _positive_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER) or props.get("aperio.AppMag"))
        if power is not None:
            mpp, source = 10.0 / power, f"objective power {power:g}x"
    if mpp is None and default_mpp is not None:
        log.warning("%s: neither %s nor an objective power; using wsi.default_mpp = %g", path.name,
                    openslide.PROPERTY_NAME_MPP_X, default_mpp)
        mpp, source = float(default_mpp), "default_mpp"
    if mpp is None:
        handle.close()
        raise SlideError("no mpp: the slide has neither openslide.mpp-x nor an objective power (AppMag); "
                         "set wsi.default_mpp to use it")
    return Slide(path=path, handle=handle, mpp=mpp, mpp_source=source)


def _positive_float(value: str | None) -> float | None:
    try:
        x = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return x if math.isfinite(x) and x > 0 else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
