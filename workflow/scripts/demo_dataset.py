"""Entry script of rule demo_dataset: wires Snakemake's objects to snaketune.demo."""
from snaketune.demo import write_demo_dataset
from snaketune.provenance import rule_step

with rule_step(snakemake):
    write_demo_dataset(
        snakemake.output[0],
        snakemake.params.rows,
        snakemake.params.seed,
        config_path=snakemake.params.config_path,
    )
