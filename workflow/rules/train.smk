# Training stage: the embedded tiny base (rule tiny_base) and one LoRA adapter per specialist (rule train).
# Logic lives in snaketune.modeling and snaketune.training.


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
        # A DeepSpeed config is an input: editing it retrains.
        deepspeed=lambda wc: specialist_settings(wc.specialist)["train"].get("deepspeed") or [],
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
        settings=lambda wc: specialist_settings(wc.specialist),
        base_model=config["base_model"],
        checkpoints=lambda wc: f"results/checkpoints/{wc.specialist}",
    threads: lambda wc: specialist_resources(wc.specialist)["threads"]
    resources:
        gpu=lambda wc: specialist_resources(wc.specialist)["gpus"],
        mem_mb=lambda wc: specialist_resources(wc.specialist)["mem_mb"],
    log:
        "logs/train/{specialist}.log",
    benchmark:
        "benchmarks/train/{specialist}.tsv"
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/train_adapter.py"


ALL_TARGETS.extend(expand("results/adapters/{specialist}", specialist=SPECIALISTS))
