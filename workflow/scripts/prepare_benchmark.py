"""Entry script of rule benchmark_rows: one BFCL category as canonical rows (+ its stats)."""
from snaketune.benchmarks import prepare_benchmark
from snaketune.provenance import rule_step

with rule_step(snakemake):
    prepare_benchmark(
        snakemake.input.wheel,
        snakemake.wildcards.benchmark,
        snakemake.output.rows,
        snakemake.output.stats,
        max_rows=snakemake.params.max_rows,
        seed=snakemake.params.seed,
        config_path=snakemake.params.config_path,
    )
