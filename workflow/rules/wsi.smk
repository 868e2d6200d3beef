# Whole-slide images: per patient, the slide with most tissue, its Otsu tissue mask and the top-K tiles by HSV
# score (imputmae wsi tiles); per cohort, the QC table (imputmae wsi qc). A slide that cannot be used gives a QC row
# (status not "ok": that patient's WSI counts as missing downstream), never a failed job.
#
# Patients: every patient with a diagnostic slide selected (selected_files, after the gdc_select checkpoint).
# Slides: those whose download was verified (downloaded_files, after the gdc_download checkpoint); a selected slide
# whose download failed is passed as --unavailable and shows in the QC row (see the download report for why).
if GDC_COHORTS:

    rule wsi_tiles:
        input:
            # the patient's verified slides, sorted (the result does not depend on their order)
            slides=lambda w: sorted(
                downloaded_files(w.cohort, "wsi").query("patient == @w.patient")["local_path"]
            ),
            report=lambda w: download_report(w.cohort, "wsi"),
            selected=f"{RESULTS}/{{cohort}}/gdc/selected.parquet",  # the checkpoint params read
        output:
            npy=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.npy",
            table=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.parquet",
            png=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.png",
            qc=f"{RESULTS}/{{cohort}}/wsi/{{patient}}.qc.tsv",
        params:
            prefix=lambda w: f"{RESULTS}/{w.cohort}/wsi/{w.patient}",
            settings=as_json(config["wsi"]),
            unavailable=lambda w, input: " ".join(
                f"--unavailable {shlex.quote(f'{name}=not downloaded (see {input.report})')}"
                for name in sorted(
                    set(selected_files(w.cohort, "wsi").query("patient == @w.patient")["file_name"])
                    - set(downloaded_files(w.cohort, "wsi").query("patient == @w.patient")["file_name"])
                )
            ),
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
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
            # every patient of the cohort with at least one diagnostic slide selected
            lambda w: expand(
                f"{RESULTS}/{w.cohort}/wsi/{{patient}}.qc.tsv",
                patient=sorted(selected_files(w.cohort, "wsi")["patient"].unique()),
            ),
        output:
            f"{RESULTS}/{{cohort}}/wsi_qc.tsv",
        wildcard_constraints:
            cohort="|".join(GDC_COHORTS),
        log:
            "logs/wsi_qc/{cohort}.log",
        benchmark:
            "benchmarks/wsi_qc/{cohort}.tsv"
        conda:
            "../../envs/wsi.yaml"
        shell:
            "python -m imputmae wsi qc {input:q} --out {output:q} > {log} 2>&1"

    TARGETS.extend(expand(f"{RESULTS}/{{cohort}}/wsi_qc.tsv", cohort=GDC_COHORTS))
