"""The demo mirror: GDC formats parsed the way GDC users parse them, determinism, and the generator's TCGA-like
properties, each checked with an independent tool (lifelines, scikit-learn) rather than the generator's own code."""

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
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from imputmae.cli import main
from imputmae.data import make_splits
from imputmae.demo import (DEFAULT_PARAMS, DNAM_SUFFIX, PROJECTS, RNA_SUFFIX, SIZES, read_oracle_metadata, simulate_patients,
                           write_demo)

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


# ---------------------------------------------------------------------------------------------- TCGA-like properties

# Large simulated cohorts (patient tables only: ~0.2 s) for the population properties.
BIG = {"DEMO-BRCA": 4000, "DEMO-UCEC": 4000, "DEMO-GBM": 1500, "DEMO-LGG": 2500}
COHORT = {"DEMO-BRCA": "BRCA", "DEMO-UCEC": "UCEC", "DEMO-GBM": "GBMLGG", "DEMO-LGG": "GBMLGG"}
# TCGA-CDR (shared/notes/tcga-cohorts.md): censored share and median observed time, days
CDR = {"DEMO-BRCA": (0.862, 843), "DEMO-UCEC": (0.834, 910), "DEMO-GBM": (0.176, 366), "DEMO-LGG": (0.757, 674)}


@pytest.fixture(scope="module")
def big():
    return simulate_patients(BIG, seed=0)


def test_censoring_and_follow_up_like_tcga(big):
    for project, g in big.groupby("project_id"):
        censored, median_days = CDR[project]
        assert abs((1 - g["event"].mean()) - censored) < 0.03, project
        assert median_days / 2 < g["time"].median() < median_days * 2, project   # days, of the same order
    # censoring follows the site's era: a site's censored share differs from another's
    brca = big[big["project_id"] == "DEMO-BRCA"]
    by_site = 1 - brca.groupby("site")["event"].mean()
    assert by_site.max() - by_site.min() > 0.05


def test_oracle_cindex_per_cohort_near_published_models(big):
    # lifelines' C-index of the true risk; pooled glioma at the paper's GBM:LGG ratio (280:512)
    gbm, lgg = (big[big["project_id"] == p] for p in ("DEMO-GBM", "DEMO-LGG"))
    cohorts = {"BRCA": big[big["project_id"] == "DEMO-BRCA"], "UCEC": big[big["project_id"] == "DEMO-UCEC"],
               "GBMLGG": pd.concat([gbm.head(700), lgg.head(1280)])}
    c = {k: concordance_index(g["time"], -g["risk"], g["event"]) for k, g in cohorts.items()}
    assert 0.6 < c["BRCA"] < 0.76 and 0.62 < c["UCEC"] < 0.78 and 0.8 < c["GBMLGG"] < 0.88, c
    assert c["BRCA"] < c["UCEC"] < c["GBMLGG"], c
    # no single factor orders survival as well as the whole risk (interaction, subtype, several factors)
    brca = cohorts["BRCA"]
    for z in ("z0", "z1", "z2", "z3", "z4"):
        assert concordance_index(brca["time"], -brca[z], brca["event"]) < c["BRCA"] - 0.05


def test_risk_is_the_sum_of_its_parts_with_an_interaction_and_a_subtype(big):
    parts = big.filter(regex="^contrib_")
    np.testing.assert_allclose(parts.sum(1), big["risk"], rtol=1e-10, atol=1e-10)
    for project, g in big.groupby("project_id"):  # a product of the RNA-private and the WSI-private factor
        np.testing.assert_allclose(g["contrib_interaction"] / (g["z2"] * g["z4"]),
                                   PROJECTS[project].signal * DEFAULT_PARAMS.interaction)
    lgg = big[big["project_id"] == "DEMO-LGG"]
    hr = lgg.groupby("subtype")["contrib_subtype"].first()
    assert hr["IDHwt"] > hr["IDHmut-non-codel"] > hr["IDHmut-codel"]
    # the subtype shifts the hazard (lifelines: IDHwt dies sooner than codel)
    idhwt, codel = lgg[lgg["subtype"] == "IDHwt"], lgg[lgg["subtype"] == "IDHmut-codel"]
    pair = pd.concat([idhwt, codel])
    assert concordance_index(pair["time"], -(pair["subtype"] == "IDHwt").astype(float), pair["event"]) > 0.65


def test_missingness_at_table2_rates_and_not_at_random(big):
    for project, g in big.groupby("project_id"):
        spec, rna = PROJECTS[project], g[g["has_rna"]]
        n = len(rna)
        assert abs(rna["has_dnam"].sum() - spec.dnam * n) <= 1 and abs(rna["has_wsi"].sum() - spec.wsi * n) <= 1
    gbm = big[(big["project_id"] == "DEMO-GBM") & big["has_rna"]]
    # older GBM cases miss DNAm more often; missing slides differ between sites
    assert gbm.loc[~gbm["has_dnam"], "diagnosis_year"].median() < gbm.loc[gbm["has_dnam"], "diagnosis_year"].median() - 1
    by_site = gbm.groupby("site")["has_wsi"].mean()
    assert by_site.max() - by_site.min() > 0.1


