"""The embedded demo cohort: a TCGA-like data set written exactly as gdc-client lays out a download.

``write_demo(out_dir, seed)`` writes

- ``files.json`` / ``cases.json``: JSON lists of the hits GDC's ``/files`` and ``/cases`` endpoints return, with the
  API's nesting (``cases[].project.project_id``, ``analysis.workflow_type``, ``diagnoses[]``, ``follow_ups[]``);
- ``status.json``: what ``/status`` returns (the data release);
- ``data/<file_id>/<file_name>``: STAR - Counts TSVs, SeSAMe level-3 beta files (27k and 450k arrays whose probe sets
  overlap only partly), Aperio SVS slides (pyramidal and one-level, 20x and 40x, diagnostic and tissue slides, a
  blank slide, a pen-marked slide, one corrupt file), and a few files of other types the pipeline must filter out;
- ``oracle.parquet``: per patient the true log-hazard (``risk``), its per-factor contributions (``contrib_*``), the
  latent factors (``z0``..``z4``), subtype, site, diagnosis year and modality availability, for benchmarks only (no
  pipeline stage reads it). Its schema metadata (key ``imputmae.demo``, JSON) holds the parameters and, per project,
  the share of the risk's variance each modality carries (``risk_share``).

How the cohort resembles TCGA (the figures and their sources: docs/demo.md; every number is a field of
:class:`DemoParams` or :class:`ProjectSpec`, decided before any model was run on this cohort):

- **Survival.** Weibull event times with a proportional-hazards log-hazard; censoring from the patient's site and
  diagnosis era: administrative end of follow-up at ``data_freeze_year`` and loss to follow-up whose mean differs
  between sites. Each project's baseline hazard is solved so that its expected censored share is the real cohort's
  (BRCA 86%, UCEC 83%, GBM 18%, LGG 76%).
- **Risk that no single modality shows.** Five latent factors: two shared by all three modalities (``shared0``,
  ``shared1``), one private to each (``rna``, ``dnam``, ``wsi``); an interaction between the RNA-private and the
  WSI-private factor; a discrete subtype (PAM50-, TCGA-UCEC-class- and IDH/codel-like) that shifts the hazard and is
  visible in RNA and DNAm only. A missing modality loses its private factor: imputation can recover only the rest.
- **Nuisance.** A tissue-source-site batch effect on every gene and probe; stain (eosin hue, hematoxylin intensity)
  and scanner (brightness, blur) differences between sites on the slides; a tissue-type (project) expression and
  methylation programme.
- **The slide signal lives in the tumour.** Tumour regions among stroma: the tumour's nuclear density, its share of
  the tissue and its nuclear size carry the factors; stroma carries none. Tile choice matters.
- **Missingness not at random.** Exactly the paper's Table 2 share of RNA patients lack DNAm and a slide, chosen by a
  propensity that depends on the site and the diagnosis year (older cases miss more, most of all in GBM); the
  oldest patients are on the 27k array only.
- **Sites in the barcode.** ``DEMO-<site>-<nnnn>``, the site a two-character TCGA tissue-source-site code, several
  per project with unequal sizes, no code shared between projects.

Two sizes (:data:`SIZES`): ``demo`` (what ``make demo`` runs: each cohort with at least 10 events for five
stratified folds) and ``benchmark`` (hundreds of patients per cohort). Same seed, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from imputmae.svs import write_aperio_svs

__all__ = ["DEFAULT_PATIENTS", "DEFAULT_PARAMS", "DemoParams", "DemoSummary", "FACTORS", "MODALITY_FACTORS",
           "PROJECTS", "ProjectSpec", "SIZES", "Subtype", "read_oracle_metadata", "resolve_sizes", "risk_shares", "simulate_patients",
           "write_demo"]


# ----------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Subtype:
    """A discrete latent class: its name, its share of the project's patients and its log hazard ratio."""

    name: str
    prevalence: float
    log_hr: float


@dataclass(frozen=True)
class ProjectSpec:
    """One demo project (a TCGA project's look-alike). Sources of every figure: docs/demo.md."""

    sites: tuple[str, ...]            # tissue-source-site codes, largest first (sizes ~ 1/rank^site_zipf)
    censored: float                   # target share of censored patients (TCGA-CDR OS)
    median_survival_days: float       # target median of the (uncensored) event times (TCGA-CDR KM median OS)
    diagnosis_year: float             # median year of diagnosis
    subtypes: tuple[Subtype, ...]
    signal: float                     # scales DemoParams.risk_weights and .interaction for this project
    dnam: float                       # share of RNA patients with DNAm (paper Table 2)
    wsi: float                        # share of RNA patients with a diagnostic slide (paper Table 2)
    clinical: float                   # share of RNA patients with a usable survival record (paper Table 2)
    p_27k: float                      # share of DNAm patients measured on the 27k array only (the earliest)
    missing_per_year: float           # log-odds of missing DNAm / slide per year before the median diagnosis year


_IDH = (Subtype("IDHmut-codel", 0.33, 0.0), Subtype("IDHmut-non-codel", 0.49, 0.6), Subtype("IDHwt", 0.18, 2.0))

