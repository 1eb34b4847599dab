"""Entry script of rules benchmark_base / benchmark_tuned (snaketune.benchmarks.evaluate_benchmarks)."""
from snaketune.benchmarks import evaluate_benchmarks
from snaketune.provenance import rule_step

with rule_step(snakemake):
    evaluate_benchmarks(
        base_cfg=snakemake.params.base_cfg,
        rows_paths=dict(zip(snakemake.params.benchmarks, snakemake.input.rows)),
        settings=snakemake.params.spec,
        eval_cfg=snakemake.params.eval_cfg,
        adapter_dir=snakemake.input.get("adapter"),
        out_json=snakemake.output.result,
        out_generations=snakemake.output.generations,
        threads=snakemake.threads,
        config_path=snakemake.params.config_path,
        gpus=snakemake.resources.gpu,
    )