def test_sites_in_the_barcode(big):
    assert (big["patient"].str.split("-").str[1] == big["site"]).all()
    assert big["patient"].str.match(r"^DEMO-[A-Z0-9]{2}-\d{4}$").all() and big["patient"].is_unique
    per_project = big.groupby("project_id")["site"].agg(set)
    assert all(len(s) >= 5 for s in per_project)
    assert not per_project["DEMO-GBM"] & per_project["DEMO-LGG"]


def test_demo_size_has_enough_events_for_five_folds():
    demo = simulate_patients(SIZES["demo"], seed=0)
    usable = demo[demo["has_rna"] & (demo["clinical_flaw"] == "")]
    events = usable.groupby(usable["project_id"].map(COHORT))["event"].sum()
    assert (events >= 10).all(), events.to_dict()
    bench = simulate_patients(SIZES["benchmark"], seed=0)
    assert (bench.groupby(bench["project_id"].map(COHORT)).size() >= 300).all()


def test_splits_names_a_cohort_with_too_few_events():
    df = pd.DataFrame({"patient": [f"DEMO-BH-{i:04d}" for i in range(12)], "cohort": "BRCA",
                       "project_id": "DEMO-BRCA", "event": [1, 1, 1] + [0] * 9})
    with pytest.raises(ValueError, match=r"cohort BRCA: 3 events among 12 patients.*splits\.n_folds"):
        make_splits(df, n_folds=5, seed=0)
    assert make_splits(df, n_folds=3, seed=0).groupby("fold")["event"].sum().tolist() == [1, 1, 1]


def test_oracle_metadata_holds_the_risk_shares(demo_mirror):
    meta = read_oracle_metadata(demo_mirror / "oracle.parquet")
    oracle = pd.read_parquet(demo_mirror / "oracle.parquet")
    assert {"risk", "time", "event", "site", "subtype", "contrib_interaction", "contrib_subtype"} <= set(oracle)
    for project in oracle["project_id"].unique():
        share = meta["risk_share"][project]
        assert share["all"] == 1.0 and 0.2 < share["wsi"] < share["rna"] < 1.0, (project, share)
    assert meta["modality_factors"]["rna"] == ["shared0", "shared1", "rna"]


# ---------------------------------------------------------------------------------------------- omics signal


def _primary(hits, data_type, **match):
    out = {}
    for h in sorted(hits, key=lambda h: h["file_name"]):
        s = h["cases"][0]["samples"][0]
        if h["data_type"] == data_type and s["submitter_id"].endswith("-01A") and all(
                h.get(k) == v for k, v in match.items()):
            out.setdefault(h["cases"][0]["submitter_id"], h)
    return out


def _cv_r2(x: np.ndarray, y: np.ndarray) -> float:
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-1, 5, 13)), x, y, cv=5)
    return 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()


@pytest.fixture(scope="module")
def omics(tmp_path_factory):
    """RNA and 450k DNAm of a 300-patient demo without slides (~10 s), read as GDC users read the files."""
    out = tmp_path_factory.mktemp("omics") / "mirror"
    write_demo(out, seed=0, n_patients={"DEMO-BRCA": 180, "DEMO-UCEC": 120}, slides=False)
    hits = json.loads((out / "files.json").read_text())
    rna = {p: np.log1p(_read_star(_path(out, h)).iloc[4:].query("gene_type == 'protein_coding'")
                       .fpkm_uq_unstranded.to_numpy())
           for p, h in _primary(hits, "Gene Expression Quantification").items()}
    dnam = {p: _read_betas(_path(out, h)).fillna(0.5).to_numpy()
            for p, h in _primary(hits, "Methylation Beta Value", platform="Illumina Human Methylation 450").items()}
    return pd.read_parquet(out / "oracle.parquet").set_index("patient"), rna, dnam


def test_each_omics_modality_reads_its_private_factor_and_not_the_others(omics):
    oracle, rna, dnam = omics

    def r2(features: dict, col: str) -> float:
        ids = sorted(features)
        return _cv_r2(np.stack([features[i] for i in ids]), oracle.loc[ids, col].to_numpy())

    assert r2(rna, "z2") > 0.4 and r2(dnam, "z3") > 0.3           # its own private factor
    assert r2(rna, "z3") < 0.1 and r2(dnam, "z2") < 0.1           # another modality's private factor
    assert r2(rna, "z4") < 0.1 and r2(dnam, "z4") < 0.1           # the slides' private factor
    assert r2(rna, "z0") > 0.4 and r2(dnam, "z0") > 0.3           # a shared factor: both


def test_a_site_classifier_reads_the_site_from_rna(omics):
    oracle, rna, _ = omics
    ids = sorted(p for p in rna if oracle.loc[p, "project_id"] == "DEMO-BRCA")
    site = oracle.loc[ids, "site"]
    keep = site.map(site.value_counts()) >= 5
    x, y = np.stack([rna[i] for i in ids])[keep.to_numpy()], site[keep].to_numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    accuracy = cross_val_score(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    chance = pd.Series(y).value_counts(normalize=True).max()
    assert accuracy > chance + 0.2, (accuracy, chance)