PROJECTS: dict[str, ProjectSpec] = {
    "DEMO-BRCA": ProjectSpec(
        sites=("BH", "A2", "E2", "A8", "D8", "AR", "AO", "A7"), censored=0.86, median_survival_days=3941,
        diagnosis_year=2009, subtypes=(Subtype("LumA", 0.51, 0.0), Subtype("LumB", 0.21, 0.35),
                                       Subtype("Her2", 0.09, 0.95), Subtype("Basal", 0.19, 0.45)),
        signal=0.45, dnam=0.9969, wsi=0.9644, clinical=0.9124, p_27k=0.28, missing_per_year=0.15),
    "DEMO-UCEC": ProjectSpec(
        sites=("D1", "AX", "B5", "A5", "AP", "BG"), censored=0.83, median_survival_days=4000,
        diagnosis_year=2009,
        subtypes=(Subtype("POLE", 0.07, -0.7), Subtype("MSI", 0.28, 0.0), Subtype("CN-low", 0.39, 0.0),
                  Subtype("CN-high", 0.26, 1.1)),
        signal=0.45, dnam=0.9959, wsi=0.9243, clinical=0.9530, p_27k=0.21, missing_per_year=0.15),
    "DEMO-GBM": ProjectSpec(
        sites=("06", "02", "12", "14", "08"), censored=0.18, median_survival_days=428, diagnosis_year=2006,
        subtypes=(Subtype("IDHmut-codel", 0.0, 0.0), Subtype("IDHmut-non-codel", 0.05, -0.9),
                  Subtype("IDHwt", 0.95, 0.0)),
        signal=0.6, dnam=0.8071, wsi=0.6821, clinical=0.9714, p_27k=0.50, missing_per_year=0.4),
    "DEMO-LGG": ProjectSpec(
        sites=("HT", "DU", "S9", "FG", "E1", "P5"), censored=0.76, median_survival_days=2660,
        diagnosis_year=2011,
        subtypes=_IDH, signal=0.8, dnam=0.9922, wsi=0.9492, clinical=0.9355, p_27k=0.0, missing_per_year=0.15),
}

# The quick demo: each cohort keeps >= 10 events after the clinical records QC drops (five stratified folds).
# The benchmark cohort: hundreds per cohort, so that Table 3's confidence intervals can separate 0.03 in C-index.
SIZES: dict[str, dict[str, int]] = {
    "demo": {"DEMO-BRCA": 110, "DEMO-UCEC": 72, "DEMO-GBM": 20, "DEMO-LGG": 36},
    "benchmark": {"DEMO-BRCA": 600, "DEMO-UCEC": 400, "DEMO-GBM": 160, "DEMO-LGG": 300},
}
DEFAULT_PATIENTS: dict[str, int] = SIZES["demo"]

FACTORS = ("shared0", "shared1", "rna", "dnam", "wsi")        # z0..z4
MODALITY_FACTORS: dict[str, tuple[int, ...]] = {"rna": (0, 1, 2), "dnam": (0, 1, 3), "wsi": (0, 1, 4)}
SUBTYPE_MODALITIES = ("rna", "dnam")                           # the subtype shows in the omics only
INTERACTION = (2, 4)                                           # z_rna x z_wsi: carried by two different modalities


@dataclass(frozen=True)
class DemoParams:
    """Every number of the generator that is not per project. Reasons: docs/demo.md."""

    # log-hazard = log baseline(project) + subtype log HR + signal(project) * (risk_weights . z + interaction z2 z4)
    risk_weights: tuple[float, ...] = (0.8, 0.6, 0.7, 0.5, 0.5)
    interaction: float = 0.6
    weibull_shape: float = 1.3                 # hazard rising with time (TCGA KM curves); one shape: proportional hazards
    # censoring: administrative end at data_freeze_year; loss to follow-up ~ Exp(project mean x site factor), the
    # project mean solved so that the censored share is ProjectSpec.censored
    data_freeze_year: float = 2014.5
    site_year_sd: float = 2.0                  # spread of the sites' median diagnosis years (site = era)
    patient_year_sd: float = 2.5
    first_year: float = 1992.0
    site_follow_up_sd: float = 0.5             # log-scale spread of the sites' mean follow-up
    site_zipf: float = 0.9                     # site sizes ~ 1 / rank^site_zipf
    missing_site_sd: float = 1.0               # log-odds spread of the sites' missing DNAm / slide propensity
    rna_missing: float = 0.03                  # patients without RNA (outside Table 2, which counts RNA patients)
    # RNA (log FPKM-UQ): a share of the expressed coding genes load on the RNA factors; programmes; site batch
    rna_driven: float = 0.03
    rna_loading_sd: float = 0.35
    rna_program_genes: float = 0.10            # share of genes in each subtype's and each project's programme
    rna_program_sd: float = 0.6
    rna_batch_sd: float = 0.15                 # per site and gene
    rna_noise_sd: float = 0.8
    # DNAm (M-value): a share of the probes both arrays hold load on the DNAm factors; programmes; site batch
    dnam_driven: float = 0.05
    dnam_loading_sd: float = 0.45
    dnam_program_probes: float = 0.10
    dnam_program_sd: float = 0.8
    dnam_batch_sd: float = 0.15
    dnam_noise_sd: float = 0.8
    # slides: tumour regions among stroma; z0 -> tumour nuclear density, z1 -> tumour share, z4 -> nuclear size
    tumour_share_logit: float = -0.6           # share of the tissue that is tumour: sigmoid(this + 0.7 z1)
    tumour_share_per_sd: float = 0.7
    tumour_density: float = 0.004              # nuclei per pixel in tumour at z0 = 0 ...
    tumour_density_per_sd: float = 0.45        # ... times exp(this * z0)
    tumour_radius: float = 4.5                 # px at 20x, times exp(0.3 z4)
    tumour_radius_per_sd: float = 0.3
    stroma_density: float = 0.0006             # sparse small nuclei, no signal
    stroma_radius: float = 2.5
    site_hue_sd: float = 1.0                   # eosin pink -> purple, logit scale, per site
    site_hematoxylin_sd: float = 0.08          # hematoxylin intensity, per site (multiplicative)
    site_brightness_sd: float = 0.03           # scanner gain, per site
    site_blur_max: float = 1.2                 # scanner blur sigma (px), per site, uniform on [0, this]


