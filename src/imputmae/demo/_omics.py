"""The demo's omics files: STAR - Counts TSVs and SeSAMe beta files from the latent factors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from imputmae.demo._helpers import _stream
from imputmae.demo._params import DEMO_SCALE, MODALITY_FACTORS, OTHER_GENE_TYPES, PROJECTS, DemoParams, FileScale


@dataclass
class _OmicsModel:
    """The genes and probes of every file, and what each sample's values are drawn from. G genes, P probes (the
    union of both arrays, sorted by id); a platform's probes are indices into them (``probe_index``)."""

    gene_ids: list[str]
    gene_names: list[str]
    gene_types: list[str]
    gene_mu: np.ndarray  # [G] log FPKM-UQ baseline
    gene_load: np.ndarray  # [G, 3] loadings on MODALITY_FACTORS["rna"]
    gene_len: np.ndarray  # [G] kb, for the count columns
    gene_program: dict[str, np.ndarray]  # subtype or project name -> [G] log-scale shift
    gene_batch: dict[str, np.ndarray]  # site code -> [G]
    probes: np.ndarray  # [P] probe ids (str)
    probe_index: dict[str, np.ndarray]  # "450" / "27" -> int64 indices into probes, sorted
    probe_mu: np.ndarray  # [P]
    probe_load: np.ndarray  # [P, 3] loadings on MODALITY_FACTORS["dnam"]
    probe_program: dict[str, np.ndarray]  # subtype or project -> [P] M-value shift (sparse)
    probe_batch: dict[str, np.ndarray]  # site -> [P] shift

    @property
    def n_genes(self) -> int:
        return len(self.gene_ids)


def _sparse_program(rng: np.random.Generator, n: int, share: float, sd: float) -> np.ndarray:
    out = np.zeros(n)
    idx = rng.choice(n, int(share * n), replace=False)
    out[idx] = rng.normal(0, sd, len(idx))
    return out


def _make_omics_model(seed: int, prm: DemoParams, scale: FileScale = DEMO_SCALE) -> _OmicsModel:
    """The gene and probe model of ``scale``'s dimensions (the draws for :data:`DEMO_SCALE` are the demo's own)."""
    rng = _stream(seed, "omics")
    n_genes, n_coding = scale.n_genes, scale.n_coding
    n_450, n_27, n_shared = scale.probes_450k, scale.probes_27k, scale.probes_shared
    ids = np.sort(rng.choice(np.arange(1, 300_000), n_genes, replace=False))
    versions = rng.integers(1, 20, n_genes)
    gene_ids = [f"ENSG{i:011d}.{v}" for i, v in zip(ids, versions, strict=True)]
    types = np.array(["protein_coding"] * n_coding + list(rng.choice(OTHER_GENE_TYPES, n_genes - n_coding)))
    rng.shuffle(types)
    names = [f"DG{i:05d}" for i in range(n_genes)]
    mu = rng.normal(1.5, 1.8, n_genes)
    low = rng.random(n_genes) < scale.low_expression  # hardly expressed anywhere: the std filter must drop them
    mu[low] = -6
    load = np.zeros((n_genes, 3))
    coding = np.flatnonzero((types == "protein_coding") & ~low)
    driven = rng.choice(coding, int(prm.rna_driven * len(coding)), replace=False)
    load[driven] = rng.normal(0, prm.rna_loading_sd, (len(driven), 3))
    groups = sorted({t.name for s in PROJECTS.values() for t in s.subtypes} | set(PROJECTS))
    g_prog = {g: _sparse_program(_stream(seed, "rna-programme", g), n_genes, prm.rna_program_genes,
                                 prm.rna_program_sd) for g in groups}
    sites = sorted({c for s in PROJECTS.values() for c in s.sites})
    g_batch = {c: _stream(seed, "rna-batch", c).normal(0, prm.rna_batch_sd, n_genes) for c in sites}
    probe_ids = np.sort(rng.choice(np.arange(1, 30_000_000), n_450 + n_27 - n_shared,
                                   replace=False))
    probes = np.array([f"cg{i:08d}" for i in probe_ids])  # fixed width: sorted by id is sorted by name
    n_probes = len(probes)
    order = rng.permutation(n_probes)
    shared = order[:n_shared]
    only_450 = order[n_shared:n_450]
    only_27 = order[n_450:]
    index = {"450": np.sort(np.concatenate([shared, only_450])), "27": np.sort(np.concatenate([shared, only_27]))}
    p_mu = rng.normal(0, 2.0, n_probes)
    p_load = np.zeros((n_probes, 3))
    driven_p = rng.choice(shared, int(prm.dnam_driven * len(shared)), replace=False)  # on probes both arrays hold
    p_load[driven_p] = rng.normal(0, prm.dnam_loading_sd, (len(driven_p), 3))
    p_prog = {g: _sparse_program(_stream(seed, "dnam-programme", g), n_probes, prm.dnam_program_probes,
                                 prm.dnam_program_sd) for g in groups}
    p_batch = {c: _stream(seed, "dnam-batch", c).normal(0, prm.dnam_batch_sd, n_probes) for c in sites}
    return _OmicsModel(
        gene_ids=gene_ids, gene_names=names, gene_types=list(types), gene_mu=mu, gene_load=load,
        gene_len=rng.uniform(0.5, 8.0, n_genes), gene_program=g_prog, gene_batch=g_batch,
        probes=probes, probe_index=index, probe_mu=p_mu, probe_load=p_load, probe_program=p_prog,
        probe_batch=p_batch,
    )


