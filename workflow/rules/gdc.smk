# GDC acquisition: manifest (checkpoint) -> per-patient selection (checkpoint) -> verified downloads -> clinical
# labels -> Table 2. Only cohorts given as GDC projects (GDC_COHORTS) have these rules; cohorts given as tables
# bring their own matrices and labels.
#
# Other rule files use the two helpers below:
#   selected_files(cohort, modality) -> DataFrame of the selected rows (patient, file_id, local_path, ...)
#   download_report(cohort, modality) -> path of the download report (an input that makes the files exist;
#                                         rows with status "failed" count as missing)
import shlex

import pandas as pd

GDC_MODALITIES = ["rna", "dnam", "wsi"]


def gdc_request_args():
    """Retries, timeout and token of every GDC request (the token file's path only; its content is never shown)."""
    g = config["gdc"]
    args = f"--retries {g['retries']} --timeout {g['timeout_s']}"
    if g["token_file"]:
        args += f" --token-file {shlex.quote(g['token_file'])}"
    return args


def gdc_source_inputs(wildcards):
    """The demo mirror must exist before anything reads it."""
    return [rules.demo_data.output.files, rules.demo_data.output.cases] if config.get("demo") else []


def gdc_project_args(wildcards):
    return " ".join(f"--project {shlex.quote(p)}" for p in config["cohorts"][wildcards.cohort]["projects"])


def selected_files(cohort, modality):
    """The selected rows of ``cohort`` for ``modality`` (rna, dnam, wsi), read after the gdc_select checkpoint."""
    path = checkpoints.gdc_select.get(cohort=cohort).output[0]
    df = pd.read_parquet(path)
    return df[df["modality"] == modality].reset_index(drop=True)


def download_report(cohort, modality):
    """Path of the download report of ``cohort``/``modality`` (one row per selected file, with its status)."""
    return f"{RESULTS}/{cohort}/gdc/download_{modality}.tsv"


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
            "{IMPUTMAE} gdc manifest {params.projects} --out {output} --page-size {params.page_size} "
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
            "{IMPUTMAE} gdc select {input} --out {output} --download-dir {params.download_dir:q} "
            "{params.sample_types} > {log} 2>&1"

    rule gdc_download:
        input:
            selected=f"{RESULTS}/{{cohort}}/gdc/selected.parquet",
            source=gdc_source_inputs,
        output:
            f"{RESULTS}/{{cohort}}/gdc/download_{{modality}}.tsv",
        params:
            dest=config["gdc"]["download_dir"],
            source=gdc_source_args(),
            request=gdc_request_args(),
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
            "{IMPUTMAE} gdc download {input.selected} --modality {wildcards.modality} --dest {params.dest:q} "
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
            "{IMPUTMAE} gdc clinical {params.projects} --out {output.clinical} --qc {output.qc} "
            "--page-size {params.page_size} {params.source} {params.request} > {log} 2>&1"

    rule table2:
        input:
            selected=expand(f"{RESULTS}/{{cohort}}/gdc/selected.parquet", cohort=GDC_COHORTS),
            clinical=expand(f"{RESULTS}/{{cohort}}/clinical.parquet", cohort=GDC_COHORTS),
            downloads=expand(download_report("{cohort}", "{modality}"), cohort=GDC_COHORTS, modality=GDC_MODALITIES),
        output:
            csv=f"{RESULTS}/tables/table2.csv",
            md=f"{RESULTS}/tables/table2.md",
        params:
            results=lambda w, output: str(Path(output.csv).parent.parent),
            cohorts=" ".join(f"--cohort {c}" for c in GDC_COHORTS),
            prefix=lambda w, output: output.csv.removesuffix(".csv"),
        log:
            "logs/table2/table2.log",
        benchmark:
            "benchmarks/table2/table2.tsv"
        conda:
            "../../envs/gdc.yaml"
        threads: 1
        shell:
            "{IMPUTMAE} tables table2 --results {params.results:q} {params.cohorts} --out {params.prefix:q} "
            "> {log} 2>&1"

    TARGETS.extend([rules.table2.output.csv, rules.table2.output.md])
