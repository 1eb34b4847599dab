"""Entry script of rule lora_gguf: wires Snakemake's objects to snaketune.gguf_export."""
from snaketune.gguf_export import write_lora_gguf
from snaketune.provenance import rule_step

with rule_step(snakemake):
    write_lora_gguf(
        adapter_dir=snakemake.input.adapter,
        base=snakemake.params.base_model["name_or_path"],
        out_path=snakemake.output[0],
        name=snakemake.wildcards.specialist,
        revision=snakemake.params.base_model.get("revision"),
        config_path=snakemake.params.config_path,
    )
