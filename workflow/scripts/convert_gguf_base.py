"""Entry script of rule gguf_base: a GGUF dequantized into a plain safetensors model directory."""
from snaketune.gguf_base import convert_gguf_base
from snaketune.provenance import rule_step

with rule_step(snakemake):
    convert_gguf_base(snakemake.input.gguf, snakemake.output[0], threads=snakemake.threads,
                      config_path=snakemake.params.config_path)
