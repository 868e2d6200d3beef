"""The demo's parameters: projects, sizes, latent factors, :class:`DemoParams`, the summary it returns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


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
    # the paper-scale rehearsal (--scale paper's default; config.rehearsal.yaml): see docs/demo.md, "Paper scale"
    "rehearsal": {"DEMO-BRCA": 11, "DEMO-UCEC": 12, "DEMO-GBM": 4, "DEMO-LGG": 7},
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



@dataclass(frozen=True)
class FileScale:
    """The dimensions of the demo's files (not of its cohort: patients come from :data:`SIZES`).

    n_genes: STAR - Counts gene rows before the two ``_PAR_Y`` copies the writer adds; n_coding: how many of them are
    protein coding; low_expression: share of genes hardly expressed anywhere (the std filter drops them);
    probes_450k / probes_27k / probes_shared: the two arrays' probe lists and their overlap; slide_20x: level-0
    (height, width) of a 20x slide (40x slides are twice each); level_factor: downsample between pyramid levels;
    strip_rows: 0 renders a slide as one image, else by strips of this many 20x rows (bounded memory), in
    ``threads`` threads.
    """

    n_genes: int
    n_coding: int
    low_expression: float
    probes_450k: int
    probes_27k: int
    probes_shared: int
    slide_20x: tuple[int, int]
    level_factor: int
    strip_rows: int
    threads: int = 1


SCALES: dict[str, FileScale] = {
    # a few thousand genes (two thirds coding) and probes, 1024 x 1536 px slides: the demo's speed
    "demo": FileScale(n_genes=3000, n_coding=2000, low_expression=0.12, probes_450k=3000, probes_27k=1300,
                      probes_shared=1100, slide_20x=(1024, 1536), level_factor=2, strip_rows=0),
    # GDC's sizes: STAR - Counts on GENCODE v36 (60,660 gene rows with the _PAR_Y copies, 19,962 protein coding),
    # the 450k and 27k arrays' 485,577 and 27,578 probes overlapping on 25,978 (DRIM's probe set); slides whose
    # tissue holds >= 1,000 distinct 256 px tiles at 20x (docs/demo.md, "Paper scale"), pyramid downsamples 1, 4, 16
    # as Aperio scanners write them. low_expression: ~16,300 genes pass min_std 0.1 (the paper's 16,304).
    "paper": FileScale(n_genes=60_658, n_coding=19_962, low_expression=0.167, probes_450k=485_577,
                       probes_27k=27_578, probes_shared=25_978, slide_20x=(15_360, 20_480), level_factor=4,
                       strip_rows=256, threads=2),
}
DEMO_SCALE = SCALES["demo"]
N_GENES, N_CODING = DEMO_SCALE.n_genes, DEMO_SCALE.n_coding
N_PROBES_450K, N_PROBES_27K, N_PROBES_SHARED = DEMO_SCALE.probes_450k, DEMO_SCALE.probes_27k, DEMO_SCALE.probes_shared
SLIDE_20X = DEMO_SCALE.slide_20x
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
