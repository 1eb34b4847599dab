# Eval stage: base and tuned model scored the same way on each specialist's test subset.


rule evaluate_base:
    input:
        base=base_model_input(),
        test="results/data/test.jsonl",
    output:
        result="results/eval/base/{specialist}.json",
        generations="results/eval/base/{specialist}.generations.jsonl",
        timing="results/eval/base/{specialist}.timing.json",
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        spec=eval_spec,
        eval_cfg=eval_params(),
        base_cfg=config["base_model"],
    threads: 1
    resources:
        gpu=eval_gpus,
        mem_mb=specialist_mem_mb,
    log:
        "logs/eval/base/{specialist}.log",
    benchmark:
        "benchmarks/eval/base/{specialist}.tsv"
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/evaluate_model.py"


# The same eval with the specialist's adapter on the base.
use rule evaluate_base as evaluate_tuned with:
    input:
        base=base_model_input(),
        adapter="results/adapters/{specialist}",
        test="results/data/test.jsonl",
    output:
        result="results/eval/tuned/{specialist}.json",
        generations="results/eval/tuned/{specialist}.generations.jsonl",
        timing="results/eval/tuned/{specialist}.timing.json",
    log:
        "logs/eval/tuned/{specialist}.log",
    benchmark:
        "benchmarks/eval/tuned/{specialist}.tsv"


rule eval_summary:
    input:
        base=expand("results/eval/base/{specialist}.json", specialist=SPECIALISTS),
        tuned=expand("results/eval/tuned/{specialist}.json", specialist=SPECIALISTS),
        benchmarks=benchmark_results,
    output:
        json="results/eval/summary.json",
        md="results/eval/summary.md",
    params:
        provenance=PROVENANCE,
        specialists=SPECIALISTS,
    log:
        "logs/eval/summary.log",
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/summarise_eval.py"
