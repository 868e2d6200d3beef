"""GDC acquisition against a loopback server (tests/gdc_server.py) with injected faults, and the same code on a mirror.

The fixture mirror is small and hand-made so that every selection and QC rule has a case that exercises it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from imputmae import gdc
from imputmae.cli import main
from imputmae.tables import table2, to_markdown, write_table

from gdc_server import GDCServer, write_mirror

TOKEN = "S3CRET-T0KEN-d41d8cd98f00b204"
RNA = {"data_category": "Transcriptome Profiling", "data_type": "Gene Expression Quantification",
       "data_format": "TSV", "experimental_strategy": "RNA-Seq", "analysis": {"workflow_type": "STAR - Counts"}}
DNAM = {"data_category": "DNA Methylation", "data_type": "Methylation Beta Value", "data_format": "TXT",
        "experimental_strategy": "Methylation Array"}
SLIDE = {"data_category": "Biospecimen", "data_type": "Slide Image", "data_format": "SVS"}


def _hit(fid: str, name: str, kind: dict, patient: str, sample: str, sample_type: str, project: str, **extra) -> dict:
    case = {"case_id": f"case-{patient}", "submitter_id": patient, "project": {"project_id": project},
            "samples": [{"submitter_id": f"{patient}-{sample}", "sample_type": sample_type}]}
    return {"file_id": fid, "file_name": name, "access": "open", "state": "released", **kind, **extra,
            "cases": [case]}


def _bytes(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def fixture_files() -> list[tuple[dict, bytes]]:
    """(hit, bytes) for the fixture mirror; file ids sort in the order written so pages are predictable."""
    A, B = "TCGA-AAA", "TCGA-BBB"
    P, N, R, M = "Primary Tumor", "Solid Tissue Normal", "Recurrent Tumor", "Metastatic"
    spec = [
        # patient AA-0001: tumour + normal RNA, both DNAm arrays, two DX slides and a tissue slide
        ("f01", "a1.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-AA-0001", "01A", P, A, {}),
        ("f02", "a1n.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-AA-0001", "11A", N, A, {}),
        ("f03", "a1.methylation_array.sesame.level3betas.txt", DNAM, "TCGA-AA-0001", "01A", P, A,
         {"platform": "Illumina Human Methylation 27"}),
        ("f04", "a1b.methylation_array.sesame.level3betas.txt", DNAM, "TCGA-AA-0001", "01A", P, A,
         {"platform": "Illumina Human Methylation 450"}),
        ("f05", "TCGA-AA-0001-01Z-00-DX1.svs", {**SLIDE, "experimental_strategy": "Diagnostic Slide"},
         "TCGA-AA-0001", "01Z", P, A, {}),
        ("f06", "TCGA-AA-0001-01Z-00-DX2.svs", {**SLIDE, "experimental_strategy": "Diagnostic Slide"},
         "TCGA-AA-0001", "01Z", P, A, {}),
        ("f07", "TCGA-AA-0001-01A-01-TS1.svs", {**SLIDE, "experimental_strategy": "Tissue Slide"},
         "TCGA-AA-0001", "01A", P, A, {}),
        # patient AA-0002: two tumour vials (01B has the smaller file id), a recurrent and a primary DX slide
        ("f08", "a2b.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-AA-0002", "01B", P, A, {}),
        ("f09", "a2a.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-AA-0002", "01A", P, A, {}),
        ("f10", "TCGA-AA-0002-02Z-00-DX1.svs", {**SLIDE, "experimental_strategy": "Diagnostic Slide"},
         "TCGA-AA-0002", "02Z", R, A, {}),
        ("f11", "TCGA-AA-0002-01Z-00-DX1.svs", {**SLIDE, "experimental_strategy": "Diagnostic Slide"},
         "TCGA-AA-0002", "01Z", P, A, {}),
        # AA-0003: metastatic RNA only; AA-0004: normal RNA only (never selected)
        ("f12", "a3.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-AA-0003", "06A", M, A, {}),
        ("f13", "a4.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-AA-0004", "11A", N, A, {}),
        # project BBB
        ("f14", "b1.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-BB-0001", "01A", P, B, {}),
        ("f15", "b1.methylation_array.sesame.level3betas.txt", DNAM, "TCGA-BB-0001", "01A", P, B,
         {"platform": "Illumina Human Methylation 450"}),
        ("f16", "TCGA-BB-0001-01Z-00-DX1.svs", {**SLIDE, "experimental_strategy": "Diagnostic Slide"},
         "TCGA-BB-0001", "01Z", P, B, {}),
        ("f17", "b2.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-BB-0002", "01A", P, B, {}),
        ("f18", "b3.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-BB-0003", "01A", P, B, {}),
        # not wanted: another project, a legacy workflow, another data type
        ("f19", "c1.rna_seq.augmented_star_gene_counts.tsv", RNA, "TCGA-CC-0001", "01A", P, "TCGA-CCC", {}),
        ("f20", "a1.htseq.counts", {**RNA, "analysis": {"workflow_type": "HTSeq - Counts"}}, "TCGA-AA-0001",
         "01A", P, A, {}),
        ("f21", "a1.maf.gz", {"data_category": "Simple Nucleotide Variation", "data_type": "Masked Somatic Mutation",
                              "data_format": "MAF", "experimental_strategy": "WXS"}, "TCGA-AA-0001", "01A", P, A, {}),
    ]
    out = []
    for i, (fid, name, kind, patient, sample, st, project, extra) in enumerate(spec):
        size = 300_000 if fid in ("f05", "f06", "f16") else 20_000 + 997 * i
        out.append((_hit(fid, name, kind, patient, sample, st, project, **extra), _bytes(i, size)))
    return out


def fixture_cases() -> list[dict]:
    def case(patient, project, demo, diagnoses=(), follow_ups=()):
        return {"case_id": f"case-{patient}", "submitter_id": patient, "project": {"project_id": project},
                "demographic": demo, "diagnoses": [{"days_to_last_follow_up": d} for d in diagnoses],
                "follow_ups": [{"days_to_follow_up": d} for d in follow_ups]}

    A, B = "TCGA-AAA", "TCGA-BBB"
    return [
        case("TCGA-AA-0001", A, {"vital_status": "Dead", "days_to_death": 300}, [250]),
        case("TCGA-AA-0002", A, {"vital_status": "Alive", "days_to_death": None}, [100], [50, 400, None]),
        case("TCGA-AA-0003", A, {"vital_status": "Not Reported"}, [10]),
        case("TCGA-AA-0004", A, {"vital_status": "Dead", "days_to_death": None}, [20]),
        case("TCGA-BB-0001", B, {"vital_status": "Alive"}, [None], []),
        case("TCGA-BB-0002", B, {"vital_status": "Alive"}, [-5]),
        case("TCGA-BB-0003", B, {"vital_status": "Alive"}, [0]),
        case("TCGA-BB-0004", B, {"vital_status": "Dead", "days_to_death": -3}),
        case("TCGA-CC-0001", "TCGA-CCC", {"vital_status": "Dead", "days_to_death": 5}),
    ]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    return write_mirror(tmp_path_factory.mktemp("mirror"), fixture_files(), fixture_cases(), "Data Release 42.0")


@pytest.fixture
def server(mirror):
    with GDCServer(mirror) as srv:
        yield srv


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Backoff waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(gdc._transport, "_sleep", waits.append)
    return waits


PROJECTS = ["TCGA-AAA", "TCGA-BBB"]
WANTED = {"f01", "f02", "f03", "f04", "f05", "f06", "f08", "f09", "f10", "f11", "f12", "f13", "f14", "f15", "f16",
          "f17", "f18"}


def _manifest(transport, page_size=3):
    return gdc.fetch_manifest(transport, PROJECTS, page_size=page_size, retries=3, backoff_s=0.01)


def _rows(mirror: Path, ids) -> pd.DataFrame:
    hits = {h["file_id"]: h for h in json.loads((mirror / "files.json").read_text())}
    return pd.DataFrame([{k: hits[i][k] for k in ("file_id", "file_name", "md5sum", "file_size")} for i in ids])


# --------------------------------------------------------------------------------------------- filters, paging


def test_filters_json_structure():
    f = gdc.modality_filters(["TCGA-BRCA"], "rna")
    assert f == {"op": "and", "content": [
        {"op": "in", "content": {"field": "cases.project.project_id", "value": ["TCGA-BRCA"]}},
        {"op": "in", "content": {"field": "data_category", "value": ["Transcriptome Profiling"]}},
        {"op": "in", "content": {"field": "data_type", "value": ["Gene Expression Quantification"]}},
        {"op": "in", "content": {"field": "experimental_strategy", "value": ["RNA-Seq"]}},
        {"op": "in", "content": {"field": "analysis.workflow_type", "value": ["STAR - Counts"]}},
    ]}
    dnam = gdc.modality_filters(["TCGA-GBM", "TCGA-LGG"], "dnam")["content"]
    assert dnam[0]["content"]["value"] == ["TCGA-GBM", "TCGA-LGG"]
    assert dnam[-1] == {"op": "in", "content": {"field": "platform", "value": [
        "Illumina Human Methylation 450", "Illumina Human Methylation 27"]}}
    wsi = gdc.modality_filters(["TCGA-BRCA"], "wsi")["content"]
    assert {"op": "in", "content": {"field": "experimental_strategy", "value": ["Diagnostic Slide"]}} in wsi
    assert gdc.case_filters(["X-Y"]) == {"op": "and", "content": [
        {"op": "in", "content": {"field": "project.project_id", "value": ["X-Y"]}}]}
    json.dumps(f)  # serialisable as the API wants it


def test_match_filters_ops():
    hit = {"data_type": "Slide Image", "file_size": 10,
           "cases": [{"project": {"project_id": "TCGA-A"}, "samples": [{"sample_type": "Primary Tumor"},
                                                                         {"sample_type": "Blood"}]}]}
    m = gdc.match_filters
    assert m(_in := {"op": "in", "content": {"field": "cases.samples.sample_type", "value": ["Blood"]}}, hit)
    assert not m({"op": "in", "content": {"field": "cases.samples.sample_type", "value": ["Normal"]}}, hit)
    assert m({"op": "and", "content": [_in, {"op": "=", "content": {"field": "files.data_type", "value": "Slide Image"}}]},
             hit, "files")
    assert m({"op": "or", "content": [{"op": "=", "content": {"field": "data_type", "value": "x"}}, _in]}, hit)
    assert not m({"op": "exclude", "content": {"field": "cases.project.project_id", "value": ["TCGA-A"]}}, hit)
    assert m({"op": ">=", "content": {"field": "file_size", "value": 10}}, hit)
    assert not m({"op": "<", "content": {"field": "file_size", "value": 10}}, hit)
    assert m({"op": "is", "content": {"field": "platform", "value": "MISSING"}}, hit)
    assert m({"op": "not", "content": {"field": "data_type", "value": "missing"}}, hit)
    with pytest.raises(ValueError, match="unknown op"):
        m({"op": "like", "content": {"field": "data_type", "value": "x"}}, hit)
    with pytest.raises(ValueError, match="list of clauses"):
        m({"op": "and", "content": {"field": "data_type"}}, hit)


def test_project_fields_keeps_nesting():
    hit = {"id": "x", "file_name": "n", "big": 1,
           "cases": [{"case_id": "c1", "other": 2, "samples": [{"sample_type": "P", "x": 1}]}, {"case_id": "c2"}]}
    got = gdc.project_fields(hit, ["file_name", "cases.case_id", "cases.samples.sample_type"])
    assert got == {"id": "x", "file_name": "n", "cases": [{"case_id": "c1", "samples": [{"sample_type": "P"}]},
                                                          {"case_id": "c2"}]}


def test_manifest_paginates_and_http_equals_mirror(server, mirror):
    http, meta = _manifest(gdc.HttpTransport(server.url, timeout_s=5), page_size=2)
    posts = [r for r in server.requests if r.path == "/files"]
    per_modality = {"rna": 9, "dnam": 3, "wsi": 5}
    assert len(posts) == sum(-(-n // 2) for n in per_modality.values())  # ceil(n / 2) pages each
    assert {r.body["from"] for r in posts} == {0, 2, 4, 6, 8}
    assert all(r.body["size"] == 2 and r.body["sort"] == "file_id:asc" for r in posts)
    assert json.loads(json.dumps(posts[0].body["filters"])) == gdc.modality_filters(PROJECTS, "rna")
    assert set(http["file_id"]) == WANTED
    assert http["modality"].value_counts().to_dict() == per_modality
    assert list(http.columns) == list(gdc.MANIFEST_COLUMNS)
    row = http.set_index("file_id").loc["f04"]
    assert (row.patient, row["sample"], row.sample_type, row.project_id, row.platform, row.case_id) == (
        "TCGA-AA-0001", "TCGA-AA-0001-01A", "Primary Tumor", "TCGA-AAA", "Illumina Human Methylation 450",
        "case-TCGA-AA-0001")
    assert meta["gdc_data_release"] == "Data Release 42.0"
    mirrored, mmeta = _manifest(gdc.MirrorTransport(mirror), page_size=3)
    pd.testing.assert_frame_equal(http, mirrored)
    assert mmeta["gdc_data_release"] == meta["gdc_data_release"]


def test_manifest_get_queries_and_bad_filters(server):
    import requests

    q = {"filters": json.dumps(gdc.modality_filters(["TCGA-BBB"], "dnam")), "fields": "file_id,cases.submitter_id",
         "size": "10"}
    page = requests.get(f"{server.url}/files", params=q, timeout=5).json()["data"]
    assert page["pagination"]["total"] == 1
    assert page["hits"] == [{"id": "f15", "file_id": "f15", "cases": [{"submitter_id": "TCGA-BB-0001"}]}]
    bad = requests.post(f"{server.url}/files", json={"filters": {"op": "like", "content": {}}}, timeout=5)
    assert bad.status_code == 400


def test_manifest_pages_survive_500_and_429(server, sleeps):
    server.add_fault("status", "500")
    server.add_fault("files", "429", retry_after=7)
    server.add_fault("files", "500", times=2)
    df, meta = _manifest(gdc.HttpTransport(server.url, timeout_s=5), page_size=3)
    assert set(df["file_id"]) == WANTED and meta["gdc_data_release"] == "Data Release 42.0"
    assert sleeps == [0.01, 7.0, 0.02, 0.04]  # status backoff; Retry-After; backoff doubling per attempt


def test_slow_query_times_out_and_is_retried(server, sleeps):
    server.add_fault("cases", "slow", delay=1.2)
    clinical, qc, _ = gdc.fetch_clinical(gdc.HttpTransport(server.url, timeout_s=0.3), PROJECTS, page_size=50,
                                         retries=2, backoff_s=0.01)
    assert len(clinical) + len(qc) == 8 and sleeps == [0.01]


def test_retry_after_forms():
    from email.utils import formatdate

    retry_after = gdc._transport._retry_after
    assert retry_after("12") == 12.0 and retry_after(None) is None and retry_after("soon") is None
    assert 50 < retry_after(formatdate(__import__("time").time() + 60, usegmt=True)) <= 60


def test_manifest_gives_up_with_a_clear_error(server, sleeps):
    server.add_fault("files", "500", times=99)
    with pytest.raises(gdc.GDCError, match=r"POST /files \(from=0\): gave up after 4 attempts: .*HTTP 500"):
        _manifest(gdc.HttpTransport(server.url, timeout_s=5))


def test_cli_manifest_writes_release_metadata(server, tmp_path):
    out = tmp_path / "manifest.parquet"
    rc = main(["gdc", "manifest", "--project", "TCGA-AAA", "--project", "TCGA-BBB", "--api", server.url,
               "--out", str(out), "--page-size", "4"])
    assert rc == 0
    meta = pq.read_schema(out).metadata
    assert meta[b"gdc_data_release"] == b"Data Release 42.0" and meta[b"projects"] == b"TCGA-AAA,TCGA-BBB"
    assert set(pd.read_parquet(out)["file_id"]) == WANTED
    assert not list(tmp_path.glob("*.tmp"))
    rc = main(["gdc", "manifest", "--project", "TCGA-NONE", "--api", server.url, "--out", str(tmp_path / "x.parquet")])
    assert rc == 2


# ------------------------------------------------------------------------------------------------- selection


def test_selection_rule(mirror, tmp_path):
    manifest, _ = _manifest(gdc.MirrorTransport(mirror))
    sel = gdc.select_files(manifest, ["Primary Tumor", "Recurrent Tumor", "Metastatic"], tmp_path / "dl")
    pick = {(m, p): sorted(g["file_id"]) for (m, p), g in sel.groupby(["modality", "patient"])}
    assert pick == {
        ("rna", "TCGA-AA-0001"): ["f01"],          # tumour, not the normal
        ("rna", "TCGA-AA-0002"): ["f09"],          # vial 01A before 01B, whatever the file ids
        ("rna", "TCGA-AA-0003"): ["f12"],          # metastatic is in the list
        ("rna", "TCGA-BB-0001"): ["f14"], ("rna", "TCGA-BB-0002"): ["f17"], ("rna", "TCGA-BB-0003"): ["f18"],
        ("dnam", "TCGA-AA-0001"): ["f04"],         # 450k before 27k
        ("dnam", "TCGA-BB-0001"): ["f15"],
        ("wsi", "TCGA-AA-0001"): ["f05", "f06"],   # every DX slide; the TS slide never reaches the manifest
        ("wsi", "TCGA-AA-0002"): ["f11"],          # the primary tumour's DX slide, not the recurrence's
        ("wsi", "TCGA-BB-0001"): ["f16"],
    }
    row = sel.set_index("file_id").loc["f05"]
    assert row.local_path == str(tmp_path / "dl" / "f05" / "TCGA-AA-0001-01Z-00-DX1.svs")
    # the order of the manifest's rows does not change the choice
    shuffled = gdc.select_files(manifest.sample(frac=1, random_state=3), ["Primary Tumor", "Recurrent Tumor",
                                                                          "Metastatic"], tmp_path / "dl")
    pd.testing.assert_frame_equal(sel, shuffled)
    # a stricter preference list drops the metastatic patient
    strict = gdc.select_files(manifest, ["Primary Tumor"], tmp_path / "dl")
    assert "TCGA-AA-0003" not in set(strict["patient"])


# ------------------------------------------------------------------------------------------------- downloads


def _download(rows, dest, transport, **kw):
    kw = {"workers": 3, "retries": 3, "backoff_s": 0.01, "progress": False, **kw}
    return gdc.download_files(rows, dest, transport, **kw).set_index("file_id")


def _assert_only_verified(dest: Path, mirror: Path):
    """Every file under a final name in dest holds the mirror's bytes; no temporary is left."""
    for path in dest.rglob("*"):
        if path.is_file():
            assert not path.name.endswith(".part"), path
            assert path.read_bytes() == (mirror / "data" / path.parent.name / path.name).read_bytes(), path


