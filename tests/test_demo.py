"""The demo mirror: GDC formats parsed the way GDC users parse them, determinism, and the planted signal."""

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import openslide
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import cross_val_predict

from imputmae.cli import main
from imputmae.demo import DNAM_SUFFIX, RNA_SUFFIX, write_demo

STAR_HEADER = ["gene_id", "gene_name", "gene_type", "unstranded", "stranded_first", "stranded_second",
               "tpm_unstranded", "fpkm_unstranded", "fpkm_uq_unstranded"]


@pytest.fixture(scope="module")
def hits(demo_mirror):
    return json.loads((demo_mirror / "files.json").read_text())


@pytest.fixture(scope="module")
def cases(demo_mirror):
    return json.loads((demo_mirror / "cases.json").read_text())


def _path(mirror: Path, hit: dict) -> Path:
    return mirror / "data" / hit["file_id"] / hit["file_name"]


def _by_type(hits, data_type):
    return [h for h in hits if h["data_type"] == data_type]


def _read_star(path: Path) -> pd.DataFrame:
    # What GDC users do: skip the "# gene-model" line, read the header, then the four N_ rows and the genes.
    return pd.read_csv(path, sep="\t", skiprows=1)


def _read_betas(path: Path) -> pd.Series:
    return pd.read_csv(path, sep="\t", header=None, names=["probe", "beta"], index_col=0, na_values="NA")["beta"]


def test_every_file_matches_its_md5_and_size(demo_mirror, hits):
    assert len(hits) > 150
    for h in hits:
        data = _path(demo_mirror, h).read_bytes()
        assert len(data) == h["file_size"], h["file_name"]
        assert hashlib.md5(data).hexdigest() == h["md5sum"], h["file_name"]
    assert len({h["file_id"] for h in hits}) == len(hits)
    # gdc-client layout: one folder per file id, holding that file alone
    assert sorted(p.name for p in (demo_mirror / "data").iterdir()) == sorted(h["file_id"] for h in hits)


def test_hits_are_nested_like_the_api(hits, cases):
    for h in hits:
        assert {"file_id", "file_name", "md5sum", "file_size", "data_type", "data_category", "data_format",
                "experimental_strategy", "cases"} <= set(h)
        (case,) = h["cases"]
        assert len(case["submitter_id"]) == 12 and case["project"]["project_id"].startswith("DEMO-")
        assert case["samples"][0]["submitter_id"].startswith(case["submitter_id"])
    rna = _by_type(hits, "Gene Expression Quantification")
    assert {h["analysis"]["workflow_type"] for h in rna} == {"STAR - Counts"}
    assert all(h["file_name"].endswith(RNA_SUFFIX) for h in rna)
    dnam = _by_type(hits, "Methylation Beta Value")
    assert {h["platform"] for h in dnam} == {"Illumina Human Methylation 27", "Illumina Human Methylation 450"}
    assert all(h["file_name"].endswith(DNAM_SUFFIX) for h in dnam)
    assert {h["data_type"] for h in hits} > {"Gene Expression Quantification", "Methylation Beta Value", "Slide Image"}
    sample_types = Counter(h["cases"][0]["samples"][0]["sample_type"] for h in hits)
    assert sample_types["Primary Tumor"] > 100 and sample_types["Solid Tissue Normal"] >= 1
    # the survival fields at their API paths
    c = cases[0]
    assert {"case_id", "submitter_id", "project", "demographic", "diagnoses", "follow_ups"} <= set(c)
    assert {"vital_status", "days_to_death"} <= set(c["demographic"])
    assert "days_to_last_follow_up" in c["diagnoses"][0]
    case_ids = {c["case_id"] for c in cases}
    assert all(h["cases"][0]["case_id"] in case_ids for h in hits)


def test_some_patients_have_two_files_of_one_modality(hits):
    per = defaultdict(Counter)
    for h in hits:
        per[h["cases"][0]["submitter_id"]][(h["data_type"], h.get("experimental_strategy"))] += 1
    doubles = {k for counts in per.values() for k, n in counts.items() if n > 1}
    assert ("Gene Expression Quantification", "RNA-Seq") in doubles
    assert ("Methylation Beta Value", "Methylation Array") in doubles
    assert ("Slide Image", "Diagnostic Slide") in doubles