DEFAULT_PARAMS = DemoParams()

N_GENES, N_CODING = 3000, 2000  # a few thousand genes, two thirds protein coding
N_PROBES_450K, N_PROBES_27K, N_PROBES_SHARED = 3000, 1300, 1100
SLIDE_20X = (1024, 1536)  # level-0 height, width at 20x (0.5 um/px); 40x slides are twice that (small: demo speed)
DATA_RELEASE = "Data Release 43.0 (imputmae demo)"

RNA_SUFFIX = ".rna_seq.augmented_star_gene_counts.tsv"
DNAM_SUFFIX = ".methylation_array.sesame.level3betas.txt"
OTHER_GENE_TYPES = ["lncRNA", "processed_pseudogene", "miRNA", "snRNA", "misc_RNA", "unprocessed_pseudogene"]
CLINICAL_FLAWS = ("missing_vital_status", "dead_without_date", "negative_follow_up", "no_follow_up")


@dataclass
class DemoSummary:
    """What ``write_demo`` wrote."""

    out_dir: str
    seed: int
    patients: dict[str, int]
    files: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    events: dict[str, int] = field(default_factory=dict)

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


def _stream(seed: int, *tags: str | int) -> np.random.Generator:
    """An independent random stream for one part of the generator (its draws do not shift the others')."""
    return np.random.default_rng([seed, *(zlib.crc32(t.encode()) if isinstance(t, str) else t for t in tags)])


def _top_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest keys (ties by position)."""
    out = np.zeros(len(keys), bool)
    if k > 0:
        out[np.argsort(-keys, kind="stable")[:k]] = True
    return out


# ----------------------------------------------------------------------------------------------- the cohort


@dataclass(frozen=True)
class _Sites:
    """Per-site nuisance of one project: era, follow-up, missingness propensity and slide stain."""

    codes: tuple[str, ...]
    weights: np.ndarray       # [S] share of the project's patients
    year: np.ndarray          # [S] median diagnosis year
    follow_up: np.ndarray     # [S] loss-to-follow-up factor (times the project's mean)
    miss_dnam: np.ndarray     # [S] log-odds offsets
    miss_wsi: np.ndarray      # [S]


def _make_sites(project: str, spec: ProjectSpec, prm: DemoParams, seed: int) -> _Sites:
    rng = _stream(seed, "sites", project)
    s = len(spec.sites)
    w = 1 / np.arange(1, s + 1) ** prm.site_zipf
    return _Sites(codes=spec.sites, weights=w / w.sum(),
                  year=spec.diagnosis_year + rng.normal(0, prm.site_year_sd, s),
                  follow_up=np.exp(rng.normal(0, prm.site_follow_up_sd, s)),
                  miss_dnam=rng.normal(0, prm.missing_site_sd, s), miss_wsi=rng.normal(0, prm.missing_site_sd, s))


def _draw_latents(spec: ProjectSpec, sites: _Sites, prm: DemoParams, n: int, rng: np.random.Generator
                  ) -> dict[str, np.ndarray]:
    """Site, diagnosis year, subtype, factors z [n, 5] and the log-hazard's parts (without the baseline)."""
    site = rng.choice(len(sites.codes), n, p=sites.weights)
    year = np.clip(sites.year[site] + rng.normal(0, prm.patient_year_sd, n), prm.first_year,
                   prm.data_freeze_year - 0.3)
    prev = np.array([t.prevalence for t in spec.subtypes])
    subtype = rng.choice(len(spec.subtypes), n, p=prev / prev.sum())
    z = rng.standard_normal((n, len(FACTORS)))
    contrib = {f"contrib_{f}": spec.signal * prm.risk_weights[k] * z[:, k] for k, f in enumerate(FACTORS)}
    contrib["contrib_interaction"] = spec.signal * prm.interaction * z[:, INTERACTION[0]] * z[:, INTERACTION[1]]
    contrib["contrib_subtype"] = np.array([t.log_hr for t in spec.subtypes])[subtype]
    eta = sum(contrib.values())
    admin = (prm.data_freeze_year - year) * 365.25
    loss = rng.exponential(sites.follow_up[site])  # times the project's loss-to-follow-up mean (_calibrate)
    return dict(site=site, year=year, subtype=subtype, z=z, eta=eta, admin=admin, loss=loss, **contrib)


