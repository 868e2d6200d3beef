"""WSI stage on the demo cohort's slides (imputmae.demo): every kind the demo writes (pyramidal and one-level, 20x and
40x, AppMag without MPP, a second diagnostic slide with less tissue, blank, pen-marked, corrupt) gets the outcome
it should, with the demo's settings (config.demo.yaml: keep 8, 200 candidates)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from imputmae import wsi
from imputmae.demo import write_demo

DEMO = wsi.TileSettings(n_candidates=200, keep=8, threads=2)


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory) -> dict[str, wsi.PatientTiles]:
    out = tmp_path_factory.mktemp("demo")
    write_demo(out, seed=0, n_patients={"DEMO-BRCA": 10})
    slides: dict[str, list[Path]] = defaultdict(list)
    for hit in json.loads((out / "files.json").read_text()):
        if hit["data_format"] == "SVS" and hit["experimental_strategy"] == "Diagnostic Slide":
            slides[hit["cases"][0]["submitter_id"]].append(out / "data" / hit["file_id"] / hit["file_name"])
    return {p: wsi.tile_patient(sorted(paths), p, DEMO) for p, paths in sorted(slides.items())}


def test_every_demo_slide_kind_gets_its_outcome(demo_results):
    status = {p: r.qc["status"] for p, r in demo_results.items()}
    assert sum(s.startswith("no tissue") for s in status.values()) == 1
    assert sum(s.startswith("cannot open") for s in status.values()) == 1
    ok = [p for p, s in status.items() if s == "ok"]
    assert len(ok) == len(status) - 2
    results = [demo_results[p] for p in ok]
    assert {r.qc["mpp"] for r in results} == {0.25, 0.5}  # 20x and 40x
    assert any(r.qc["mpp_source"].startswith("objective power") for r in results)  # AppMag only
    assert any(r.mask.level == 0 for r in results)  # one-level files
    several = [r for r in results if r.qc["n_slides"] > 1]
    assert several
    for r in several:  # the full-extent DX1 wins over the half-extent DX2
        chosen = r.slides[r.slides["chosen"]].iloc[0]
        assert "-DX1." in chosen["slide"] and chosen["tissue_area_um2"] == r.slides["tissue_area_um2"].max()


def test_demo_tiles_sit_on_tissue_and_avoid_pen(demo_results):
    pen_patients = []
    for r in demo_results.values():
        if r.qc["status"] != "ok":
            assert r.tiles.shape[0] == 0
            continue
        tm, t = r.mask, r.table
        assert r.tiles.shape == (8, 256, 256, 3)
        for x, y, size in t[["x", "y", "read_size"]].to_numpy():
            box = tm.mask[int(y / tm.downsample): int(np.ceil((y + size) / tm.downsample)),
                          int(x / tm.downsample): int(np.ceil((x + size) / tm.downsample))]
            assert box.mean() >= 0.4
        assert (t["ink_fraction"] <= DEMO.max_pen_fraction).all()
        assert all(wsi.ink_fraction(tile) <= DEMO.max_pen_fraction for tile in r.tiles)
        if r.selection.ink_rejected.size:
            pen_patients.append(r.qc["patient"])
    # only the pen-marked slide has candidates on ink (H&E's own saturated pixels are never taken for ink)
    assert len(pen_patients) == 1
