# GDC acquisition: manifest (checkpoint) -> per-patient selection (checkpoint) -> verified downloads (checkpoint)
# labels -> Table 2. Only cohorts given as GDC projects (GDC_COHORTS) have the acquisition rules; cohorts given as tables
# bring their own matrices and labels.
#
# Other rule files use these helpers (defined in common.smk, section GDC stage):
#   selected_files(cohort, modality)   -> DataFrame of the selected rows (patient, file_id, local_path, ...)
#   download_report(cohort, modality)  -> path of the download report (one row per selected file, with its status;
#                                          "failed" rows count as missing). Depend on it, not on the data files:
#                                          no rule has the downloaded files as outputs.
#   downloaded_files(cohort, modality) -> the selected rows whose download was verified (after the gdc_download
#                                          checkpoint ran), so their local_path exist and may be listed as inputs.
if GDC_COHORTS:

    if config["gdc"]["local_downloads"]:

        localrules:
            gdc_manifest,
            gdc_download,
            gdc_clinical,

    checkpoint gdc_manifest:
        input:
            gdc_source_inputs,
        output:
            f"{RESULTS}/{{cohort}}/gdc/manifest.parquet",
        params:
            projects=gdc_project_args,
            source=gdc_source_args(),
            request=gdc_request_args(),
            page_size=config["gdc"]["page_size"],
        resources:
            gdc_api=1,  # the profiles cap concurrent GDC API use
        log:
            "logs/gdc_manifest/{cohort}.log",
        benchmark:
            "benchmarks/gdc_manifest/{cohort}.tsv"
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
        conda:
            "../../envs/gdc.yaml"
        threads: 1
        shell:
            "python -m imputmae gdc manifest {params.projects} --out {output} --page-size {params.page_size} "
            "{params.source} {params.request} > {log} 2>&1"

    checkpoint gdc_select:
        input:
            f"{RESULTS}/{{cohort}}/gdc/manifest.parquet",
        output:
            f"{RESULTS}/{{cohort}}/gdc/selected.parquet",
        params:
            sample_types=" ".join(f"--sample-type {shlex.quote(s)}" for s in config["gdc"]["sample_types"]),
            download_dir=config["gdc"]["download_dir"],
        log:
            "logs/gdc_select/{cohort}.log",
        benchmark:
            "benchmarks/gdc_select/{cohort}.tsv"
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
        conda:
            "../../envs/gdc.yaml"
        threads: 1
        shell:
            "python -m imputmae gdc select {input} --out {output} --download-dir {params.download_dir:q} "
            "{params.sample_types} > {log} 2>&1"

    checkpoint gdc_download:
        input:
            selected=f"{RESULTS}/{{cohort}}/gdc/selected.parquet",
            source=gdc_source_inputs,
        output:
            f"{RESULTS}/{{cohort}}/gdc/download_{{modality}}.tsv",
        params:
            dest=config["gdc"]["download_dir"],
            source=gdc_source_args(),
            request=gdc_request_args(),
        resources:
            gdc_api=1,  # the profiles cap concurrent GDC API use
        log:
            "logs/gdc_download/{cohort}_{modality}.log",
        benchmark:
            "benchmarks/gdc_download/{cohort}_{modality}.tsv"
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
            modality="|".join(GDC_MODALITIES),
        conda:
            "../../envs/gdc.yaml"
        threads: config["gdc"]["workers"]
        shell:
            "python -m imputmae gdc download {input.selected} --modality {wildcards.modality} --dest {params.dest:q} "
            "--report {output} --workers {threads} --no-progress {params.source} {params.request} > {log} 2>&1"

    rule gdc_clinical:
        input:
            gdc_source_inputs,
        output:
            clinical=f"{RESULTS}/{{cohort}}/clinical.parquet",
            qc=f"{RESULTS}/{{cohort}}/clinical_qc.tsv",
        params:
            projects=gdc_project_args,
            source=gdc_source_args(),
            request=gdc_request_args(),
            page_size=config["gdc"]["page_size"],
        resources:
            gdc_api=1,  # the profiles cap concurrent GDC API use
        log:
            "logs/gdc_clinical/{cohort}.log",
        benchmark:
            "benchmarks/gdc_clinical/{cohort}.tsv"
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
        conda:
            "../../envs/gdc.yaml"
        threads: 1
        shell:
            "python -m imputmae gdc clinical {params.projects} --out {output.clinical} --qc {output.qc} "
            "--page-size {params.page_size} {params.source} {params.request} > {log} 2>&1"

    TARGETS.extend(download_report(c, m) for c in GDC_COHORTS for m in GDC_MODALITIES)


# Table 2: every cohort, GDC projects (availability at the GDC) or own tables (their matrices and slide table).
rule table2:
    input:
        selected=expand(f"{RESULTS}/{{cohort}}/gdc/selected.parquet", cohort=GDC_COHORTS),
        clinical=expand(f"{RESULTS}/{{cohort}}/clinical.parquet", cohort=COHORTS),
        # cohorts given as tables: their matrices, and the WSI QC table of those with slides
        tables=expand(f"{RESULTS}/{{cohort}}/{{m}}.parquet", cohort=TABLE_COHORTS, m=["rna", "dnam"]),
        wsi_qc=expand(f"{RESULTS}/{{cohort}}/wsi_qc.tsv", cohort=[c for c in TABLE_COHORTS if c in WSI_COHORTS]),
    output:
        csv=f"{RESULTS}/tables/table2.csv",
        md=f"{RESULTS}/tables/table2.md",
    params:
        results=lambda w, output: str(Path(output.csv).parent.parent),
        cohorts=" ".join([f"--cohort {c}" for c in GDC_COHORTS] + [f"--table-cohort {c}" for c in TABLE_COHORTS]),
        prefix=lambda w, output: output.csv.removesuffix(".csv"),
    log:
        "logs/table2/table2.log",
    benchmark:
        "benchmarks/table2/table2.tsv"
    conda:
        "../../envs/gdc.yaml"
    threads: 1
    shell:
        "python -m imputmae table2 --results {params.results:q} {params.cohorts} --out {params.prefix:q} "
        "> {log} 2>&1"


TARGETS.extend([rules.table2.output.csv, rules.table2.output.md])