def _rna_log_expression(om: _OmicsModel, p: Any, prm: DemoParams, rng: np.random.Generator,
                        normal: bool = False) -> np.ndarray:
    """log FPKM-UQ [G] of one sample: baseline + tissue programme + (tumour only) factors and subtype
    programme + site batch + noise. ``normal``: adjacent normal tissue (no tumour signal)."""
    x = om.gene_mu + om.gene_program[p.project_id] + om.gene_batch[p.site]
    if not normal:
        x = x + om.gene_load @ _z(p, "rna") + om.gene_program[p.subtype]
    return x + rng.normal(0, prm.rna_noise_sd, om.n_genes)


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
    for g in range(om.n_genes):
        rows.append(f"{om.gene_ids[g]}\t{om.gene_names[g]}\t{om.gene_types[g]}\t{counts[g]}\t{first[g]}\t"
                    f"{counts[g] - first[g]}\t{tpm[g]:.4f}\t{fpkm[g]:.4f}\t{fpkm_uq[g]:.4f}")
        if g in (5, 17):  # GENCODE's pseudo-autosomal copies: same gene id with a _PAR_Y suffix, all zeros
            rows.append(f"{om.gene_ids[g]}_PAR_Y\t{om.gene_names[g]}\t{om.gene_types[g]}\t0\t0\t0\t0.0000\t0.0000\t0.0000")
    return ("\n".join(rows) + "\n").encode()


def _betas_txt(om: _OmicsModel, p: Any, platform: str, prm: DemoParams, rng: np.random.Generator) -> bytes:
    """A SeSAMe level-3 file: probe id TAB beta, no header, NA where the probe failed. M-value = baseline + tissue
    programme + subtype programme + factors + site batch + noise."""
    idx = om.probe_index[platform]
    mu = (om.probe_mu[idx] + om.probe_program[p.project_id][idx] + om.probe_program[p.subtype][idx]
          + om.probe_batch[p.site][idx])
    m_value = mu + om.probe_load[idx] @ _z(p, "dnam") + rng.normal(0, prm.dnam_noise_sd, len(idx))
    beta = 1 / (1 + np.exp(-m_value))
    na = rng.random(len(idx)) < 0.015
    lines = [f"{q}\t{'NA' if miss else f'{b:.6f}'}" for q, b, miss in zip(om.probes[idx], beta, na, strict=True)]
    return ("\n".join(lines) + "\n").encode()