def test_star_counts_files_parse_as_gdc_serves_them(demo_mirror, hits):
    path = _path(demo_mirror, _by_type(hits, "Gene Expression Quantification")[0])
    assert path.read_text().splitlines()[0].startswith("# gene-model: GENCODE")
    df = _read_star(path)
    assert list(df.columns) == STAR_HEADER
    assert list(df.gene_id[:4]) == ["N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous"]
    assert df.iloc[:4][["gene_type", "fpkm_uq_unstranded"]].isna().all().all()
    genes = df.iloc[4:]
    assert genes.gene_id.str.match(r"^ENSG\d{11}\.\d+(_PAR_Y)?$").all()
    assert genes.gene_id.str.endswith("_PAR_Y").sum() == 2
    types = Counter(genes.gene_type)
    assert types["protein_coding"] > 1500 and len(types) > 3
    assert (genes.fpkm_uq_unstranded >= 0).all() and genes.fpkm_uq_unstranded.dtype == float
    assert (genes.unstranded == genes.stranded_first + genes.stranded_second).all()


def test_beta_files_overlap_partly_across_arrays(demo_mirror, hits):
    dnam = _by_type(hits, "Methylation Beta Value")
    b450 = _read_betas(_path(demo_mirror, next(h for h in dnam if h["platform"].endswith("450"))))
    b27 = _read_betas(_path(demo_mirror, next(h for h in dnam if h["platform"].endswith("27"))))
    assert b450.index.is_unique and b27.index.is_unique
    shared = b450.index.intersection(b27.index)
    assert 0 < len(shared) < min(len(b450), len(b27))
    assert b450.index.str.match(r"^cg\d{8}$").all()
    for b in (b450, b27):
        assert b.isna().any() and b.dropna().between(0, 1).all()


def test_slides_cover_the_cases_the_wsi_stage_must_handle(demo_mirror, hits):
    slides = _by_type(hits, "Slide Image")
    assert {h["experimental_strategy"] for h in slides} == {"Diagnostic Slide", "Tissue Slide"}
    seen = Counter()
    unreadable = []
    for h in slides:
        path = _path(demo_mirror, h)
        assert path.suffix == ".svs"
        try:
            s = openslide.OpenSlide(path)
        except openslide.OpenSlideError:
            unreadable.append(h["file_name"])
            continue
        assert s.properties["openslide.vendor"] == "aperio"
        mag = s.properties["aperio.AppMag"]
        seen[f"mag{mag}"] += 1
        seen["one-level" if s.level_count == 1 else "pyramidal"] += 1
        seen["no-mpp" if "openslide.mpp-x" not in s.properties else "mpp"] += 1
        if mag == "40" and "openslide.mpp-x" in s.properties:
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        thumb = cv2.cvtColor(np.asarray(s.get_thumbnail((256, 256)).convert("RGB")), cv2.COLOR_RGB2HSV)
        if thumb[..., 1].max() < 40:
            seen["blank"] += 1
        if (thumb[..., 1] >= 160).mean() > 0.01:
            seen["pen"] += 1
    assert len(unreadable) == 1 and "DX" in unreadable[0]
    assert all(seen[k] >= 1 for k in ("mag20", "mag40", "one-level", "pyramidal", "no-mpp", "mpp"))
    assert seen["blank"] == 1 and seen["pen"] == 1


def test_cli_writes_the_demo(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["demo-data", str(out), "--seed", "3", "--sizes", '{"DEMO-LGG": 4}']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patients"] == {"DEMO-LGG": 4}
    assert (out / "files.json").is_file() and (out / "oracle.parquet").is_file()
    assert json.loads((out / "status.json").read_text())["data_release"]


def test_same_seed_same_bytes(tmp_path):
    sizes = {"DEMO-GBM": 5, "DEMO-UCEC": 4}
    a, b, c = (write_demo(tmp_path / n, seed=s, n_patients=sizes) for n, s in (("a", 7), ("b", 7), ("c", 8)))
    for name in ("files.json", "cases.json", "oracle.parquet"):  # files.json holds every file's md5
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "files.json").read_bytes() != (tmp_path / "c" / "files.json").read_bytes()
    assert a.bytes == b.bytes != c.bytes