def _censor_days(lat: Mapping[str, np.ndarray], loss_mean: float) -> np.ndarray:
    return np.maximum(np.minimum(lat["admin"], loss_mean * lat["loss"]), 1.0)


def _calibrate(project: str, spec: ProjectSpec, sites: _Sites, prm: DemoParams, seed: int) -> tuple[float, float]:
    """The project's log baseline hazard and loss-to-follow-up mean (days), solved on 20,000 draws of its latents:
    the baseline so that the event times' median is ``spec.median_survival_days``, then the loss mean (bisection)
    so that the expected censored share, mean(exp(-exp(b + eta) C^k)), is ``spec.censored``."""
    mc = _draw_latents(spec, sites, prm, 20_000, _stream(seed, "calibrate", project))
    k, eta = prm.weibull_shape, mc["eta"]
    # T = (E / exp(b + eta))^(1/k), E ~ Exp(1): median(T)^k = exp(-b) median(E exp(-eta))
    e = _stream(seed, "calibrate-times", project).exponential(1.0, len(eta))
    b = float(np.log(np.median(e * np.exp(-eta)) / spec.median_survival_days**k))
    lo, hi = np.log(1.0), np.log(1e6)
    for _ in range(60):
        mid = (lo + hi) / 2
        censored = np.mean(np.exp(-np.exp(b + eta) * _censor_days(mc, float(np.exp(mid))) ** k))
        lo, hi = (lo, mid) if censored < spec.censored else (mid, hi)
    return b, float(np.exp((lo + hi) / 2))


def risk_shares(project: str, seed: int = 0, params: DemoParams = DEFAULT_PARAMS) -> dict[str, float]:
    """Share of the variance of a project's log-hazard that each modality carries: R^2 of E[risk | what the modality
    shows] (its factors, and the subtype for RNA and DNAm), by least squares on 20,000 draws. The interaction term
    has mean zero given either of its factors, so only "all" (which is 1.0) explains it."""
    spec = PROJECTS[project]
    mc = _draw_latents(spec, _make_sites(project, spec, params, seed), params, 20_000,
                       _stream(seed, "shares", project))
    y = mc["eta"] - mc["eta"].mean()
    out = {}
    for m, ks in MODALITY_FACTORS.items():
        x = [mc["z"][:, list(ks)]]
        if m in SUBTYPE_MODALITIES:
            x.append(np.eye(len(spec.subtypes))[mc["subtype"]])
        x = np.hstack([np.ones((len(y), 1)), *x])
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        out[m] = float(1 - ((y - x @ beta) ** 2).sum() / (y**2).sum())
    out["all"] = 1.0
    return out


def simulate_patients(n_patients: Mapping[str, int], seed: int = 0, params: DemoParams = DEFAULT_PARAMS
                      ) -> pd.DataFrame:
    """The cohort's patient table, without any file: one row per patient.

    Columns: patient (``DEMO-<site>-<nnnn>``), project_id, site, diagnosis_year, subtype, z0..z4, contrib_* (the
    log-hazard's parts; ``contrib_baseline`` is the project's), risk (their sum: the true log-hazard), time (observed
    days), event, has_rna, has_dnam, has_wsi, platform ("450"/"27"), clinical_flaw ("" or a named defect).
    """
    frames = []
    for project, n in n_patients.items():
        spec = PROJECTS[project]
        sites = _make_sites(project, spec, params, seed)
        base, loss_mean = _calibrate(project, spec, sites, params, seed)
        rng = _stream(seed, "patients", project)
        lat = _draw_latents(spec, sites, params, n, rng)
        risk = base + lat["eta"]
        t_event = (rng.exponential(1.0, n) / np.exp(risk)) ** (1 / params.weibull_shape)
        censor = _censor_days(lat, loss_mean)
        time = np.round(np.minimum(t_event, censor)).clip(1, None)
        event = (t_event <= censor).astype(int)
        has_rna = rng.random(n) >= params.rna_missing
        n_rna = int(has_rna.sum())
        # Missing DNAm / slide: exactly Table 2's share of the RNA patients, chosen by a site- and era-dependent
        # propensity (Gumbel top-k: sampling without replacement with probabilities ~ exp(propensity)).
        older = spec.diagnosis_year - lat["year"]
        avail = {}
        for m, rate, off in (("dnam", spec.dnam, sites.miss_dnam), ("wsi", spec.wsi, sites.miss_wsi)):
            keys = off[lat["site"]] + spec.missing_per_year * older + rng.gumbel(size=n)
            missing = np.zeros(n, bool)
            missing[has_rna] = _top_k(keys[has_rna], round((1 - rate) * n_rna))
            missing[~has_rna] = rng.random(int((~has_rna).sum())) >= rate
            avail[m] = ~missing
        # The earliest-diagnosed DNAm patients are on the 27k array only.
        n_dnam = int(avail["dnam"].sum())
        is_27k = np.zeros(n, bool)
        is_27k[avail["dnam"]] = _top_k(older[avail["dnam"]] + rng.normal(0, 1.0, n_dnam), round(spec.p_27k * n_dnam))
        # A clinical record the label step must drop, each for a named reason: exactly 1 - Table 2's clinical share.
        flawed = np.zeros(n, bool)
        flawed[has_rna] = _top_k(rng.random(n_rna), round((1 - spec.clinical) * n_rna))
        flaws = np.where(flawed, rng.choice(CLINICAL_FLAWS, n), "")
        counters: dict[int, int] = {}
        barcodes = []
        for s in lat["site"]:
            counters[s] = counters.get(s, 0) + 1
            barcodes.append(f"DEMO-{sites.codes[s]}-{counters[s]:04d}")
        frames.append(pd.DataFrame({
            "patient": barcodes, "project_id": project, "site": [sites.codes[s] for s in lat["site"]],
            "diagnosis_year": np.round(lat["year"], 2), "subtype": [spec.subtypes[k].name for k in lat["subtype"]],
            **{f"z{k}": lat["z"][:, k] for k in range(len(FACTORS))},
            **{c: lat[c] for c in lat if c.startswith("contrib_")}, "contrib_baseline": base,
            "risk": risk, "time": time, "event": event, "censor_days": np.round(censor), "has_rna": has_rna, "has_dnam": avail["dnam"],
            "has_wsi": avail["wsi"], "platform": np.where(is_27k, "27", "450"), "clinical_flaw": flaws,
        }))
    return pd.concat(frames, ignore_index=True)


