"""The demo's omics files: STAR - Counts TSVs and SeSAMe beta files from the latent factors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from imputmae.demo._helpers import _stream
from imputmae.demo._params import (MODALITY_FACTORS, N_CODING, N_GENES, N_PROBES_27K, N_PROBES_450K, N_PROBES_SHARED,
                                   OTHER_GENE_TYPES, PROJECTS, DemoParams)


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
