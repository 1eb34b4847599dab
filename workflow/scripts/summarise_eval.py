"""Entry script of rule eval_summary."""
from snaketune.evaluation import summarise
from snaketune.logs import to_log_file

with to_log_file(snakemake.log[0]):
    names = snakemake.params.specialists
    summarise(
        base_paths=dict(zip(names, snakemake.input.base)),
        tuned_paths=dict(zip(names, snakemake.input.tuned)),
        out_json=snakemake.output.json,
        out_md=snakemake.output.md,
    )
