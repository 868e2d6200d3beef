"""Writers of GDC omics files for the tests: STAR - Counts TSVs and SeSAMe beta files, the readers' inverses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imputmae.omics import STAR_COLUMNS


def write_star_counts(path: str | Path, gene_ids: Sequence[str], gene_types: Sequence[str],
                      values: np.ndarray, gene_model: str = "GENCODE v36") -> None:
    """Write a GDC STAR - Counts TSV (the four ``N_*`` rows first); ``values [n_genes]`` go to every FPKM-UQ,
    FPKM and TPM column scaled (fpkm = values / 2, tpm = values / 3) and to the count columns rounded.

    The reader's exact inverse on the columns it reads.
    """
    values = np.asarray(values, dtype=np.float64)
    counts = np.rint(values * 10).astype(np.int64)
    lines = [f"# gene-model: {gene_model}", "\t".join(STAR_COLUMNS)]
    lines += [f"{n}\t\t\t{k}\t{k}\t{k}\t\t\t" for n, k in
              (("N_unmapped", 1000), ("N_multimapping", 900), ("N_noFeature", 800), ("N_ambiguous", 700))]
    lines += [f"{g}\t{g.split('.')[0]}\t{t}\t{c}\t{c // 2}\t{c - c // 2}\t{v / 3:.4f}\t{v / 2:.4f}\t{v:.4f}"
              for g, t, c, v in zip(gene_ids, gene_types, counts.tolist(), values.tolist())]
    Path(path).write_text("\n".join(lines) + "\n")


def write_sesame_betas(path: str | Path, probes: Sequence[str], betas: np.ndarray) -> None:
    """Write a SeSAMe level-3 beta file: probe TAB beta, no header, ``NA`` for NaN."""
    betas = np.asarray(betas, dtype=np.float64)
    Path(path).write_text("".join(f"{p}\t{'NA' if np.isnan(b) else f'{b:.6g}'}\n"
                                  for p, b in zip(probes, betas.tolist())))