def _case_hit(p: Any, rng: np.random.Generator) -> dict[str, Any]:
    """A /cases hit with the fields the pipeline asks for, nested as the API nests them. ``p``: a patient row."""
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
    return {"case_id": p.case_id, "submitter_id": p.patient, "project": {"project_id": p.project_id},
            "demographic": demographic, "diagnoses": diagnoses, "follow_ups": follow_ups}


# ----------------------------------------------------------------------------------------------- omics


@dataclass
class _OmicsModel:
    gene_ids: list[str]
    gene_names: list[str]
    gene_types: list[str]
    gene_mu: np.ndarray  # [N_GENES] log FPKM-UQ baseline
    gene_load: np.ndarray  # [N_GENES, 3] loadings on MODALITY_FACTORS["rna"]
    gene_len: np.ndarray  # [N_GENES] kb, for the count columns
    gene_program: dict[str, np.ndarray]  # subtype or project name -> [N_GENES] log-scale shift
    gene_batch: dict[str, np.ndarray]  # site code -> [N_GENES]
    probes_450: list[str]
    probes_27: list[str]
    probe_mu: dict[str, float]
    probe_load: dict[str, np.ndarray]  # probe -> [3] loadings on MODALITY_FACTORS["dnam"]
    probe_program: dict[str, dict[str, float]]  # subtype or project -> probe -> M-value shift (sparse)
    probe_batch: dict[str, dict[str, float]]  # site -> probe -> shift


def _sparse_program(rng: np.random.Generator, n: int, share: float, sd: float) -> np.ndarray:
    out = np.zeros(n)
    idx = rng.choice(n, int(share * n), replace=False)
    out[idx] = rng.normal(0, sd, len(idx))
    return out


def _make_omics_model(seed: int, prm: DemoParams) -> _OmicsModel:
    rng = _stream(seed, "omics")
    ids = np.sort(rng.choice(np.arange(1, 300_000), N_GENES, replace=False))
    versions = rng.integers(1, 20, N_GENES)
    gene_ids = [f"ENSG{i:011d}.{v}" for i, v in zip(ids, versions, strict=True)]
    types = np.array(["protein_coding"] * N_CODING + list(rng.choice(OTHER_GENE_TYPES, N_GENES - N_CODING)))
    rng.shuffle(types)
    names = [f"DG{i:05d}" for i in range(N_GENES)]
    mu = rng.normal(1.5, 1.8, N_GENES)
    low = rng.random(N_GENES) < 0.12  # genes hardly expressed anywhere: the std filter must drop them
    mu[low] = -6
    load = np.zeros((N_GENES, 3))
    coding = np.flatnonzero((types == "protein_coding") & ~low)
    driven = rng.choice(coding, int(prm.rna_driven * len(coding)), replace=False)
    load[driven] = rng.normal(0, prm.rna_loading_sd, (len(driven), 3))
    groups = sorted({t.name for s in PROJECTS.values() for t in s.subtypes} | set(PROJECTS))
    g_prog = {g: _sparse_program(_stream(seed, "rna-programme", g), N_GENES, prm.rna_program_genes,
                                 prm.rna_program_sd) for g in groups}
    sites = sorted({c for s in PROJECTS.values() for c in s.sites})
    g_batch = {c: _stream(seed, "rna-batch", c).normal(0, prm.rna_batch_sd, N_GENES) for c in sites}
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
    p_load = np.zeros((len(probes), 3))
    driven_p = rng.choice(shared, int(prm.dnam_driven * len(shared)), replace=False)  # on probes both arrays hold
    p_load[driven_p] = rng.normal(0, prm.dnam_loading_sd, (len(driven_p), 3))
    p_prog = {g: dict(zip(probes, _sparse_program(_stream(seed, "dnam-programme", g), len(probes),
                                                  prm.dnam_program_probes, prm.dnam_program_sd), strict=True))
              for g in groups}
    p_batch = {c: dict(zip(probes, _stream(seed, "dnam-batch", c).normal(0, prm.dnam_batch_sd, len(probes)),
                           strict=True)) for c in sites}
    return _OmicsModel(
        gene_ids=gene_ids, gene_names=names, gene_types=list(types), gene_mu=mu, gene_load=load,
        gene_len=rng.uniform(0.5, 8.0, N_GENES), gene_program=g_prog, gene_batch=g_batch,
        probes_450=probes_450, probes_27=probes_27,
        probe_mu={p: float(m) for p, m in zip(probes, p_mu, strict=True)},
        probe_load={p: l for p, l in zip(probes, p_load, strict=True)},
        probe_program=p_prog, probe_batch=p_batch,
    )


