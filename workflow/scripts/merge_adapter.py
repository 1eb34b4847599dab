"""Entry script of rule merge: wires Snakemake's objects to snaketune.merge."""
from snaketune.merge import merge_adapter
from snaketune.provenance import rule_step

with rule_step(snakemake):
    merge_adapter(
        base=snakemake.params.base_model["name_or_path"],
        adapter_dir=snakemake.input.adapter,
        out_dir=snakemake.output[0],
        revision=snakemake.params.base_model.get("revision"),
        threads=snakemake.threads,
        gpus=snakemake.resources.gpu,
        config_path=snakemake.params.config_path,
    )