def test_http_download_clean_then_present(server, mirror, tmp_path):
    ids = ["f01", "f03", "f05", "f14"]
    rep = _download(_rows(mirror, ids), tmp_path, gdc.HttpTransport(server.url, timeout_s=5))
    assert (rep["status"] == "downloaded").all() and rep["md5_verified"].all()
    assert (rep["bytes"] == rep["bytes_fetched"]).all()
    _assert_only_verified(tmp_path, mirror)
    n = len(server.requests)
    again = _download(_rows(mirror, ids), tmp_path, gdc.HttpTransport(server.url, timeout_s=5))
    assert (again["status"] == "present").all() and (again["bytes_fetched"] == 0).all()
    assert len(server.requests) == n  # nothing fetched again
    # a final file whose bytes are wrong is fetched again
    (tmp_path / "f01" / _rows(mirror, ["f01"]).file_name[0]).write_bytes(b"garbage")
    third = _download(_rows(mirror, ["f01"]), tmp_path, gdc.HttpTransport(server.url, timeout_s=5))
    assert third.loc["f01", "status"] == "downloaded"
    _assert_only_verified(tmp_path, mirror)


def test_cut_mid_body_resumes_with_range(server, mirror, tmp_path, sleeps):
    server.add_fault("data/f05", "cut", after=120_000)
    rep = _download(_rows(mirror, ["f05", "f06"]), tmp_path, gdc.HttpTransport(server.url, timeout_s=5))
    assert (rep["status"] == "downloaded").all()
    reqs = server.data_requests("f05")
    assert [r.range for r in reqs] == [None, "bytes=120000-"]
    assert reqs[0].bytes_sent == 120_000 and reqs[1].bytes_sent == 300_000 - 120_000
    assert rep.loc["f05", "bytes_fetched"] == 300_000  # nothing fetched twice
    assert rep.loc["f05", "attempts"] == 2
    _assert_only_verified(tmp_path, mirror)


