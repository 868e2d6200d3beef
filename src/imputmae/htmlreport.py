"""The pipeline's HTML report: one self-contained file from a results folder ``{R}`` (docs/layout.md).

The method and its decisions: docs/design.md, ``imputmae.htmlreport``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd

from imputmae import __version__
from imputmae.modalities import MODALITIES

__all__ = ["PRETRAIN_RUNS", "build_report", "find_cohorts", "png_data_uri", "html_table", "markdown_blocks",
           "read_tsv_table", "wsi_status_counts"]

# Pretraining runs in the order Table 4 discusses them; any other run folder found is listed after them.
PRETRAIN_RUNS: tuple[str, ...] = ("multimodal", *MODALITIES)
# Columns holding a file path: the report shows the file name only (no absolute path, same bytes anywhere).
_PATH_COLUMNS = frozenset({"file", "path", "local_path"})

BlockKind = Literal["heading", "paragraph", "item", "table"]

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#1d1d1f;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.missing{color:#8a4b00;font-style:italic}.note{color:#444;font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:.6em}.grid figure{margin:0;width:var(--w)}
.grid img{width:100%;height:auto;border:1px solid #ddd}
figure{margin:.5em 0}figcaption{font-size:.8em;color:#333;word-break:break-all}
.run{display:flex;align-items:flex-start;gap:.6em;margin:.4em 0}.run>h4{width:6em;margin:.3em 0;flex:none}
.row{display:flex;gap:.4em;flex:1 1 0;min-width:0}.row figure{flex:1 1 0;min-width:0;margin:0}
.row img{width:100%;height:auto;border:1px solid #ddd}
nav a{margin-right:1em}
"""


# ------------------------------------------------------------------------------------------- small pieces
def _e(text: object) -> str:
    """HTML-escaped text (quotes too: the same function serves attributes)."""
    return html.escape(str(text), quote=True)


def _missing(what: str, paths: Iterable[str]) -> str:
    return f'<p class="missing">{_e(what)}: not produced ({_e(", ".join(paths))} not found).</p>\n'


def _rel(path: Path, results: Path) -> str:
    """``path`` relative to the results folder, with forward slashes (what the report prints instead of paths)."""
    return path.relative_to(results).as_posix()


def png_data_uri(path: str | Path, max_side: int | None = None) -> str | None:
    """A ``data:image/png;base64,...`` URI of the picture at ``path``, downscaled (``cv2.INTER_AREA``) so that its
    longer side is at most ``max_side`` pixels; the file's own bytes when it is a PNG already small enough.

    Returns None when OpenCV cannot read the file (the caller says so in the report). Deterministic: the same file
    gives the same URI (PNG compression level 9, no metadata).
    """
    raw = Path(path).read_bytes()
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    h, w = image.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            return None
        raw = buf.tobytes()
    elif not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            return None
        raw = buf.tobytes()
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def _figure(path: Path, results: Path, caption: str, max_side: int | None) -> str:
    uri = png_data_uri(path, max_side)
    if uri is None:
        return f'<p class="missing">{_e(_rel(path, results))}: not a readable image.</p>\n'
    return (f'<figure><img src="{uri}" alt="{_e(caption)}">'
            f'<figcaption>{_e(caption)}</figcaption></figure>\n')


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() != ""


