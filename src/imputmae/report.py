"""Table 3 (C-index, mean +- std over the outer folds) and Kaplan-Meier figures of the test patients.

Reads nothing itself: the CLI (``imputmae table3``) gathers the per-fold ``metrics.json`` / ``predictions.parquet``
written by ``imputmae finetune`` and ``imputmae cox-baseline`` and passes them in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from imputmae.files import atomic_write
from imputmae.choices import CIndexName
from imputmae.modalities import MODALITY_SETS, label
from imputmae.survival import concordance_harrell
from imputmae.tables import latex_lines, markdown_lines, write_texts

__all__ = ["LITERATURE_TABLE3", "MODEL_NAMES", "table3", "table3_markdown", "table3_latex", "write_table3", "oracle_cindex",
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


def table3(metrics: pd.DataFrame, cindex: CIndexName = "antolini",
           cohorts: Sequence[str] | None = None, literature: bool = True,
           oracle: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 3 as a frame: rows (model, modality), columns cohorts, cells "mean ± std (n folds)".

    metrics: one row per (model, modset, cohort, fold) with the C-index columns. ``literature`` appends the
    paper's rows (source "paper (TCGA, quoted)"); ``oracle`` (cohort, fold, cindex) adds a row "oracle (true risk)".
    Our rows have source "this run". Std is the sample standard deviation over folds (ddof=1).
    """
    if cindex not in metrics.columns:
        raise ValueError(f"metrics have no {cindex!r} column")
    cohorts = list(cohorts) if cohorts is not None else sorted(metrics["cohort"].unique())
    order = {m: i for i, m in enumerate(MODALITY_SETS)}
    rows = []
    for (model, modset), g in sorted(metrics.groupby(["model", "modset"]),
                                     key=lambda kv: (kv[0][0] != "impuTMAE", kv[0][0], order.get(kv[0][1], 9))):
        row = {"model": MODEL_NAMES.get(model, model), "modality": MODSET_NAMES.get(modset, modset),
               "source": "this run"}
        for c in cohorts:
            v = g.loc[g["cohort"] == c, cindex].dropna().to_numpy(float)
            row[c] = _cell(v)
        rows.append(row)
    if oracle is not None and len(oracle):
        row = {"model": "oracle (true risk)", "modality": "-", "source": "demo oracle.parquet, Harrell"}
        for c in cohorts:
            row[c] = _cell(oracle.loc[oracle["cohort"] == c, "cindex"].dropna().to_numpy(float))
        rows.append(row)
    if literature:
        for (model, modset), cells in LITERATURE_TABLE3.items():
            rows.append({"model": model, "modality": MODSET_NAMES[modset], "source": "paper (TCGA, quoted, not rerun)",
                         **{c: cells.get(c, "") for c in cohorts}})
    return pd.DataFrame(rows, columns=["model", "modality", "source", *cohorts])


def _cell(v: np.ndarray) -> str:
    if v.size == 0:
        return ""
    std = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
    return f"{v.mean():.3f} ± {std:.3f} ({v.size})" if v.size > 1 else f"{v.mean():.3f} (1)"


def _caption(cindex: str) -> str:
    return (f"Table 3: {CINDEX_NAMES[cindex]} on the held-out test patients of each outer fold, mean ± std over "
            f"folds (number of folds). Rows marked 'paper' are quoted from the impuTMAE paper (TCGA), not rerun.")


def table3_markdown(table: pd.DataFrame, cindex: str, notes: Sequence[str] = ()) -> str:
    """GitHub markdown: caption, the table, then note lines."""
    lines = [_caption(cindex), "", *markdown_lines(table, rule="compact", cell=str)]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def _latex_cell(text: str) -> str:
    return text.replace("±", r"$\pm$").replace("_", r"\_").replace("%", r"\%")


def table3_latex(table: pd.DataFrame, cindex: str) -> str:
    """A booktabs tabular with the caption as a comment line."""
    colspec = "l" * 3 + "c" * (len(table.columns) - 3)
    lines = [f"% {_caption(cindex)}", *latex_lines(table, colspec=colspec, escape=_latex_cell, cell=str)]
    return "\n".join(lines) + "\n"


def write_table3(out_dir: str | Path, table: pd.DataFrame, metrics: pd.DataFrame, cindex: str,
                 notes: Sequence[str] = ()) -> list[Path]:
    """``table3.csv``, ``table3.md``, ``table3.tex`` (:func:`imputmae.tables.write_texts`) and ``table3_folds.csv``
    (one row per model, modality set, cohort and fold) in ``out_dir``."""
    out_dir = Path(out_dir)
    return write_texts(out_dir / "table3", {"csv": table.to_csv(index=False), "md": table3_markdown(table, cindex, notes),
                                            "tex": table3_latex(table, cindex)}) + \
        write_texts(out_dir / "table3_folds", {"csv": metrics.to_csv(index=False)})


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
