"""The paper's tables: a shared writer (:func:`write_table`) and the tables themselves (:func:`table2`).

Each table is a ``pandas.DataFrame`` in the paper's layout; :func:`write_table` renders it as CSV, Markdown and
LaTeX, each through a temporary name renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from imputmae.files import atomic_write_text
from imputmae.gdc import usable_downloads

__all__ = ["TableFormat", "MarkdownRule", "write_table", "write_texts", "markdown_lines", "latex_lines", "latex_escape",
           "to_markdown", "to_latex", "project_label", "table2", "tables_selection"]

TableFormat = Literal["csv", "md", "tex"]
MarkdownRule = Literal["aligned", "plain", "compact"]

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if pd.isna(v) else f"{v:.2f}"
    return "" if v is None else str(v)


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def markdown_lines(df: pd.DataFrame, *, rule: MarkdownRule = "aligned",
                   cell: Callable[[object], str] = _cell) -> list[str]:
    """The lines of a GitHub-flavoured Markdown table of ``df`` (header, rule, one line per row).

    ``rule``: ``aligned`` right-aligns numeric columns (``| ---: |``), ``plain`` aligns nothing (``| --- |``),
    ``compact`` is ``|---|`` (Tables 3 and 4 keep the rule they were published with). ``cell`` renders a value.
    """
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    if rule == "compact":
        sep = "|" + "---|" * len(df.columns)
    else:
        sep = "| " + " | ".join("---:" if n and rule == "aligned" else "---" for n in numeric) + " |"
    lines = ["| " + " | ".join(str(c) for c in df.columns) + " |", sep]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return lines


def latex_lines(df: pd.DataFrame, *, colspec: str | None = None, escape: Callable[[str], str] = latex_escape,
                cell: Callable[[object], str] = _cell) -> list[str]:
    """The lines of a booktabs ``tabular`` of ``df``: ``colspec`` (default: ``r`` numeric, ``l`` otherwise), rules,
    header and rows, every cell through ``escape``."""
    if colspec is None:
        colspec = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    lines = [r"\begin{tabular}{" + colspec + "}", r"\toprule", " & ".join(escape(str(c)) for c in df.columns) + r" \\",
             r"\midrule"]
    lines += [" & ".join(escape(cell(v)) for v in row) + r" \\" for row in df.itertuples(index=False)]
    return lines + [r"\bottomrule", r"\end{tabular}"]


def to_markdown(df: pd.DataFrame, caption: str | None = None, note: str | None = None) -> str:
    """A Markdown table (numbers right-aligned, floats with 2 decimals), bold caption above, note below."""
    lines = [f"**{caption}**", ""] if caption else []
    lines += markdown_lines(df)
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, caption: str | None = None, note: str | None = None) -> str:
    """A ``tabular`` in a ``table`` float (booktabs rules), floats with 2 decimals; special characters escaped."""
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines += latex_lines(df)
    if note:
        lines.append(rf"\par\smallskip{{\footnotesize {latex_escape(note)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_texts(prefix: str | os.PathLike[str], texts: Mapping[str, str]) -> list[Path]:
    """Write each rendered table ``texts[ext]`` to ``<prefix>.<ext>`` atomically; returns the paths written."""
    prefix = Path(prefix)
    return [atomic_write_text(prefix.with_name(f"{prefix.name}.{ext}"), text) for ext, text in texts.items()]


def write_table(df: pd.DataFrame, prefix: str | os.PathLike[str], formats: Sequence[TableFormat] = ("csv", "md"),
                caption: str | None = None, note: str | None = None) -> list[Path]:
    """Write ``df`` to ``<prefix>.<format>`` for each format (:func:`write_texts`).

    CSV holds the values at full precision (no caption); Markdown and LaTeX round floats to 2 decimals and carry
    ``caption`` and ``note``. Returns the paths written.
    """
    render = {"csv": lambda: df.to_csv(index=False), "md": lambda: to_markdown(df, caption, note),
              "tex": lambda: to_latex(df, caption, note)}
    bad = [f for f in formats if f not in render]
    if bad:
        raise ValueError(f"unknown table format {bad[0]!r}; expected csv, md or tex")
    return write_texts(prefix, {fmt: render[fmt]() for fmt in formats})


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
            report = downloads[cohort]
            unusable = set(report.loc[~usable_downloads(report["status"]), "file_id"])
            sel = sel[~sel["file_id"].isin(unusable)]
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
