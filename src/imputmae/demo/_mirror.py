"""The GDC mirror: files.json/cases.json hits, the data files, the oracle table (:func:`write_demo`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imputmae.demo._helpers import _md5, _stream, _uuid
from imputmae.demo._latents import _case_hit, risk_shares, simulate_patients
from imputmae.demo._omics import (_betas_txt, _make_omics_model, _OmicsModel, _rna_log_expression,
                                  _star_counts_tsv)
from imputmae.demo._params import (DATA_RELEASE, DEFAULT_PARAMS, DNAM_SUFFIX, FACTORS, INTERACTION, MODALITY_FACTORS,
                                   PROJECTS, RNA_SUFFIX, SCALES, SIZES, SUBTYPE_MODALITIES, DemoParams, DemoSummary,
                                   FileScale)
from imputmae.demo._slides import _plan_slides, _site_stain, _slide_payload, _Stain
from imputmae.files import atomic_write


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _file_hit(file_id: str, name: str, path: Path, p: Any, sample: str, sample_type: str,
              **fields: Any) -> dict[str, Any]:
    hit = {"id": file_id, "file_id": file_id, "file_name": name, "md5sum": _md5(path),
           "file_size": path.stat().st_size, "access": "open", "state": "released",
           "cases": [{"case_id": p.case_id, "submitter_id": p.patient, "project": {"project_id": p.project_id},
                      "samples": [{"submitter_id": f"{p.patient}-{sample}", "sample_type": sample_type}]}]}
    hit.update(fields)
    return hit


RNA_FIELDS = dict(data_category="Transcriptome Profiling", data_type="Gene Expression Quantification",
                  data_format="TSV", experimental_strategy="RNA-Seq", analysis={"workflow_type": "STAR - Counts"})
DNAM_FIELDS = dict(data_category="DNA Methylation", data_type="Methylation Beta Value", data_format="TXT",
                   experimental_strategy="Methylation Array",
                   analysis={"workflow_type": "SeSAMe Methylation Beta Estimation"})
SLIDE_FIELDS = dict(data_category="Biospecimen", data_type="Slide Image", data_format="SVS")
SAMPLE_TYPES = {"01": "Primary Tumor", "02": "Recurrent Tumor", "11": "Solid Tissue Normal"}


def resolve_scale(scale: str) -> FileScale:
    """The file dimensions called ``scale`` (:data:`SCALES`: ``demo`` or ``paper``)."""
    if scale not in SCALES:
        raise ValueError(f"unknown demo scale {scale!r}; choose from {sorted(SCALES)}")
    return SCALES[scale]


def resolve_sizes(size: str = "demo", n_patients: Mapping[str, int] | None = None) -> dict[str, int]:
    """Patients per project: ``SIZES[size]``, or ``n_patients`` when given (keys from :data:`PROJECTS`)."""
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose from {sorted(SIZES)}")
    sizes = dict(n_patients or SIZES[size])
    unknown = set(sizes) - set(PROJECTS)
    if unknown:
        raise ValueError(f"unknown demo project(s) {sorted(unknown)}; choose from {sorted(PROJECTS)}")
    return sizes


@dataclass
class _MirrorWriter:
    """Adds a file to the mirror: ``data/<file_id>/<name>`` (the id drawn from ``rng``), its ``/files`` hit, and the
    summary's counts."""

    data: Path
    rng: np.random.Generator
    summary: DemoSummary
    hits: list[dict[str, Any]] = field(default_factory=list)

    def add(self, p: Any, name_fn: Callable[[str], str], payload_fn: Callable[[Path], bytes | None], sample: str,
            **fields: Any) -> None:
        file_id = _uuid(self.rng)
        name = name_fn(file_id)
        folder = self.data / file_id
        folder.mkdir()
        path = folder / name
        payload = payload_fn(path)
        if payload is not None:
            _write_bytes(path, payload)
        self.hits.append(_file_hit(file_id, name, path, p, sample, SAMPLE_TYPES[sample[:2]], **fields))
        self.summary.files[fields["data_type"]] = self.summary.files.get(fields["data_type"], 0) + 1
        self.summary.bytes += path.stat().st_size


