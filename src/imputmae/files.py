"""Writing outputs safely: every file the pipeline produces goes through :func:`atomic_write`.

A reader (Snakemake, the next rule, a user) never sees a half-written file: the bytes go to a hidden temporary
name in the same folder, which is renamed onto the final name only once ``write`` returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``; returns ``path``.

    The temporary name, ``.{name}.{pid}.part{suffix}``, keeps the final suffix (``savefig`` and ``np.save`` go by
    it) and the process id (two jobs writing the same target never share one). The folder is created if needed;
    on an exception the temporary file is removed and the exception propagates (``path`` is left untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8, ``\\n`` line ends on every platform)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))
