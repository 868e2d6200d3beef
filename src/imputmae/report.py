"""Table 3 (C-index on the common test patients, bootstrap CIs, paired differences) and Kaplan-Meier figures.

Reads nothing itself: the CLI (``imputmae table3``) gathers the per-fold ``metrics.json`` / ``predictions.parquet``
written by ``imputmae finetune`` and ``imputmae cox-baseline`` and passes them in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imputmae.files import atomic_write
from imputmae.choices import CIndexName
from imputmae.config import deviations_sentence
from imputmae.modalities import MODALITY_SETS, label
from imputmae.survival import concordance_harrell
from imputmae.tables import latex_lines, markdown_lines, write_texts
from imputmae.uncertainty import FoldPredictions, bootstrap_cindex, fold_predictions, paired_bootstrap

__all__ = ["LITERATURE_TABLE3", "MODEL_NAMES", "Table3Entry", "reference_patients", "table3_cells", "table3",
           "published_table3", "build_table3", "table3_markdown", "table3_latex", "write_table3", "oracle_cindex",
           "km_split", "plot_km"]

# Table 3 of the paper (TCGA, C-index mean +- std), quoted as printed, not rerun: (model, modality) -> cohort -> text.
LITERATURE_TABLE3: dict[tuple[str, str], dict[str, str]] = {
    ("MoME", "all"): {"BRCA": "0.604 ± 0.066", "UCEC": "0.640 ± 0.058", "GBMLGG": "0.846 ± 0.020"},
    ("CMTA", "all"): {"BRCA": "0.478 ± 0.07", "UCEC": "0.539 ± 0.045", "GBMLGG": "0.829 ± 0.011"},
    ("MultiSurv", "all"): {"BRCA": "0.498 ± 0.057", "UCEC": "0.579 ± 0.111", "GBMLGG": "0.781 ± 0.107"},
    ("impuTMAE", "rna"): {"BRCA": "0.610 ± 0.044", "UCEC": "0.620 ± 0.030", "GBMLGG": "0.863 ± 0.009"},
    ("impuTMAE", "dnam"): {"BRCA": "0.512 ± 0.036", "UCEC": "0.496 ± 0.009", "GBMLGG": "0.839 ± 0.016"},
    ("impuTMAE", "wsi"): {"BRCA": "0.499 ± 0.043", "UCEC": "0.5 ± 0.04", "GBMLGG": "0.636 ± 0.02"},
    ("impuTMAE", "all"): {"BRCA": "0.592 ± 0.04", "UCEC": "0.75 ± 0.032", "GBMLGG": "0.870 ± 0.003"},
}
MODEL_NAMES = {"impuTMAE": "impuTMAE (ours)", "cox_pca": "Cox-PCA (ours)"}
MODSET_NAMES = {m: label(m) for m in MODALITY_SETS}
CINDEX_NAMES = {"antolini": "Antolini's time-dependent C-index", "adj_antolini":
                "Antolini's time-dependent C-index, tie-adjusted (pycox adj_antolini)",
                "harrell": "Harrell's C-index"}


@dataclass
class Table3Entry:
    """One Table 3 row's folds: ``key`` (model id), ``modset``, ``missing`` (how missing modalities reach the model)
    and, per cohort, its folds' test predictions (:class:`imputmae.uncertainty.FoldPredictions`) and metrics."""

    key: str
    label: str
    modset: str
    missing: str
    folds: dict[str, list[FoldPredictions]]
    metrics: dict[str, list[dict]]


REFERENCE = ("impuTMAE", "all")


def reference_patients(predictions: pd.DataFrame) -> list[str]:
    """A fold's common test set, the paper's: every test patient with RNA-seq and a label, read from impuTMAE
    "all"'s predictions (test rows whose RNA was not imputed; all test rows when the table has no such column)."""
    test = predictions[predictions["split"] == "test"]
    if "imputed_rna" in test:
        test = test[~test["imputed_rna"].astype(bool)]
    return test["patient"].astype(str).tolist()


