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
        spec=lambda wc: eval_settings(wc.specialist),
        eval_cfg=eval_params(),
        base_cfg=config["base_model"],
    threads: 1
    resources:
        gpu=lambda wc: min(specialist_resources(wc.specialist)["gpus"], 1),
        mem_mb=lambda wc: specialist_resources(wc.specialist)["mem_mb"],
    log:
        "logs/eval/base/{specialist}.log",
    benchmark:
        "benchmarks/eval/base/{specialist}.tsv"
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/evaluate_model.py"


rule evaluate_tuned:
    input:
        base=base_model_input(),
        adapter="results/adapters/{specialist}",
        test="results/data/test.jsonl",
    output:
        result="results/eval/tuned/{specialist}.json",
        generations="results/eval/tuned/{specialist}.generations.jsonl",
        timing="results/eval/tuned/{specialist}.timing.json",
    params:
        spec=lambda wc: eval_settings(wc.specialist),
        eval_cfg=eval_params(),
        base_cfg=config["base_model"],
    threads: 1
    resources:
        gpu=lambda wc: min(specialist_resources(wc.specialist)["gpus"], 1),
        mem_mb=lambda wc: specialist_resources(wc.specialist)["mem_mb"],
    log:
        "logs/eval/tuned/{specialist}.log",
    benchmark:
        "benchmarks/eval/tuned/{specialist}.tsv"
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/evaluate_model.py"


rule eval_summary:
    input:
        base=expand("results/eval/base/{specialist}.json", specialist=SPECIALISTS),
        tuned=expand("results/eval/tuned/{specialist}.json", specialist=SPECIALISTS),
        benchmarks=benchmark_results,
    output:
        json="results/eval/summary.json",
        md="results/eval/summary.md",
    params:
        specialists=SPECIALISTS,
    log:
        "logs/eval/summary.log",
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/summarise_eval.py"


ALL_TARGETS.append("results/eval/summary.md")
