"""Entry script of rule benchmark_summary: base vs tuned per BFCL category for one specialist."""
from snaketune.benchmarks import summarise_benchmarks
from snaketune.provenance import rule_step

with rule_step(snakemake):
    summarise_benchmarks(
        base_path=snakemake.input.base,
        tuned_path=snakemake.input.tuned,
        stats_paths=dict(zip(snakemake.params.benchmarks, snakemake.input.stats)),
        out_json=snakemake.output[0],
    )
