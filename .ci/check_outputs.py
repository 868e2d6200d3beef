"""CI checks on a demo results folder after `snakemake --profile slurm` (see .ci/slurm-demo).

    check_outputs.py results/demo --slurm-logs .snakemake/slurm_logs   # Tables 2-4 exist, parse, have rows; every
                                                                       # rule that is not local ran as a Slurm job
    check_outputs.py results/demo --snapshot before.json               # mtimes and hashes of every file
    check_outputs.py results/demo --unchanged-except UCEC --since before.json   # after a one-cohort rerun
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def state(results: Path) -> dict[str, list]:
    return {str(p.relative_to(results)): [p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()]
            for p in sorted(results.rglob("*")) if p.is_file()}


def check_tables(results: Path) -> list[str]:
    tables = ["table2", "table4"] + (["table3"] if (ROOT / "workflow/rules/finetune.smk").is_file() else [])
    errors = []
    for t in tables:
        for ext in ("csv", "md"):
            p = results / "tables" / f"{t}.{ext}"
            if not p.is_file() or p.stat().st_size == 0:
                errors.append(f"{p}: missing or empty")
        csv = results / "tables" / f"{t}.csv"
        if csv.is_file() and csv.stat().st_size and len(pd.read_csv(csv)) == 0:
            errors.append(f"{csv}: no rows")
        if not errors:
            print(f"{t}: {len(pd.read_csv(csv))} rows")
    report = results / "report.html"
    if (ROOT / "workflow/rules/report.smk").is_file():
        text = report.read_text() if report.is_file() else ""
        if "<h2" not in text or "data:image/png;base64," not in text:
            errors.append(f"{report}: missing, or without its sections and figures")
        else:
            print(f"report.html: {report.stat().st_size:,} bytes, {text.count('data:image/png;base64,')} figures")
    return errors


def check_table3_rows(results: Path) -> list[str]:
    """Every Table 3 row (impuTMAE's modality sets, Cox-PCA, config.yaml's baselines.rows) present for every cohort,
    with a finite C-index, CI and (but for impuTMAE all) paired difference in tables/table3_cells.csv."""
    import yaml

    cells_csv = results / "tables" / "table3_cells.csv"
    if not cells_csv.is_file():
        return [f"{cells_csv}: missing"]
    cells = pd.read_csv(cells_csv)
    rows = yaml.safe_load((ROOT / "config.yaml").read_text())["baselines"]["rows"]
    expected = {("impuTMAE", "all"), ("cox_pca", "all")} | {(r, "all") for r in rows}
    errors = []
    for cohort in sorted(set(cells["cohort"])):
        g = cells[cells["cohort"] == cohort]
        have = set(zip(g["key"], g["modality"]))
        errors += [f"{cells_csv}: {cohort} has no row {k} ({m})" for k, m in sorted(expected - have)]
        for _, r in g.iterrows():
            need = ["estimate", "lower", "upper"] + ([] if (r["key"], r["modality"]) == ("impuTMAE", "all")
                                                     else ["difference", "diff_lower", "diff_upper", "p"])
            bad = [c for c in need if not (c in r and pd.notna(r[c]) and abs(float(r[c])) < float("inf"))]
            if bad and r["modality"] == "all":
                errors.append(f"{cells_csv}: {cohort} {r['key']} ({r['modality']}): {', '.join(bad)} not finite")
    if not errors:
        print(f"table3_cells: {len(cells)} cells, {len(expected)} rows per cohort, all finite")
    return errors


def check_slurm_logs(logs: Path, local: set[str]) -> list[str]:
    ran = {p.name.removeprefix("rule_") for p in logs.glob("rule_*") if p.is_dir()}
    expected = {"demo_data", "gdc_select", "wsi_tiles", "wsi_qc", "omics_rna", "splits", "pretrain", "table4"}
    if "wsi_tiles_cohort" in ran:   # wsi.tile_jobs: cohort (the demo): one job per cohort tiles and writes its QC
        expected = (expected - {"wsi_tiles", "wsi_qc"}) | {"wsi_tiles_cohort"}
    if (ROOT / "workflow/rules/finetune.smk").is_file():
        expected |= {"finetune", "table3", "table3_rows"}
        if "finetune_fold" in ran:   # finetune.one_job_per_fold (the demo): one job per cohort x fold
            expected = (expected - {"finetune"}) | {"finetune_fold"}
    if (ROOT / "workflow/rules/report.smk").is_file():
        expected.add("report")
    print(f"rules run as Slurm jobs: {', '.join(sorted(ran))}")
    return [f"rule {r}: no Slurm job log under {logs}" for r in sorted(expected - ran - local)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--slurm-logs", type=Path)
    ap.add_argument("--snapshot", type=Path, help="write mtimes and hashes of every file here")
    ap.add_argument("--unchanged-except", metavar="COHORT")
    ap.add_argument("--since", type=Path, help="a snapshot written before the rerun")
    a = ap.parse_args()
    if a.snapshot:
        a.snapshot.write_text(json.dumps(state(a.results)))
        return 0
    errors = []
    if a.unchanged_except:
        c = a.unchanged_except
        before, after = json.loads(a.since.read_text()), state(a.results)
        mine = (f"{c}/", f"finetune/{c}/", f"baselines/cox/{c}/", f"baselines/rows/{c}/")
        # one row or section per cohort: rebuilt (table3_folds.csv too)
        shared = ("tables/table2", "tables/table3", "figures/km_", "report.html")
        others = [p for p in before if not p.startswith(mine + shared)]
        errors += [f"{p}: changed by the {c} rerun" for p in others if after.get(p) != before[p]]
        stale = [p for p in before if p.startswith(mine) and after[p][0] == before[p][0]]
        errors += [f"{p}: not rerun" for p in stale]
        print(f"{c} rerun: {len(others)} other files unchanged, "
              f"{sum(p.startswith(mine) for p in before) - len(stale)} of the cohort's files rewritten")
    else:
        errors += check_tables(a.results)
        if (ROOT / "workflow/rules/finetune.smk").is_file():
            errors += check_table3_rows(a.results)
        if a.slurm_logs:
            errors += check_slurm_logs(a.slurm_logs, local={"gdc_manifest", "gdc_download", "gdc_clinical"})
    for e in errors:
        print(f"FAIL {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
