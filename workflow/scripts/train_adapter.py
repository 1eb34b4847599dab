"""Entry script of rule train: wires Snakemake's objects to snaketune.training (via snaketune.launch)."""
from snaketune.launch import launch_training
from snaketune.provenance import rule_step
from snaketune.tracking import tracking_settings

with rule_step(snakemake) as devices:
    # One process: train_adapter right here; gpus > 1 (or train.processes > 1): torchrun, one process each.
    launch_training(
        devices,
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
        config_path=snakemake.params.config_path,
        # from the config, not a param: reporting changes no result, so toggling it must rerun nothing
        tracking=tracking_settings(snakemake.config, snakemake.wildcards.specialist,
                                   config_path=snakemake.params.config_path),
    )
