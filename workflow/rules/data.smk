# Data stage: the demo dataset (when enabled) and the validated, deduplicated, seeded split.


rule demo_dataset:
    output:
        "results/data/raw/demo.jsonl",
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
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
        # verify.json is no input: `all` runs verify first (it has no inputs) and a failed check stops the
        # run, while rerunning verify must not make the data stale.
        sources=data_sources(),
    output:
        train="results/data/train.jsonl",
        val="results/data/val.jsonl",
        test="results/data/test.jsonl",
        stats="results/data/split_stats.json",
        rejected="results/data/rejected.jsonl",
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
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
