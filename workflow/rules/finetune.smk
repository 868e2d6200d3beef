# Survival fine-tuning (one job per cohort x modality set x outer fold, or with finetune.one_job_per_fold one job per
# cohort x fold training its sets in turn: the same files), the Cox-PCA reference, Table 3 and the Kaplan-Meier
# figures.
#
# Each fine-tuning loads the multimodal pretraining of ITS fold (trained on that fold's training patients only);
# with pretrain.per_fold: false every fold reuses fold 0's pretraining, which has seen the other folds' test
# patients' inputs (no labels): the log says so.

FINETUNE_MODSETS = list(config["finetune"]["modality_sets"])
FINETUNE_FOLDS = list(range(config["splits"]["n_folds"]))
# (cohort, modality set) pairs fine-tuned: a cohort given as tables without a modality has no run for it (Table 3
# says so); the Cox-PCA reference writes a metrics.json saying "no patient has it" for such a set.
FINETUNE_RUNS = [(c, s) for c in COHORTS for s in cohort_modality_sets(config, c)]
NOT_FINETUNED = [(c, s) for c in COHORTS for s in FINETUNE_MODSETS if (c, s) not in FINETUNE_RUNS]
# finetune.one_job_per_fold (the demo): rule finetune_fold trains every set of a cohort x fold in one process (one
# interpreter, checkpoint and input load, one frozen-feature pass; each set's files are those of its own job:
# src/imputmae/finetune/grouped.py). A cohort lacking a modality (own tables without it) keeps one job per set.
FINETUNE_GROUPED = bool(config["finetune"].get("one_job_per_fold", False))
FINETUNE_FOLD_COHORTS = [c for c in COHORTS if FINETUNE_GROUPED and cohort_modality_sets(config, c) == FINETUNE_MODSETS]
FINETUNE_SET_COHORTS = [c for c in COHORTS if c not in FINETUNE_FOLD_COHORTS]
NO_MATCH = "(?!)"   # a wildcard constraint no value matches (a rule with no job)
FINETUNE_OUT = f"{RESULTS}/finetune/{{cohort}}/{{modset}}/fold{{fold}}"
# Table 3's rerun rows (baselines, ablations; src/imputmae/baselines/rows.py): one job per cohort x fold trains them
# all, sharing the imputed inputs and tile features (baselines.one_job_per_fold: true), or one job per row (false).
BASELINE_ROWS = list(config["baselines"]["rows"])
ROWS_GROUPED = bool(config["baselines"]["one_job_per_fold"])
ROW_METRICS = f"{RESULTS}/baselines/rows/{{cohort}}/fold{{fold}}/{{row}}/metrics.json"


rule finetune:
    input:
        unpack(cohort_stage_outputs),
        checkpoint=finetune_checkpoint,
    output:
        predictions=f"{FINETUNE_OUT}/predictions.parquet",
        metrics=f"{FINETUNE_OUT}/metrics.json",
        model=f"{FINETUNE_OUT}/model.pt",
    params:
        results=lambda wildcards, output: str(Path(output.metrics).parents[4]),
        finetune=as_json(config["finetune"]),
        cindex=config["evaluation"]["cindex"],
        out_dir=lambda wildcards, output: str(Path(output.metrics).parent),
    wildcard_constraints:
        modset="|".join(MODALITY_SETS),
        cohort="|".join(FINETUNE_SET_COHORTS) or NO_MATCH,
    log:
        "logs/finetune/{cohort}/{modset}/fold{fold}.log",
    benchmark:
        "benchmarks/finetune/{cohort}/{modset}/fold{fold}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1 if config.get("demo") else 8
    resources:
        gpu=0 if config.get("demo") else 1,
        # host memory from the model, the batch and K tiles (common.smk), growing by half per attempt
        mem_mb=finetune_mem_mb,
        runtime=10 if config.get("demo") else 600,
    shell:
        # exec: Slurm's SIGTERM reaches the trainer itself; one process (fine-tuning is not DDP: one GPU per job)
        "exec python -m imputmae finetune --checkpoint {input.checkpoint:q} --results {params.results:q} --cohort {wildcards.cohort} "
        "--modset {wildcards.modset} --fold {wildcards.fold} --params {params.finetune:q} "
        "--cindex {params.cindex} --out {params.out_dir:q} --threads {threads} > {log} 2>&1"


