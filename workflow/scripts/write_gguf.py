"""Entry script of rules gguf and base_gguf: wires Snakemake's objects to snaketune.gguf_export."""
from snaketune.gguf_export import write_model_gguf
from snaketune.provenance import rule_step

with rule_step(snakemake):
    write_model_gguf(
        source=snakemake.params.source,
        out_path=snakemake.output[0],
        quant=snakemake.wildcards.quant,
        name=snakemake.params.name,
        revision=snakemake.params.revision,
        untie=snakemake.params.untie,
        template=snakemake.params.template,
        chat_template=snakemake.params.get("chat_template"),  # base_gguf: base_model.chat_template
        config_path=snakemake.params.get("config_path"),  # base_gguf: the source is the config's base
    )
