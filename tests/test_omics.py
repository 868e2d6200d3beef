"""Omics matrices: STAR - Counts and SeSAMe parsing, the probe overlap, malformed files, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from imputmae.cli import main
from imputmae.omics import (
    MalformedFileError,
    build_dnam_matrix,
    build_rna_matrix,
    dnam_probe_set,
    matrix_is_normalized,
    read_matrix,
    read_sesame_betas,
    read_star_counts,
)

from omics_files import write_sesame_betas, write_star_counts

GENE_IDS = [f"ENSG{i:011d}.{i % 5 + 1}" for i in range(40)]
GENE_TYPES = ["lncRNA" if i % 4 == 0 else "protein_coding" for i in range(40)]
N_PC = sum(t == "protein_coding" for t in GENE_TYPES)


def _values(seed: int, n: int = 40) -> np.ndarray:
    return np.round(np.random.default_rng(seed).gamma(2.0, 3.0, n), 4)


@pytest.fixture
def rna_files(tmp_path: Path) -> pd.DataFrame:
    rows = []
    for k in range(6):
        p = tmp_path / f"f{k}.rna_seq.augmented_star_gene_counts.tsv"
        write_star_counts(p, GENE_IDS, GENE_TYPES, _values(k))
        rows.append(dict(patient=f"TCGA-AA-{k:04d}", path=str(p)))
    return pd.DataFrame(rows[::-1])  # not in patient order: the matrix sorts


def _line_of(path: Path, startswith: str) -> int:
    return next(i for i, s in enumerate(path.read_text().splitlines(), 1) if s.startswith(startswith))


# ------------------------------------------------------------------------------------------------------ RNA


def test_star_file_parsed_as_written(tmp_path):
    p = tmp_path / "a.tsv"
    vals = _values(0)
    write_star_counts(p, GENE_IDS, GENE_TYPES, vals)
    s = read_star_counts(p)
    pc = [i for i, t in enumerate(GENE_TYPES) if t == "protein_coding"]
    assert list(s.index) == [GENE_IDS[i].split(".")[0] for i in pc]  # versions stripped, file order
    np.testing.assert_allclose(s.to_numpy(), vals[pc], atol=1e-9)
    # another column, another gene type
    tpm = read_star_counts(p, column="tpm_unstranded", gene_type="lncRNA")
    np.testing.assert_allclose(tpm.to_numpy(), np.round(vals[::4] / 3, 4), atol=1e-9)
    # pandas' reader agrees with ours on the same file (an independent parse)
    ref = pd.read_csv(p, sep="\t", comment="#", usecols=["gene_id", "gene_type", "fpkm_uq_unstranded"])
    ref = ref[ref.gene_type == "protein_coding"]
    np.testing.assert_allclose(s.to_numpy(), ref.fpkm_uq_unstranded.to_numpy())


def test_par_y_copies_dropped_not_duplicated(tmp_path):
    ids = ["ENSG00000002586.20", "ENSG00000000003.15", "ENSG00000002586.20_PAR_Y"]
    p = tmp_path / "par.tsv"
    write_star_counts(p, ids, ["protein_coding"] * 3, np.array([5.0, 7.0, 0.0]))
    s = read_star_counts(p)
    assert list(s.index) == ["ENSG00000002586", "ENSG00000000003"]
    assert s["ENSG00000002586"] == 5.0  # the X copy's value, not the empty Y copy's


def test_rna_matrix_shape_order_dtype(rna_files):
    m, qc = build_rna_matrix(rna_files, threads=2)
    assert m.shape == (6, N_PC) and m.dtypes.unique().tolist() == [np.float32]
    assert m.index.name == "patient" and list(m.index) == sorted(rna_files.patient)
    assert len(qc) == 0
    for _, row in rna_files.iterrows():
        np.testing.assert_allclose(m.loc[row.patient].to_numpy(), read_star_counts(row.path).to_numpy(),
                                   rtol=1e-6)
    single, _ = build_rna_matrix(rna_files, threads=1)
    pd.testing.assert_frame_equal(m, single)


def test_rna_versions_may_differ_but_genes_must_match(rna_files, tmp_path):
    p = tmp_path / "other_versions.tsv"
    write_star_counts(p, [g.split(".")[0] + ".99" for g in GENE_IDS], GENE_TYPES, _values(9))
    files = pd.concat([rna_files, pd.DataFrame([dict(patient="TCGA-AA-0099", path=str(p))])])
    m, _ = build_rna_matrix(files)
    assert m.shape == (7, N_PC)
    np.testing.assert_allclose(m.loc["TCGA-AA-0099"].to_numpy(), read_star_counts(p).to_numpy(), rtol=1e-6)


def _corrupt_rna(tmp_path: Path, kind: str) -> tuple[Path, int | None]:
    p = tmp_path / f"bad_{kind}.tsv"
    write_star_counts(p, GENE_IDS, GENE_TYPES, _values(3))
    lines = p.read_text().splitlines()
    target = _line_of(p, GENE_IDS[5])  # a protein-coding gene
    if kind == "columns":
        lines[1] = lines[1].replace("fpkm_uq_unstranded", "fpkm_uq")
        target = 2
    elif kind == "non_numeric":
        lines[target - 1] = lines[target - 1].rsplit("\t", 1)[0] + "\tabc"
    elif kind == "duplicate":
        lines[target - 1] = lines[target - 1].replace(GENE_IDS[5], GENE_IDS[1].split(".")[0] + ".7", 1)
    elif kind == "truncated_line":
        lines = lines[:target]
        lines[-1] = lines[-1][:25]
    elif kind == "truncated_genes":
        lines, target = lines[:target], None
    elif kind == "negative":
        lines[target - 1] = lines[target - 1].rsplit("\t", 1)[0] + "\t-1.5"
    elif kind == "empty":
        lines, target = [], 1
    p.write_text("\n".join(lines) + ("\n" if lines else ""))
    return p, target


RNA_KINDS = ["columns", "non_numeric", "duplicate", "truncated_line", "truncated_genes", "negative", "empty"]


@pytest.mark.parametrize("kind", RNA_KINDS)
def test_malformed_rna_error_names_file_line_patient(rna_files, tmp_path, kind):
    bad, line = _corrupt_rna(tmp_path, kind)
    files = pd.concat([rna_files, pd.DataFrame([dict(patient="TCGA-ZZ-0001", path=str(bad))])])
    with pytest.raises(MalformedFileError) as e:
        build_rna_matrix(files)
    msg = str(e.value)
    assert str(bad) in msg and "TCGA-ZZ-0001" in msg and "Fix:" in msg and "\n" not in msg
    assert e.value.line == line
    if line is not None:
        assert f"line {line}" in msg


@pytest.mark.parametrize("kind", RNA_KINDS)
def test_malformed_rna_qc_mode_leaves_patient_out(rna_files, tmp_path, kind):
    bad, _ = _corrupt_rna(tmp_path, kind)
    files = pd.concat([rna_files, pd.DataFrame([dict(patient="TCGA-ZZ-0001", path=str(bad))])])
    m, qc = build_rna_matrix(files, on_malformed="qc")
    good, _ = build_rna_matrix(rna_files)
    pd.testing.assert_frame_equal(m, good)  # the others are untouched (rows compacted in place)
    assert qc.to_dict("records")[0]["patient"] == "TCGA-ZZ-0001"
    assert list(qc.columns) == ["patient", "modality", "file", "reason"] and qc.modality.tolist() == ["rna"]


def test_truncated_first_file_does_not_become_the_reference(rna_files, tmp_path):
    bad, _ = _corrupt_rna(tmp_path, "truncated_genes")
    files = pd.concat([pd.DataFrame([dict(patient="TCGA-00-0000", path=str(bad))]), rna_files])
    m, qc = build_rna_matrix(files, on_malformed="qc")
    assert m.shape == (6, N_PC) and qc.patient.tolist() == ["TCGA-00-0000"]


def test_two_files_for_one_patient_is_refused(rna_files):
    files = pd.concat([rna_files, rna_files.iloc[:1]])
    with pytest.raises(ValueError, match="more than one file"):
        build_rna_matrix(files)


# ----------------------------------------------------------------------------------------------------- DNAm

PROBES_27K = sorted(f"cg{i:08d}" for i in range(0, 60))
PROBES_450K = sorted(f"cg{i:08d}" for i in range(30, 120))


@pytest.fixture
def dnam_files(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for k in range(6):
        probes = list(PROBES_27K if k % 2 else PROBES_450K)
        rng.shuffle(probes)  # file order is not the matrix order
        betas = rng.uniform(size=len(probes))
        betas[rng.uniform(size=len(probes)) < 0.15] = np.nan
        p = tmp_path / f"d{k}.methylation_array.sesame.level3betas.txt"
        write_sesame_betas(p, probes, betas)
        rows.append(dict(patient=f"TCGA-BB-{k:04d}", path=str(p),
                         platform="Illumina Human Methylation 27" if k % 2 else "Illumina Human Methylation 450"))
    return pd.DataFrame(rows)


def test_probe_overlap_sorted(dnam_files):
    probes, qc = dnam_probe_set(dnam_files)
    assert probes == sorted(set(PROBES_27K) & set(PROBES_450K)) and len(probes) == 30 and len(qc) == 0
    one, _ = dnam_probe_set(dnam_files[dnam_files.platform.str.endswith("450")])
    assert one == PROBES_450K  # one platform: its own probes


def test_probe_overlap_is_union_per_platform(tmp_path, dnam_files):
    # a 27k file listing an extra probe that a 450k file also has: the union of the 27k files counts
    extra = tmp_path / "extra27.txt"
    write_sesame_betas(extra, PROBES_27K[:10] + ["cg00000100"], np.full(11, 0.5))
    files = pd.concat([dnam_files, pd.DataFrame([dict(patient="TCGA-BB-0100", path=str(extra),
                                                      platform="Illumina Human Methylation 27")])])
    probes, _ = dnam_probe_set(files)
    assert probes == sorted(set(PROBES_27K[30:]) | {"cg00000100"})


def test_dnam_matrix_values_and_nan(dnam_files):
    probes, _ = dnam_probe_set(dnam_files)
    m, qc = build_dnam_matrix(dnam_files, probes)
    assert m.shape == (6, 30) and list(m.columns) == probes and m.dtypes.unique().tolist() == [np.float32]
    for _, row in dnam_files.iterrows():
        ref = pd.read_csv(row.path, sep="\t", header=None, index_col=0, na_values=["NA"]).iloc[:, 0]
        np.testing.assert_allclose(m.loc[row.patient].to_numpy(), ref.reindex(probes).to_numpy(), rtol=1e-6)
    assert 0 < m.isna().to_numpy().mean() < 0.4  # NA kept as NaN
    s = read_sesame_betas(dnam_files.path[0])
    assert s.isna().sum() == pd.read_csv(dnam_files.path[0], sep="\t", header=None)[1].isna().sum()


def _corrupt_dnam(tmp_path: Path, kind: str) -> tuple[Path, int | None]:
    p = tmp_path / f"bad_{kind}.txt"
    write_sesame_betas(p, PROBES_450K, np.linspace(0.05, 0.95, len(PROBES_450K)))
    lines = p.read_text().splitlines()
    line = 7
    if kind == "three_columns":
        lines[line - 1] += "\t0.3"
    elif kind == "non_numeric":
        lines[line - 1] = lines[line - 1].split("\t")[0] + "\thigh"
    elif kind == "header":
        lines.insert(0, "Composite Element REF\tBeta_value")
        line = 1
    elif kind == "duplicate":
        lines[line - 1] = lines[1].split("\t")[0] + "\t0.5"
    elif kind == "out_of_range":
        lines[line - 1] = lines[line - 1].split("\t")[0] + "\t1.7"
    elif kind == "truncated":
        lines, line = lines[:10], None  # lacks 20 of the 30 probes
    elif kind == "empty":
        lines, line = [], 1
    p.write_text("\n".join(lines) + ("\n" if lines else ""))
    return p, line


DNAM_KINDS = ["three_columns", "non_numeric", "header", "duplicate", "out_of_range", "truncated", "empty"]


@pytest.mark.parametrize("kind", DNAM_KINDS)
def test_malformed_dnam_error_names_file_line_patient(dnam_files, tmp_path, kind):
    bad, line = _corrupt_dnam(tmp_path, kind)
    files = pd.concat([dnam_files, pd.DataFrame([dict(patient="TCGA-ZZ-0002", path=str(bad),
                                                      platform="Illumina Human Methylation 450")])])
    probes = sorted(set(PROBES_27K) & set(PROBES_450K))
    with pytest.raises(MalformedFileError) as e:
        build_dnam_matrix(files, probes)
    msg = str(e.value)
    assert str(bad) in msg and "TCGA-ZZ-0002" in msg and "\n" not in msg
    assert e.value.line == line
    m, qc = build_dnam_matrix(files, probes, on_malformed="qc")
    assert "TCGA-ZZ-0002" not in m.index and qc.patient.tolist() == ["TCGA-ZZ-0002"] and len(m) == 6


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_rna_and_dnam_with_report_and_qc(rna_files, dnam_files, tmp_path, capsys):
    bad, _ = _corrupt_rna(tmp_path, "non_numeric")
    files = pd.concat([rna_files, pd.DataFrame([dict(patient="TCGA-ZZ-0001", path=str(bad))])], ignore_index=True)
    files = files.assign(file_id=[f"id{i}" for i in range(len(files))], modality="rna").rename(
        columns={"path": "local_path"})
    dn = dnam_files.assign(file_id=[f"dn{i}" for i in range(len(dnam_files))], modality="dnam").rename(
        columns={"path": "local_path"})
    pd.concat([files, dn]).to_parquet(tmp_path / "selected.parquet")
    report = files[["file_id", "local_path"]].assign(status="downloaded", reason="")
    report.loc[report.index[0], ["status", "reason"]] = ["failed", "md5 mismatch after 8 attempts"]
    report.iloc[:-1].to_csv(tmp_path / "download_rna.tsv", sep="\t", index=False)  # the last: not in the report
    out = tmp_path / "res"
    argv = ["omics", "rna", "--files", str(tmp_path / "selected.parquet"), "--modality", "rna", "--report",
            str(tmp_path / "download_rna.tsv"), "--out", str(out / "rna.parquet"), "--qc", str(out / "rna_qc.tsv")]
    assert main(argv) == 0  # failed downloads are missing data, not malformed files: QC in either mode
    qc = pd.read_csv(out / "rna_qc.tsv", sep="\t")
    assert qc.reason.tolist() == ["download failed: md5 mismatch after 8 attempts", "not in the download report"]
    report.to_csv(tmp_path / "download_rna.tsv", sep="\t", index=False)
    assert main(argv) == 2  # error mode: the malformed file stops the job, one line naming file, line, patient
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bad) in err and "TCGA-ZZ-0001" in err and "line" in err
    assert main(argv + ["--on-malformed", "qc"]) == 0
    rna, meta = read_matrix(out / "rna.parquet")
    assert rna.shape == (5, N_PC) and meta["normalized"] == "false" and meta["column"] == "fpkm_uq_unstranded"
    qc = pd.read_csv(out / "rna_qc.tsv", sep="\t")
    assert sorted(qc.patient) == sorted([files.patient.iloc[0], "TCGA-ZZ-0001"])
    assert main(["omics", "dnam", "--files", str(tmp_path / "selected.parquet"), "--modality", "dnam",
                 "--out", str(out / "dnam.parquet"), "--probes-out", str(out / "dnam_probes.txt"),
                 "--qc", str(out / "dnam_qc.tsv")]) == 0
    probes = (out / "dnam_probes.txt").read_text().split()
    assert probes == sorted(set(PROBES_27K) & set(PROBES_450K))
    dnam, _ = read_matrix(out / "dnam.parquet")
    assert list(dnam.columns) == probes and dnam.shape == (6, 30)
    assert main(["omics", "qc", str(out / "rna_qc.tsv"), str(out / "dnam_qc.tsv"), "--out",
                 str(out / "omics_qc.tsv")]) == 0
    assert len(pd.read_csv(out / "omics_qc.tsv", sep="\t")) == 2
    # a probe list from the user overrides the overlap (sorted, missing probes NaN)
    (tmp_path / "probes.txt").write_text("# mine\ncg00000050\ncg00000010\n")
    assert main(["omics", "dnam", "--files", str(tmp_path / "selected.parquet"), "--modality", "dnam",
                 "--probe-list", str(tmp_path / "probes.txt"), "--out", str(out / "d2.parquet"),
                 "--probes-out", str(out / "p2.txt"), "--qc", str(out / "q2.tsv")]) == 0
    d2, _ = read_matrix(out / "d2.parquet")
    assert list(d2.columns) == ["cg00000010", "cg00000050"]
    assert d2.loc[dn.patient[0], "cg00000010"] != d2.loc[dn.patient[0], "cg00000010"]  # NaN: not on the 450k
    # (here the 450k list starts at cg00000030; the file lacks half the probes of this list, allowed at 50%)


def _byo_tables(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    pts = [f"P{i:03d}" for i in range(12)]
    rna = pd.DataFrame(rng.gamma(2, 3, (12, 8)), columns=[f"GENE{j}" for j in range(8)])
    rna.insert(0, "sample", pts)
    rna.to_csv(tmp_path / "rna.csv", index=False)
    dn = pd.DataFrame(rng.uniform(size=(10, 5)), columns=["cg3", "cg1", "cg2", "cg5", "cg4"])
    dn.iloc[2, 1] = np.nan
    dn.insert(0, "patient", pts[:10])
    dn.to_csv(tmp_path / "dnam.tsv", sep="\t", index=False)
    clin = pd.DataFrame(dict(patient=pts, time=rng.uniform(10, 2000, 12).round(), event=rng.integers(0, 2, 12)))
    clin.to_parquet(tmp_path / "clin.parquet")
    return dict(rna=tmp_path / "rna.csv", dnam=tmp_path / "dnam.tsv", clinical=tmp_path / "clin.parquet")


@pytest.mark.parametrize("normalize", [True, False])
def test_cli_bring_your_own_tables_end_to_end(tmp_path, normalize):
    t = _byo_tables(tmp_path)
    out = tmp_path / "results" / "MINE"
    argv = ["omics", "tables", "--cohort", "MINE", "--clinical", str(t["clinical"]), "--rna", str(t["rna"]),
            "--dnam", str(t["dnam"]), "--out-dir", str(out)] + ([] if normalize else ["--no-normalize"])
    assert main(argv) == 0
    rna, meta = read_matrix(out / "rna.parquet")
    assert rna.shape == (12, 8) and rna.index.name == "patient" and rna.dtypes.unique().tolist() == [np.float32]
    np.testing.assert_allclose(rna.to_numpy(), pd.read_csv(t["rna"]).iloc[:, 1:].to_numpy(), rtol=1e-6)
    dnam, _ = read_matrix(out / "dnam.parquet")
    assert list(dnam.columns) == ["cg1", "cg2", "cg3", "cg4", "cg5"] and dnam.isna().sum().sum() == 1
    assert (out / "dnam_probes.txt").read_text().split() == ["cg1", "cg2", "cg3", "cg4", "cg5"]
    assert matrix_is_normalized(out / "rna.parquet") is (not normalize)
    assert matrix_is_normalized(out / "dnam.parquet") is (not normalize)
    clin = pd.read_parquet(out / "clinical.parquet")
    assert list(clin.columns) == ["patient", "project_id", "vital_status", "time", "event"]
    assert (clin.project_id == "MINE").all() and ((clin.event == 1) == (clin.vital_status == "Dead")).all()
    assert pd.read_csv(out / "omics_qc.tsv", sep="\t").empty

    from imputmae.normalize import OmicsNormalizer

    norm = OmicsNormalizer.from_config("rna", dict(n_quantiles=100, rna=dict(min_std=0.1, patch_size=4),
                                                   dnam=dict(patch_size=4)),
                                       already_normalized=matrix_is_normalized(out / "rna.parquet"))
    x = norm.fit(rna.iloc[:8]).transform(rna)
    assert x.shape == (12, 8)
    if not normalize:  # identity: the user's values, padded
        np.testing.assert_array_equal(x, rna.to_numpy())


@pytest.mark.parametrize("mutate,needle", [
    (lambda t: t["rna"].write_text(t["rna"].read_text().replace("P003", "P001", 1)), "rows 2, 4 (patient 'P001'): the same patient more than once; keep one row per patient"),
    (lambda t: t["dnam"].write_text(t["dnam"].read_text().replace("\t0.", "\tx", 1)), "is not a number"),
    (lambda t: pd.DataFrame(dict(patient=["P000"], time=[-3], event=[1])).to_parquet(t["clinical"]),
     "time -3"),
    (lambda t: pd.DataFrame(dict(patient=["P000"], time=[3], event=[2])).to_parquet(t["clinical"]), "event 2"),
    (lambda t: pd.DataFrame(dict(patient=["P000"], days=[3], event=[1])).to_parquet(t["clinical"]),
     "missing ['time']"),
])
def test_cli_bring_your_own_errors_are_one_line(tmp_path, capsys, mutate, needle):
    t = _byo_tables(tmp_path)
    mutate(t)
    rc = main(["omics", "tables", "--cohort", "MINE", "--clinical", str(t["clinical"]), "--rna", str(t["rna"]),
               "--dnam", str(t["dnam"]), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and needle in err[-1] and err[-1].startswith("imputmae omics: error:")
    assert not (tmp_path / "out" / "rna.parquet").exists()


def test_snakemake_builds_a_tables_cohort_and_plans_the_gdc_rules(tmp_path):
    """omics.smk end to end for a bring-your-own cohort (the real rule, through Snakemake), and the dry run of
    a GDC cohort schedules omics_rna, omics_dnam and omics_qc."""
    import shutil
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    t = _byo_tables(tmp_path)
    shutil.copy(root / "config.yaml", tmp_path / "config.yaml")
    overlay = dict(results=str(tmp_path / "res"), cohorts=dict(MINE=dict(
        tables={k: str(v) for k, v in t.items()}, normalize=False), BRCA=dict(projects=["TCGA-BRCA"])))
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    smk = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "overlay.yaml"), "--cores", "1"]
    targets = [str(tmp_path / "res" / "MINE" / n) for n in ("rna.parquet", "dnam.parquet", "clinical.parquet")]
    run = subprocess.run(smk + targets, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert matrix_is_normalized(tmp_path / "res" / "MINE" / "rna.parquet")
    assert read_matrix(tmp_path / "res" / "MINE" / "dnam.parquet")[0].shape == (10, 5)
    dry = subprocess.run(smk + ["-n", str(tmp_path / "res" / "BRCA" / "omics_qc.tsv"),
                                     str(tmp_path / "res" / "BRCA" / "dnam_probes.txt")],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr[-2000:]
    for rule in ("omics_rna", "omics_dnam", "omics_qc", "gdc_select"):
        assert rule in dry.stdout, dry.stdout[-2000:]