rule finetune_fold:
    input:
        unpack(cohort_stage_outputs),
        checkpoint=finetune_checkpoint,
    output:
        predictions=[FINETUNE_OUT.replace("{modset}", s) + "/predictions.parquet" for s in FINETUNE_MODSETS],
        metrics=[FINETUNE_OUT.replace("{modset}", s) + "/metrics.json" for s in FINETUNE_MODSETS],
        model=[FINETUNE_OUT.replace("{modset}", s) + "/model.pt" for s in FINETUNE_MODSETS],
    params:
        results=lambda wildcards, output: str(Path(output.metrics[0]).parents[4]),
        finetune=as_json(config["finetune"]),
        cindex=config["evaluation"]["cindex"],
        modsets=" ".join(FINETUNE_MODSETS),
        out_pattern=lambda wildcards: FINETUNE_OUT.format(cohort=wildcards.cohort, fold=wildcards.fold,
                                                          modset="{modset}"),
    wildcard_constraints:
        cohort="|".join(FINETUNE_FOLD_COHORTS) or NO_MATCH,
    log:
        "logs/finetune/{cohort}/fold{fold}.log",
    benchmark:
        "benchmarks/finetune_fold/{cohort}/fold{fold}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1 if config.get("demo") else 8
    resources:
        gpu=0 if config.get("demo") else 1,
        mem_mb=finetune_mem_mb,   # one modality set's (they run one after another): common.smk
        runtime=(10 if config.get("demo") else 600) * len(FINETUNE_MODSETS),
    shell:
        "exec python -m imputmae finetune --checkpoint {input.checkpoint:q} --results {params.results:q} --cohort {wildcards.cohort} "
        "--modset {params.modsets} --fold {wildcards.fold} --params {params.finetune:q} "
        "--cindex {params.cindex} --out {params.out_pattern:q} --threads {threads} > {log} 2>&1"


rule cox_baseline:
    input:
        unpack(cohort_stage_outputs),
    output:
        metrics=expand(f"{RESULTS}/baselines/cox/{{{{cohort}}}}/{{modset}}/fold{{fold}}/metrics.json",
                       modset=FINETUNE_MODSETS, fold=FINETUNE_FOLDS),
    params:
        results=lambda wildcards, output: str(Path(output.metrics[0]).parents[5]),
        cox=lambda wildcards: as_json({"n_components": config["evaluation"]["cox_components"],
                                       "penalizer": config["evaluation"]["cox_penalizer"],
                                       "n_bins": config["finetune"]["n_bins"],
                                       "cut_scheme": config["finetune"]["cut_scheme"],
                                       "seed": config["finetune"]["seed"]}),
        modsets=" ".join(FINETUNE_MODSETS),
        out_dir=lambda wildcards: f"{RESULTS}/baselines/cox/{wildcards.cohort}",
    log:
        "logs/cox_baseline/{cohort}.log",
    benchmark:
        "benchmarks/cox_baseline/{cohort}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    shell:
        "python -m imputmae cox-baseline --results {params.results:q} --cohort {wildcards.cohort} --modsets {params.modsets} "
        "--params {params.cox:q} --out {params.out_dir:q} > {log} 2>&1"


