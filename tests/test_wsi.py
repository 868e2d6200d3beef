"""WSI stage on generated Aperio slides: tissue mask, candidate sampling, tile reading and scoring, slide choice, QC.

Slides are a few thousand pixels a side, written with imputmae.svs.write_aperio_svs from tests/wsi_synth.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile

from imputmae import wsi
from imputmae.cli import main
from imputmae.svs import write_aperio_svs

sys.path.insert(0, str(Path(__file__).parent))
from wsi_synth import BLUE_PEN, GREEN_PEN, he_image  # noqa: E402

FAST = wsi.TileSettings(n_candidates=150, keep=8, threads=2)

# Two tissue blobs (sparse left, dense right) and pen strokes: one across the dense blob, one on glass.
BLOBS = [(0.3, 0.45, 0.2, 0.3, 0.25), (0.72, 0.5, 0.18, 0.3, 1.0)]
PEN = [((0.55, 0.15), (0.9, 0.85), BLUE_PEN), ((0.05, 0.9), (0.45, 0.95), GREEN_PEN)]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    img = he_image(1536, 2048, BLOBS, seed=1, pen=PEN)
    out = {
        "pen20": write_aperio_svs(d / "pen20.svs", img, mpp=0.5, app_mag=20, n_levels=3),
        "one_level": write_aperio_svs(d / "one_level.svs", img, mpp=0.5, app_mag=20, n_levels=1),
        "blank": write_aperio_svs(d / "blank.svs", he_image(1024, 1024, [], seed=2), mpp=0.5, app_mag=20),
        "small": write_aperio_svs(d / "small.svs", he_image(1536, 2048, [(0.5, 0.5, 0.08, 0.1, 1.0)], seed=3),
                                  mpp=0.5, app_mag=20),
        "tiny": write_aperio_svs(d / "tiny.svs", he_image(1536, 2048, [(0.5, 0.5, 0.09, 0.12, 1.0)], seed=5),
                                 mpp=0.5, app_mag=20),
        "appmag40": write_aperio_svs(d / "appmag40.svs", cv2.resize(img, None, fx=2, fy=2), mpp=None, app_mag=40),
        "no_mpp": write_aperio_svs(d / "no_mpp.svs", img, mpp=None, app_mag=None),
    }
    # 40x: the same field, twice the pixels (bicubic upsampling of the 20x content).
    out["pen40"] = write_aperio_svs(d / "pen40.svs", cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC),
                                    mpp=0.25, app_mag=40, n_levels=3)
    good = out["pen20"].read_bytes()
    (d / "truncated.svs").write_bytes(good[:40_000])
    out["truncated"] = d / "truncated.svs"
    (d / "garbage.svs").write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes())
    out["garbage"] = d / "garbage.svs"
    # Opens and masks (the low levels are intact) but every level-0 tile's JPEG data is broken.
    page = tifffile.TiffFile(out["pen20"]).pages[0]
    broken = bytearray(good)
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        broken[offset + count // 2: offset + count // 2 + 200] = bytes(200)
    (d / "bad_tiles.svs").write_bytes(bytes(broken))
    out["bad_tiles"] = d / "bad_tiles.svs"
    return out


def _ellipse_mask(shape: tuple[int, int], blobs) -> np.ndarray:
    h, w = shape
    m = np.zeros((h, w), np.uint8)
    for cx, cy, rx, ry, _ in blobs:
        cv2.ellipse(m, (round(cx * w), round(cy * h)), (round(rx * w), round(ry * h)), 0, 0, 360, 1, -1)
    return m > 0


def _pen_pixels(tile: np.ndarray) -> int:
    return int((cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)[..., 1] >= 160).sum())


def test_mask_matches_drawn_tissue_and_excludes_pen(slides):
    s = wsi.open_slide(slides["pen20"])
    tm = wsi.tissue_mask(s.handle, 32, min_area=8 * 32**2)
    assert tm.reason is None and tm.downsample == 32 and tm.mask.shape == (48, 64)
    truth = _ellipse_mask(tm.mask.shape, BLOBS)
    core = cv2.erode(truth.astype(np.uint8), np.ones((3, 3))).astype(bool)  # edge pixels are part glass
    # tissue found where drawn, nothing on glass, pen pixels never tissue
    assert tm.mask[core & ~tm.pen].mean() > 0.98
    assert not tm.mask[~cv2.dilate(truth.astype(np.uint8), np.ones((3, 3))).astype(bool)].any()
    assert not (tm.mask & tm.pen).any() and tm.pen.sum() > 50
    # area in um^2 = mask pixels x (32 x 0.5)^2
    assert tm.tissue_area_um2(0.5) == pytest.approx(tm.mask.sum() * 256.0)


@pytest.mark.parametrize("downsamples, target, expected", [
    ((1.0, 4.0002, 16.001, 64.01), 32, (3, 1)),  # Aperio 40x: 16 and 64 tie, the coarser is cheaper
    ((1.0, 4.0002, 16.001), 32, (2, 2)),         # Aperio 20x: 16, halved
    ((1.0,), 32, (0, 32)),                       # one level: level 0 reduced 32x (read in strips)
    ((1.0, 2.0, 4.0), 32, (2, 8)),
    ((1.0, 4.0, 16.0, 32.0), 32, (3, 1)),
])
def test_thumbnail_level(downsamples, target, expected):
    assert wsi._mask._thumbnail_level(downsamples, target) == expected


def test_box_fraction_matches_sliding_window():
    rng = np.random.default_rng(0)
    m = rng.random((37, 51)) > 0.4
    for box in (1, 4, 9):
        ref = np.lib.stride_tricks.sliding_window_view(m, (box, box)).mean(axis=(2, 3))
        np.testing.assert_allclose(wsi._select._box_fraction(m, box), ref)


def test_tiles_fall_inside_tissue_and_pen_and_glass_never_win(slides):
    res = wsi.tile_patient([slides["pen20"]], "P", FAST)
    assert res.qc["status"] == "ok" and res.tiles.shape == (8, 256, 256, 3) and res.tiles.dtype == np.uint8
    t, tm = res.table, res.mask
    assert list(t["rank"]) == list(range(8)) and t["hsv_score"].is_monotonic_decreasing
    drawn = _ellipse_mask((1536, 2048), BLOBS)
    for x, y, size, frac in zip(t["x"], t["y"], t["read_size"], t["tissue_fraction"]):
        box = tm.mask[int(y // 32): int((y + size) // 32), int(x // 32): int((x + size) // 32)]
        assert box.mean() >= 0.5 - 1 / 8 and frac >= 0.5  # on the thumbnail mask
        assert drawn[y: y + size, x: x + size].mean() > 0.7  # and on the tissue actually drawn
    for tile in res.tiles:
        assert _pen_pixels(tile) <= 0.02 * 256 * 256
        glass = (cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)[..., 1] < 30).mean()
        assert glass < 0.3
    # the dense blob (right) wins over the sparse one
    assert (t["x"] + 128 > 0.5 * 2048).all()


def test_pen_would_win_the_score_if_not_excluded(slides):
    s = wsi.open_slide(slides["pen20"])
    # a tile on the blue stroke over glass (x ~ 0.6 W, y ~ 0.25 H) and one on dense tissue away from pen
    pen_tile = wsi.read_tile(s.handle, 1150, 300, 0, 256, 256)
    tissue_tile = wsi.read_tile(s.handle, 1350, 800, 0, 256, 256)
    assert _pen_pixels(pen_tile) > 0.1 * 256 * 256
    assert wsi.hsv_score(pen_tile, pen_saturation=256) > wsi.hsv_score(tissue_tile, pen_saturation=256)
    assert wsi.hsv_score(pen_tile) < wsi.hsv_score(tissue_tile)


def test_same_seed_same_tiles_other_seed_other_positions(slides):
    a = wsi.tile_patient([slides["pen20"]], "P", FAST)
    b = wsi.tile_patient([slides["pen20"]], "P", FAST)
    c = wsi.tile_patient([slides["pen20"]], "P", wsi.TileSettings(n_candidates=150, keep=8, threads=1, seed=7))
    np.testing.assert_array_equal(a.tiles, b.tiles)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert set(zip(a.table.x, a.table.y)) != set(zip(c.table.x, c.table.y))


def test_threads_do_not_change_the_result(slides):
    one = wsi.tile_patient([slides["pen20"]], "P", wsi.TileSettings(n_candidates=150, keep=8, threads=1))
    four = wsi.tile_patient([slides["pen20"]], "P", wsi.TileSettings(n_candidates=150, keep=8, threads=4))
    np.testing.assert_array_equal(one.tiles, four.tiles)


def test_outside_the_scanned_area_reads_white(slides):
    s = wsi.open_slide(slides["pen20"])
    tile = wsi.read_tile(s.handle, -128, -128, 0, 256, 256)  # OpenSlide: transparent outside the slide
    assert (tile[:128, :128] == 255).all() and (tile[128:, 128:] < 250).any()


def test_20x_and_40x_give_the_same_field_of_view(slides):
    s20, s40 = wsi.open_slide(slides["pen20"]), wsi.open_slide(slides["pen40"])
    assert (s20.mpp, s40.mpp) == (0.5, 0.25)
    # 40x: 512 level-0 px = 256 px at level 1 (downsample 2), no resize needed
    assert wsi.read_level_for(s40.handle, 512, 256) == (1, 256)
    assert wsi.read_level_for(s20.handle, 256, 256) == (0, 256)
    def blur(t: np.ndarray) -> np.ndarray:  # compare fields, not JPEG noise
        return cv2.GaussianBlur(t.astype(np.float32), (0, 0), 2)

    for x, y in [(1300, 700), (400, 500), (1500, 1000)]:
        t20 = blur(wsi.read_tile(s20.handle, x, y, 0, 256, 256))
        t40_level1 = blur(wsi.read_tile(s40.handle, 2 * x, 2 * y, 1, 256, 256))
        t40_level0 = blur(wsi.read_tile(s40.handle, 2 * x, 2 * y, 0, 512, 256))
        assert np.abs(t20 - t40_level0).mean() < 1.5 and np.abs(t20 - t40_level1).mean() < 1.5
        # a field one 20x pixel off is measurably further away: the comparison can fail
        shifted = blur(wsi.read_tile(s40.handle, 2 * x + 2, 2 * y, 0, 512, 256))
        assert np.abs(t20 - shifted).mean() > 2 * np.abs(t20 - t40_level0).mean()
    res = wsi.tile_patient([slides["pen40"]], "P", FAST)
    assert res.qc["status"] == "ok" and set(res.table["read_size"]) == {512}
    assert set(res.table["level"]) == {1} and set(res.table["level_read_size"]) == {256}
    assert (res.table["x"] + 256 > 0.5 * 4096).all()  # the dense blob wins at 40x too


def test_one_level_slide(slides, monkeypatch):
    s = wsi.open_slide(slides["one_level"])
    assert s.handle.level_count == 1
    whole = wsi.tissue_mask(s.handle, 32)
    # strips of 64 level-0 rows give the same thumbnail as one read (integer INTER_AREA factor)
    monkeypatch.setattr(wsi._mask, "STRIP_BYTES", 4 * 2048 * 64)
    strips = wsi.tissue_mask(s.handle, 32)
    np.testing.assert_array_equal(whole.thumb, strips.thumb)
    assert whole.level == 0 and whole.downsample == 32 and whole.thumb.shape == (48, 64, 3)
    res = wsi.tile_patient([slides["one_level"]], "P", FAST)
    assert res.qc["status"] == "ok" and set(res.table["level"]) == {0}
    assert (res.table["x"] + 128 > 0.5 * 2048).all()


def test_blank_slide_has_no_tissue(slides):
    res = wsi.tile_patient([slides["blank"]], "B", FAST)
    assert res.qc["status"].startswith("no tissue") and res.qc["n_tiles"] == 0
    assert res.tiles.shape == (0, 256, 256, 3) and len(res.table) == 0
    assert res.mask is not None and res.mask.separation < wsi.MIN_SEPARATION


def test_dust_on_blank_glass_is_not_tissue(tmp_path):
    # specks 20-90 um across on glass: the median blur and the speck-size rule leave no tissue
    specks = [(0.2, 0.3, 0.01, 0.013, 1.0), (0.7, 0.3, 0.045, 0.06, 1.0), (0.4, 0.7, 0.045, 0.06, 1.0)]
    path = write_aperio_svs(tmp_path / "dust.svs", he_image(1536, 2048, specks, seed=4), mpp=0.5, app_mag=20)
    res = wsi.tile_patient([path], "D", FAST)
    assert res.qc["status"].startswith("no tissue") and res.tiles.shape[0] == 0
    # the same specks at 4x the size are tissue
    big = [(x, y, 4 * rx, 4 * ry, d) for x, y, rx, ry, d in specks[1:]]
    path = write_aperio_svs(tmp_path / "big.svs", he_image(1536, 2048, big, seed=4), mpp=0.5, app_mag=20)
    assert wsi.tile_patient([path], "D", FAST).qc["status"] == "ok"


@pytest.mark.parametrize("name, reason", [("truncated", "cannot open"), ("garbage", "cannot open"),
                                          ("bad_tiles", "read error: Corrupt JPEG")])
def test_corrupt_slides_go_to_qc(slides, name, reason):
    res = wsi.tile_patient([slides[name]], "C", FAST)
    assert res.qc["status"].startswith(reason) and res.qc["n_tiles"] == 0 and res.tiles.shape[0] == 0


def test_missing_file_goes_to_qc(tmp_path):
    res = wsi.tile_patient([tmp_path / "absent.svs"], "M", FAST)
    assert res.qc["status"] == "cannot open: file not found"


def test_undownloaded_slides_are_recorded(slides):
    res = wsi.tile_patient([], "U", FAST, unavailable=[("x.svs", "not downloaded")])
    assert res.qc["status"] == "not downloaded" and res.qc["slide"] == "x.svs" and res.tiles.shape[0] == 0
    res = wsi.tile_patient([slides["pen20"]], "U", FAST, unavailable=[("x.svs", "not downloaded")])
    assert res.qc["status"] == "ok" and res.qc["n_slides"] == 2 and "x.svs: not downloaded" in res.qc["slides"]


def test_mpp_from_appmag_default_or_qc(slides, caplog):
    s = wsi.open_slide(slides["appmag40"])
    assert s.mpp == 0.25 and s.mpp_source == "objective power 40x"
    with pytest.raises(wsi.SlideError, match="no mpp.*default_mpp"):
        wsi.open_slide(slides["no_mpp"])
    res = wsi.tile_patient([slides["no_mpp"]], "N", FAST)
    assert res.qc["status"].startswith("no mpp")
    with caplog.at_level(logging.WARNING, logger="imputmae.wsi"):
        s = wsi.open_slide(slides["no_mpp"], default_mpp=0.5)
    assert s.mpp == 0.5 and s.mpp_source == "default_mpp" and "default_mpp" in caplog.text


def test_slide_with_most_tissue_is_chosen(slides):
    paths = [slides["small"], slides["garbage"], slides["pen20"], slides["blank"]]
    res = wsi.tile_patient(paths, "S", FAST)
    assert res.qc["slide"] == "pen20.svs" and res.qc["status"] == "ok" and res.qc["n_slides"] == 4
    sl = res.slides.set_index("slide")
    assert sl.loc["pen20.svs", "chosen"] and sl["chosen"].sum() == 1
    assert sl.loc["pen20.svs", "tissue_area_um2"] > sl.loc["small.svs", "tissue_area_um2"] > 0
    assert sl.loc["small.svs", "status"] == "not chosen (less tissue)"
    assert sl.loc["garbage.svs", "status"].startswith("cannot open")
    assert sl.loc["blank.svs", "status"].startswith("no tissue")
    assert set(res.table["slide"]) == {"pen20.svs"}
    # order of the arguments does not matter
    again = wsi.tile_patient(paths[::-1], "S", FAST)
    np.testing.assert_array_equal(res.tiles, again.tiles)


def test_too_little_tissue_keeps_the_tiles_found_with_status(slides):
    res = wsi.tile_patient([slides["tiny"]], "T", wsi.TileSettings(n_candidates=300, keep=200, threads=2))
    n = res.qc["n_tiles"]
    assert 0 < n < 200 and res.qc["status"] == f"only {n} tiles" and res.tiles.shape[0] == n == len(res.table)


def test_cli_writes_the_four_outputs_and_merges_qc(slides, tmp_path):
    settings = '{"n_candidates": 150, "keep": 20, "threads": 2}'
    rc = main(["wsi", "tiles", str(slides["pen20"]), str(slides["small"]), "--out", str(tmp_path / "wsi" / "P-1"),
               "--settings", settings, "--keep", "8", "--no-progress"])
    assert rc == 0
    rc = main(["wsi", "tiles", str(slides["garbage"]), "--out", str(tmp_path / "wsi" / "P-0"), "--settings", settings,
               "--keep", "8", "--no-progress"])
    assert rc == 0
    tiles = np.load(tmp_path / "wsi" / "P-1.npy", mmap_mode="r")
    assert isinstance(tiles, np.memmap) and tiles.shape == (8, 256, 256, 3) and tiles.dtype == np.uint8
    table = pd.read_parquet(tmp_path / "wsi" / "P-1.parquet")
    assert list(table.columns) == wsi.TILE_COLUMNS and (table["patient"] == "P-1").all() and len(table) == 8
    assert cv2.imread(str(tmp_path / "wsi" / "P-1.png")).shape[1] == 768
    empty = np.load(tmp_path / "wsi" / "P-0.npy")
    assert empty.shape == (0, 256, 256, 3)
    assert not list((tmp_path / "wsi").glob("*.part*"))
    rc = main(["wsi", "qc", str(tmp_path / "wsi" / "P-1.qc.tsv"), str(tmp_path / "wsi" / "P-0.qc.tsv"),
               "--out", str(tmp_path / "wsi_qc.tsv")])
    assert rc == 0
    qc = pd.read_csv(tmp_path / "wsi_qc.tsv", sep="\t")
    assert list(qc["patient"]) == ["P-0", "P-1"] and list(qc.columns) == wsi.QC_COLUMNS
    assert qc.set_index("patient").loc["P-1", "status"] == "ok"
    assert qc.set_index("patient").loc["P-0", "status"].startswith("cannot open")
    assert qc.set_index("patient").loc["P-1", "n_slides"] == 2


def test_cli_tiles_cohort_writes_what_tiles_and_qc_write(slides, tmp_path):
    """wsi.tile_jobs: cohort (one process) and patient (one `wsi tiles` per patient, then `wsi qc`) give the same
    files, byte for byte: tiles, tile tables, pictures, QC rows and the cohort's QC table."""
    settings = '{"n_candidates": 150, "keep": 8, "threads": 1}'
    unavailable = "lost.svs=not downloaded (see report.tsv)"
    per, one = tmp_path / "per", tmp_path / "one"
    # the per-patient rule passes a patient's slides sorted, as tiles-cohort orders them
    assert main(["wsi", "tiles", str(slides["pen20"]), str(slides["small"]), "--out", str(per / "wsi" / "P-1"),
                 "--settings", settings, "--no-progress"]) == 0
    assert main(["wsi", "tiles", str(slides["garbage"]), "--unavailable", unavailable, "--out",
                 str(per / "wsi" / "P-0"), "--settings", settings, "--no-progress"]) == 0
    assert main(["wsi", "tiles", "--unavailable", unavailable, "--out", str(per / "wsi" / "P-2"),
                 "--settings", settings, "--no-progress"]) == 0
    assert main(["wsi", "qc", *map(str, sorted((per / "wsi").glob("*.qc.tsv"))), "--out", str(per / "wsi_qc.tsv")]) == 0
    assert main(["wsi", "tiles-cohort", "--slide", f"P-1={slides['pen20']}", "--slide", f"P-0={slides['garbage']}",
                 "--slide", f"P-1={slides['small']}", "--unavailable", f"P-0={unavailable}",
                 "--unavailable", f"P-2={unavailable}", "--out-dir", str(one / "wsi"),
                 "--qc-out", str(one / "wsi_qc.tsv"), "--settings", settings]) == 0
    names = sorted(f.name for f in (per / "wsi").iterdir())
    assert names == sorted(f.name for f in (one / "wsi").iterdir()) and len(names) == 12
    for name in names:
        assert (per / "wsi" / name).read_bytes() == (one / "wsi" / name).read_bytes(), name
    assert (per / "wsi_qc.tsv").read_bytes() == (one / "wsi_qc.tsv").read_bytes()
    qc = pd.read_csv(one / "wsi_qc.tsv", sep="\t").set_index("patient")
    assert list(qc.index) == ["P-0", "P-1", "P-2"] and qc.loc["P-1", "status"] == "ok"
    assert "not downloaded" in qc.loc["P-2", "slides"]


def test_cli_tiles_cohort_rejects_a_malformed_slide_argument(tmp_path, capsys):
    assert main(["wsi", "tiles-cohort", "--slide", "no-patient.svs", "--out-dir", str(tmp_path),
                 "--qc-out", str(tmp_path / "qc.tsv")]) == 2
    assert "expected PATIENT=SLIDE" in capsys.readouterr().err


def test_cli_rejects_bad_settings(slides, tmp_path, capsys):
    assert main(["wsi", "tiles", str(slides["pen20"]), "--out", str(tmp_path / "x"), "--settings",
                 '{"kep": 3}']) == 2
    assert "unknown wsi setting" in capsys.readouterr().err
    assert main(["wsi", "tiles", str(slides["pen20"]), "--out", str(tmp_path / "x"), "--keep", "5",
                 "--n-candidates", "3"]) == 2
