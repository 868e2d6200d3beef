"""The by-hand commands as light as gdc-client's: side outputs default to a file beside the main output, and
``omics rna/dnam`` read the download folder or a list of files as well as a file table (on the demo mirror)."""

from __future__ import annotations

import pandas as pd
import pytest

from imputmae.cli import main
from imputmae.omics import read_matrix


def test_gdc_commands_write_their_side_outputs_beside_the_main_one(demo_mirror, tmp_path):
    src = ["--mirror", str(demo_mirror)]
    g = tmp_path / "gdc"
    assert main(["gdc", "manifest", "--project", "DEMO-UCEC", "--out", str(g / "manifest.parquet"), *src]) == 0
    assert main(["gdc", "select", str(g / "manifest.parquet"), "--out", str(g / "selected.parquet"),
                 "--download-dir", str(tmp_path / "data"), "--sample-type", "Primary Tumor"]) == 0
    assert main(["gdc", "download", str(g / "selected.parquet"), "--modality", "rna", "--dest", str(tmp_path / "data"),
                 "--no-progress", *src]) == 0
    report = pd.read_csv(tmp_path / "data" / "download_rna.tsv", sep="\t")
    assert len(report) and set(report["status"]) <= {"downloaded", "present"}
    assert main(["gdc", "clinical", "--project", "DEMO-UCEC", "--out", str(g / "clinical.parquet"), *src]) == 0
    assert (g / "clinical_qc.tsv").is_file() and "reason" in pd.read_csv(g / "clinical_qc.tsv", sep="\t").columns


@pytest.mark.parametrize("how", ["folder", "files"])
def test_omics_commands_read_a_download_folder_or_files(demo_mirror, tmp_path, how):
    import shutil

    dl = tmp_path / "download"      # a few files of each modality, in gdc-client's <file_id>/<file_name> layout
    for pattern in ("*.rna_seq.augmented_star_gene_counts.tsv", "*.level3betas.txt"):
        for f in sorted((demo_mirror / "data").rglob(pattern))[:5]:
            shutil.copytree(f.parent, dl / f.parent.name)
    rna_files = sorted(dl.rglob("*.rna_seq.augmented_star_gene_counts.tsv"))
    dnam_files = sorted(dl.rglob("*.level3betas.txt"))
    out = tmp_path / "out"
    for m, files in (("rna", rna_files), ("dnam", dnam_files)):
        given = [str(dl)] if how == "folder" else [str(f) for f in files]
        assert main(["omics", m, "--files", *given, "--out", str(out / f"{m}.parquet"), "--on-malformed", "qc"]) == 0
        matrix, _ = read_matrix(out / f"{m}.parquet")
        qc = pd.read_csv(out / f"{m}_qc.tsv", sep="\t")                    # beside --out
        # one row per file (GDC names files by UUID: the patient id is that UUID), or a QC row for a bad one
        assert sorted(matrix.index.tolist() + qc["patient"].tolist()) == sorted(f.name.split(".")[0] for f in files)
    assert (out / "dnam_probes.txt").read_text().split() == sorted(read_matrix(out / "dnam.parquet")[0].columns)


def test_omics_files_errors_name_the_path_and_the_fix(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["omics", "rna", "--files", str(tmp_path / "empty"), "--out", str(tmp_path / "rna.parquet")]) == 2
    assert "no *.rna_seq.augmented_star_gene_counts.tsv file under this folder; give the download folder" in \
        capsys.readouterr().err
    assert not (tmp_path / "rna.parquet").exists() and not (tmp_path / "rna_qc.tsv").exists()