def test_killed_download_resumes_its_part_file(server, mirror, tmp_path):
    row = _rows(mirror, ["f16"])
    data = (mirror / "data" / "f16" / row.file_name[0]).read_bytes()
    part = tmp_path / "f16" / (row.file_name[0] + ".part")
    part.parent.mkdir()
    part.write_bytes(data[:200_000])  # what a killed run left
    rep = _download(row, tmp_path, gdc.HttpTransport(server.url, timeout_s=5))
    assert rep.loc["f16", "status"] == "downloaded"
    assert [r.range for r in server.data_requests("f16")] == ["bytes=200000-"]
    assert rep.loc["f16", "bytes_fetched"] == 100_000
    _assert_only_verified(tmp_path, mirror)


def test_server_ignoring_range_restarts_from_zero(server, mirror, tmp_path):
    row = _rows(mirror, ["f16"])
    data = (mirror / "data" / "f16" / row.file_name[0]).read_bytes()
    part = tmp_path / "f16" / (row.file_name[0] + ".part")
    part.parent.mkdir()
    part.write_bytes(data[:1000])
    server.add_fault("data/f16", "ignore_range")
    rep = _download(row, tmp_path, gdc.HttpTransport(server.url, timeout_s=5))
    assert rep.loc["f16", "status"] == "downloaded"
    _assert_only_verified(tmp_path, mirror)


