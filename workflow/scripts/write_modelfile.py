"""Entry script of rule modelfile: wires Snakemake's objects to snaketune.modelfile."""
from snaketune.logs import to_log_file
from snaketune.modelfile import write_modelfile

with to_log_file(snakemake.log[0]):
    write_modelfile(
        out_path=snakemake.output[0],
        gguf_path=snakemake.input.gguf,
        merged_dir=snakemake.input.merged,
        system_prompt=snakemake.params.system_prompt,
        name=snakemake.params.name,
    )
