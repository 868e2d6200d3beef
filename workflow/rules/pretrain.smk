# Outer folds, multimodal MAE pretraining (and the unimodal runs of Table 4), Table 4.
#
# splits.parquet is written once and read by every later stage. One pretraining per run (multimodal, rna, dnam,
# wsi) and per fold (pretrain.per_fold; fold 0 only otherwise; Table 4's unimodal runs on the first
# pretrain.unimodal_folds of them when set), each on that fold's training patients only.
# One pooled pretraining per model size in use (cohorts.<name>.model, default model.size: config.yaml fine-tunes
# GBMLGG big, BRCA and UCEC small, as the paper does), on the cohorts fine-tuned at that size only: the cheapest
# choice (the big model never trains on BRCA and UCEC, nor the small one on GBMLGG), and a cohort's model never
# depends on the cohorts of another size. Folders: pretrain/{size}/{run}/fold{f} with several sizes,
# pretrain/{run}/fold{f} when every cohort shares one (the demo), with exactly that one size's settings.
# A pretraining killed by SIGTERM (Slurm preemption, time limit) writes its checkpoint and exits 75; rerunning the
# rule resumes from it (--resume is always passed: a fresh output directory simply starts from scratch).

PRETRAIN_SIZES = model_sizes(config)
# (size, run, fold) of every pretraining: per size, the unimodal runs on the first pretrain.unimodal_folds folds
PRETRAIN_JOBS = pretrain_jobs(config)
PRETRAIN_RUNS = list(dict.fromkeys(run for _, run, _ in PRETRAIN_JOBS))
PRETRAIN_DIR = pretrain_dir(config, size="{size}", run="{run}", fold="{fold}")


def pretrain_outputs(key):
    """The ``key`` output (checkpoint, metrics, plot) of every pretraining."""
    return [getattr(rules.pretrain.output, key).format(size=size, run=run, fold=fold)
            for size, run, fold in PRETRAIN_JOBS]


def pretrain_size(wildcards):
    """The model size of a pretraining job: its {size} wildcard, or the one size in use."""
    return wildcards.size if len(PRETRAIN_SIZES) > 1 else PRETRAIN_SIZES[0]


def pretrain_stage_config(wildcards):
    """The pretraining's settings (imputmae.config.pretrain_config: that size's cohorts and model.size), the
    sections it reads as one JSON argument; with one size in use exactly stage_config's."""
    sub = pretrain_config(config, pretrain_size(wildcards))
    return as_json({s: sub[s] for s in ("results", "cohorts", "splits", "omics", "wsi", "model", "pretrain")})


def pretrain_mem_mb(wildcards, input, attempt):
    """Slurm's mem_mb of a pretraining job: its size's model and loader, its cohorts' omics (common.smk)."""
    sub = pretrain_config(config, pretrain_size(wildcards))
    return to_mem_mb(pretrain_memory(sub, _omics_inputs(input), gpu=_TRAIN_ON_GPU), attempt)


# Every cohort's labels, omics matrices and, for the cohorts with slides, WSI QC table (it lists the tile files).
# (pooled_input: ancient() while workflow/scripts/rerun_cohort.py rebuilds one cohort, so these jobs are kept)
def stage_tables(cohorts):
    return {
        "clinical": pooled_input(expand(f"{RESULTS}/{{cohort}}/clinical.parquet", cohort=cohorts)),
        **{key: pooled_input([modality_tables(c)[key] for c in cohorts if key in modality_tables(c)])
           for key in dict.fromkeys(k for c in cohorts for k in modality_tables(c))},
    }


STAGE_TABLES = stage_tables(COHORTS)


def pretrain_stage_tables(wildcards):
    """The stage tables of the cohorts a pretraining pools (its size's)."""
    return stage_tables(size_cohorts(config, pretrain_size(wildcards)))


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
        unpack(pretrain_stage_tables),
        splits=f"{RESULTS}/splits.parquet",
    output:
        checkpoint=f"{RESULTS}/{PRETRAIN_DIR}/checkpoint.pt",
        metrics=f"{RESULTS}/{PRETRAIN_DIR}/metrics.csv",
        plot=f"{RESULTS}/{PRETRAIN_DIR}/loss.png",
    params:
        cfg=pretrain_stage_config,
        out_dir=subpath(output.checkpoint, parent=True),
        launch=train_launcher,  # torchrun over the job's GPUs when it holds more than one
    wildcard_constraints:
        run="|".join(["multimodal", *MODALITIES]),
        size="|".join(PRETRAIN_SIZES),
    log:
        f"logs/{PRETRAIN_DIR}.log",
    benchmark:
        f"benchmarks/{PRETRAIN_DIR}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1 if config.get("demo") else 8  # tiny demo models: two 1-thread jobs beat one 2-thread job
    resources:
        gpu=0 if config.get("demo") else 1,
        # host memory from the data the job holds and its model (docs/scaling.md, "Memory per job"), growing by
        # half per attempt (a retry after an out-of-memory kill; a preempted job resumes)
        mem_mb=pretrain_mem_mb,
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
