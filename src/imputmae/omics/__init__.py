"""RNA-seq and DNA methylation matrices: parse GDC files (or your own tables) into patient-by-feature frames.

RNA (GDC ``STAR - Counts``, ``*.rna_seq.augmented_star_gene_counts.tsv``)::

    # gene-model: GENCODE v36
    gene_id  gene_name  gene_type  unstranded  stranded_first  stranded_second  tpm_unstranded  fpkm_unstranded  fpkm_uq_unstranded
    N_unmapped ... N_multimapping ... N_noFeature ... N_ambiguous ...      (4 rows, no gene_type)
    ENSG00000000003.15  TSPAN6  protein_coding  ...

Only ``gene_id``, ``gene_type`` and the configured value column are read (pyarrow's CSV reader). Rows with
``gene_type == protein_coding`` are kept; the ``N_*`` rows have no gene type and fall out with the filter. Gene ids
lose their version suffix (``ENSG00000000003.15`` -> ``ENSG00000000003``). GENCODE lists the genes of the X/Y
pseudo-autosomal regions twice, the Y copy as ``ENSG...._PAR_Y``; STAR assigns every read of those regions to the
X copy, so the ``_PAR_Y`` rows carry no signal and would collide with the X gene once the version is gone: they
are dropped. Any other id that repeats after the version is stripped makes the file malformed.

DNAm (SeSAMe level 3, ``*.methylation_array.sesame.level3betas.txt``): two tab-separated columns, probe id and
beta, no header, ``NA`` for a masked probe. The probe set is the overlap of the arrays present: the union of
the probes of the 27k files intersected with the union of the probes of the 450k files (25,978 probes on TCGA),
or a probe list given by the user; always in sorted order. ``NA`` stays ``NaN``.

Matrices are float32 with index ``patient`` and one column per feature, built by filling a preallocated array
(no concatenation), parsed in threads (pyarrow releases the GIL).

Files: ``_files`` (the malformed-file error, file tables, threaded parsing), ``_star`` (RNA), ``_sesame`` (DNAm),
``_tables`` (bring your own tables), ``_matrix`` (matrix parquet I/O). Every public name is re-exported here.
"""

from imputmae.omics._files import GDC_FILE_PATTERNS, QC_COLUMNS, MalformedFileError, file_table_from_paths
from imputmae.omics._matrix import NORMALIZED_KEY, matrix_is_normalized, read_matrix, write_matrix
from imputmae.omics._sesame import build_dnam_matrix, dnam_probe_set, platform_group, read_probe_list, read_sesame_betas
from imputmae.omics._star import STAR_COLUMNS, build_rna_matrix, read_star_counts
from imputmae.omics._tables import (SLIDE_PATIENT_PATTERN, read_clinical_table, read_feature_table, read_slide_table,
                                    unlabelled_patients)

__all__ = [
    "MalformedFileError",
    "STAR_COLUMNS",
    "read_star_counts",
    "read_sesame_betas",
    "build_rna_matrix",
    "dnam_probe_set",
    "build_dnam_matrix",
    "read_probe_list",
    "file_table_from_paths",
    "GDC_FILE_PATTERNS",
    "platform_group",
    "read_feature_table",
    "read_clinical_table",
    "unlabelled_patients",
    "read_slide_table",
    "SLIDE_PATIENT_PATTERN",
    "QC_COLUMNS",
    "NORMALIZED_KEY",
    "write_matrix",
    "read_matrix",
    "matrix_is_normalized",
]