def test_429_retry_after_and_500_backoff(server, mirror, tmp_path, sleeps):
    server.add_fault("data/f01", "429", retry_after=3)
    server.add_fault("data/f03", "500", times=2)
    rep = _download(_rows(mirror, ["f01", "f03"]), tmp_path, gdc.HttpTransport(server.url, timeout_s=5), workers=1)
    assert (rep["status"] == "downloaded").all()
    assert sleeps == [3.0, 0.01, 0.02]  # Retry-After honoured; then exponential backoff
    assert rep.loc["f01", "attempts"] == 2 and rep.loc["f03", "attempts"] == 3
    _assert_only_verified(tmp_path, mirror)


def test_wrong_bytes_refetched_once_then_clear_error(server, mirror, tmp_path, sleeps):
    server.add_fault("data/f01", "wrong")  # once: the second download is right
    server.add_fault("data/f03", "wrong", times=10)  # always wrong
    rep = _download(_rows(mirror, ["f01", "f03", "f14"]), tmp_path, gdc.HttpTransport(server.url, timeout_s=5))
    assert rep.loc["f01", "status"] == "downloaded" and rep.loc["f01", "attempts"] == 2
    assert rep.loc["f14", "status"] == "downloaded"
    bad = rep.loc["f03"]
    assert bad.status == "failed" and not bad.md5_verified and bad.bytes == 0
    assert "md5" in bad.reason and "after 2 full downloads" in bad.reason
    assert not (tmp_path / "f03").exists() or not any((tmp_path / "f03").iterdir())
    _assert_only_verified(tmp_path, mirror)


