# Whole-slide images: per patient, the slide with most tissue, its Otsu tissue mask and the top-K tiles by HSV
# score (imputmae wsi tiles); per cohort, the QC table (imputmae wsi qc). A slide that cannot be used gives a QC row
# (status not "ok": that patient's WSI counts as missing downstream), never a failed job.
#
# Cohorts with slides (WSI_COHORTS): GDC cohorts, and cohorts given as tables with `tables.slides` (patient, path).
# Patients and slides come from slide_rows (common.smk): GDC, every patient with a diagnostic slide selected (after
# the gdc_select checkpoint), the slides whose download was verified (after gdc_download) read, the others passed
# as --unavailable with the reason; own tables, the slide table's rows, a path that does not exist passed as
# --unavailable (QC row naming the table row and the fix).
#
# wsi.tile_jobs: `patient` (config.yaml: one job per patient, wsi_qc merges their rows; on a cluster each patient is
# its own Slurm job) or `cohort` (config.demo.yaml: one job tiles every patient of the cohort and writes wsi_qc.tsv
# itself; the demo's 221 per-patient jobs spent most of their ~0.9 CPU-s each starting an interpreter). Same files,
# same contents either way.
# The tiling settings: the config's wsi section without the workflow's own key (tile_jobs).
TILE_SETTINGS = {k: v for k, v in config["wsi"].items() if k != "tile_jobs"}


def patient_slide_args(cohort, patient=None):
    """--unavailable (and, for a whole cohort, --slide) arguments of ``cohort``'s slides (one patient's, or all)."""
    rows = slide_rows(cohort)
    if patient is not None:
        rows = rows[rows["patient"] == patient]
    rows = rows.sort_values(["patient", "file_name"])
    prefix = (lambda r: "") if patient is not None else (lambda r: f"{r.patient}=")
    args = [f"--unavailable {shlex.quote(f'{prefix(r)}{r.file_name}={r.reason}')}"
            for r in rows[~rows["available"]].itertuples()]
    if patient is None:
        args += [f"--slide {shlex.quote(f'{r.patient}={r.local_path}')}" for r in rows[rows["available"]].itertuples()]
    return " ".join(args)


if WSI_COHORTS and config["wsi"].get("tile_jobs", "patient") == "cohort":

    rule wsi_tiles_cohort:
        input:
            unpack(slide_sources),  # GDC: selection and download report; own tables: the slide table
            slides=lambda w: sorted(slide_rows(w.cohort).query("available")["local_path"]),
        output:
            qc=f"{RESULTS}/{{cohort}}/wsi_qc.tsv",
            tiles=directory(f"{RESULTS}/{{cohort}}/wsi"),
        params:
            settings=as_json(TILE_SETTINGS),
            slides=lambda w: patient_slide_args(w.cohort),
        wildcard_constraints:
            cohort="|".join(WSI_COHORTS),
        log:
            "logs/wsi_tiles_cohort/{cohort}.log",
        benchmark:
            "benchmarks/wsi_tiles_cohort/{cohort}.tsv"
        conda:
            "../../envs/wsi.yaml"
        threads: config["wsi"]["threads"]
        shell:
            "python -m imputmae wsi tiles-cohort {params.slides} --out-dir {output.tiles:q} --qc-out {output.qc:q} "
            "--settings {params.settings:q} > {log} 2>&1"

elif WSI_COHORTS:

    rule wsi_tiles:
        input:
            # the patient's available slides, sorted (the result does not depend on their order)
            unpack(slide_sources),  # GDC: selection and download report; own tables: the slide table
            slides=lambda w: sorted(slide_rows(w.cohort).query("patient == @w.patient and available")["local_path"]),
        output:
            npy=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.npy",
            table=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.parquet",
            png=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.png",
            qc=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.qc.tsv",
        params:
            prefix=lambda w: f"{RESULTS}/{w.cohort}/wsi/{w.patient}",
            settings=as_json(TILE_SETTINGS),
            unavailable=lambda w: patient_slide_args(w.cohort, w.patient),
        wildcard_constraints:
            cohort="|".join(WSI_COHORTS),
            patient=r"[A-Za-z0-9_-]+",
        log:
            "logs/wsi_tiles/{cohort}/{patient}.log",
        benchmark:
            "benchmarks/wsi_tiles/{cohort}/{patient}.tsv"
        conda:
            "../../envs/wsi.yaml"
        threads: config["wsi"]["threads"]
        shell:
            "python -m imputmae wsi tiles {input.slides:q} {params.unavailable} --out {params.prefix:q} "
            "--patient {wildcards.patient} --settings {params.settings:q} --threads {threads} --no-progress "
            "> {log} 2>&1"

    rule wsi_qc:
        input:
            # every patient of the cohort with at least one slide (selected at the GDC, or in the slide table)
            lambda w: expand(
                f"{RESULTS}/{w.cohort}/wsi/{{patient}}.qc.tsv",
                patient=sorted(slide_rows(w.cohort)["patient"].unique()),
            ),
        output:
            f"{RESULTS}/{{cohort}}/wsi_qc.tsv",
        wildcard_constraints:
            cohort="|".join(WSI_COHORTS),
        log:
            "logs/wsi_qc/{cohort}.log",
        benchmark:
            "benchmarks/wsi_qc/{cohort}.tsv"
        conda:
            "../../envs/wsi.yaml"
        shell:
            "python -m imputmae wsi qc {input:q} --out {output:q} > {log} 2>&1"

if WSI_COHORTS:
    TARGETS.extend(expand(f"{RESULTS}/{{cohort}}/wsi_qc.tsv", cohort=WSI_COHORTS))
