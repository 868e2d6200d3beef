"""Per-rule wall time and peak memory from Snakemake's ``benchmark:`` files.

    python workflow/scripts/benchmark_summary.py benchmarks [--since EPOCH_S] [--markdown]

Every rule writes ``benchmarks/<rule>/<wildcards...>.tsv`` (columns s, h:m:s, max_rss, ..., cpu_time; max_rss in
MB). This prints one row per rule: its jobs, their summed and longest wall seconds, summed CPU seconds, the largest
peak RSS and the job that had it, and the largest peak PSS. Snakemake sums RSS over the job's process tree, so pages
that forked workers share (a DataLoader's, ``pretrain.num_workers``) count once per process: PSS (each shared page
split between its processes) is the job's real footprint where the two differ. ``--since`` keeps only the files written at or after that time (a run's own jobs,
when the folder also holds an earlier run's). Exit status 1 when no benchmark file matches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

COLUMNS = ["rule", "jobs", "wall_s", "max_wall_s", "cpu_s", "max_rss_mb", "max_rss_job", "max_pss_mb"]


def read_benchmarks(folder: str | Path, since: float | None = None) -> pd.DataFrame:
    """One row per benchmark file under ``folder``: rule (first folder below it), job (the path below the rule,
    without .tsv), wall_s (``s``), cpu_s (``cpu_time``), max_rss_mb (``max_rss``; a job too short for psutil to
    sample writes "NA", read as NaN), max_pss_mb (``max_pss``). Several rows in one file (``benchmark: repeat(...)``) count as one job, their
    mean. Files older than ``since`` (epoch seconds, mtime) are left out.

    Raises ValueError naming a file without the ``s`` and ``max_rss`` columns.
    """
    root = Path(folder)
    rows = []
    for path in sorted(root.glob("*/**/*.tsv")):
        if since is not None and path.stat().st_mtime < since:
            continue
        df = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        if not {"s", "max_rss"} <= set(df.columns) or df.empty:
            raise ValueError(f"{path}: not a Snakemake benchmark file (needs a header with s and max_rss and a row)")
        rel = path.relative_to(root)
        rows.append({"rule": rel.parts[0], "job": str(rel.relative_to(rel.parts[0]).with_suffix("")),
                     "wall_s": float(df["s"].mean()),
                     "cpu_s": float(df["cpu_time"].mean()) if "cpu_time" in df else float("nan"),
                     "max_rss_mb": float(df["max_rss"].mean()),
                     "max_pss_mb": float(df["max_pss"].mean()) if "max_pss" in df else float("nan")})
    return pd.DataFrame(rows, columns=["rule", "job", "wall_s", "cpu_s", "max_rss_mb", "max_pss_mb"])


def summarise(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule (:data:`COLUMNS`), sorted by summed wall time, longest first."""
    out = []
    for rule, g in jobs.groupby("rule", sort=True):
        rss = g["max_rss_mb"]
        top = g.loc[rss.idxmax(), "job"] if rss.notna().any() else ""
        out.append({"rule": rule, "jobs": len(g), "wall_s": g["wall_s"].sum(), "max_wall_s": g["wall_s"].max(),
                    "cpu_s": g["cpu_s"].sum(min_count=1), "max_rss_mb": rss.max(), "max_rss_job": top,
                    "max_pss_mb": g["max_pss_mb"].max()})
    df = pd.DataFrame(out, columns=COLUMNS)
    return df.sort_values(["wall_s", "rule"], ascending=[False, True], kind="stable").reset_index(drop=True)


def format_table(summary: pd.DataFrame, markdown: bool = False) -> str:
    """The summary as aligned text, or as a Markdown table (BENCHMARKS.md), with a total row."""
    total = {"rule": "total", "jobs": int(summary["jobs"].sum()), "wall_s": summary["wall_s"].sum(),
             "max_wall_s": summary["max_wall_s"].max(), "cpu_s": summary["cpu_s"].sum(min_count=1),
             "max_rss_mb": summary["max_rss_mb"].max(), "max_rss_job": "", "max_pss_mb": summary["max_pss_mb"].max()}
    df = pd.concat([summary, pd.DataFrame([total])], ignore_index=True)
    cells = [[str(r.rule), f"{int(r.jobs):,}", f"{r.wall_s:,.1f}", f"{r.max_wall_s:,.1f}", _num(r.cpu_s, 1),
              _num(r.max_rss_mb, 0), str(r.max_rss_job), _num(r.max_pss_mb, 0)] for r in df.itertuples()]
    head = ["rule", "jobs", "wall s (sum)", "wall s (max)", "CPU s (sum)", "peak RSS MB", "job with the peak",
            "peak PSS MB"]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join(["---:"] * 5) + " | --- | ---: |"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(x[i]) for x in [head, *cells]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths, strict=True))).rstrip() for row in [head, *cells])


def _num(x: float, digits: int) -> str:
    return "n/a" if pd.isna(x) else f"{x:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="the benchmarks folder (benchmarks/<rule>/...tsv)")
    ap.add_argument("--since", type=float, default=None, help="only files written at or after this epoch time")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = ap.parse_args(argv)
    jobs = read_benchmarks(args.folder, args.since)
    if jobs.empty:
        print(f"no benchmark files under {args.folder}" + (f" since {args.since:.0f}" if args.since else ""),
              file=sys.stderr)
        return 1
    print(format_table(summarise(jobs), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