def test_slow_response_times_out_and_is_retried(server, mirror, tmp_path, sleeps):
    server.add_fault("data/f14", "slow", delay=1.5)
    rep = _download(_rows(mirror, ["f14"]), tmp_path, gdc.HttpTransport(server.url, timeout_s=0.4))
    assert rep.loc["f14", "status"] == "downloaded" and rep.loc["f14", "attempts"] == 2
    assert len(sleeps) == 1
    _assert_only_verified(tmp_path, mirror)


def test_failures_are_recorded_and_the_run_goes_on(server, mirror, tmp_path, sleeps, caplog):
    server.add_fault("data/f01", "500", times=99)
    rows = pd.concat([_rows(mirror, ["f01", "f14"]),
                      pd.DataFrame([{"file_id": "nope", "file_name": "x.tsv", "md5sum": "0" * 32, "file_size": 5}])])
    with caplog.at_level(logging.WARNING):
        rep = _download(rows, tmp_path, gdc.HttpTransport(server.url, timeout_s=5))
    assert rep.loc["f14", "status"] == "downloaded"
    assert rep.loc["f01", "status"] == "failed" and rep.loc["f01", "attempts"] == 4
    assert rep.loc["f01", "reason"].startswith("gave up after 4 attempts") and "HTTP 500" in rep.loc["f01", "reason"]
    assert rep.loc["nope", "status"] == "failed" and "HTTP 404" in rep.loc["nope", "reason"]
    assert rep.loc["nope", "attempts"] == 1  # a 404 is not retried
    assert "f01 (a1.rna_seq.augmented_star_gene_counts.tsv): FAILED" in caplog.text
    _assert_only_verified(tmp_path, mirror)


