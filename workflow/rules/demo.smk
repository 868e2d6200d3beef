# The embedded demo cohort: a local mirror in gdc-client layout, written from a seed (config.demo.yaml).

if config.get("demo"):

    rule demo_data:
        output:
            files=f"{config['demo']['out']}/files.json",
            cases=f"{config['demo']['out']}/cases.json",
            oracle=f"{config['demo']['out']}/oracle.parquet",
        params:
            out=lambda wildcards, output: Path(output.files).parent,
            seed=config["demo"]["seed"],
            size=config["demo"].get("size", "demo"),
            sizes=as_json(config["demo"].get("n_patients", {})),
        log:
            "logs/demo_data/demo.log",
        benchmark:
            "benchmarks/demo_data/demo.tsv"
        conda:
            "../../envs/gdc.yaml"
        shell:
            "python -m imputmae demo-data {params.out} --seed {params.seed} --size {params.size} --sizes {params.sizes:q} > {log} 2>&1"

    TARGETS.append(rules.demo_data.output.files)
