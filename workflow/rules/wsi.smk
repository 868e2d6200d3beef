# Whole-slide images: per patient, the slide with most tissue, its Otsu tissue mask and the top-K tiles by HSV
# score (imputmae wsi tiles); per cohort, the QC table (imputmae wsi qc). A slide that cannot be used gives a QC row
# (status not "ok": that patient's WSI counts as missing downstream), never a failed job.
#
# The patients and their slides come from the GDC stage (gdc.smk): selected_files(cohort, "wsi") reads the
# checkpoint gdc_select's selected.parquet (all diagnostic slides, column local_path), and download_report(cohort,
# "wsi") is the verified-download table those paths were checked in.


rule wsi_tiles:
    input:
        # the patient's slides, sorted (the command's result does not depend on their order)
        slides=lambda w: sorted(
            selected_files(w.cohort, "wsi").query("patient == @w.patient")["local_path"]
        ),
        report=lambda wildcards: download_report(wildcards.cohort, "wsi"),
    output:
        npy=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.npy",
        table=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.parquet",
        png=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.png",
        qc=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.qc.tsv",
    params:
        prefix=lambda wildcards: f"{RESULTS}/{wildcards.cohort}/wsi/{wildcards.patient}",
        settings=as_json(config["wsi"]),
    wildcard_constraints:
        patient=r"[A-Za-z0-9_-]+",
    log:
        "logs/wsi_tiles/{cohort}/{patient}.log",
    benchmark:
        "benchmarks/wsi_tiles/{cohort}/{patient}.tsv"
    conda:
        "../../envs/wsi.yaml"
    threads: config["wsi"]["threads"]
    shell:
        "{IMPUTMAE} wsi tiles {input.slides:q} --out {params.prefix:q} --patient {wildcards.patient} "
        "--settings {params.settings:q} --threads {threads} --no-progress > {log} 2>&1"


rule wsi_qc:
    input:
        # every patient of the cohort with at least one diagnostic slide selected
        lambda w: expand(
            f"{RESULTS}/{w.cohort}/wsi/{{patient}}.qc.tsv",
            patient=sorted(selected_files(w.cohort, "wsi")["patient"].unique()),
        ),
    output:
        f"{RESULTS}/{{cohort}}/wsi_qc.tsv",
    log:
        "logs/wsi_qc/{cohort}.log",
    benchmark:
        "benchmarks/wsi_qc/{cohort}.tsv"
    conda:
        "../../envs/wsi.yaml"
    shell:
        "{IMPUTMAE} wsi qc {input:q} --out {output:q} > {log} 2>&1"


TARGETS.extend(expand(f"{RESULTS}/{{cohort}}/wsi_qc.tsv", cohort=GDC_COHORTS))
