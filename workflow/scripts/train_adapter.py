"""Entry script of rule train: wires Snakemake's objects to snaketune.training."""
from snaketune.provenance import rule_step
from snaketune.training import train_adapter

with rule_step(snakemake):
    train_adapter(
        base_dir=snakemake.params.base_model["name_or_path"],
        train_path=snakemake.input.train,
        val_path=snakemake.input.val,
        out_dir=snakemake.output.adapter,
        timing_path=snakemake.output.timing,
        settings=snakemake.params.settings,
        checkpoint_dir=snakemake.params.checkpoints,
        base_cfg=dict(snakemake.params.base_model),
        threads=snakemake.threads,
        gpus=snakemake.resources.gpu,
    )
