"""Entry script of rule bfcl_wheel: the pinned bfcl-eval wheel (downloaded or copied, sha256 checked)."""
from snaketune.bfcl import fetch_wheel
from snaketune.provenance import rule_step

with rule_step(snakemake):
    path = fetch_wheel(snakemake.output[0], snakemake.params.version, snakemake.params.sha256,
                       source=snakemake.params.source)
    print(f"bfcl-eval {snakemake.params.version}: {path} (sha256 {snakemake.params.sha256})")
