#!/usr/bin/env python3
"""Rerun one cohort's stages and touch nothing else.

    python workflow/scripts/rerun_cohort.py UCEC --profile slurm
    python workflow/scripts/rerun_cohort.py UCEC --cores 2 --configfile config.demo.yaml
    python workflow/scripts/rerun_cohort.py UCEC --profile slurm --dry-run      # see what would run

Every option after the cohort goes to Snakemake unchanged. What "one cohort" means: its acquisition (GDC manifest,
selection, downloads and labels; or its own tables), its tiles and omics matrices, its fine-tuning runs and its Cox
baseline; the shared tables that hold a row per cohort (Table 2, Table 3 and its Kaplan-Meier figures) and the
HTML report are rebuilt.
Pretraining pools all cohorts (docs/layout.md), so the existing ``splits.parquet``, pretrained checkpoints and
Table 4 are reused as they are, like every other cohort's files: they keep their bytes and mtimes. If the cohort's
patient set changed (more downloads verified, a new GDC release), run the whole pipeline instead (plain
``snakemake``), so that splits and pretraining see the new patients.

It runs (and prints) two Snakemake calls with your options:
1. the cohort's data stages: ``snakemake <the cohort's matrices, QC tables, labels and download reports>
   --forcerun <the per-cohort data rules>``: with only this cohort's files as targets, the DAG holds only its
   jobs (acquisition, tiles, matrices), and every one of them reruns (forced by rule, not left to mtime
   propagation, which stops at checkpoints); the pooled jobs are not in this DAG. Verified downloads are kept.
2. the cohort's models and the shared tables: ``IMPUTMAE_KEEP_POOLED=1 snakemake all --forcerun <its fine-tuning
   and baseline outputs, Table 2>``: with that variable the pooled jobs (splits, pretrain, table4) take their stage
   inputs as ancient() (workflow/rules/common.smk), so the cohort's newer matrices do not make them rerun; the
   forced jobs and those downstream of them (Table 3, the report) rerun.
A later plain ``snakemake`` sees the cohort's newer matrices and reruns splits and pretraining (correct: their
inputs changed); run with IMPUTMAE_KEEP_POOLED=1 to keep the pooled outputs.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Rules whose jobs are per cohort and read only that cohort's data (and the GDC mirror or API)
DATA_RULES = {"gdc_manifest", "gdc_select", "gdc_download", "gdc_clinical", "omics_rna", "omics_dnam", "omics_qc",
              "omics_tables", "wsi_tiles", "wsi_qc", "wsi_tiles_cohort"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="%(prog)s COHORT [snakemake options]")
    ap.add_argument("cohort")
    args, smk = ap.parse_known_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from imputmae.config import cohort_modalities, cohort_modality_sets, load_config

    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("--configfile", "--configfiles", nargs="+", default=[])
    opts.add_argument("--directory", "-d", default=".")
    known, _ = opts.parse_known_args(smk)
    workdir = Path(known.directory)
    cfg = load_config([workdir / "config.yaml", *[workdir / f if not Path(f).is_absolute() else Path(f)
                                                  for f in known.configfile]])
    if args.cohort not in cfg["cohorts"]:
        print(f"rerun_cohort: no cohort {args.cohort!r} in the configuration (cohorts: "
              f"{', '.join(sorted(cfg['cohorts']))})", file=sys.stderr)
        return 2
    results = cfg["results"]
    missing = [p for p in [f"{results}/splits.parquet"] if not (workdir / p).is_file()]
    if missing:
        print(f"rerun_cohort: {missing[0]} does not exist: run the whole pipeline once first", file=sys.stderr)
        return 2

    snakemake = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    listed = subprocess.run([*snakemake, "--list-rules", *smk], capture_output=True, text=True, env=env)
    if listed.returncode:
        sys.stderr.write(listed.stderr)
        return listed.returncode
    rules = set(listed.stdout.split())
    c = f"{results}/{args.cohort}"
    data = [f"{c}/{name}" for name in ("rna.parquet", "dnam.parquet", "dnam_probes.txt", "omics_qc.tsv",
                                       "clinical.parquet")]
    if "wsi" in cohort_modalities(cfg["cohorts"][args.cohort]):
        data.append(f"{c}/wsi_qc.tsv")
    if "projects" in cfg["cohorts"][args.cohort]:
        data += [f"{c}/gdc/download_{m}.tsv" for m in ("rna", "dnam", "wsi")]
    models, folds = [], range(cfg["splits"]["n_folds"])
    if "finetune" in rules:  # the sets the cohort has (own tables without slides: no wsi run)
        models += [f"{results}/finetune/{args.cohort}/{m}/fold{f}/metrics.json"
                   for m in cohort_modality_sets(cfg, args.cohort) for f in folds]
    if "cox_baseline" in rules:
        models += [f"{results}/baselines/cox/{args.cohort}/{m}/fold{f}/metrics.json"
                   for m in cfg["finetune"]["modality_sets"] for f in folds]
    if "table2" in rules:
        models.append(f"{results}/tables/table2.csv")
    data_rules = sorted(DATA_RULES & rules)
    calls = [[*snakemake, *data, "--forcerun", *data_rules, *smk]]
    if models:
        calls.append([*snakemake, "all", "--forcerun", *models, *smk])
    # Ctrl-C (or CI's `timeout -s INT`) reaches Snakemake through the process group and it cancels its Slurm jobs;
    # this script only waits for it (a KeyboardInterrupt here would kill Snakemake before it could cancel them).
    signal.signal(signal.SIGINT, lambda *_: None)
    for i, cmd in enumerate(calls):
        keep = {"IMPUTMAE_KEEP_POOLED": "1"} if i else {}
        print("+ " + " ".join([*(f"{k}={v}" for k, v in keep.items()), *cmd]), file=sys.stderr, flush=True)
        rc = subprocess.run(cmd, env={**env, **keep}).returncode
        if rc:
            return rc
    return 0

if __name__ == "__main__":
    sys.exit(main())