def _write_patient_files(add: Callable[..., None], p: Any, i: int, seed: int, om: _OmicsModel, params: DemoParams,
                         patient_slides: list[dict[str, Any]], stains: Mapping[str, _Stain],
                         scale: FileScale) -> None:
    """Patient ``i``'s files, through ``add`` (:meth:`_MirrorWriter.add`): RNA (a second aliquot, a normal sample),
    DNAm (both arrays, a recurrence), the planned slides and an off-target file, from the patient's own stream."""
    prng = np.random.default_rng([seed, i])  # each patient's files from its own stream

    def rna(_: Path, normal: bool = False, p: Any = p, prng: np.random.Generator = prng) -> bytes:
        return _star_counts_tsv(om, _rna_log_expression(om, p, params, prng, normal=normal), prng)

    if p.has_rna:
        add(p, lambda fid: f"{fid}{RNA_SUFFIX}", rna, "01A", **RNA_FIELDS)
        if i % 13 == 3:  # a second aliquot of the same tumour: selection must pick one by its written rule
            add(p, lambda fid: f"{fid}{RNA_SUFFIX}", rna, "01B", **RNA_FIELDS)
        if i % 11 == 5:  # adjacent normal tissue: never the patient's tumour profile
            add(p, lambda fid: f"{fid}{RNA_SUFFIX}", lambda path: rna(path, normal=True), "11A", **RNA_FIELDS)
    if p.has_dnam:
        plat = p.platform
        add(p, lambda fid: f"{fid}{DNAM_SUFFIX}", lambda _: _betas_txt(om, p, plat, params, prng), "01A",
            platform=f"Illumina Human Methylation {plat}", **DNAM_FIELDS)
        if i % 9 == 2 and plat == "450":  # measured on both arrays
            add(p, lambda fid: f"{fid}{DNAM_SUFFIX}", lambda _: _betas_txt(om, p, "27", params, prng), "01A",
                platform="Illumina Human Methylation 27", **DNAM_FIELDS)
        if p.project_id == "DEMO-GBM" and i % 4 == 1:  # a recurrence sample, not the primary tumour
            add(p, lambda fid: f"{fid}{DNAM_SUFFIX}", lambda _: _betas_txt(om, p, plat, params, prng), "02A",
                platform=f"Illumina Human Methylation {plat}", **DNAM_FIELDS)
    for slide in patient_slides:
        add(p, lambda fid, s=slide: f"{p.patient}-{s['sample']}-{s['portion']}-{s['tag']}.{fid.upper()}.svs",
            lambda path, s=slide: _slide_payload(p, stains[p.site], params, prng, path, s, scale), slide["sample"],
            experimental_strategy="Diagnostic Slide" if slide["tag"].startswith("DX") else "Tissue Slide",
            **SLIDE_FIELDS)
    if i % 17 == 7:  # a file type the manifest must filter out
        add(p, lambda fid: f"{fid}.mirnaseq.isoforms.quantification.txt",
            lambda _: b"miRNA_ID\tisoform_coords\tread_count\nhsa-let-7a-1\tchr9:1-22:+\t10\n", "01A",
            data_category="Transcriptome Profiling", data_type="Isoform Expression Quantification",
            data_format="TXT", experimental_strategy="miRNA-Seq",
            analysis={"workflow_type": "BCGSC miRNA Profiling"})