def test_cli_download_strict_and_default(server, mirror, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(gdc._transport, "_sleep", lambda s: None)
    manifest = tmp_path / "m.parquet"
    gdc.write_parquet(_rows(mirror, ["f01", "f14"]).assign(modality=["rna", "rna"]), manifest)
    base = ["gdc", "download", str(manifest), "--api", server.url, "--retries", "1", "--no-progress"]
    server.add_fault("data/f01", "500", times=4)
    rc = main(base + ["--dest", str(tmp_path / "a"), "--report", str(tmp_path / "a.tsv")])
    assert rc == 0 and "Continuing (pass --strict to stop instead)" in caplog.text
    rep = pd.read_csv(tmp_path / "a.tsv", sep="\t")
    assert list(rep.columns) == list(gdc.REPORT_COLUMNS)
    assert dict(zip(rep.file_id, rep.status)) == {"f01": "failed", "f14": "downloaded"}
    rc = main(base + ["--dest", str(tmp_path / "b"), "--report", str(tmp_path / "b.tsv"), "--strict"])
    assert rc == 1


def test_portal_manifest_tsv(server, mirror, tmp_path):
    rows = _rows(mirror, ["f03", "f15"])
    tsv = tmp_path / "gdc_manifest.2026-01-01.txt"
    rows.rename(columns={"file_id": "id", "file_name": "filename", "md5sum": "md5", "file_size": "size"}).assign(
        state="released").to_csv(tsv, sep="\t", index=False)
    rc = main(["gdc", "download", str(tsv), "--api", server.url, "--dest", str(tmp_path / "d"),
               "--report", str(tmp_path / "r.tsv"), "--workers", "2", "--no-progress"])
    assert rc == 0
    assert set(pd.read_csv(tmp_path / "r.tsv", sep="\t")["status"]) == {"downloaded"}
    _assert_only_verified(tmp_path / "d", mirror)
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\tname\nx\ty\n")
    assert main(["gdc", "download", str(bad), "--api", server.url, "--dest", str(tmp_path), "--report",
                 str(tmp_path / "x.tsv")]) == 2


# ------------------------------------------------------------------------------------------------------ token


def test_token_is_sent_never_shown(server, mirror, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setattr(gdc._transport, "_sleep", lambda s: None)
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    server.add_fault("data/f01", "403_echo")       # the server's error body echoes the token
    server.add_fault("data/f03", "500", times=99)  # retries, then a failure
    server.add_fault("data/f14", "cut", after=5000)
    server.add_fault("data/f15", "redirect")       # to localhost: another host, the token must not follow
    server.add_fault("files", "429", retry_after=0)
    manifest = tmp_path / "m.parquet"
    rc = main(["-v", "gdc", "manifest", "--project", "TCGA-BBB", "--api", server.url, "--token-file", str(token_file),
               "--out", str(manifest)])
    assert rc == 0
    tsv = tmp_path / "manifest.tsv"
    _rows(mirror, ["f01", "f03", "f14", "f15"]).rename(columns={"file_id": "id", "file_name": "filename",
                                                                "md5sum": "md5", "file_size": "size"}).to_csv(
        tsv, sep="\t", index=False)
    with caplog.at_level(logging.DEBUG):
        rc = main(["-v", "gdc", "download", str(tsv), "--api", server.url, "--token-file", str(token_file),
                   "--dest", str(tmp_path / "d"), "--report", str(tmp_path / "r.tsv"), "--retries", "2"])
    assert rc == 0
    report = (tmp_path / "r.tsv").read_text()
    rep = pd.read_csv(tmp_path / "r.tsv", sep="\t").set_index("file_id")
    assert "HTTP 403" in rep.loc["f01", "reason"] and "<token redacted>" in rep.loc["f01", "reason"]
    assert rep.loc["f03", "status"] == "failed"
    assert rep.loc["f14", "status"] == rep.loc["f15", "status"] == "downloaded"
    sent = [r for r in server.requests if r.path != "/data/f15"]
    assert sent and all(r.token == TOKEN for r in sent)
    redirected = server.data_requests("f15")
    assert [r.token for r in redirected] == [TOKEN, None]  # the second request went to localhost
    out = capsys.readouterr()
    for text in (report, caplog.text, out.out, out.err, repr(gdc.read_token(token_file))):
        assert TOKEN not in text
    transport = gdc.HttpTransport(server.url, token=gdc.read_token(token_file))
    server.add_fault("data/f01", "403_echo")
    with pytest.raises(gdc.GDCError) as info:
        transport.fetch("f01", "x", tmp_path / "x.part", 0, lambda b: None)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value) and TOKEN not in repr(transport.__dict__)
    # a missing token file is a user error naming the file
    assert main(["gdc", "download", str(tsv), "--api", server.url, "--token-file", str(tmp_path / "none"),
                 "--dest", str(tmp_path / "d"), "--report", str(tmp_path / "r2.tsv")]) == 2


# ----------------------------------------------------------------------------------------------------- mirror


def test_mirror_download_links_and_verifies(mirror, tmp_path):
    ids = ["f01", "f05", "f15"]
    rep = _download(_rows(mirror, ids), tmp_path, gdc.MirrorTransport(mirror))
    assert (rep["status"] == "downloaded").all() and rep["md5_verified"].all()
    for fid in ids:
        local = Path(rep.loc[fid, "local_path"])
        src = mirror / "data" / fid / local.name
        assert os.path.samefile(local, src)  # hard link on the same filesystem
    again = _download(_rows(mirror, ids), tmp_path, gdc.MirrorTransport(mirror))
    assert (again["status"] == "present").all()
    copied = _download(_rows(mirror, ids), tmp_path / "copy", gdc.MirrorTransport(mirror, link=False))
    assert (copied["status"] == "downloaded").all()
    assert not os.path.samefile(copied.loc["f01", "local_path"], mirror / "data" / "f01" /
                                Path(copied.loc["f01", "local_path"]).name)
    _assert_only_verified(tmp_path, mirror)


def test_mirror_resume_corrupt_and_missing(tmp_path):
    files = fixture_files()[:3]
    src = write_mirror(tmp_path / "m", files, fixture_cases())
    rows = _rows(src, ["f01", "f02", "f03"])
    # f01: a partial copy is resumed from its length
    data = (src / "data" / "f01" / rows.file_name[0]).read_bytes()
    part = tmp_path / "d" / "f01" / (rows.file_name[0] + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:7000])
    # f02: the mirror's bytes do not match files.json; f03: the mirror lacks the file
    (src / "data" / "f02" / rows.file_name[1]).write_bytes(b"not the file")
    (src / "data" / "f03" / rows.file_name[2]).unlink()
    rep = _download(rows, tmp_path / "d", gdc.MirrorTransport(src))
    assert rep.loc["f01", "status"] == "downloaded" and rep.loc["f01", "bytes_fetched"] == len(data) - 7000
    assert rep.loc["f02", "status"] == "failed" and "ends at 12 of" in rep.loc["f02", "reason"]
    assert rep.loc["f03", "status"] == "failed" and "is not there" in rep.loc["f03", "reason"]
    assert not (tmp_path / "d" / "f02" / rows.file_name[1]).exists()
    assert (src / "data" / "f02" / rows.file_name[1]).read_bytes() == b"not the file"  # the mirror is untouched
    assert sorted(p.name for p in (tmp_path / "d").rglob("*") if p.is_file()) == [rows.file_name[0]]
    # a .part hard-linked to the mirror (a run killed between link and rename) is never appended to
    short = src / "data" / "f02" / rows.file_name[1]
    os.link(short, tmp_path / "d" / "f02" / (rows.file_name[1] + ".part"))
    rep = _download(rows.iloc[[1]], tmp_path / "d", gdc.MirrorTransport(src, link=False))
    assert rep.loc["f02", "status"] == "failed" and short.read_bytes() == b"not the file"


# --------------------------------------------------------------------------------------------------- clinical


def test_clinical_labels_and_qc_reasons(server, mirror):
    clinical, qc, meta = gdc.fetch_clinical(gdc.HttpTransport(server.url, timeout_s=5), PROJECTS, page_size=2,
                                            retries=1)
    assert len([r for r in server.requests if r.path == "/cases"]) == 4  # 8 cases, pages of 2
    assert list(clinical.columns) == list(gdc.CLINICAL_COLUMNS)
    got = {r.patient: (r.time, r.event) for r in clinical.itertuples()}
    assert got == {"TCGA-AA-0001": (300.0, 1), "TCGA-AA-0002": (400.0, 0), "TCGA-BB-0003": (0.0, 0)}
    assert dict(zip(qc["patient"], qc["reason"])) == {
        "TCGA-AA-0003": "missing vital status",
        "TCGA-AA-0004": "dead without days_to_death",
        "TCGA-BB-0001": "no follow-up time",
        "TCGA-BB-0002": "negative time",
        "TCGA-BB-0004": "negative time",
    }
    assert meta["gdc_data_release"] == "Data Release 42.0"
    m_clinical, m_qc, _ = gdc.fetch_clinical(gdc.MirrorTransport(mirror), PROJECTS, page_size=3)
    pd.testing.assert_frame_equal(clinical, m_clinical)
    pd.testing.assert_frame_equal(qc, m_qc)


