# Training stage: the embedded tiny base (rule tiny_base) and one LoRA adapter per specialist (rule train).
# Logic lives in snaketune.modeling and snaketune.training.
# Side output of rule train, not declared: results/tracking/ (TensorBoard events, the MLflow store, W&B's
# files) as train.report_to asks; declared, Snakemake would delete the run history before each rerun
# (snaketune.tracking).


rule tiny_base:
    input:
        train="results/data/train.jsonl",
    output:
        directory(TINY_BASE_DIR),
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        shape=config["tiny_base"],
    threads: 1
    resources:
        mem_mb=2000,
    log:
        "logs/train/tiny_base.log",
    benchmark:
        "benchmarks/train/tiny_base.tsv"
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/build_tiny_base.py"


rule train:
    input:
        base=base_model_input,
        train="results/data/train.jsonl",
        val="results/data/val.jsonl",
        deepspeed=deepspeed_config,
    output:
        adapter=report(
            directory("results/adapters/{specialist}"),
            patterns=["{plot}.png"],
            caption="../report/loss_curve.rst",
            category="Training",
            subcategory="{specialist}",
            labels={"specialist": "{specialist}", "figure": "loss curve"},
        ),
        timing="results/adapters/{specialist}.timing.json",
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        settings=specialist_spec,
        base_model=config["base_model"],
        checkpoints="results/checkpoints/{specialist}",
    threads: specialist_threads
    resources:
        gpu=specialist_gpus,
        mem_mb=specialist_mem_mb,
    log:
        "logs/train/{specialist}.log",
    benchmark:
        "benchmarks/train/{specialist}.tsv"
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/train_adapter.py"
