"""Entry script of rule train: wires Snakemake's objects to snaketune.training."""
from snaketune.gpu_slots import gpu_slot
from snaketune.logs import to_log_file
from snaketune.training import train_adapter

with to_log_file(snakemake.log[0]), gpu_slot(snakemake.resources.gpu):
    train_adapter(
        base_dir=snakemake.params.base_model["name_or_path"],
        train_path=snakemake.input.train,
        val_path=snakemake.input.val,
        out_dir=snakemake.output[0],
        settings=snakemake.params.settings,
        checkpoint_dir=snakemake.params.checkpoints,
        base_cfg=dict(snakemake.params.base_model),
        threads=snakemake.threads,
        gpus=snakemake.resources.gpu,
    )