def write_demo(out_dir: str | Path, seed: int = 0, n_patients: Mapping[str, int] | None = None,
               size: str | None = None, params: DemoParams = DEFAULT_PARAMS, slides: bool = True,
               scale: str = "demo") -> DemoSummary:
    """Write the demo mirror into ``out_dir`` (replacing what a previous run left there) and return a summary.

    Args:
        out_dir: folder for ``files.json``, ``cases.json``, ``status.json``, ``oracle.parquet`` and ``data/``.
        seed: the whole data set is a function of it; same seed, same bytes.
        n_patients: patients per project (keys from :data:`PROJECTS`); overrides ``size``.
        size: ``"demo"`` (the quick demo), ``"benchmark"`` (hundreds of patients per cohort) or ``"rehearsal"`` (a
            few per cohort): :data:`SIZES`; None: ``"rehearsal"`` at the paper's scale, else ``"demo"``.
        params: the generator's parameters (:class:`DemoParams`).
        slides: False writes no slide files (omics and clinical only: a fast check of the omics signal; the
            oracle's ``has_wsi`` still says who would have one).
        scale: the files' dimensions (:data:`SCALES`): ``"demo"`` (small files, the demo's speed) or ``"paper"``
            (GDC's sizes: 60,660 genes, 485,577 / 27,578 probes, slides for 1,000 candidate tiles; written by
            strips, memory bounded by a slide's strips and its level 1).
    """
    dims = resolve_scale(scale)
    sizes = resolve_sizes(size or ("rehearsal" if scale == "paper" else "demo"), n_patients)
    out = Path(out_dir)
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    patients = simulate_patients(sizes, seed, params)
    rng = _stream(seed, "files")
    patients["case_id"] = [_uuid(rng) for _ in range(len(patients))]
    om = _make_omics_model(seed, params, dims)
    stains = {c: _site_stain(c, seed, params) for c in sorted(set(patients["site"]))}
    summary = DemoSummary(out_dir=str(out), seed=seed, patients=sizes)
    writer = _MirrorWriter(data, rng, summary)
    rows = list(patients.itertuples(index=False))
    slide_plan = _plan_slides(rows) if slides else {}
    for i, p in enumerate(rows):
        _write_patient_files(writer.add, p, i, seed, om, params, slide_plan.get(p.patient, []), stains, dims)
    hits = writer.hits

    cases = [_case_hit(p, np.random.default_rng([seed, 10_000 + i])) for i, p in enumerate(rows)]
    _write_bytes(out / "files.json", json.dumps(hits, indent=1, sort_keys=True).encode())
    _write_bytes(out / "cases.json", json.dumps(cases, indent=1, sort_keys=True).encode())
    _write_bytes(out / "status.json", json.dumps(
        {"commit": "demo", "data_release": DATA_RELEASE, "status": "OK", "tag": "demo", "version": 1},
        sort_keys=True).encode())
    ok = patients["has_rna"] & (patients["clinical_flaw"] == "")
    summary.events = {k: int(v) for k, v in patients.loc[ok].groupby("project_id")["event"].sum().items()}
    _write_oracle(out / "oracle.parquet", patients.drop(columns=["case_id"]), seed, params)
    return summary


def _write_oracle(path: Path, patients: pd.DataFrame, seed: int, params: DemoParams) -> None:
    """oracle.parquet with the generator's parameters and each project's risk shares in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"seed": seed, "params": asdict(params), "factors": list(FACTORS),
            "modality_factors": {m: [FACTORS[k] for k in ks] for m, ks in MODALITY_FACTORS.items()},
            "subtype_modalities": list(SUBTYPE_MODALITIES), "interaction": [FACTORS[k] for k in INTERACTION],
            "projects": {p: asdict(PROJECTS[p]) for p in sorted(set(patients["project_id"]))},
            "risk_share": {p: risk_shares(p, seed, params) for p in sorted(set(patients["project_id"]))}}
    table = pa.Table.from_pandas(patients, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"imputmae.demo": json.dumps(meta, sort_keys=True).encode()})
    tmp = path.with_name(path.name + ".part")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_oracle_metadata(path: str | Path) -> dict[str, Any]:
    """The ``imputmae.demo`` metadata of an oracle.parquet: parameters, factors, per-project risk shares."""
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[b"imputmae.demo"])
