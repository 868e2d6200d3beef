"""The embedded demo cohort: a small TCGA-like data set written exactly as gdc-client lays out a download.

``write_demo(out_dir, seed)`` writes

- ``files.json`` / ``cases.json``: JSON lists of the hits GDC's ``/files`` and ``/cases`` endpoints return, with the
  API's nesting (``cases[].project.project_id``, ``analysis.workflow_type``, ``diagnoses[]``, ``follow_ups[]``);
- ``status.json``: what ``/status`` returns (the data release);
- ``data/<file_id>/<file_name>``: STAR - Counts TSVs, SeSAMe level-3 beta files (27k and 450k arrays whose probe sets
  overlap only partly), Aperio SVS slides (pyramidal and one-level, 20x and 40x, diagnostic and tissue slides, a
  blank slide, a pen-marked slide, one corrupt file), and a few files of other types the pipeline must filter out;
- ``oracle.parquet``: the true log-hazard of every patient, for benchmarks only (no pipeline stage reads it).

A planted signal makes the demo a real test of the method: four latent factors per patient drive the hazard.
RNA carries factors 0, 1 and 2; DNA methylation 1, 2 and 3; the slides' tissue (nuclear density, stain hue and
nuclear size) 0, 2 and 3. Every modality carries part of the risk, all of them together carry all of it, and
every factor a modality carries is also carried by the other two together, so a missing modality can be imputed
from the others (the multimodal decoder's job).

Same seed, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from imputmae.svs import write_aperio_svs

__all__ = ["DEFAULT_PATIENTS", "DemoSummary", "write_demo", "PROJECTS"]

# Per project: two-letter code in the barcode, baseline hazard per day, % of RNA patients with DNAm and with a
# diagnostic slide (close to the paper's Table 2), share of 27k-only methylation.
PROJECTS: dict[str, dict[str, Any]] = {
    "DEMO-BRCA": dict(code="BR", hazard=1 / 4000, p_dnam=0.97, p_wsi=0.95, p_27k=0.15),
    "DEMO-UCEC": dict(code="UC", hazard=1 / 3000, p_dnam=0.97, p_wsi=0.92, p_27k=0.15),
    "DEMO-GBM": dict(code="GB", hazard=1 / 450, p_dnam=0.80, p_wsi=0.70, p_27k=0.40),
    "DEMO-LGG": dict(code="LG", hazard=1 / 2200, p_dnam=0.97, p_wsi=0.95, p_27k=0.0),
}
DEFAULT_PATIENTS: dict[str, int] = {"DEMO-BRCA": 40, "DEMO-UCEC": 28, "DEMO-GBM": 16, "DEMO-LGG": 20}

N_FACTORS = 4
RISK_WEIGHTS = np.array([0.9, 0.7, 0.7, 0.6])  # log-hazard = RISK_WEIGHTS . z
RNA_FACTORS, DNAM_FACTORS, WSI_FACTORS = (0, 1, 2), (1, 2, 3), (0, 2, 3)

N_GENES, N_CODING = 3000, 2000  # a few thousand genes, two thirds protein coding
N_PROBES_450K, N_PROBES_27K, N_PROBES_SHARED = 3000, 1300, 1100
SLIDE_20X = (1536, 2048)  # level-0 height, width at 20x (0.5 um/px); 40x slides are twice that
DATA_RELEASE = "Data Release 43.0 (imputmae demo)"

RNA_SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
DNAM_SUFFIX = ".methylation_array.sesame.level3betas.txt"
OTHER_GENE_TYPES = ["lncRNA", "processed_pseudogene", "miRNA", "snRNA", "misc_RNA", "unprocessed_pseudogene"]


@dataclass
class DemoSummary:
    """What ``write_demo`` wrote."""

    out_dir: str
    seed: int
    patients: dict[str, int]
    files: dict[str, int] = field(default_factory=dict)
    bytes: int = 0

    def __str__(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------- helpers


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- the cohort


@dataclass
class _Patient:
    barcode: str
    project: str
    case_id: str
    z: np.ndarray  # [N_FACTORS]
    risk: float
    time: float  # observed days
    event: int
    has_rna: bool
    has_dnam: bool
    has_wsi: bool
    platform: str  # "450" or "27"
    clinical_flaw: str | None  # None, or how this patient's clinical record is broken (QC must catch it)


def _make_patients(rng: np.random.Generator, n_patients: Mapping[str, int]) -> list[_Patient]:
    patients: list[_Patient] = []
    for project, n in n_patients.items():
        spec = PROJECTS[project]
        z = rng.standard_normal((n, N_FACTORS))
        risk = z @ RISK_WEIGHTS
        # Exponential times with a project baseline; uniform censoring; administrative end of study.
        t_event = rng.exponential(1.0, n) / (spec["hazard"] * np.exp(risk))
        t_cens = rng.uniform(0.2, 1.6, n) / spec["hazard"]
        time = np.minimum(t_event, t_cens).clip(1, None)
        event = (t_event <= t_cens).astype(int)
        has_rna = rng.random(n) > 0.04
        has_dnam = rng.random(n) < spec["p_dnam"]
        has_wsi = rng.random(n) < spec["p_wsi"]
        is_27k = rng.random(n) < spec["p_27k"]
        # About one patient in fifteen has a clinical record the label step must drop, each for a named reason.
        flaws = rng.choice(["missing_vital_status", "dead_without_date", "negative_follow_up", "no_follow_up"], n)
        flawed = rng.random(n) < 0.07
        for i in range(n):
            patients.append(_Patient(
                barcode=f"DEMO-{spec['code']}-{i + 1:04d}", project=project, case_id=_uuid(rng), z=z[i],
                risk=float(risk[i]), time=float(np.round(time[i])), event=int(event[i]), has_rna=bool(has_rna[i]),
                has_dnam=bool(has_dnam[i]), has_wsi=bool(has_wsi[i]), platform="27" if is_27k[i] else "450",
                clinical_flaw=str(flaws[i]) if flawed[i] else None,
            ))
    return patients


def _case_hit(p: _Patient, rng: np.random.Generator) -> dict[str, Any]:
    """A /cases hit with the fields the pipeline asks for, nested as the API nests them."""
    dead = p.event == 1
    demographic: dict[str, Any] = {"vital_status": "Dead" if dead else "Alive",
                                   "days_to_death": p.time if dead else None}
    # Follow-up is spread over diagnoses and follow_ups the way TCGA records are: the last contact may be in either.
    last = p.time if not dead else float(np.round(p.time * rng.uniform(0.3, 0.95)))
    earlier = float(np.round(last * rng.uniform(0.2, 0.9)))
    if rng.random() < 0.5:
        diagnoses = [{"days_to_last_follow_up": last, "primary_diagnosis": "demo carcinoma"}]
        follow_ups = [{"days_to_follow_up": earlier}, {"days_to_follow_up": None}]
    else:
        diagnoses = [{"days_to_last_follow_up": earlier, "primary_diagnosis": "demo carcinoma"}]
        follow_ups = [{"days_to_follow_up": earlier}, {"days_to_follow_up": last}]
    flaw = p.clinical_flaw
    if flaw == "missing_vital_status":
        demographic["vital_status"] = None
    elif flaw == "dead_without_date":
        demographic.update(vital_status="Dead", days_to_death=None)
    elif flaw == "negative_follow_up":
        demographic.update(vital_status="Alive", days_to_death=None)
        diagnoses = [{"days_to_last_follow_up": -float(rng.integers(5, 60)), "primary_diagnosis": "demo carcinoma"}]
        follow_ups = []
    elif flaw == "no_follow_up":
        demographic.update(vital_status="Alive", days_to_death=None)
        diagnoses = [{"days_to_last_follow_up": None, "primary_diagnosis": "demo carcinoma"}]
        follow_ups = []
    return {"case_id": p.case_id, "submitter_id": p.barcode, "project": {"project_id": p.project},
            "demographic": demographic, "diagnoses": diagnoses, "follow_ups": follow_ups}


# ----------------------------------------------------------------------------------------------- omics


@dataclass
class _OmicsModel:
    gene_ids: list[str]
    gene_names: list[str]
    gene_types: list[str]
    gene_mu: np.ndarray  # [N_GENES] log FPKM-UQ baseline
    gene_load: np.ndarray  # [N_GENES, 3] loadings on RNA_FACTORS
    gene_len: np.ndarray  # [N_GENES] kb, for the count columns
    probes_450: list[str]
    probes_27: list[str]
    probe_mu: dict[str, float]
    probe_load: dict[str, np.ndarray]


def _make_omics_model(rng: np.random.Generator) -> _OmicsModel:
    ids = np.sort(rng.choice(np.arange(1, 300_000), N_GENES, replace=False))
    versions = rng.integers(1, 20, N_GENES)
    gene_ids = [f"ENSG{i:011d}.{v}" for i, v in zip(ids, versions, strict=True)]
    types = np.array(["protein_coding"] * N_CODING + list(rng.choice(OTHER_GENE_TYPES, N_GENES - N_CODING)))
    rng.shuffle(types)
    names = [f"DG{i:05d}" for i in range(N_GENES)]
    mu = rng.normal(1.5, 1.8, N_GENES)
    low = rng.random(N_GENES) < 0.12  # genes hardly expressed anywhere: the std filter must drop them
    mu[low] = -6
    load = np.zeros((N_GENES, len(RNA_FACTORS)))
    coding = np.flatnonzero((types == "protein_coding") & ~low)
    # Most expressed coding genes follow the factors (85%); the rest is noise the model must learn to ignore. With
    # half of them driven (an earlier demo) even the true factors imputed RNA at only 0.53-0.59 of the training
    # mean's error: no imputer could show what the decoder does.
    driven = rng.choice(coding, int(0.85 * len(coding)), replace=False)
    load[driven] = rng.normal(0, 0.6, (len(driven), len(RNA_FACTORS)))
    probe_ids = np.sort(rng.choice(np.arange(1, 30_000_000), N_PROBES_450K + N_PROBES_27K - N_PROBES_SHARED,
                                   replace=False))
    probes = [f"cg{i:08d}" for i in probe_ids]
    order = rng.permutation(len(probes))
    shared = order[:N_PROBES_SHARED]
    only_450 = order[N_PROBES_SHARED:N_PROBES_450K]
    only_27 = order[N_PROBES_450K:]
    probes_450 = sorted([probes[i] for i in np.concatenate([shared, only_450])])
    probes_27 = sorted([probes[i] for i in np.concatenate([shared, only_27])])
    p_mu = rng.normal(0, 2.0, len(probes))
    p_load = np.zeros((len(probes), len(DNAM_FACTORS)))
    driven_p = rng.choice(shared, 1000, replace=False)  # the signal sits on probes both arrays measure (91% of them)
    p_load[driven_p] = rng.normal(0, 0.7, (len(driven_p), len(DNAM_FACTORS)))
    return _OmicsModel(
        gene_ids=gene_ids, gene_names=names, gene_types=list(types), gene_mu=mu, gene_load=load,
        gene_len=rng.uniform(0.5, 8.0, N_GENES), probes_450=probes_450, probes_27=probes_27,
        probe_mu={p: float(m) for p, m in zip(probes, p_mu, strict=True)},
        probe_load={p: l for p, l in zip(probes, p_load, strict=True)},
    )


def _star_counts_tsv(om: _OmicsModel, z: np.ndarray, rng: np.random.Generator) -> bytes:
    """A GDC STAR - Counts file: a comment line, the header, four N_ rows, one row per gene."""
    log_fpkm_uq = om.gene_mu + om.gene_load @ z[list(RNA_FACTORS)] + rng.normal(0, 0.3, N_GENES)
    fpkm_uq = np.exp(log_fpkm_uq)
    fpkm_uq[om.gene_mu < -5] *= rng.random((om.gene_mu < -5).sum()) < 0.2
    fpkm = fpkm_uq / rng.uniform(3.0, 5.0)
    tpm = fpkm / fpkm.sum() * 1e6
    counts = np.round(fpkm * om.gene_len * rng.uniform(20, 40)).astype(np.int64)
    first = rng.binomial(counts, 0.5)
    rows = ["# gene-model: GENCODE v36",
            "gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\ttpm_unstranded\t"
            "fpkm_unstranded\tfpkm_uq_unstranded"]
    total = int(counts.sum())
    for name, frac in (("N_unmapped", 0.03), ("N_multimapping", 0.06), ("N_noFeature", 0.04), ("N_ambiguous", 0.05)):
        n = int(total * frac)
        rows.append(f"{name}\t\t\t{n}\t{int(n * 0.9)}\t{int(n * 1.1)}\t\t\t")
    for g in range(N_GENES):
        rows.append(f"{om.gene_ids[g]}\t{om.gene_names[g]}\t{om.gene_types[g]}\t{counts[g]}\t{first[g]}\t"
                    f"{counts[g] - first[g]}\t{tpm[g]:.4f}\t{fpkm[g]:.4f}\t{fpkm_uq[g]:.4f}")
        if g in (5, 17):  # GENCODE's pseudo-autosomal copies: same gene id with a _PAR_Y suffix, all zeros
            rows.append(f"{om.gene_ids[g]}_PAR_Y\t{om.gene_names[g]}\t{om.gene_types[g]}\t0\t0\t0\t0.0000\t0.0000\t0.0000")
    return ("\n".join(rows) + "\n").encode()


def _betas_txt(om: _OmicsModel, z: np.ndarray, platform: str, rng: np.random.Generator) -> bytes:
    """A SeSAMe level-3 file: probe id TAB beta, no header, NA where the probe failed."""
    probes = om.probes_450 if platform == "450" else om.probes_27
    mu = np.array([om.probe_mu[p] for p in probes])
    load = np.stack([om.probe_load[p] for p in probes])
    m_value = mu + load @ z[list(DNAM_FACTORS)] + rng.normal(0, 0.3, len(probes))
    beta = 1 / (1 + np.exp(-m_value))
    na = rng.random(len(probes)) < 0.015
    lines = [f"{p}\t{'NA' if miss else f'{b:.6f}'}" for p, b, miss in zip(probes, beta, na, strict=True)]
    return ("\n".join(lines) + "\n").encode()


# ----------------------------------------------------------------------------------------------- slides


def _tissue_image(z: np.ndarray, rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    """An H&E-like field at 20x: white background, tissue islands, nuclei whose density, stain hue and size follow
    the three WSI_FACTORS. ``kind``: "normal", "blank" or "pen". Returns uint8 [H, W, 3] RGB."""
    h, w = shape
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (242, 240, 244)
    img -= rng.integers(0, 6, (h, w, 1), dtype=np.uint8)
    if kind == "blank":
        return img
    # Tissue: a union of ellipses with a soft edge.
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(2, 4))):
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
        ay, ax = rng.uniform(0.18, 0.3) * h, rng.uniform(0.15, 0.28) * w
        cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    # Stain: the second WSI factor moves eosin from pink towards purple; slow texture across the tissue.
    hue = 1 / (1 + math.exp(-1.2 * z[WSI_FACTORS[1]]))  # 0..1
    stroma = np.array([236 - 40 * hue, 150 - 35 * hue, 190 + 10 * hue], np.float32)
    low = cv2.resize(rng.standard_normal((h // 64 + 2, w // 64 + 2), np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    grain = rng.standard_normal((h, w), np.float32)
    tissue = cv2.merge([stroma[c] + 12 * low + 4 * grain for c in range(3)])
    tissue = np.clip(tissue, 0, 255).astype(np.uint8)
    # Nuclei: the first WSI factor sets their density, the third their size. Hematoxylin stays below the pen
    # threshold (HSV S < 160), as on real H&E.
    density = 0.0025 * math.exp(0.55 * z[WSI_FACTORS[0]])
    area = int(np.count_nonzero(mask))
    n_nuclei = int(density * area)
    ys = rng.integers(0, h, 4 * n_nuclei)
    xs = rng.integers(0, w, 4 * n_nuclei)
    inside = mask[ys, xs] > 0
    ys, xs = ys[inside][:n_nuclei], xs[inside][:n_nuclei]
    mean_radius = 4.5 * math.exp(0.3 * z[WSI_FACTORS[2]])
    radii = np.clip(np.round(rng.normal(mean_radius, 0.8, len(ys))), 2, 12)
    shade = rng.integers(0, 35, len(ys))
    for y, x, r, s in zip(ys, xs, radii, shade, strict=True):
        cv2.circle(tissue, (int(x), int(y)), int(r), (int(95 + s), int(60 + s // 2), int(140 + s)), -1)
    m = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3)
    img = cv2.blendLinear(tissue, img, m, 1 - m)
    if kind == "pen":
        # Marker ink on the glass: thick saturated strokes, over tissue and background alike.
        for colour in ((20, 110, 60), (25, 45, 170)):
            pts = np.stack([rng.uniform(0.1, 0.9, 6) * w, rng.uniform(0.1, 0.9, 6) * h], 1).astype(np.int32)
            cv2.polylines(img, [pts], False, colour, thickness=max(8, w // 90))
    return img


# ----------------------------------------------------------------------------------------------- files.json hits


def _file_hit(file_id: str, name: str, path: Path, p: _Patient, sample: str, sample_type: str,
              **fields: Any) -> dict[str, Any]:
    hit = {"id": file_id, "file_id": file_id, "file_name": name, "md5sum": _md5(path),
           "file_size": path.stat().st_size, "access": "open", "state": "released",
           "cases": [{"case_id": p.case_id, "submitter_id": p.barcode, "project": {"project_id": p.project},
                      "samples": [{"submitter_id": f"{p.barcode}-{sample}", "sample_type": sample_type}]}]}
    hit.update(fields)
    return hit


RNA_FIELDS = dict(data_category="Transcriptome Profiling", data_type="Gene Expression Quantification",
                  data_format="TSV", experimental_strategy="RNA-Seq", analysis={"workflow_type": "STAR - Counts"})
DNAM_FIELDS = dict(data_category="DNA Methylation", data_type="Methylation Beta Value", data_format="TXT",
                   experimental_strategy="Methylation Array",
                   analysis={"workflow_type": "SeSAMe Methylation Beta Estimation"})
SLIDE_FIELDS = dict(data_category="Biospecimen", data_type="Slide Image", data_format="SVS")
SAMPLE_TYPES = {"01": "Primary Tumor", "02": "Recurrent Tumor", "11": "Solid Tissue Normal"}


def write_demo(out_dir: str | Path, seed: int = 0, n_patients: Mapping[str, int] | None = None) -> DemoSummary:
    """Write the demo mirror into ``out_dir`` (replacing what a previous run left there) and return a summary.

    Args:
        out_dir: folder for ``files.json``, ``cases.json``, ``status.json``, ``oracle.parquet`` and ``data/``.
        seed: the whole data set is a function of it; same seed, same bytes.
        n_patients: patients per project (keys from :data:`PROJECTS`); defaults to :data:`DEFAULT_PATIENTS`.
    """
    sizes = dict(n_patients or DEFAULT_PATIENTS)
    unknown = set(sizes) - set(PROJECTS)
    if unknown:
        raise ValueError(f"unknown demo project(s) {sorted(unknown)}; choose from {sorted(PROJECTS)}")
    out = Path(out_dir)
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    patients = _make_patients(rng, sizes)
    om = _make_omics_model(rng)
    summary = DemoSummary(out_dir=str(out), seed=seed, patients=sizes)
    hits: list[dict[str, Any]] = []

    def add(p: _Patient, name_fn, payload_fn, sample: str, **fields: Any) -> None:
        file_id = _uuid(rng)
        name = name_fn(file_id)
        folder = data / file_id
        folder.mkdir()
        path = folder / name
        payload = payload_fn(path)
        if payload is not None:
            _write_atomic(path, payload)
        hits.append(_file_hit(file_id, name, path, p, sample, SAMPLE_TYPES[sample[:2]], **fields))
        summary.files[fields["data_type"]] = summary.files.get(fields["data_type"], 0) + 1
        summary.bytes += path.stat().st_size

    slide_plan = _plan_slides(patients, rng)
    for i, p in enumerate(patients):
        prng = np.random.default_rng([seed, i])  # each patient's files from its own stream
        if p.has_rna:
            add(p, lambda fid: f"{fid}{RNA_SUFFIX}", lambda _: _star_counts_tsv(om, p.z, prng), "01A", **RNA_FIELDS)
            if i % 13 == 3:  # a second aliquot of the same tumour: selection must pick one by its written rule
                add(p, lambda fid: f"{fid}{RNA_SUFFIX}", lambda _: _star_counts_tsv(om, p.z, prng), "01B",
                    **RNA_FIELDS)
            if i % 11 == 5:  # adjacent normal tissue: never the patient's tumour profile
                add(p, lambda fid: f"{fid}{RNA_SUFFIX}", lambda _: _star_counts_tsv(om, 0 * p.z, prng), "11A",
                    **RNA_FIELDS)
        if p.has_dnam:
            plat = p.platform
            add(p, lambda fid: f"{fid}{DNAM_SUFFIX}", lambda _: _betas_txt(om, p.z, plat, prng), "01A",
                platform=f"Illumina Human Methylation {plat}", **DNAM_FIELDS)
            if i % 9 == 2 and plat == "450":  # measured on both arrays
                add(p, lambda fid: f"{fid}{DNAM_SUFFIX}", lambda _: _betas_txt(om, p.z, "27", prng), "01A",
                    platform="Illumina Human Methylation 27", **DNAM_FIELDS)
            if p.project == "DEMO-GBM" and i % 4 == 1:  # a recurrence sample, not the primary tumour
                add(p, lambda fid: f"{fid}{DNAM_SUFFIX}", lambda _: _betas_txt(om, p.z, plat, prng), "02A",
                    platform=f"Illumina Human Methylation {plat}", **DNAM_FIELDS)
        for slide in slide_plan.get(p.barcode, []):
            add(p, lambda fid, s=slide: f"{p.barcode}-{s['sample']}-{s['portion']}-{s['tag']}.{fid.upper()}.svs",
                lambda path, s=slide: _slide_payload(p, prng, path, s), slide["sample"],
                experimental_strategy="Diagnostic Slide" if slide["tag"].startswith("DX") else "Tissue Slide",
                **SLIDE_FIELDS)
        if i % 17 == 7:  # a file type the manifest must filter out
            add(p, lambda fid: f"{fid}.mirnaseq.isoforms.quantification.txt",
                lambda _: b"miRNA_ID\tisoform_coords\tread_count\nhsa-let-7a-1\tchr9:1-22:+\t10\n", "01A",
                data_category="Transcriptome Profiling", data_type="Isoform Expression Quantification",
                data_format="TXT", experimental_strategy="miRNA-Seq",
                analysis={"workflow_type": "BCGSC miRNA Profiling"})

    cases = [_case_hit(p, np.random.default_rng([seed, 10_000 + i])) for i, p in enumerate(patients)]
    _write_atomic(out / "files.json", json.dumps(hits, indent=1, sort_keys=True).encode())
    _write_atomic(out / "cases.json", json.dumps(cases, indent=1, sort_keys=True).encode())
    _write_atomic(out / "status.json", json.dumps(
        {"commit": "demo", "data_release": DATA_RELEASE, "status": "OK", "tag": "demo", "version": 1},
        sort_keys=True).encode())
    oracle = pd.DataFrame({
        "patient": [p.barcode for p in patients], "project_id": [p.project for p in patients],
        "risk": [p.risk for p in patients], "time": [p.time for p in patients],
        "event": [p.event for p in patients],
        **{f"z{k}": [float(p.z[k]) for p in patients] for k in range(N_FACTORS)},
    })
    tmp = out / "oracle.parquet.part"
    oracle.to_parquet(tmp, index=False)
    os.replace(tmp, out / "oracle.parquet")
    return summary


def _plan_slides(patients: list[_Patient], rng: np.random.Generator) -> dict[str, list[dict[str, Any]]]:
    """Which slides each patient gets. Most: one pyramidal 20x diagnostic slide. Some: a second diagnostic slide
    (with less tissue), 40x scans, one-level files, no MPP (AppMag only), a tissue slide (TS) beside the DX.
    Exactly one blank slide, one pen-marked slide and one corrupt file, each a patient's only diagnostic slide."""
    plan: dict[str, list[dict[str, Any]]] = {}
    with_wsi = [p for p in patients if p.has_wsi]
    slots = [1, 4, 7] if len(with_wsi) > 7 else list(range(min(3, len(with_wsi))))
    specials = {with_wsi[i].barcode: kind for i, kind in zip(slots, ("blank", "pen", "corrupt"), strict=False)}
    for j, p in enumerate(with_wsi):
        kind = specials.get(p.barcode, "normal")
        mag = 40 if j % 5 == 2 else 20
        dx = dict(sample="01Z", portion="00", tag="DX1", kind=kind, mag=mag, levels=1 if j % 6 == 3 else 3,
                  mpp=j % 8 != 6, scale=1.0)
        slides = [dx]
        if kind == "normal" and j % 7 == 0:
            slides.append(dict(dx, tag="DX2", mag=20, levels=3, mpp=True, scale=0.5))  # less tissue: not chosen
        if j % 6 == 1:
            slides.append(dict(dx, sample="01A", portion="01", tag="TS1", kind="normal", mag=20, levels=2))
        plan[p.barcode] = slides
    return plan


def _slide_payload(p: _Patient, rng: np.random.Generator, path: Path, s: dict[str, Any]) -> bytes | None:
    """Write the slide straight to ``path`` (returns None) or, for the corrupt file, return its bytes."""
    kind = s["kind"]
    if kind == "corrupt":
        _slide_payload(p, rng, path, dict(s, kind="normal"))
        blob = path.read_bytes()
        path.unlink()
        return blob[: len(blob) // 3]  # a scan cut short that the archive holds and serves as is
    img = _tissue_image(p.z, rng, SLIDE_20X, kind)
    if s["scale"] != 1.0:  # the second diagnostic slide: the same tissue at half the extent
        small = cv2.resize(img, None, fx=s["scale"], fy=s["scale"], interpolation=cv2.INTER_AREA)
        img = np.full_like(img, 242)
        img[: small.shape[0], : small.shape[1]] = small
    if s["mag"] == 40:
        img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    mpp = (0.5 if s["mag"] == 20 else 0.25) if s["mpp"] else None
    write_aperio_svs(path, img, mpp=mpp, app_mag=s["mag"], n_levels=s["levels"], quality=80)
    return None