def test_clinical_duplicates_are_reported_not_dropped_silently():
    cases = fixture_cases()
    clinical, qc = gdc.clinical_table(cases + [cases[0]])
    assert qc.loc[qc["reason"] == "duplicate patient", "patient"].tolist() == ["TCGA-AA-0001"]
    assert len(clinical) + len(qc) == len(cases) + 1  # every case is kept or has a reason
    assert clinical["event"].dtype == "int8" and clinical["time"].dtype == "float64"


# ---------------------------------------------------------------------------------------------------- table 2


def test_table2_layout_and_numbers(tmp_path):
    def sel(rows):
        return pd.DataFrame(rows, columns=["file_id", "patient", "project_id", "modality"])

    selected = {
        "BRCA": sel([("r1", "p1", "TCGA-BRCA", "rna"), ("r2", "p2", "TCGA-BRCA", "rna"),
                     ("r3", "p3", "TCGA-BRCA", "rna"), ("r4", "p4", "TCGA-BRCA", "rna"),
                     ("d1", "p1", "TCGA-BRCA", "dnam"), ("d5", "p5", "TCGA-BRCA", "dnam"),
                     ("w1", "p1", "TCGA-BRCA", "wsi"), ("w1b", "p1", "TCGA-BRCA", "wsi"),
                     ("w2", "p2", "TCGA-BRCA", "wsi")]),
        "GBMLGG": sel([("r1", "g1", "TCGA-GBM", "rna"), ("r2", "g2", "TCGA-GBM", "rna"),
                       ("r3", "l1", "TCGA-LGG", "rna"), ("d1", "g1", "TCGA-GBM", "dnam"),
                       ("d3", "l1", "TCGA-LGG", "dnam"), ("w3", "l1", "TCGA-LGG", "wsi")]),
    }
    clinical = {"BRCA": pd.DataFrame({"patient": ["p1", "p2", "p3", "p9"]}),
                "GBMLGG": pd.DataFrame({"patient": ["g2", "l1"]})}
    t = table2(selected, clinical)
    assert list(t.columns) == ["Cohort", "DNAm", "Clinical", "WSI", "RNA count"]
    assert t.to_dict("records") == [
        {"Cohort": "BRCA", "DNAm": 25.0, "Clinical": 75.0, "WSI": 50.0, "RNA count": 4},
        {"Cohort": "GBMLGG", "DNAm": 66.67, "Clinical": 66.67, "WSI": 33.33, "RNA count": 3},
        {"Cohort": "GBM", "DNAm": 50.0, "Clinical": 50.0, "WSI": 0.0, "RNA count": 2},
        {"Cohort": "LGG", "DNAm": 100.0, "Clinical": 100.0, "WSI": 100.0, "RNA count": 1},
    ]
    # a failed download counts as missing
    failed = {"BRCA": pd.DataFrame({"file_id": ["w2", "d1", "r4"], "status": ["failed", "downloaded", "failed"]})}
    t2 = table2(selected, clinical, failed).set_index("Cohort")
    assert (t2.loc["BRCA", "RNA count"], t2.loc["BRCA", "WSI"], t2.loc["BRCA", "DNAm"]) == (3, 33.33, 33.33)
    paths = write_table(t, tmp_path / "tables" / "table2", ("csv", "md", "tex"), caption="Table 2", note="n")
    assert [p.name for p in paths] == ["table2.csv", "table2.md", "table2.tex"]
    pd.testing.assert_frame_equal(pd.read_csv(paths[0]), t)
    md = paths[1].read_text()
    assert "| Cohort | DNAm | Clinical | WSI | RNA count |" in md and "| GBMLGG | 66.67 | 66.67 | 33.33 | 3 |" in md
    assert r"GBMLGG & 66.67 & 66.67 & 33.33 & 3 \\" in paths[2].read_text()
    assert not list((tmp_path / "tables").glob("*.tmp"))
    assert to_markdown(pd.DataFrame({"a_b": ["x"]})).splitlines()[1] == "| --- |"


def test_cli_end_to_end_on_a_mirror(mirror, tmp_path):
    R = tmp_path / "results"
    g = R / "C" / "gdc"
    src = ["--mirror", str(mirror)]
    assert main(["gdc", "manifest", "--project", "TCGA-AAA", "--project", "TCGA-BBB", "--out",
                 str(g / "manifest.parquet"), "--page-size", "2", *src]) == 0
    assert main(["gdc", "select", str(g / "manifest.parquet"), "--out", str(g / "selected.parquet"),
                 "--download-dir", str(tmp_path / "data"), "--sample-type", "Primary Tumor",
                 "--sample-type", "Metastatic"]) == 0
    assert pq.read_schema(g / "selected.parquet").metadata[b"gdc_data_release"] == b"Data Release 42.0"
    for m in ("rna", "dnam", "wsi"):
        assert main(["gdc", "download", str(g / "selected.parquet"), "--modality", m, "--dest", str(tmp_path / "data"),
                     "--report", str(g / f"download_{m}.tsv"), "--no-progress", *src]) == 0
    assert main(["gdc", "clinical", "--project", "TCGA-AAA", "--project", "TCGA-BBB", "--out",
                 str(R / "C" / "clinical.parquet"), "--qc", str(R / "C" / "clinical_qc.tsv"), *src]) == 0
    qc = pd.read_csv(R / "C" / "clinical_qc.tsv", sep="\t")
    assert len(qc) == 5 and list(qc.columns) == list(gdc.QC_COLUMNS)
    assert main(["table2", "--results", str(R), "--cohort", "C", "--out", str(R / "tables" / "table2")]) == 0
    t = pd.read_csv(R / "tables" / "table2.csv").set_index("Cohort")
    # RNA patients: AA-0001, AA-0002, AA-0003, BB-0001, BB-0002, BB-0003
    assert t.loc["C"].to_dict() == {"DNAm": 33.33, "Clinical": 50.0, "WSI": 50.0, "RNA count": 6}
    assert t.loc["AAA", "RNA count"] == 3 and t.loc["BBB", "RNA count"] == 3
    assert (R / "tables" / "table2.md").read_text().startswith("**Table 2: Modality availability")
    # with the download reports, a failed download counts as missing
    rna = pd.read_csv(g / "download_rna.tsv", sep="\t")
    rna.loc[rna["file_id"] == "f01", "status"] = "failed"
    rna.to_csv(g / "download_rna.tsv", sep="\t", index=False)
    assert main(["table2", "--results", str(R), "--cohort", "C", "--out", str(R / "tables" / "t2"),
                 "--with-downloads"]) == 0
    assert pd.read_csv(R / "tables" / "t2.csv").set_index("Cohort").loc["C", "RNA count"] == 5
    (g / "download_wsi.tsv").unlink()
    assert main(["table2", "--results", str(R), "--cohort", "C", "--out", str(R / "tables" / "t3"),
                 "--with-downloads"]) == 2
    for p in pd.read_parquet(g / "selected.parquet")["local_path"]:
        assert hashlib.md5(Path(p).read_bytes()).hexdigest()  # every selected file is there


