from snaketune.demo import write_demo_dataset
from snaketune.provenance import rule_step

with rule_step(snakemake):
    write_demo_dataset(snakemake.output[0], snakemake.params.rows, snakemake.params.seed)
