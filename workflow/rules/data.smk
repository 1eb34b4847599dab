# Data stage: the demo dataset (when enabled) and the validated, deduplicated, seeded split.


rule demo_dataset:
    output:
        "results/data/raw/demo.jsonl",
    params:
        rows=config["data"]["demo"]["rows"],
        seed=config["data"]["demo"]["seed"],
    log:
        "logs/data/demo_dataset.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/demo_dataset.py"


rule prepare_data:
    input:
        # Not results/env/verify.json: `all` runs verify first (it has no inputs to wait for) and a failed
        # check stops the run, while a rerun of verify must not make the data stale. (An ancient() input
        # here made Snakemake 9.27 drop this job from the DAG whenever verify had to rerun.)
        sources=data_sources(),
    output:
        train="results/data/train.jsonl",
        val="results/data/val.jsonl",
        test="results/data/test.jsonl",
        stats="results/data/split_stats.json",
        rejected="results/data/rejected.jsonl",
    params:
        sources=data_source_specs(),
        split=config["data"]["split"],
        on_invalid=config["data"]["on_invalid"],
        specialists=specialist_focus_tools(),
        config_files=data_config_files(),
    log:
        "logs/data/prepare_data.log",
        # the skipped rows when a later check stops the stage (a failed job loses its outputs, not its logs)
        rejected="logs/data/prepare_data.rejected.jsonl",
    benchmark:
        "benchmarks/data/prepare_data.tsv"
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/prepare_data.py"


ALL_TARGETS.append("results/data/split_stats.json")