# ----------------------------------------------------------------------------------- the demo mirror (conftest)

DEMO_PROJECTS = ["DEMO-BRCA", "DEMO-UCEC", "DEMO-GBM", "DEMO-LGG"]


def test_demo_manifest_and_selection_over_http_and_mirror(demo_mirror, tmp_path):
    with GDCServer(demo_mirror) as srv:
        http, meta = gdc.fetch_manifest(gdc.HttpTransport(srv.url, timeout_s=5), DEMO_PROJECTS, page_size=7)
    mirrored, _ = gdc.fetch_manifest(gdc.MirrorTransport(demo_mirror), DEMO_PROJECTS)
    pd.testing.assert_frame_equal(http, mirrored)
    assert meta["gdc_data_release"] == json.loads((demo_mirror / "status.json").read_text())["data_release"]
    hits = json.loads((demo_mirror / "files.json").read_text())
    wanted = {h["file_id"] for h in hits if h["data_type"] in ("Gene Expression Quantification", "Methylation Beta Value")
              or h.get("experimental_strategy") == "Diagnostic Slide"}
    assert set(http["file_id"]) == wanted  # the miRNA files and the tissue slides are filtered out
    assert (http["patient"].str.len() == 12).all()
    sel = gdc.select_files(http, ["Primary Tumor", "Recurrent Tumor"], tmp_path)
    omics = sel[sel["modality"] != "wsi"]
    assert not omics.duplicated(["modality", "patient"]).any()
    assert set(omics["sample_type"]) == {"Primary Tumor"}  # the normals never, recurrences only as a last resort
    by_patient = http[http["modality"] == "rna"].groupby("patient")["sample"].apply(set)
    two_vials = [p for p, s in by_patient.items() if {f"{p}-01A", f"{p}-01B"} <= s]
    assert two_vials and all(sel.loc[(sel["modality"] == "rna") & (sel["patient"] == p), "sample"].item()
                             == f"{p}-01A" for p in two_vials)
    slides = sel[sel["modality"] == "wsi"]
    assert slides["file_name"].str.contains("-DX").all() and slides.duplicated("patient").any()  # every DX slide
    assert set(slides["file_id"]) == set(http.loc[http["modality"] == "wsi", "file_id"])


def test_demo_clinical_matches_the_oracle(demo_mirror):
    with GDCServer(demo_mirror) as srv:
        clinical, qc, _ = gdc.fetch_clinical(gdc.HttpTransport(srv.url, timeout_s=5), DEMO_PROJECTS, page_size=9)
    oracle = pd.read_parquet(demo_mirror / "oracle.parquet").set_index("patient")
    assert len(clinical) + len(qc) == len(oracle) and not set(clinical["patient"]) & set(qc["patient"])
    assert set(qc["reason"]) <= {"missing vital status", "dead without days_to_death", "no follow-up time",
                                 "negative time"} and len(qc)
    truth = oracle.loc[clinical["patient"]]
    np.testing.assert_array_equal(clinical["time"].to_numpy(), truth["time"].to_numpy())
    np.testing.assert_array_equal(clinical["event"].to_numpy(), truth["event"].to_numpy())


def test_demo_downloads_http_with_faults_and_mirror(demo_mirror, tmp_path, sleeps):
    hits = json.loads((demo_mirror / "files.json").read_text())
    slides = [h for h in hits if h["file_name"].endswith(".svs")][:3]
    others = [h for h in hits if not h["file_name"].endswith(".svs")][:3]
    rows = pd.DataFrame([{k: h[k] for k in ("file_id", "file_name", "md5sum", "file_size")} for h in slides + others])
    with GDCServer(demo_mirror) as srv:
        srv.add_fault(f"data/{slides[0]['file_id']}", "cut", after=slides[0]["file_size"] // 2)
        srv.add_fault(f"data/{slides[1]['file_id']}", "wrong")
        srv.add_fault(f"data/{others[0]['file_id']}", "429", retry_after=2)
        rep = _download(rows, tmp_path / "http", gdc.HttpTransport(srv.url, timeout_s=5))
        assert [r.range for r in srv.data_requests(slides[0]["file_id"])][1] == f"bytes={slides[0]['file_size'] // 2}-"
    assert (rep["status"] == "downloaded").all() and rep["md5_verified"].all()
    assert rep.loc[slides[0]["file_id"], "bytes_fetched"] == slides[0]["file_size"]
    _assert_only_verified(tmp_path / "http", demo_mirror)
    mrep = _download(rows, tmp_path / "mirror", gdc.MirrorTransport(demo_mirror))
    assert (mrep["status"] == "downloaded").all()
    _assert_only_verified(tmp_path / "mirror", demo_mirror)
