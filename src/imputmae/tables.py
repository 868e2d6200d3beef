"""The paper's tables: a shared writer (:func:`write_table`) and the tables themselves (:func:`table2`).

Each table is a ``pandas.DataFrame`` in the paper's layout; :func:`write_table` renders it as CSV, Markdown and
LaTeX, each through a temporary name renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

__all__ = ["TableFormat", "write_table", "to_markdown", "to_latex", "project_label", "table2", "tables_selection"]

TableFormat = Literal["csv", "md", "tex"]


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.2f}"
    return "" if v is None else str(v)


def to_markdown(df: pd.DataFrame, caption: str | None = None, note: str | None = None) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned, floats with 2 decimals), caption above, note below."""
    cols = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = [f"**{caption}**", ""] if caption else []
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, caption: str | None = None, note: str | None = None) -> str:
    """A ``tabular`` in a ``table`` float (booktabs rules), floats with 2 decimals; special characters escaped."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}

    def esc(s: str) -> str:
        return "".join(special.get(ch, ch) for ch in s)

    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{esc(caption)}}}")
    lines += [r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}", r"\toprule",
              " & ".join(esc(str(c)) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(esc(_cell(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines.append(rf"\par\smallskip{{\footnotesize {esc(note)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, prefix: str | os.PathLike[str], formats: Sequence[TableFormat] = ("csv", "md"),
                caption: str | None = None, note: str | None = None) -> list[Path]:
    """Write ``df`` to ``<prefix>.<format>`` for each format, each through ``<name>.tmp`` then a rename.

    CSV holds the values at full precision (no caption); Markdown and LaTeX round floats to 2 decimals and carry
    ``caption`` and ``note``. Returns the paths written.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = prefix.with_name(f"{prefix.name}.{fmt}")
        tmp = path.with_name(path.name + ".tmp")
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        elif fmt == "md":
            tmp.write_text(to_markdown(df, caption, note))
        elif fmt == "tex":
            tmp.write_text(to_latex(df, caption, note))
        else:
            raise ValueError(f"unknown table format {fmt!r}; expected csv, md or tex")
        os.replace(tmp, path)
        written.append(path)
    return written


def project_label(project_id: str) -> str:
    """The short name of a GDC project, as the paper's rows show it: ``TCGA-GBM`` -> ``GBM``."""
    return project_id.split("-", 1)[1] if "-" in project_id else project_id


def _availability(label: str, rna: set[str], dnam: set[str], clinical: set[str], wsi: set[str]) -> dict[str, object]:
    n = len(rna)

    def pct(have: set[str]) -> float:
        return round(100.0 * len(rna & have) / n, 2) if n else float("nan")

    return {"Cohort": label, "DNAm": pct(dnam), "Clinical": pct(clinical), "WSI": pct(wsi), "RNA count": n}


def table2(selected: Mapping[str, pd.DataFrame], clinical: Mapping[str, pd.DataFrame],
           downloads: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Table 2: modality availability (%) among patients with RNA-seq, per cohort.

    A cohort of several projects (GBMLGG) gets one row for the cohort and one per project (the paper shows GBM and
    LGG). A patient "has" a modality when ``selected`` holds a file of it for them (WSI: at least one diagnostic
    slide) and, when ``downloads`` reports are given, that file's download did not fail; "clinical" means a row
    in the cohort's clinical table (usable survival label).

    Args:
        selected: cohort -> ``gdc select`` rows (patient, project_id, modality, file_id).
        clinical: cohort -> clinical rows (patient).
        downloads: cohort -> concatenated download reports (file_id, status); optional.

    Returns:
        columns Cohort, DNAm, Clinical, WSI (percent of the RNA patients, 2 decimals), RNA count.
    """
    rows = []
    for cohort, sel in selected.items():
        if downloads is not None and cohort in downloads and len(downloads[cohort]):
            failed = set(downloads[cohort].loc[downloads[cohort]["status"] == "failed", "file_id"])
            sel = sel[~sel["file_id"].isin(failed)]
        clin = set(clinical[cohort]["patient"]) if cohort in clinical else set()

        def has(mod: str, project: str | None = None) -> set[str]:
            s = sel[sel["modality"] == mod]
            if project is not None:
                s = s[s["project_id"] == project]
            return set(s["patient"])

        rows.append(_availability(cohort, has("rna"), has("dnam"), clin, has("wsi")))
        projects = sorted(sel["project_id"].dropna().unique())
        if len(projects) > 1:
            for p in projects:
                rows.append(_availability(project_label(p), has("rna", p), has("dnam"), clin, has("wsi")))
    out = pd.DataFrame(rows, columns=["Cohort", "DNAm", "Clinical", "WSI", "RNA count"])
    out["RNA count"] = out["RNA count"].astype("int64")
    return out


def tables_selection(patients: Mapping[str, Iterable[str]], cohort: str) -> pd.DataFrame:
    """A cohort given as tables in the shape of ``gdc select``'s rows, so that :func:`table2` counts it as it does a
    GDC cohort: one row per (patient, modality) in ``patients`` (modality -> patient ids: the RNA and DNAm
    matrices' rows, the patients with a slide), ``project_id`` the cohort's name, ``file_id`` ``<modality>:<patient>``.
    """
    rows = [(str(p), cohort, m, f"{m}:{p}") for m, ids in patients.items() for p in ids]
    return pd.DataFrame(rows, columns=["patient", "project_id", "modality", "file_id"])
