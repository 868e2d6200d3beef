# Outer folds, multimodal MAE pretraining (and the unimodal runs of Table 4), Table 4.
#
# splits.parquet is written once and read by every later stage. One pretraining per run (multimodal, rna, dnam,
# wsi) and per fold (pretrain.per_fold; fold 0 only otherwise; Table 4's unimodal runs on the first
# pretrain.unimodal_folds of them when set), each on that fold's training patients only.
# A pretraining killed by SIGTERM (Slurm preemption, time limit) writes its checkpoint and exits 75; rerunning the
# rule resumes from it (--resume is always passed: a fresh output directory simply starts from scratch).

PRETRAIN_RUNS = ["multimodal"] + list(config["pretrain"]["unimodal"])
# (run, fold) of every pretraining: the unimodal runs on the first pretrain.unimodal_folds folds when that is set
PRETRAIN_JOBS = [(run, fold) for run in PRETRAIN_RUNS for fold in pretrain_folds(config, run)]


def pretrain_outputs(key):
    """The ``key`` output (checkpoint, metrics, plot) of every pretraining."""
    return [getattr(rules.pretrain.output, key).format(run=run, fold=fold) for run, fold in PRETRAIN_JOBS]


# Every cohort's labels, omics matrices and, for the cohorts with slides, WSI QC table (it lists the tile files).
# (pooled_input: ancient() while workflow/scripts/rerun_cohort.py rebuilds one cohort, so these jobs are kept)
STAGE_TABLES = {
    "clinical": pooled_input(expand(f"{RESULTS}/{{cohort}}/clinical.parquet", cohort=COHORTS)),
    **{key: pooled_input([modality_tables(c)[key] for c in COHORTS if key in modality_tables(c)])
       for key in dict.fromkeys(k for c in COHORTS for k in modality_tables(c))},
}


rule splits:
    input:
        **STAGE_TABLES,
    output:
        f"{RESULTS}/splits.parquet",
    params:
        cfg=stage_config("results", "cohorts", "splits"),
    log:
        "logs/splits/splits.log",
    benchmark:
        "benchmarks/splits/splits.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m imputmae splits --config-json {params.cfg:q} --out {output:q} > {log} 2>&1"


rule pretrain:
    input:
        splits=f"{RESULTS}/splits.parquet",
        **STAGE_TABLES,
    output:
        checkpoint=f"{RESULTS}/pretrain/{{run}}/fold{{fold}}/checkpoint.pt",
        metrics=f"{RESULTS}/pretrain/{{run}}/fold{{fold}}/metrics.csv",
        plot=f"{RESULTS}/pretrain/{{run}}/fold{{fold}}/loss.png",
    params:
        cfg=stage_config("results", "cohorts", "splits", "omics", "wsi", "model", "pretrain"),
        out_dir=subpath(output.checkpoint, parent=True),
        launch=train_launcher,  # torchrun over the job's GPUs when it holds more than one
    wildcard_constraints:
        run="|".join(["multimodal", *MODALITIES]),
    log:
        "logs/pretrain/{run}/fold{fold}.log",
    benchmark:
        "benchmarks/pretrain/{run}/fold{fold}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1 if config.get("demo") else 8  # tiny demo models: two 1-thread jobs beat one 2-thread job
    resources:
        gpu=0 if config.get("demo") else 1,
        # host memory grows by half per attempt (a retry after an out-of-memory kill; a preempted job resumes)
        mem_mb=lambda wildcards, attempt: (4000 if config.get("demo") else 64000) * (1 + attempt) // 2,
        runtime=30 if config.get("demo") else 2880,
    shell:
        "{params.launch} pretrain --config-json {params.cfg:q} --run {wildcards.run} --fold {wildcards.fold} "
        "--out-dir {params.out_dir:q} --resume --threads {threads} --no-progress > {log} 2>&1"


rule table4:
    input:
        splits=f"{RESULTS}/splits.parquet",
        checkpoints=pretrain_outputs("checkpoint"),
    output:
        csv=f"{RESULTS}/tables/table4.csv",
        md=f"{RESULTS}/tables/table4.md",
        folds=f"{RESULTS}/tables/table4_folds.csv",
        imputation=f"{RESULTS}/tables/table4_imputation.csv",
    params:
        cfg=stage_config("results", "cohorts", "splits", "omics", "wsi", "model", "pretrain"),
        out_dir=subpath(output.csv, parent=True),
    log:
        "logs/table4/table4.log",
    benchmark:
        "benchmarks/table4/table4.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    shell:
        "python -m imputmae table4 --config-json {params.cfg:q} --out-dir {params.out_dir:q} --threads {threads} > {log} 2>&1"


TARGETS.append(rules.table4.output.csv)
TARGETS.append(rules.table4.output.md)
