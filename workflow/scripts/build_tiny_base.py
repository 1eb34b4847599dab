"""Entry script of rule tiny_base: wires Snakemake's objects to snaketune.modeling."""
from snaketune.modeling import build_tiny_base
from snaketune.provenance import rule_step

with rule_step(snakemake):
    build_tiny_base(
        train_path=snakemake.input.train,
        out_dir=snakemake.output[0],
        tiny_cfg=dict(snakemake.params.shape),
        config_path=snakemake.params.config_path,
    )
