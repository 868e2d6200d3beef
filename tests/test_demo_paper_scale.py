"""`demo-data --scale paper`: files of GDC's real dimensions, read by the pipeline's own readers and by OpenSlide;
slides written by strips without seams; the demo's scale unchanged (tests/test_demo.py checks its properties)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import openslide
import pytest

from imputmae.cli import main
from imputmae.demo import DEFAULT_PARAMS, SCALES, SIZES, simulate_patients, write_demo
from imputmae.demo._omics import _betas_txt, _make_omics_model, _rna_log_expression, _star_counts_tsv
from imputmae.demo._slides import LAYOUT_DOWNSAMPLE, _layout, _site_stain, _slide_payload
from imputmae.omics import read_sesame_betas, read_star_counts
from imputmae.svs import write_aperio_svs, write_aperio_svs_strips

PAPER = SCALES["paper"]
# The paper's slides at a tenth of the side: the same streamed path, fast enough for a test.
# Strips of 512 rows: two JPEG tiles (256 px) each, so that a strip's edge can be told from a tile's edge.
SMALL_STREAMED = dataclasses.replace(PAPER, slide_20x=(1536, 2048), strip_rows=512)


@pytest.fixture(scope="module")
def paper_model():
    return _make_omics_model(0, DEFAULT_PARAMS, PAPER)


@pytest.fixture(scope="module")
def patient():
    return next(simulate_patients({"DEMO-BRCA": 3}, 0).itertuples(index=False))


def test_paper_gene_and_probe_lists_have_gdc_sizes(paper_model):
    om = paper_model
    assert om.n_genes + 2 == 60_660  # with the two _PAR_Y copies
    assert sum(t == "protein_coding" for t in om.gene_types) == 19_962
    i450, i27 = om.probe_index["450"], om.probe_index["27"]
    assert (len(i450), len(i27), len(np.intersect1d(i450, i27))) == (485_577, 27_578, 25_978)
    assert list(om.probes[i450]) == sorted(om.probes[i450])


def test_paper_files_parse_with_the_pipelines_readers(tmp_path, paper_model, patient):
    om, rng = paper_model, np.random.default_rng(0)
    star = tmp_path / "a.tsv"
    star.write_bytes(_star_counts_tsv(om, _rna_log_expression(om, patient, DEFAULT_PARAMS, rng), rng))
    assert len(star.read_text().splitlines()) == 2 + 4 + 60_660  # gene-model line, header, N_* rows, genes
    rna = read_star_counts(star)
    assert len(rna) == 19_962 and (rna >= 0).all()
    for platform, n in (("450", 485_577), ("27", 27_578)):
        path = tmp_path / f"{platform}.txt"
        path.write_bytes(_betas_txt(om, patient, platform, DEFAULT_PARAMS, rng))
        betas = read_sesame_betas(path)
        assert len(betas) == n and 0.005 < betas.isna().mean() < 0.03  # SeSAMe's masked probes as NA
        assert betas.between(0, 1).sum() == betas.notna().sum()


def test_strip_writer_gives_the_whole_image_writers_level0(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (1024, 1280, 3), dtype=np.uint8)
    a = write_aperio_svs(tmp_path / "a.svs", img, mpp=0.5, app_mag=20, n_levels=1, quality=80)
    b = write_aperio_svs_strips(tmp_path / "b.svs", img.shape[:2], (img[i:i + 256] for i in range(0, 1024, 256)),
                                mpp=0.5, app_mag=20, n_levels=3, level_factor=4, quality=80)
    with openslide.OpenSlide(a) as sa, openslide.OpenSlide(b) as sb:
        assert sb.properties["openslide.vendor"] == "aperio" and sb.level_downsamples == (1.0, 4.0, 16.0)
        assert sb.properties["openslide.mpp-x"] == "0.5"
        np.testing.assert_array_equal(np.asarray(sa.read_region((0, 0), 0, (1280, 1024))),
                                      np.asarray(sb.read_region((0, 0), 0, (1280, 1024))))
    with pytest.raises(ValueError, match="does not fit"):
        write_aperio_svs_strips(tmp_path / "c.svs", (512, 512), iter([img[:100, :512]]), mpp=0.5, app_mag=20)
    assert not (tmp_path / "c.svs").exists()


@pytest.mark.parametrize("mag", [20, 40])
def test_streamed_slides_open_as_aperio_pyramids_without_seams(tmp_path, patient, mag):
    stain = _site_stain(patient.site, 0, DEFAULT_PARAMS)
    path = tmp_path / f"s{mag}.svs"
    spec = dict(kind="normal", mag=mag, levels=3, mpp=True, scale=1.0)
    assert _slide_payload(patient, stain, DEFAULT_PARAMS, np.random.default_rng(2), path, spec, SMALL_STREAMED) is None
    up = mag // 20
    with openslide.OpenSlide(path) as s:
        assert s.dimensions == (2048 * up, 1536 * up) and s.level_downsamples == (1.0, 4.0, 16.0)
        assert s.properties["aperio.AppMag"] == str(mag)
        img = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB")).astype(np.float32)
    step = np.abs(np.diff(img, axis=0)).mean(axis=(1, 2))  # [H - 1] mean step between neighbouring rows
    strip_edges = step[np.arange(512, 1536, 512) * up - 1]  # last row of a strip to the next one's first
    tile_edges = step[np.arange(256, 1536, 512) * up - 1]   # JPEG tile edges inside a strip (every SVS has them)
    assert strip_edges.mean() < 1.5 * tile_edges.mean() + 0.3, (strip_edges, tile_edges)
    tissue = (img.min(axis=2) < 200).mean()
    assert 0.1 < tissue < 0.6  # tissue islands on glass, as in the demo


def test_paper_slides_hold_a_thousand_tiles_of_tissue():
    pats = simulate_patients({"DEMO-BRCA": 6, "DEMO-GBM": 6}, 0)
    tiles = []
    for p in pats.itertuples(index=False):
        lay = _layout(p, _site_stain(p.site, 0, DEFAULT_PARAMS), DEFAULT_PARAMS, np.random.default_rng([0, len(tiles)]),
                      PAPER.slide_20x, "normal", 1.0)
        tiles.append(lay.tissue.sum() * LAYOUT_DOWNSAMPLE**2 / 256**2)  # 256 px tiles of tissue at 20x
        assert (lay.ny[:-1] <= lay.ny[1:]).all() and len(lay.ny) > 10_000
    assert np.median(tiles) > 1000, tiles


def test_demo_scale_keeps_its_bytes(tmp_path):
    """The default demo is the paper-scale refactor's reference: these digests are main's before it (cce47e8)."""
    write_demo(tmp_path, seed=0, n_patients={"DEMO-LGG": 3, "DEMO-GBM": 2})
    digests = {n: hashlib.md5((tmp_path / n).read_bytes()).hexdigest() for n in ("files.json", "cases.json")}
    assert digests == DEMO_DIGESTS


DEMO_DIGESTS = {'files.json': '8d11e628061ee34c3ad030599729af7e', 'cases.json': '8785df6a31558c79c116ec6fb6749fd7'}


@pytest.mark.slow
def test_paper_scale_mirror_has_gdc_sized_omics_files(tmp_path):
    summary = write_demo(tmp_path, seed=0, n_patients={"DEMO-LGG": 2}, scale="paper", slides=False)
    hits = json.loads((tmp_path / "files.json").read_text())
    sizes = {h["data_type"]: h["file_size"] for h in hits}
    assert summary.patients == {"DEMO-LGG": 2}
    assert sizes["Gene Expression Quantification"] > 4_000_000  # ~4.3 MB, as GDC's (docs/scaling.md: 4.4 MB)
    assert sizes["Methylation Beta Value"] > 9_000_000          # a 450k file: ~9.7 MB


def test_cli_passes_the_scale_and_defaults_the_size(tmp_path, monkeypatch, capsys):
    import imputmae.demo

    seen = {}

    def fake(out, **kw):
        seen.update(kw)
        return "{}"

    monkeypatch.setattr(imputmae.demo, "write_demo", fake)
    assert main(["demo-data", str(tmp_path), "--scale", "paper"]) == 0
    assert seen["scale"] == "paper" and seen["size"] is None and seen["n_patients"] is None
    with pytest.raises(ValueError, match="unknown demo scale 'huge'"):
        write_demo(tmp_path, scale="huge")


def test_rehearsal_size_gives_every_cohort_two_folds_of_fine_tuning():
    """config.rehearsal.yaml's 2 stratified folds need >= 2 events per cohort, and fine-tuning needs >= 4 training
    patients with the modality (survival.fold_cuts): >= 10 labelled patients with each modality per cohort."""
    assert sum(SIZES["rehearsal"].values()) <= 40
    p = simulate_patients(SIZES["rehearsal"], 0)
    ok = p[p.has_rna & (p.clinical_flaw == "")]
    cohort = ok["project_id"].replace({"DEMO-GBM": "GBMLGG", "DEMO-LGG": "GBMLGG"})
    assert ok.groupby(cohort)["event"].sum().min() >= 2
    for m in ("has_dnam", "has_wsi"):
        assert ok[ok[m]].groupby(cohort[ok[m]]).size().min() >= 10, m


def test_leading_projects_alone_are_the_same_files_as_in_the_whole_mirror(tmp_path):
    """``demo-data --projects DEMO-BRCA DEMO-UCEC`` (CI's part of the rehearsal) writes byte for byte the files those
    projects have in the whole mirror, and the same oracle rows; the demo scale stands in for the paper's (the
    same generator; the sizes only change the arrays)."""
    import hashlib
    import subprocess
    import sys

    import pandas as pd

    def run(out, *extra):
        subprocess.run([sys.executable, "-m", "imputmae", "demo-data", str(out), "--size", "rehearsal", *extra],
                       check=True, capture_output=True)
        return {hashlib.md5(f.read_bytes()).hexdigest() for f in (out / "data").rglob("*") if f.is_file()}

    whole = run(tmp_path / "whole")
    part = run(tmp_path / "part", "--projects", "DEMO-BRCA", "DEMO-UCEC")
    assert part and part < whole
    a = pd.read_parquet(tmp_path / "whole" / "oracle.parquet")
    b = pd.read_parquet(tmp_path / "part" / "oracle.parquet")
    assert set(b["project_id"]) == {"DEMO-BRCA", "DEMO-UCEC"}
    pd.testing.assert_frame_equal(a[a["project_id"].isin(["DEMO-BRCA", "DEMO-UCEC"])].reset_index(drop=True),
                                  b.reset_index(drop=True))
    bad = subprocess.run([sys.executable, "-m", "imputmae", "demo-data", str(tmp_path / "x"), "--projects", "TCGA-X"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "TCGA-X" in bad.stderr
