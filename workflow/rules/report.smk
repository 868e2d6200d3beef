# The HTML report: one self-contained file, {R}/report.html, with Tables 2-4, the Kaplan-Meier figures, the
# pretraining loss curves and each cohort's quality control (imputmae report; imputmae.htmlreport).
#
# Its inputs are every file it shows, so that it is rebuilt whenever one of them is; the per-patient tile/QC
# pictures are written by the same jobs as the QC rows that wsi_qc.tsv gathers, so wsi_qc.tsv stands for them.
# The header names the configuration files (and hashes their content) in the order they were merged: the
# Snakefile's `configfile:` first, then those given with --configfile.
REPORT_CONFIGS = [f for f in workflow.configfiles if f not in workflow.config_settings.configfiles] + list(
    workflow.config_settings.configfiles
)


rule report:
    input:
        table2=[rules.table2.output.csv, rules.table2.output.md],
        table3=[rules.table3.output.csv, rules.table3.output.md],
        table4=[rules.table4.output.csv, rules.table4.output.md, rules.table4.output.imputation],
        km=rules.table3.output.km,
        loss=pretrain_outputs("plot"),
        wsi_qc=expand(f"{RESULTS}/{{cohort}}/wsi_qc.tsv", cohort=WSI_COHORTS),
        clinical_qc=expand(f"{RESULTS}/{{cohort}}/clinical_qc.tsv", cohort=COHORTS),
        omics_qc=expand(f"{RESULTS}/{{cohort}}/omics_qc.tsv", cohort=COHORTS),
        configs=REPORT_CONFIGS,
    output:
        html=f"{RESULTS}/report.html",
    params:
        results=lambda wildcards, output: str(Path(output.html).parent),
        cohorts=" ".join(COHORTS),
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    conda:
        "../../envs/wsi.yaml"
    threads: 1
    shell:
        "python -m imputmae report --results {params.results:q} --out {output.html:q} --cohorts {params.cohorts} "
        "--config {input.configs:q} > {log} 2>&1"


TARGETS.append(rules.report.output.html)
