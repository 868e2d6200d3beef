"""Small helpers of the demo generator: ids, md5, independent random streams, top-k."""

from __future__ import annotations

import hashlib
import uuid
import zlib
from pathlib import Path

import numpy as np


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stream(seed: int, *tags: str | int) -> np.random.Generator:
    """An independent random stream for one part of the generator (its draws do not shift the others')."""
    return np.random.default_rng([seed, *(zlib.crc32(t.encode()) if isinstance(t, str) else t for t in tags)])


def _top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest keys (ties by position)."""
    out = np.zeros(len(keys), bool)
    if k > 0:
        out[np.argsort(-keys, kind="stable")[:k]] = True
    return out
