"""Entry script of rule merge: wires Snakemake's objects to snaketune.merge."""
from snaketune.gpu_slots import gpu_slot
from snaketune.logs import to_log_file
from snaketune.merge import merge_adapter

with to_log_file(snakemake.log[0]), gpu_slot(snakemake.resources.gpu):
    merge_adapter(
        base=snakemake.params.base_model["name_or_path"],
        adapter_dir=snakemake.input.adapter,
        out_dir=snakemake.output[0],
        revision=snakemake.params.base_model.get("revision"),
        threads=snakemake.threads,
        gpus=snakemake.resources.gpu,
    )
