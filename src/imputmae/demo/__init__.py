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

Sizes (:data:`SIZES`, patients): ``demo`` (what ``make demo`` runs: each cohort with at least 10 events for five
stratified folds), ``benchmark`` (hundreds of patients per cohort) and ``rehearsal`` (a few per cohort). Scales
(:data:`SCALES`, the files' dimensions): ``demo`` (a few thousand genes and probes, small slides) and ``paper``
(GDC's: 60,660 STAR rows, the 450k and 27k arrays' probe lists, slides for 1,000 candidate tiles, written by
strips). Same seed, same bytes.

Files: ``_params`` (projects, sizes, :class:`DemoParams`), ``_latents`` (patients, latent factors, survival, risk),
``_omics`` (STAR and SeSAMe files), ``_slides`` (the slide images), ``_mirror`` (the GDC mirror, :func:`write_demo`),
``_helpers``. Every public name is re-exported here.
"""

from imputmae.demo._latents import risk_shares, simulate_patients
from imputmae.demo._mirror import read_oracle_metadata, resolve_scale, resolve_sizes, write_demo
from imputmae.demo._params import (DEFAULT_PARAMS, DEFAULT_PATIENTS, DNAM_SUFFIX, FACTORS, MODALITY_FACTORS, PROJECTS,
                                   RNA_SUFFIX, SCALES, SIZES, DemoParams, DemoSummary, FileScale, ProjectSpec,
                                   Subtype)

__all__ = ["DEFAULT_PATIENTS", "DEFAULT_PARAMS", "DemoParams", "DemoSummary", "FACTORS", "MODALITY_FACTORS",
           "PROJECTS", "ProjectSpec", "SCALES", "SIZES", "FileScale", "Subtype", "read_oracle_metadata",
           "resolve_scale", "resolve_sizes", "risk_shares",
           "simulate_patients", "write_demo", "RNA_SUFFIX", "DNAM_SUFFIX"]
