"""Entry script of rule tiny_base: wires Snakemake's objects to snaketune.modeling."""
from snaketune.logs import to_log_file
from snaketune.modeling import build_tiny_base

with to_log_file(snakemake.log[0]):
    build_tiny_base(
        train_path=snakemake.input.train,
        out_dir=snakemake.output[0],
        tiny_cfg=dict(snakemake.params.shape),
    )