def test_unknown_project_is_refused(tmp_path):
    with pytest.raises(ValueError, match="DEMO-XYZ"):
        write_demo(tmp_path, n_patients={"DEMO-XYZ": 3})


# ---------------------------------------------------------------------------------------------- planted signal


def _primary(hits, data_type, **match):
    out = {}
    for h in sorted(hits, key=lambda h: h["file_name"]):
        s = h["cases"][0]["samples"][0]
        if h["data_type"] == data_type and s["submitter_id"].endswith("-01A") and all(
                h.get(k) == v for k, v in match.items()):
            out.setdefault(h["cases"][0]["submitter_id"], h)
    return out


def _cv_r2(x: np.ndarray, y: np.ndarray) -> float:
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-1, 4, 12)), x, y, cv=5)
    return 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()


def test_planted_signal_each_modality_part_all_most(demo_mirror, hits):
    oracle = pd.read_parquet(demo_mirror / "oracle.parquet").set_index("patient")
    # the true risk orders the observed survival (lifelines, an independent implementation)
    c = concordance_index(oracle.time, -oracle.risk, oracle.event)
    assert c > 0.7

    rna = {p: np.log1p(_read_star(_path(demo_mirror, h)).iloc[4:]
                       .query("gene_type == 'protein_coding'").fpkm_uq_unstranded.to_numpy())
           for p, h in _primary(hits, "Gene Expression Quantification").items()}
    dnam = {p: _read_betas(_path(demo_mirror, h)).fillna(0.5).to_numpy()
            for p, h in _primary(hits, "Methylation Beta Value", platform="Illumina Human Methylation 450").items()}
    wsi = {}
    for h in _by_type(hits, "Slide Image"):
        p = h["cases"][0]["submitter_id"]
        if "DX1" not in h["file_name"]:
            continue
        try:
            s = openslide.OpenSlide(_path(demo_mirror, h))
        except openslide.OpenSlideError:
            continue
        rgb = np.asarray(s.get_thumbnail((512, 512)).convert("RGB")).astype(float)
        hsv = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2HSV)
        tissue = hsv[..., 1] > 40
        if tissue.mean() < 0.05 or (hsv[..., 1] >= 160).mean() > 0.01:
            continue  # blank or pen-marked
        dark = (rgb.sum(-1) < 330) & tissue
        n_blobs, _, stats, _ = cv2.connectedComponentsWithStats(dark.astype(np.uint8))
        wsi[p] = np.array([dark.sum() / tissue.sum(), np.median(stats[1:, cv2.CC_STAT_AREA]) if n_blobs > 1 else 0,
                           *rgb[tissue].mean(0)])

    def r2(features: dict, target_cols) -> float:
        ids = sorted(features)
        target = oracle.loc[ids, target_cols].to_numpy() @ np.ones(len(target_cols))
        return _cv_r2(np.stack([features[i] for i in ids]), target)

    # each modality reads its own factors well ...
    assert r2(rna, ["z0", "z1", "z2"]) > 0.5
    assert r2(dnam, ["z1", "z2", "z3"]) > 0.5
    assert r2(wsi, ["z0", "z2", "z3"]) > 0.5
    # ... and the factor it lacks poorly (so each modality holds part of the risk, not all of it)
    assert r2(rna, ["z3"]) < 0.3 and r2(dnam, ["z0"]) < 0.3 and r2(wsi, ["z1"]) < 0.3
    # ... and carries part, not all, of the risk; together they carry more than any one
    common = sorted(set(rna) & set(dnam) & set(wsi))
    y = oracle.loc[common, "risk"].to_numpy()
    singles = {m: _cv_r2(np.stack([f[i] for i in common]), y) for m, f in (("rna", rna), ("dnam", dnam), ("wsi", wsi))}
    together = _cv_r2(np.hstack([np.stack([f[i] for i in common]) for f in (rna, dnam, wsi)]), y)
    assert all(0.05 < v < 0.9 for v in singles.values()), singles
    assert together > max(singles.values()), (together, singles)