def html_table(table: pd.DataFrame) -> str:
    """``table`` as an HTML table: the header row, then every row, each cell as the text it holds (escaped);
    numeric cells right-aligned. The index is not shown. Columns named ``file``, ``path`` or ``local_path`` show
    the file name only."""
    head = "".join(f"<th>{_e(c)}</th>" for c in table.columns)
    rows = []
    for values in table.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(table.columns, values):
            text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
            if str(column) in _PATH_COLUMNS and text:
                text = text.replace("\\", "/").rsplit("/", 1)[-1]
            cls = ' class="num"' if _is_number(text) else ""
            cells.append(f"<td{cls}>{_e(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n"


def read_tsv_table(path: str | Path, sep: str = "\t") -> pd.DataFrame:
    """A CSV/TSV table with every cell as the text written (no NaN for ``NA``, no number formatting)."""
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def _read_table_html(path: Path, results: Path, sep: str = ",") -> str:
    try:
        return html_table(read_tsv_table(path, sep))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return f'<p class="missing">{_e(_rel(path, results))}: could not be read ({_e(type(exc).__name__)}).</p>\n'


# ------------------------------------------------------------------------------------------- Markdown prose
_TABLE_ROW = re.compile(r"^\s*\|")


def markdown_blocks(text: str) -> list[tuple[BlockKind, str]]:
    """The blocks of a Markdown file as the pipeline writes them (tables/*.md): ``("heading", text)`` for a
    ``#`` line, ``("item", text)`` for a ``- `` bullet, ``("paragraph", text)`` for consecutive plain lines
    joined by spaces, and ``("table", "")`` where a ``|`` table stands. ``**`` emphasis is dropped."""
    blocks: list[tuple[BlockKind, str]] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(("paragraph", " ".join(para)))
            para.clear()

    for line in text.splitlines():
        s = line.strip().replace("**", "")
        if not s:
            flush()
        elif _TABLE_ROW.match(line):
            flush()
            if not blocks or blocks[-1][0] != "table":
                blocks.append(("table", ""))
        elif s.startswith("#"):
            flush()
            blocks.append(("heading", s.lstrip("#").strip()))
        elif s.startswith(("- ", "* ")):
            flush()
            blocks.append(("item", s[2:].strip()))
        elif blocks and blocks[-1][0] == "item" and not para and line[:1].isspace():
            blocks[-1] = ("item", blocks[-1][1] + " " + s)   # a bullet's continuation line
        else:
            para.append(s)
    flush()
    return blocks


def _prose_html(blocks: Sequence[tuple[BlockKind, str]]) -> str:
    out, items = [], []
    for kind, text in [*blocks, ("paragraph", None)]:
        if kind != "item" and items:
            out.append('<ul class="note">' + "".join(f"<li>{_e(t)}</li>" for t in items) + "</ul>\n")
            items = []
        if text is None:
            break
        if kind == "heading":
            out.append(f"<h4>{_e(text)}</h4>\n")
        elif kind == "item":
            items.append(text)
        elif kind == "paragraph":
            out.append(f'<p class="note">{_e(text)}</p>\n')
    return "".join(out)


def _table_section(results: Path, anchor: str, title: str, csvs: Sequence[str], md: str | None) -> str:
    """One table section: every CSV of ``csvs`` (paths under ``results``) as an HTML table, with the prose of
    the Markdown file ``md`` around them. When the Markdown file holds as many tables as there are CSV files,
    its prose keeps its place (caption before, notes after, each table's own text beside it); otherwise all of
    its prose comes first."""
    out = [f'<h2 id="{anchor}">{_e(title)}</h2>\n']
    present = [c for c in csvs if (results / c).is_file()]
    if not present:
        return out[0] + _missing(title, csvs)
    md_path = results / md if md else None
    blocks = markdown_blocks(md_path.read_text(encoding="utf-8")) if md_path and md_path.is_file() else []
    n_tables = sum(kind == "table" for kind, _ in blocks)
    tables = {c: _read_table_html(results / c, results) if c in present else _missing(c, [c]) for c in csvs}
    if n_tables == len(csvs):
        i, chunk = 0, []
        for kind, text in blocks:
            if kind == "table":
                out.append(_prose_html(chunk))
                out.append(tables[csvs[i]])
                i, chunk = i + 1, []
            else:
                chunk.append((kind, text))
        out.append(_prose_html(chunk))
    else:
        out.append(_prose_html([b for b in blocks if b[0] != "table"]))
        out.extend(tables[c] for c in csvs)
    out.append(f'<p class="note">From {_e(", ".join(present + ([md] if blocks else [])))}.</p>\n')
    return "".join(out)


# ------------------------------------------------------------------------------------------- figures
def _km_section(results: Path, cohorts: Sequence[str], figure_px: int, shown_px: int = 380) -> str:
    out = ['<h2 id="km">Kaplan-Meier curves</h2>\n']
    paths = [results / "figures" / f"km_{c}.png" for c in cohorts]
    if not any(p.is_file() for p in paths):
        return out[0] + _missing("Kaplan-Meier figures", [_rel(p, results) for p in paths] or ["figures/km_*.png"])
    out.append(f'<div class="grid" style="--w:{shown_px}px">\n')
    for cohort, path in zip(cohorts, paths):
        if path.is_file():
            out.append(_figure(path, results, f"{cohort} ({_rel(path, results)})", figure_px))
        else:
            out.append(_missing(f"Kaplan-Meier figure of {cohort}", [_rel(path, results)]))
    out.append("</div>\n")
    return "".join(out)


def _fold_number(path: Path) -> tuple[int, str]:
    digits = path.name.removeprefix("fold")
    return (int(digits), path.name) if digits.isdigit() else (1 << 30, path.name)


def _pretrain_section(results: Path, loss_px: int) -> str:
    out = ['<h2 id="pretraining">Pretraining loss curves</h2>\n']
    root = results / "pretrain"
    rows = []
    # pretrain/{run}/fold{k}, or pretrain/{size}/{run}/fold{k} when cohorts are fine-tuned at several model sizes
    tops = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    groups = [(f"{d.name}/", d) for d in tops if not any(d.glob("fold*")) and any(x.is_dir() for x in d.iterdir())]
    if not groups and root.is_dir():
        groups = [("", root)]
    for prefix, where in groups:
        found = sorted(p.name for p in where.iterdir() if p.is_dir())
        runs = [r for r in PRETRAIN_RUNS if r in found] + [r for r in found if r not in PRETRAIN_RUNS]
        for run in runs:
            folds = sorted((d for d in (where / run).glob("fold*") if (d / "loss.png").is_file()), key=_fold_number)
            if not folds:
                continue
            name = prefix + run
            cells = "".join(_figure(d / "loss.png", results, f"{name}, {d.name}", loss_px) for d in folds)
            rows.append(f'<div class="run"><h4>{_e(name)}</h4><div class="row">{cells}</div></div>\n')
    if not rows:
        return out[0] + _missing("Pretraining loss curves", ["pretrain/{run}/fold{k}/loss.png"])
    return out[0] + "".join(rows)


# ------------------------------------------------------------------------------------------- quality control
def wsi_status_counts(wsi_qc: pd.DataFrame) -> pd.DataFrame:
    """Patients per ``status`` of a ``wsi_qc.tsv`` table: columns ``status``, ``patients``; ``ok`` first, then the
    reasons by decreasing count (ties by name). Any status but ``ok`` means the patient's WSI is missing."""
    counts = wsi_qc["status"].astype(str).value_counts()
    frame = pd.DataFrame({"status": counts.index, "patients": counts.to_numpy()})
    frame["_order"] = (frame["status"] != "ok").astype(int)
    frame = frame.sort_values(["_order", "patients", "status"], ascending=[True, False, True], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def _qc_section(results: Path, cohort: str, n_thumbnails: int, thumbnail_px: int) -> str:
    d = results / cohort
    out = [f'<h3 id="qc-{_e(cohort)}">{_e(cohort)}</h3>\n']
    statuses: dict[str, str] = {}

    wsi_qc = d / "wsi_qc.tsv"
    out.append("<h4>Whole-slide images</h4>\n")
    if wsi_qc.is_file():
        try:
            table = read_tsv_table(wsi_qc)
            if not {"patient", "status"} <= set(table.columns):
                raise ValueError("no patient and status columns")
        except (ValueError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            out.append(f'<p class="missing">{_e(_rel(wsi_qc, results))}: could not be read ({_e(exc)}).</p>\n')
        else:
            statuses = dict(zip(table["patient"], table["status"]))
            n_ok = int((table["status"] == "ok").sum())
            rest = "; for the others the WSI counts as missing" if n_ok < len(table) else ""
            out.append(f"<p>{n_ok} of {len(table)} patients with a diagnostic slide have usable tiles "
                       f"(<code>{_e(_rel(wsi_qc, results))}</code>){rest}.</p>\n")
            out.append(html_table(wsi_status_counts(table)))
            bad = table.loc[table["status"] != "ok", [c for c in ("patient", "status", "slide") if c in table]]
            if len(bad):
                out.append("<p>Patients without usable tiles:</p>\n" + html_table(bad))
    else:
        out.append(_missing("WSI QC", [_rel(wsi_qc, results)]))

    for name, title, what in [("omics_qc.tsv", "Omics files left out", "file"),
                              ("clinical_qc.tsv", "Patients without a usable survival label", "patient")]:
        path = d / name
        out.append(f"<h4>{_e(title)}</h4>\n")
        if not path.is_file():
            out.append(_missing(title, [_rel(path, results)]))
            continue
        try:
            table = read_tsv_table(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            out.append(f'<p class="missing">{_e(_rel(path, results))}: could not be read '
                       f"({_e(type(exc).__name__)}).</p>\n")
            continue
        if table.empty:
            out.append(f"<p>None (<code>{_e(_rel(path, results))}</code> is empty).</p>\n")
        else:
            out.append(f"<p>{len(table)} {what}{'s' if len(table) != 1 else ''} "
                       f"(<code>{_e(_rel(path, results))}</code>):</p>\n" + html_table(table))

    out.append("<h4>Tile and QC pictures</h4>\n")
    pictures = sorted((d / "wsi").glob("*.png")) if (d / "wsi").is_dir() else []
    if not pictures:
        out.append(_missing("Tile and QC pictures", [f"{cohort}/wsi/{{patient}}.png"]))
    elif n_thumbnails > 0:
        shown = sorted(pictures, key=lambda p: p.stem)[:n_thumbnails]
        out.append(f"<p>{len(shown)} of {len(pictures)} patients, in patient order.</p>\n"
                   f'<div class="grid" style="--w:{thumbnail_px}px">\n')
        for p in shown:
            status = statuses.get(p.stem, "not in wsi_qc.tsv")
            out.append(_figure(p, results, f"{p.stem}: {status}", thumbnail_px))
        out.append("</div>\n")
    return "".join(out)


# ------------------------------------------------------------------------------------------- the report
def find_cohorts(results: str | Path) -> list[str]:
    """The cohorts of a results folder, sorted: its sub-folders holding a cohort's stage outputs
    (``clinical.parquet``, ``wsi_qc.tsv``, ``omics_qc.tsv`` or ``clinical_qc.tsv``), and the cohorts named by
    ``figures/km_{cohort}.png``."""
    results = Path(results)
    markers = ("clinical.parquet", "wsi_qc.tsv", "omics_qc.tsv", "clinical_qc.tsv")
    found = {d.name for d in results.iterdir() if d.is_dir() and any((d / m).is_file() for m in markers)}
    found |= {p.stem.removeprefix("km_") for p in (results / "figures").glob("km_*.png")}
    return sorted(found)


def _header(cohorts: Sequence[str], config_files: Sequence[str | Path]) -> str:
    configs = [f"<code>{_e(Path(c).name)}</code> (SHA-256 {hashlib.sha256(Path(c).read_bytes()).hexdigest()[:16]})"
               for c in config_files]
    return ("<h1>imputmae report</h1>\n<table>\n"
            f"<tr><th>cohorts</th><td>{_e(', '.join(cohorts)) or 'none found'}</td></tr>\n"
            f"<tr><th>configuration</th><td>{', '.join(configs) or 'not given'}</td></tr>\n"
            f"<tr><th>imputmae</th><td>{_e(__version__)}</td></tr>\n</table>\n"
            '<nav><a href="#table2">Table 2</a><a href="#table3">Table 3</a><a href="#table4">Table 4</a>'
            '<a href="#km">Kaplan-Meier</a><a href="#pretraining">Pretraining</a><a href="#qc">Quality control</a>'
            "</nav>\n")


def build_report(results: str | Path, cohorts: Sequence[str] | None = None,
                 config_files: Sequence[str | Path] = (), n_thumbnails: int = 12, thumbnail_px: int = 256,
                 figure_px: int = 600, loss_px: int = 400) -> str:
    """The HTML report of the results folder ``results`` (layout of docs/layout.md) as one string.

    ``cohorts``: the cohorts to show (default: :func:`find_cohorts`); ``config_files``: the configuration files
    of the run (their names and content hashes go in the header; they are read); ``n_thumbnails``: at most this
    many tile/QC pictures per cohort, the first patients in sorted order, each downscaled to ``thumbnail_px``
    pixels on its longer side (Kaplan-Meier figures to ``figure_px``, loss curves to ``loss_px``).

    A missing input gives a "not produced" line in its section, never an error; the string depends only on the
    files read (no clock, no absolute path).
    """
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"{results}: results folder not found")
    if n_thumbnails < 0:
        raise ValueError(f"n_thumbnails must be >= 0, got {n_thumbnails}")
    cohorts = sorted(cohorts) if cohorts is not None else find_cohorts(results)
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>imputmae report: {_e(', '.join(cohorts))}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n",
        _header(cohorts, config_files),
        _table_section(results, "table2", "Table 2: modality availability", ["tables/table2.csv"],
                       "tables/table2.md"),
        _table_section(results, "table3", "Table 3: survival prediction (C-index)",
                       ["tables/table3.csv"] + (["tables/table3_published.csv"]
                                                if (results / "tables/table3_published.csv").is_file() else []),
                       "tables/table3.md"),
        _table_section(results, "table4", "Table 4: reconstruction and imputation error",
                       ["tables/table4.csv", "tables/table4_imputation.csv"], "tables/table4.md"),
        _km_section(results, cohorts, figure_px),
        _pretrain_section(results, loss_px),
        '<h2 id="qc">Quality control</h2>\n',
    ]
    if not cohorts:
        parts.append('<p class="missing">Quality control: not produced (no cohort folder found).</p>\n')
    parts.extend(_qc_section(results, c, n_thumbnails, thumbnail_px) for c in cohorts)
    parts.append("</body>\n</html>\n")
    return "".join(parts)