rule table3_rows:
    input:
        unpack(cohort_stage_outputs),
        checkpoint=finetune_checkpoint,
    output:
        metrics=([ROW_METRICS.replace("{row}", r) for r in BASELINE_ROWS] if ROWS_GROUPED else [ROW_METRICS]),
    params:
        results=lambda wildcards, output: str(Path(output.metrics[0]).parents[5]),
        rows=lambda wildcards: wildcards.row if hasattr(wildcards, "row") else " ".join(BASELINE_ROWS),
        params=as_json({"finetune": config["finetune"], "baselines": config["baselines"]["settings"],
                        "cox": {"n_components": config["evaluation"]["cox_components"],
                                "penalizer": config["evaluation"]["cox_penalizer"],
                                "n_bins": config["finetune"]["n_bins"],
                                "cut_scheme": config["finetune"]["cut_scheme"], "seed": config["finetune"]["seed"]}}),
        cindex=config["evaluation"]["cindex"],
        out_dir=lambda wildcards, output: str(Path(output.metrics[0]).parents[1]),
    wildcard_constraints:
        fold=r"\d+",
        row="|".join(BASELINE_ROWS) if BASELINE_ROWS else "none",
    log:
        "logs/table3_rows/{cohort}/fold{fold}.log" if ROWS_GROUPED else "logs/table3_rows/{cohort}/fold{fold}/{row}.log",
    benchmark:
        ("benchmarks/table3_rows/{cohort}/fold{fold}.tsv" if ROWS_GROUPED
         else "benchmarks/table3_rows/{cohort}/fold{fold}/{row}.tsv")
    conda:
        "../../envs/torch.yaml"
    threads: 1 if config.get("demo") else 8
    resources:
        gpu=0 if config.get("demo") else 1,
        mem_mb=rows_mem_mb,   # the model, the batch, K tiles and the cohort's patients (common.smk)
        runtime=20 if config.get("demo") else 600,
    shell:
        "exec python -m imputmae table3-rows --checkpoint {input.checkpoint:q} --results {params.results:q} "
        "--cohort {wildcards.cohort} --fold {wildcards.fold} --rows {params.rows} --params {params.params:q} "
        "--cindex {params.cindex} --out {params.out_dir:q} --threads {threads} > {log} 2>&1"


rule table3:
    input:
        finetune=[f"{RESULTS}/finetune/{c}/{s}/fold{f}/metrics.json" for c, s in FINETUNE_RUNS for f in FINETUNE_FOLDS],
        cox=expand(f"{RESULTS}/baselines/cox/{{cohort}}/{{modset}}/fold{{fold}}/metrics.json", cohort=COHORTS,
                   modset=FINETUNE_MODSETS, fold=FINETUNE_FOLDS),
        rows=expand(ROW_METRICS, cohort=COHORTS, fold=FINETUNE_FOLDS, row=BASELINE_ROWS),
        oracle=[f"{config['demo']['out']}/oracle.parquet"] if config.get("demo") else [],
    output:
        csv=f"{RESULTS}/tables/table3.csv",
        md=f"{RESULTS}/tables/table3.md",
        tex=f"{RESULTS}/tables/table3.tex",
        km=expand(f"{RESULTS}/figures/km_{{cohort}}.png", cohort=COHORTS),
    params:
        results=lambda wildcards, output: str(Path(output.csv).parent.parent),
        cohorts=" ".join(COHORTS),
        modsets=" ".join(FINETUNE_MODSETS),
        folds=config["splits"]["n_folds"],
        cindex=config["evaluation"]["cindex"],
        rows=" ".join(BASELINE_ROWS) or "none",
        n_boot=config["baselines"]["n_boot"],
        km_modset="all" if "all" in FINETUNE_MODSETS else FINETUNE_MODSETS[0],
        # the demo: the oracle row; the paper's rows (TCGA) are quoted only beside real TCGA results
        extra=(f"--oracle {config['demo']['out']}/oracle.parquet --no-literature" if config.get("demo")
               else "" if GDC_COHORTS else "--no-literature")
        + "".join(f" --not-applicable {c}:{s}" for c, s in NOT_FINETUNED) + deviation_args(),
    log:
        "logs/table3/table3.log",
    benchmark:
        "benchmarks/table3/table3.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    shell:
        "python -m imputmae table3 --results {params.results:q} --cohorts {params.cohorts} --modsets {params.modsets} "
        "--folds {params.folds} --cindex {params.cindex} --rows {params.rows} --n-boot {params.n_boot} --km-modset {params.km_modset} {params.extra} > {log} 2>&1"


TARGETS.append(rules.table3.output.csv)
TARGETS.append(rules.table3.output.md)
TARGETS.append(rules.table3.output.tex)
TARGETS.extend(rules.table3.output.km)
