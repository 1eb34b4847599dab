# Benchmark stage: BFCL's AST categories, converted from the pinned bfcl-eval wheel, scored for every
# specialist and its base with bfcl scoring. Off unless eval.benchmarks lists some.
# Logic: snaketune.benchmarks.


wildcard_constraints:
    benchmark="|".join(BENCHMARKS) or "bfcl_[a-z_]+",


# Downloads the wheel (pip download --no-deps, never installed) or copies eval.bfcl_wheel; its sha256 is
# checked, and as a file output it is hashed in the rule's provenance record. Local: cluster nodes may
# have no route to PyPI.
localrules:
    bfcl_wheel,


rule bfcl_wheel:
    output:
        BFCL_WHEEL,
    params:
        provenance=PROVENANCE,
        version=BFCL_VERSION,
        sha256=BFCL_WHEEL_SHA256,
        source=config["eval"]["bfcl_wheel"],
    log:
        "logs/benchmarks/bfcl_wheel.log",
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/fetch_bfcl_wheel.py"


rule benchmark_rows:
    input:
        wheel=BFCL_WHEEL,
    output:
        rows="results/benchmarks/{benchmark}.jsonl",
        stats="results/benchmarks/{benchmark}.json",
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        max_rows=config["eval"]["benchmark_max_rows"],
        seed=config["eval"]["benchmark_seed"],
    log:
        "logs/benchmarks/{benchmark}.log",
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/prepare_benchmark.py"


rule benchmark_base:
    input:
        base=base_model_input(),
        rows=expand("results/benchmarks/{benchmark}.jsonl", benchmark=BENCHMARKS),
    output:
        result="results/eval/benchmarks/base/{specialist}.json",
        generations="results/eval/benchmarks/base/{specialist}.generations.jsonl",
    params:
        config_path=CONFIG_PATH,
        provenance=PROVENANCE,
        spec=benchmark_settings,
        eval_cfg=benchmark_eval_params(),
        base_cfg=config["base_model"],
        benchmarks=BENCHMARKS,
    threads: 1
    resources:
        gpu=eval_gpus,
        mem_mb=specialist_mem_mb,
    log:
        "logs/eval/benchmarks/base/{specialist}.log",
    benchmark:
        "benchmarks/eval/benchmarks/base/{specialist}.tsv"
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/evaluate_benchmarks.py"


use rule benchmark_base as benchmark_tuned with:
    input:
        base=base_model_input(),
        adapter="results/adapters/{specialist}",
        rows=expand("results/benchmarks/{benchmark}.jsonl", benchmark=BENCHMARKS),
    output:
        result="results/eval/benchmarks/tuned/{specialist}.json",
        generations="results/eval/benchmarks/tuned/{specialist}.generations.jsonl",
    log:
        "logs/eval/benchmarks/tuned/{specialist}.log",
    benchmark:
        "benchmarks/eval/benchmarks/tuned/{specialist}.tsv"


rule benchmark_summary:
    input:
        base="results/eval/benchmarks/base/{specialist}.json",
        tuned="results/eval/benchmarks/tuned/{specialist}.json",
        stats=expand("results/benchmarks/{benchmark}.json", benchmark=BENCHMARKS),
    output:
        "results/eval/benchmarks/{specialist}.json",
    params:
        provenance=PROVENANCE,
        benchmarks=BENCHMARKS,
    log:
        "logs/eval/benchmarks/{specialist}.log",
    conda:
        "../../envs/eval.yaml"
    script:
        "../scripts/summarise_benchmarks.py"


rule benchmark_table:
    input:
        bfcl=expand("results/eval/benchmarks/{specialist}.json", specialist=SPECIALISTS),
    output:
        bfcl=report(
            "results/report/bfcl.csv",
            caption="../report/bfcl.rst",
            category="Evaluation",
            labels={"table": "BFCL categories"},
        ),
    params:
        provenance=PROVENANCE,
        specialists=SPECIALISTS,
    log:
        "logs/report/benchmark_table.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/write_report_tables.py"
