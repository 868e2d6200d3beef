# Omics matrices per cohort (docs/layout.md): {R}/{cohort}/rna.parquet, dnam.parquet, dnam_probes.txt and
# omics_qc.tsv. GDC cohorts: from the GDC stage's selected files (gdc/selected.parquet, one RNA and one DNAm file
# per patient) and its download reports (a failed download goes to the QC table). Cohorts given as tables
# (TABLE_COHORTS): the user's matrices and clinical table, validated and written in the same layout.
OMICS = config["omics"]


if GDC_COHORTS:

    rule omics_rna:
        input:
            selected=f"{RESULTS}/{{cohort}}/gdc/selected.parquet",
            report=lambda w: download_report(w.cohort, "rna"),
        output:
            matrix=f"{RESULTS}/{{cohort}}/rna.parquet",
            qc=f"{RESULTS}/{{cohort}}/omics/rna_qc.tsv",
        params:
            column=OMICS["rna"]["column"],
            gene_type=OMICS["rna"]["gene_type"],
            on_malformed=OMICS["on_malformed"],
        log:
            "logs/omics_rna/{cohort}.log",
        benchmark:
            "benchmarks/omics_rna/{cohort}.tsv"
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
        conda:
            "../../envs/omics.yaml"
        threads: 2
        shell:
            "python -m imputmae omics rna --files {input.selected:q} --modality rna --report {input.report:q} "
            "--out {output.matrix:q} --qc {output.qc:q} --column {params.column} --gene-type {params.gene_type:q} "
            "--on-malformed {params.on_malformed} --threads {threads} > {log} 2>&1"

    rule omics_dnam:
        input:
            selected=f"{RESULTS}/{{cohort}}/gdc/selected.parquet",
            report=lambda w: download_report(w.cohort, "dnam"),
            # the user's probe list, when configured: an input, so that editing it rebuilds the matrix
            probe_list=lambda w: [OMICS["dnam"]["probe_list"]] if OMICS["dnam"]["probe_list"] else [],
        output:
            matrix=f"{RESULTS}/{{cohort}}/dnam.parquet",
            probes=f"{RESULTS}/{{cohort}}/dnam_probes.txt",
            qc=f"{RESULTS}/{{cohort}}/omics/dnam_qc.tsv",
        params:
            probe_list=lambda w, input: f"--probe-list {shlex.quote(input.probe_list)}" if input.probe_list else "",
            on_malformed=OMICS["on_malformed"],
        log:
            "logs/omics_dnam/{cohort}.log",
        benchmark:
            "benchmarks/omics_dnam/{cohort}.tsv"
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
        conda:
            "../../envs/omics.yaml"
        threads: 2
        shell:
            "python -m imputmae omics dnam --files {input.selected:q} --modality dnam --report {input.report:q} "
            "--out {output.matrix:q} --probes-out {output.probes:q} --qc {output.qc:q} {params.probe_list} "
            "--on-malformed {params.on_malformed} --threads {threads} > {log} 2>&1"

    rule omics_qc:
        input:
            rna=f"{RESULTS}/{{cohort}}/omics/rna_qc.tsv",
            dnam=f"{RESULTS}/{{cohort}}/omics/dnam_qc.tsv",
        output:
            f"{RESULTS}/{{cohort}}/omics_qc.tsv",
        log:
            "logs/omics_qc/{cohort}.log",
        benchmark:
            "benchmarks/omics_qc/{cohort}.tsv"
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
        conda:
            "../../envs/omics.yaml"
        threads: 1
        shell:
            "python -m imputmae omics qc {input.rna:q} {input.dnam:q} --out {output:q} > {log} 2>&1"


def omics_tables_of(cohort):
    """The matrices and clinical table of a cohort given as tables (its slide table goes to the WSI stage)."""
    return {k: v for k, v in config["cohorts"][cohort]["tables"].items() if k in ("rna", "dnam", "clinical")}


if TABLE_COHORTS:

    rule omics_tables:
        input:
            unpack(lambda w: omics_tables_of(w.cohort)),
        output:
            rna=f"{RESULTS}/{{cohort}}/rna.parquet",
            dnam=f"{RESULTS}/{{cohort}}/dnam.parquet",
            probes=f"{RESULTS}/{{cohort}}/dnam_probes.txt",
            clinical=f"{RESULTS}/{{cohort}}/clinical.parquet",
            clinical_qc=f"{RESULTS}/{{cohort}}/clinical_qc.tsv",  # matrix patients without a label: pretraining only
            qc=f"{RESULTS}/{{cohort}}/omics_qc.tsv",
        params:
            args=lambda w: " ".join(
                [f"--cohort {shlex.quote(w.cohort)}"]
                + [f"--{k} {shlex.quote(v)}" for k, v in sorted(omics_tables_of(w.cohort).items())]
                + ([] if config["cohorts"][w.cohort].get("normalize", True) else ["--no-normalize"])
            ),
            out_dir=lambda w, output: str(Path(output.rna).parent),
        log:
            "logs/omics_tables/{cohort}.log",
        benchmark:
            "benchmarks/omics_tables/{cohort}.tsv"
        wildcard_constraints:
            cohort="|".join(TABLE_COHORTS),
        conda:
            "../../envs/omics.yaml"
        threads: 1
        shell:
            "python -m imputmae omics tables {params.args} --out-dir {params.out_dir:q} > {log} 2>&1"


TARGETS.extend(
    expand(
        f"{RESULTS}/{{cohort}}/{{name}}",
        cohort=GDC_COHORTS + TABLE_COHORTS,
        name=["rna.parquet", "dnam.parquet", "dnam_probes.txt", "omics_qc.tsv"],
    )
)