def _restrict(f: FoldPredictions, keep: set[str]) -> FoldPredictions:
    return f.take(np.array([i for i, p in enumerate(f.patients) if p in keep], dtype=np.int64))


def table3_cells(entries: Sequence[Table3Entry], reference: Mapping[str, Sequence[set[str]]], cohorts: Sequence[str],
                 cindex: CIndexName = "antolini", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (entry, cohort): the mean-over-folds test C-index on the fold's common test patients
    (``reference[cohort][fold]``), its fold-stratified percentile bootstrap CI (:func:`bootstrap_cindex`), n (test
    patients scored, all folds), n_reference, the paired bootstrap against impuTMAE "all" on the same patients
    (:func:`paired_bootstrap`: difference, lower, upper, p), parameters, CPU seconds per fold and device."""
    ref = {c: next((e.folds.get(c) for e in entries if (e.key, e.modset) == REFERENCE), None) for c in cohorts}
    rows = []
    for e in entries:
        for c in cohorts:
            folds = e.folds.get(c)
            if not folds or len(folds) != len(reference[c]):
                continue
            mine = [_restrict(f, reference[c][k]) for k, f in enumerate(folds)]
            row = {"key": e.key, "model": e.label, "modality": MODSET_NAMES.get(e.modset, e.modset),
                   "missing": e.missing, "cohort": c, "n_reference": int(sum(len(r) for r in reference[c]))}
            if any(len(f.patients) < 2 for f in mine):
                rows.append({**row, "n": int(sum(len(f.patients) for f in mine))})
                continue
            b = bootstrap_cindex(mine, n_boot=n_boot, method=cindex, seed=seed)
            row.update(estimate=b["estimate"], lower=b["lower"], upper=b["upper"], n=b["n"], n_folds=b["n_folds"])
            if ref[c] is not None and (e.key, e.modset) != REFERENCE:
                theirs = [_restrict(f, reference[c][k]) for k, f in enumerate(ref[c])]
                d = paired_bootstrap(mine, theirs, n_boot=n_boot, method=cindex, seed=seed)
                row.update(difference=d["difference"], diff_lower=d["lower"], diff_upper=d["upper"], p=d["p"],
                           n_paired=d["n"])
            ms = e.metrics.get(c, [])
            params = [m.get("n_parameters") for m in ms if m.get("n_parameters") is not None]
            secs = [m["cpu_seconds"] if "cpu_seconds" in m else m.get("seconds_cache", 0) + m.get("seconds_train", 0)
                    for m in ms if "cpu_seconds" in m or "seconds_train" in m]
            row.update(parameters=int(np.median(params)) if params else None,
                       seconds_per_fold=float(np.mean(secs)) if secs else None,
                       device=", ".join(sorted({str(m.get("device", "cpu")) for m in ms})) or "cpu")
            rows.append(row)
    return pd.DataFrame(rows)


def table3(cells: pd.DataFrame, cohorts: Sequence[str], oracle: pd.DataFrame | None = None) -> pd.DataFrame:
    """The display table: one row per model; per cohort "C [95% CI] (n)" and "vs impuTMAE all: difference [CI],
    p"; parameters, seconds per fold, device. ``oracle`` (cohort, fold, cindex, n) adds the demo's true-risk row."""
    out = []
    for key, g in cells.groupby(["key", "modality", "missing"], sort=False):
        first = g.iloc[0]
        row = {"model": first["model"], "modality": first["modality"], "missing": first["missing"],
               "source": "this run"}
        for c in cohorts:
            r = g[g["cohort"] == c]
            r = r.iloc[0] if len(r) else None
            ok = r is not None and np.isfinite(r.get("estimate", np.nan))
            row[c] = (f"{r['estimate']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}] (n={int(r['n'])})" if ok
                      else "" if r is None else f"not scored (n={int(r['n'])})")
            row[f"{c} vs all"] = (f"{r['difference']:+.3f} [{r['diff_lower']:+.3f}, {r['diff_upper']:+.3f}] "
                                  f"p={r['p']:.2g}" if ok and np.isfinite(r.get("difference", np.nan)) else "")
        params = g["parameters"].dropna() if "parameters" in g else pd.Series(dtype=float)
        secs = g["seconds_per_fold"].dropna() if "seconds_per_fold" in g else pd.Series(dtype=float)
        row["parameters"] = f"{int(params.median()):,}" if len(params) else ""
        row["CPU s / fold"] = f"{secs.mean():.1f}" if len(secs) else ""
        row["device"] = ", ".join(sorted(set(g["device"].dropna()))) if "device" in g else ""
        out.append(row)
    if oracle is not None and len(oracle):
        row = {"model": "oracle (true risk)", "modality": "-", "missing": "-", "source": "demo oracle.parquet, Harrell"}
        for c in cohorts:
            v = oracle.loc[oracle["cohort"] == c, "cindex"].dropna().to_numpy(float)
            row[c] = f"{v.mean():.3f} (mean of {v.size} folds)" if v.size else ""
            row[f"{c} vs all"] = ""
        out.append({**row, "parameters": "", "CPU s / fold": "", "device": ""})
    cols = ["model", "modality", "missing", "source", *[x for c in cohorts for x in (c, f"{c} vs all")],
            "parameters", "CPU s / fold", "device"]
    return pd.DataFrame(out, columns=cols)


def published_table3(cohorts: Sequence[str]) -> pd.DataFrame:
    """The paper's Table 3 rows (TCGA, C-index mean ± std), quoted as printed and not rerun: a separate block."""
    rows = [{"model": model, "modality": MODSET_NAMES[modset], "source": "paper (TCGA, quoted, not rerun)",
             **{c: cells.get(c, "") for c in cohorts}} for (model, modset), cells in LITERATURE_TABLE3.items()]
    return pd.DataFrame(rows, columns=["model", "modality", "source", *cohorts])


def _caption(cindex: str, n_boot: int = 1000, deviations: Sequence[tuple[str, Any]] = ()) -> str:
    """Table 3's caption; ``deviations``: the (config key, value) of each deviation from the paper's text in force
    (:func:`imputmae.config.deviations_in_force`), named at its end (:func:`imputmae.config.deviations_sentence`)."""
    dev = deviations_sentence(deviations)
    return (f"Table 3: {CINDEX_NAMES[cindex]} on the held-out test patients of the outer folds: the mean over folds "
            f"of each fold's C-index on the fold's common test set (every test patient with RNA-seq and a label), "
            f"its 95% CI (percentile bootstrap over test patients resampled within each fold, {n_boot} replicates) "
            f"and n, the test patients scored over all folds. 'vs all': the paired bootstrap of the difference to "
            f"impuTMAE (all) on the same patients (difference [95% CI], two-sided p)." + (f" {dev}" if dev else ""))


def table3_markdown(table: pd.DataFrame, cindex: str, notes: Sequence[str] = (),
                    published: pd.DataFrame | None = None, n_boot: int = 1000,
                    deviations: Sequence[tuple[str, Any]] = ()) -> str:
    """GitHub markdown: caption, the table, note lines, then the "as published" block when given."""
    lines = [_caption(cindex, n_boot, deviations), "", *markdown_lines(table, rule="compact", cell=str), ""]
    lines += [f"- {n}" for n in notes]
    if published is not None and len(published):
        lines += ["", "As published (the impuTMAE paper's Table 3 on TCGA, C-index mean ± std over folds; quoted, "
                  "not rerun, another protocol and other patients):", "",
                  *markdown_lines(published, rule="compact", cell=str)]
    return "\n".join(lines) + "\n"


def _latex_cell(text: str) -> str:
    return text.replace("±", r"$\pm$").replace("_", r"\_").replace("%", r"\%")


def table3_latex(table: pd.DataFrame, cindex: str, n_boot: int = 1000,
                 deviations: Sequence[tuple[str, Any]] = ()) -> str:
    """A booktabs tabular with the caption as a comment line."""
    colspec = "l" * 4 + "c" * (len(table.columns) - 4)
    lines = [f"% {_caption(cindex, n_boot, deviations)}", *latex_lines(table, colspec=colspec, escape=_latex_cell, cell=str)]
    return "\n".join(lines) + "\n"


def write_table3(out_dir: str | Path, table: pd.DataFrame, cells: pd.DataFrame, metrics: pd.DataFrame, cindex: str,
                 notes: Sequence[str] = (), published: pd.DataFrame | None = None, n_boot: int = 1000,
                 deviations: Sequence[tuple[str, Any]] = ()) -> list[Path]:
    """``table3.{csv,md,tex}`` (:func:`imputmae.tables.write_texts`), ``table3_cells.csv`` (the numbers of every
    cell), ``table3_folds.csv`` (one row per model, cohort and fold) and, when given, ``table3_published.csv``."""
    out_dir = Path(out_dir)
    written = write_texts(out_dir / "table3", {"csv": table.to_csv(index=False),
                                               "md": table3_markdown(table, cindex, notes, published, n_boot,
                                                                     deviations),
                                               "tex": table3_latex(table, cindex, n_boot, deviations)})
    written += write_texts(out_dir / "table3_cells", {"csv": cells.to_csv(index=False)})
    written += write_texts(out_dir / "table3_folds", {"csv": metrics.to_csv(index=False)})
    if published is not None and len(published):
        written += write_texts(out_dir / "table3_published", {"csv": published.to_csv(index=False)})
    return written


def oracle_cindex(oracle: pd.DataFrame, splits: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    """Harrell's C-index of the demo's true risk on each fold's test patients: (cohort, fold, cindex, n).

    oracle: patient, risk; splits: patient, cohort, fold; clinical: patient, time, event. Harrell's and plain
    Antolini's C-index count the same pairs and agree for any risk whose survival curves do not cross.
    """
    df = splits[["patient", "cohort", "fold"]].merge(oracle[["patient", "risk"]], on="patient").merge(clinical[["patient", "time", "event"]],
                                                                          on="patient")
    rows = []
    for (cohort, fold), g in df.groupby(["cohort", "fold"]):
        rows.append({"cohort": cohort, "fold": int(fold), "n": len(g),
                     "cindex": concordance_harrell(g["time"], g["event"], g["risk"])})
    return pd.DataFrame(rows, columns=["cohort", "fold", "cindex", "n"])


def km_split(predictions: pd.DataFrame, train_median: Mapping[int, float]) -> pd.DataFrame:
    """Test patients labelled "high risk" when their risk is above their fold's TRAINING median risk.

    predictions: patient, fold, risk, time, event (test patients); train_median: fold -> median training risk.
    """
    out = predictions.copy()
    out["group"] = np.where(out["risk"].to_numpy() > out["fold"].map(train_median).to_numpy(), "high risk",
                            "low risk")
    return out


def plot_km(groups: pd.DataFrame, title: str, out_png: str | Path) -> float:
    """Kaplan-Meier curves of the two groups, the numbers at risk under them (lifelines ``add_at_risk_counts``)
    and the log-rank p value; returns p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    hi, lo = groups[groups["group"] == "high risk"], groups[groups["group"] == "low risk"]
    p = float("nan")
    if len(hi) and len(lo):
        p = float(logrank_test(hi["time"], lo["time"], hi["event"], lo["event"]).p_value)
    from lifelines.plotting import add_at_risk_counts

    fig, ax = plt.subplots(figsize=(5, 4.8), dpi=120)
    fitted = []
    for name, g, color in [("low risk", lo, "tab:blue"), ("high risk", hi, "tab:red")]:
        if len(g):
            km = KaplanMeierFitter(label=f"{name} (n={len(g)})").fit(g["time"], g["event"])
            km.plot_survival_function(ax=ax, color=color, ci_show=True)
            fitted.append(km)
    ax.set_xlabel("days")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}\nlog-rank p = {p:.2g}" if np.isfinite(p) else title, fontsize=9)
    if fitted:   # the numbers at risk under the curves, as survival papers show them
        add_at_risk_counts(*fitted, ax=ax, rows_to_show=["At risk"], fig=fig)
    fig.tight_layout()
    atomic_write(out_png, fig.savefig)
    plt.close(fig)
    return p


def _fold_entry(d: Path, clinical: pd.DataFrame) -> tuple[FoldPredictions, dict] | None:
    """A fold folder's test predictions (time and event from ``clinical`` when absent) and metrics, or None."""
    import json

    if not (d / "metrics.json").is_file() or not (d / "predictions.parquet").is_file():
        return None
    m = json.loads((d / "metrics.json").read_text())
    pred = pd.read_parquet(d / "predictions.parquet")
    cuts = pred.attrs.get("cuts_days") or m.get("cuts_days")
    if cuts is None:
        raise ValueError(f"{d / 'predictions.parquet'}: no cuts_days (rerun the step that wrote it)")
    if "time" not in pred:
        lab = clinical.loc[pred["patient"].astype(str)]
        pred = pred.assign(time=lab["time"].to_numpy(float), event=lab["event"].to_numpy(int))
    return fold_predictions(pred, np.asarray(cuts, float)), m


def build_table3(results: str | Path, cohorts: Sequence[str], modsets: Sequence[str], n_folds: int,
                 cindex: CIndexName = "antolini", rows: Sequence[str] = (), n_boot: int = 1000,
                 not_applicable: set[tuple[str, str]] = frozenset(), oracle: pd.DataFrame | None = None,
                 literature: bool = True, km_modset: str = "all", deviations: Sequence[tuple[str, Any]] = ()) -> dict:
    """Table 3 from a results folder (docs/layout.md): impuTMAE's ``finetune/{cohort}/{modset}/fold{k}``, the
    Cox-PCA reference ``baselines/cox/...`` and the rerun rows ``baselines/rows/{cohort}/fold{k}/{row}``; writes
    ``{R}/tables/table3*`` (:func:`write_table3`). Returns {table, cells, notes, km} (km: cohort -> the km_modset
    test predictions with the fold's training median risk). A missing impuTMAE fold is a FileNotFoundError."""

    from imputmae.baselines.rows import ROWS

    R = Path(results)
    specs = [("impuTMAE", s, "finetune/{c}/" + s + "/fold{k}") for s in modsets]
    specs += [("cox_pca", s, "baselines/cox/{c}/" + s + "/fold{k}") for s in modsets]
    specs += [(r, "all", "baselines/rows/{c}/fold{k}/" + r) for r in rows]
    missing_of = {"impuTMAE": "decoder-imputed", "cox_pca": "zero (the PCA mean)"}
    entries, fold_rows, km, reference = [], [], {}, {}
    clinical = {c: pd.read_parquet(R / c / "clinical.parquet").set_index("patient") for c in cohorts}
    for key, modset, pattern in specs:
        label = ROWS[key].label if key in ROWS else MODEL_NAMES.get(key, key)
        missing = (ROWS[key].missing.replace("impute", "decoder-imputed").replace("mean", "training mean")
                   if key in ROWS else missing_of[key] if modset == "all" else "patients with it")
        e = Table3Entry(key, label, modset, missing, {}, {})
        for c in cohorts:
            if (c, modset) in not_applicable:
                continue
            for k in range(n_folds):
                d = R / pattern.format(c=c, k=k)
                got = _fold_entry(d, clinical[c])
                if got is None:
                    if key == "impuTMAE":
                        raise FileNotFoundError(f"{d}/metrics.json: missing (run `imputmae finetune` for it)")
                    continue
                fp, m = got
                e.folds.setdefault(c, []).append(fp)
                e.metrics.setdefault(c, []).append(m)
                fold_rows.append({"model": key, "modset": modset, "cohort": c, "fold": k,
                                  **{x: m.get(x) for x in ("antolini", "adj_antolini", "harrell", "ibs", "n_test",
                                                           "members", "select_on")}})
                if (key, modset) == REFERENCE:
                    reference.setdefault(c, []).append(set(reference_patients(pd.read_parquet(d / "predictions.parquet"))))
                if key == "impuTMAE" and modset == km_modset:
                    pred = pd.read_parquet(d / "predictions.parquet")
                    km.setdefault(c, []).append(pred[pred["split"] == "test"].assign(median=m["train_median_risk"]))
        entries.append(e)
    for c in cohorts:
        if c not in reference:   # no impuTMAE "all" (modsets without it): every test patient of the first row
            first = next(e for e in entries if c in e.folds)
            reference[c] = [set(f.patients) for f in first.folds[c]]
    cells = table3_cells(entries, reference, cohorts, cindex, n_boot)
    table = table3(cells, cohorts, oracle)
    metrics = pd.DataFrame(fold_rows)
    ours = metrics[metrics["model"] == "impuTMAE"]
    by = " or ".join("validation NLL" if s == "nll" else f"validation {cindex} C-index"
                     for s in sorted(set(ours["select_on"].dropna())))
    members = sorted(set(ours["members"].dropna().astype(int)))
    selection = (f"Every row's epoch is selected ({by}) on a validation split of each fold's training patients"
                 if members == [1] else f"impuTMAE: {'/'.join(map(str, members))} models per fold, each selected "
                 f"({by}) on its own inner fold of the training patients, their curves averaged")
    short = cells[cells["n"] < cells["n_reference"]] if len(cells) else cells
    notes = [f"Rerun here, every row on the same outer folds with label cuts fitted on each fold's training patients: "
             f"impuTMAE per modality set; the Cox-PCA reference (zero-filled; and decoder-imputed); MultiSurv, CMTA and "
             f"MoME reimplemented (src/imputmae/baselines/) on decoder-imputed inputs (the paper's protocol), "
             f"MultiSurv also zero-filled with modality dropout; the ablations: impuTMAE from random initialisation "
             f"(no pretraining), and with missing modalities zero-filled or set to the training mean. {selection}.",
             "Same patients in every cell of a column, except where n is smaller than the common test set "
             f"(n = {', '.join(f'{c} {int(sum(len(x) for x in reference[c]))}' for c in cohorts)}): a single-modality "
             "row scores only the test patients who have that modality"
             + (f" ({', '.join(sorted(set(short['model'] + ' ' + short['modality'])))})" if len(short) else "") + ".",
             "Parameters: trainable (impuTMAE: its last encoder blocks, fusion and head; Cox-PCA: the Cox "
             "coefficients); CPU s / fold: the process CPU time of the row's imputation, frozen features and training "
             "on one fold (the baselines' shared imputed inputs counted once, in the first row that uses them), on the "
             "device named; wall seconds where a fold's metrics have no CPU time."]
    notes += [f"{c}: no {MODSET_NAMES.get(m, m)} (the cohort's tables have none), not fine-tuned."
              for c, m in sorted(not_applicable)]
    if oracle is not None:
        notes.append("oracle: Harrell's C-index of the demo generator's true risk on the same test folds (an upper "
                     "reference; its own n: every test patient).")
    published = published_table3(cohorts) if literature else None
    write_table3(R / "tables", table, cells, metrics, cindex, notes, published, n_boot, deviations)
    return {"table": table, "cells": cells, "notes": notes, "published": published,
            "km": {c: pd.concat(v) for c, v in km.items()}}