def _rna_log_expression(om: _OmicsModel, p: Any, prm: DemoParams, rng: np.random.Generator,
                        normal: bool = False) -> np.ndarray:
    """log FPKM-UQ [N_GENES] of one sample: baseline + tissue programme + (tumour only) factors and subtype
    programme + site batch + noise. ``normal``: adjacent normal tissue (no tumour signal)."""
    x = om.gene_mu + om.gene_program[p.project_id] + om.gene_batch[p.site]
    if not normal:
        x = x + om.gene_load @ _z(p, "rna") + om.gene_program[p.subtype]
    return x + rng.normal(0, prm.rna_noise_sd, N_GENES)


def _z(p: Any, modality: str) -> np.ndarray:
    return np.array([getattr(p, f"z{k}") for k in MODALITY_FACTORS[modality]])


def _star_counts_tsv(om: _OmicsModel, log_fpkm_uq: np.ndarray, rng: np.random.Generator) -> bytes:
    """A GDC STAR - Counts file: a comment line, the header, four N_ rows, one row per gene."""
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


def _betas_txt(om: _OmicsModel, p: Any, platform: str, prm: DemoParams, rng: np.random.Generator) -> bytes:
    """A SeSAMe level-3 file: probe id TAB beta, no header, NA where the probe failed. M-value = baseline + tissue
    programme + subtype programme + factors + site batch + noise."""
    probes = om.probes_450 if platform == "450" else om.probes_27
    prog, sub, batch = om.probe_program[p.project_id], om.probe_program[p.subtype], om.probe_batch[p.site]
    mu = np.array([om.probe_mu[q] + prog[q] + sub[q] + batch[q] for q in probes])
    load = np.stack([om.probe_load[q] for q in probes])
    m_value = mu + load @ _z(p, "dnam") + rng.normal(0, prm.dnam_noise_sd, len(probes))
    beta = 1 / (1 + np.exp(-m_value))
    na = rng.random(len(probes)) < 0.015
    lines = [f"{q}\t{'NA' if miss else f'{b:.6f}'}" for q, b, miss in zip(probes, beta, na, strict=True)]
    return ("\n".join(lines) + "\n").encode()


# ----------------------------------------------------------------------------------------------- slides


@dataclass(frozen=True)
class _Stain:
    """A site's stain and scanner: eosin hue (0 pink .. 1 purple), hematoxylin intensity, gain and blur."""

    hue: float
    hematoxylin: float
    gain: float
    blur: float


def _site_stain(site: str, seed: int, prm: DemoParams) -> _Stain:
    rng = _stream(seed, "stain", site)
    return _Stain(hue=1 / (1 + math.exp(-rng.normal(0, prm.site_hue_sd))),
                  hematoxylin=float(np.clip(1 + rng.normal(0, prm.site_hematoxylin_sd), 0.8, 1.15)),
                  gain=float(np.clip(1 + rng.normal(0, prm.site_brightness_sd), 0.92, 1.04)),
                  blur=float(rng.uniform(0, prm.site_blur_max)))


