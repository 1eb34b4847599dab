from snaketune.demo import write_demo_dataset
from snaketune.logs import to_log_file

with to_log_file(snakemake.log[0]):
    write_demo_dataset(snakemake.output[0], snakemake.params.rows, snakemake.params.seed)
