"""Entry script of rule modelfile: wires Snakemake's objects to snaketune.modelfile."""
from snaketune.modelfile import write_modelfile
from snaketune.provenance import rule_step

with rule_step(snakemake):
    write_modelfile(
        out_path=snakemake.output[0],
        gguf_path=snakemake.input.gguf,
        merged_dir=snakemake.input.merged,
        system_prompt=snakemake.params.system_prompt,
        name=snakemake.params.name,
    )