def _nuclei(img: np.ndarray, region: np.ndarray, density: float, radius: float, stain: _Stain,
            rng: np.random.Generator) -> None:
    """Draw round nuclei inside ``region`` (uint8 [H, W] mask) onto ``img`` in place. Hematoxylin stays below the
    pen threshold (HSV S < 160), as on real H&E."""
    h, w = region.shape
    n = int(density * np.count_nonzero(region))
    ys, xs = rng.integers(0, h, 4 * n + 8), rng.integers(0, w, 4 * n + 8)
    inside = region[ys, xs] > 0
    ys, xs = ys[inside][:n], xs[inside][:n]
    radii = np.clip(np.round(rng.normal(radius, 0.8, len(ys))), 2, 12)
    shade = rng.integers(0, 35, len(ys))
    k = stain.hematoxylin
    for y, x, r, s in zip(ys, xs, radii, shade, strict=True):
        colour = (min(255, int(k * (95 + s))), min(255, int(k * (60 + s // 2))), min(255, int(k * (140 + s))))
        cv2.circle(img, (int(x), int(y)), int(r), colour, -1)


def _tissue_image(p: Any, stain: _Stain, prm: DemoParams, rng: np.random.Generator, shape: tuple[int, int],
                  kind: str) -> np.ndarray:
    """An H&E-like field at 20x: white background, tissue islands of stroma holding tumour regions. In the tumour,
    nuclear density follows z0, the tumour's share of the tissue z1 and nuclear size z4; stroma's sparse small nuclei
    carry nothing. The site sets the stain and the scanner. ``kind``: "normal", "blank" or "pen".
    Returns uint8 [H, W, 3] RGB."""
    h, w = shape
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (242, 240, 244)
    img -= rng.integers(0, 6, (h, w, 1), dtype=np.uint8)
    if kind != "blank":
        mask = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(2, 4))):
            cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
            ay, ax = rng.uniform(0.18, 0.3) * h, rng.uniform(0.15, 0.28) * w
            cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        # Tumour: blobs inside the tissue until they cover the patient's tumour share of it.
        share = 1 / (1 + math.exp(-(prm.tumour_share_logit + prm.tumour_share_per_sd * p.z1)))
        area = max(1, int(np.count_nonzero(mask)))
        tumour = np.zeros((h, w), np.uint8)
        ty, tx = np.nonzero(mask)
        for _ in range(40):
            if np.count_nonzero(tumour & mask) >= share * area:
                break
            j = int(rng.integers(len(ty)))
            r = rng.uniform(0.04, 0.1) * min(h, w)
            cv2.ellipse(tumour, (int(tx[j]), int(ty[j])), (int(r * rng.uniform(0.7, 1.4)), int(r)),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        tumour &= mask
        stroma = mask & (1 - tumour)
        hue = stain.hue
        eosin = np.array([236 - 40 * hue, 150 - 35 * hue, 190 + 10 * hue], np.float32)
        low = cv2.resize(rng.standard_normal((h // 64 + 2, w // 64 + 2), np.float32), (w, h),
                         interpolation=cv2.INTER_CUBIC)
        grain = rng.standard_normal((h, w), np.float32)
        tissue = cv2.merge([eosin[c] + 12 * low + 4 * grain - 10 * tumour for c in range(3)])
        tissue = np.clip(tissue, 0, 255).astype(np.uint8)
        _nuclei(tissue, stroma, prm.stroma_density, prm.stroma_radius, stain, rng)
        _nuclei(tissue, tumour, prm.tumour_density * math.exp(prm.tumour_density_per_sd * p.z0),
                prm.tumour_radius * math.exp(prm.tumour_radius_per_sd * p.z4), stain, rng)
        m = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3)
        img = cv2.blendLinear(tissue, img, m, 1 - m)
    # The scanner: gain and optical blur.
    if stain.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), stain.blur)
    img = np.clip(img.astype(np.float32) * stain.gain, 0, 255).astype(np.uint8)
    if kind == "pen":
        # Marker ink on the glass: thick saturated strokes, over tissue and background alike.
        for colour in ((20, 110, 60), (25, 45, 170)):
            pts = np.stack([rng.uniform(0.1, 0.9, 6) * w, rng.uniform(0.1, 0.9, 6) * h], 1).astype(np.int32)
            cv2.polylines(img, [pts], False, colour, thickness=max(8, w // 90))
    return img


# ----------------------------------------------------------------------------------------------- files.json hits


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


def resolve_sizes(size: str = "demo", n_patients: Mapping[str, int] | None = None) -> dict[str, int]:
    """Patients per project: ``SIZES[size]``, or ``n_patients`` when given (keys from :data:`PROJECTS`)."""
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose from {sorted(SIZES)}")
    sizes = dict(n_patients or SIZES[size])
    unknown = set(sizes) - set(PROJECTS)
    if unknown:
        raise ValueError(f"unknown demo project(s) {sorted(unknown)}; choose from {sorted(PROJECTS)}")
    return sizes


def write_demo(out_dir: str | Path, seed: int = 0, n_patients: Mapping[str, int] | None = None,
               size: str = "demo", params: DemoParams = DEFAULT_PARAMS, slides: bool = True) -> DemoSummary:
    """Write the demo mirror into ``out_dir`` (replacing what a previous run left there) and return a summary.

    Args:
        out_dir: folder for ``files.json``, ``cases.json``, ``status.json``, ``oracle.parquet`` and ``data/``.
        seed: the whole data set is a function of it; same seed, same bytes.
        n_patients: patients per project (keys from :data:`PROJECTS`); overrides ``size``.
        size: ``"demo"`` (the quick demo) or ``"benchmark"`` (hundreds of patients per cohort): :data:`SIZES`.
        params: the generator's parameters (:class:`DemoParams`).
        slides: False writes no slide files (omics and clinical only: a fast check of the omics signal; the
            oracle's ``has_wsi`` still says who would have one).
    """
    sizes = resolve_sizes(size, n_patients)
    out = Path(out_dir)
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    patients = simulate_patients(sizes, seed, params)
    rng = _stream(seed, "files")
    patients["case_id"] = [_uuid(rng) for _ in range(len(patients))]
    om = _make_omics_model(seed, params)
    stains = {c: _site_stain(c, seed, params) for c in sorted(set(patients["site"]))}
    summary = DemoSummary(out_dir=str(out), seed=seed, patients=sizes)
    hits: list[dict[str, Any]] = []

    def add(p: Any, name_fn, payload_fn, sample: str, **fields: Any) -> None:
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

    rows = list(patients.itertuples(index=False))
    slide_plan = _plan_slides(rows) if slides else {}
    for i, p in enumerate(rows):
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
        for slide in slide_plan.get(p.patient, []):
            add(p, lambda fid, s=slide: f"{p.patient}-{s['sample']}-{s['portion']}-{s['tag']}.{fid.upper()}.svs",
                lambda path, s=slide: _slide_payload(p, stains[p.site], params, prng, path, s), slide["sample"],
                experimental_strategy="Diagnostic Slide" if slide["tag"].startswith("DX") else "Tissue Slide",
                **SLIDE_FIELDS)
        if i % 17 == 7:  # a file type the manifest must filter out
            add(p, lambda fid: f"{fid}.mirnaseq.isoforms.quantification.txt",
                lambda _: b"miRNA_ID\tisoform_coords\tread_count\nhsa-let-7a-1\tchr9:1-22:+\t10\n", "01A",
                data_category="Transcriptome Profiling", data_type="Isoform Expression Quantification",
                data_format="TXT", experimental_strategy="miRNA-Seq",
                analysis={"workflow_type": "BCGSC miRNA Profiling"})

    cases = [_case_hit(p, np.random.default_rng([seed, 10_000 + i])) for i, p in enumerate(rows)]
    _write_atomic(out / "files.json", json.dumps(hits, indent=1, sort_keys=True).encode())
    _write_atomic(out / "cases.json", json.dumps(cases, indent=1, sort_keys=True).encode())
    _write_atomic(out / "status.json", json.dumps(
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


def _plan_slides(patients: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Which slides each patient gets. Most: one pyramidal 20x diagnostic slide. Some: a second diagnostic slide
    (with less tissue), 40x scans, one-level files, no MPP (AppMag only), a tissue slide (TS) beside the DX.
    Exactly one blank slide, one pen-marked slide and one corrupt file, each a patient's only diagnostic slide."""
    plan: dict[str, list[dict[str, Any]]] = {}
    with_wsi = [p for p in patients if p.has_wsi]
    slots = [1, 4, 7] if len(with_wsi) > 7 else list(range(min(3, len(with_wsi))))
    specials = {with_wsi[i].patient: kind for i, kind in zip(slots, ("blank", "pen", "corrupt"), strict=False)}
    for j, p in enumerate(with_wsi):
        kind = specials.get(p.patient, "normal")
        mag = 40 if j % 5 == 2 else 20
        dx = dict(sample="01Z", portion="00", tag="DX1", kind=kind, mag=mag, levels=1 if j % 6 == 3 else 3,
                  mpp=j % 8 != 6, scale=1.0)
        slides = [dx]
        if kind == "normal" and j % 7 == 0:
            slides.append(dict(dx, tag="DX2", mag=20, levels=3, mpp=True, scale=0.5))  # less tissue: not chosen
        if j % 6 == 1:
            slides.append(dict(dx, sample="01A", portion="01", tag="TS1", kind="normal", mag=20, levels=2))
        plan[p.patient] = slides
    return plan


def _slide_payload(p: Any, stain: _Stain, prm: DemoParams, rng: np.random.Generator, path: Path,
                   s: dict[str, Any]) -> bytes | None:
    """Write the slide straight to ``path`` (returns None) or, for the corrupt file, return its bytes."""
    kind = s["kind"]
    if kind == "corrupt":
        _slide_payload(p, stain, prm, rng, path, dict(s, kind="normal"))
        blob = path.read_bytes()
        path.unlink()
        return blob[: len(blob) // 3]  # a scan cut short that the archive holds and serves as is
    img = _tissue_image(p, stain, prm, rng, SLIDE_20X, kind)
    if s["scale"] != 1.0:  # the second diagnostic slide: the same tissue at half the extent
        small = cv2.resize(img, None, fx=s["scale"], fy=s["scale"], interpolation=cv2.INTER_AREA)
        img = np.full_like(img, 242)
        img[: small.shape[0], : small.shape[1]] = small
    if s["mag"] == 40:
        img = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    mpp = (0.5 if s["mag"] == 20 else 0.25) if s["mpp"] else None
    write_aperio_svs(path, img, mpp=mpp, app_mag=s["mag"], n_levels=s["levels"], quality=80)
    return None
