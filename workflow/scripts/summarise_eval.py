"""Entry script of rule eval_summary."""
from snaketune.provenance import rule_step
from snaketune.summary import summarise

with rule_step(snakemake):
    names = snakemake.params.specialists
    summarise(
        base_paths=dict(zip(names, snakemake.input.base)),
        tuned_paths=dict(zip(names, snakemake.input.tuned)),
        out_json=snakemake.output.json,
        out_md=snakemake.output.md,
        benchmark_paths=list(snakemake.input.get("benchmarks", [])),
    )
