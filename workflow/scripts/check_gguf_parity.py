"""Entry script of rule gguf_parity: wires Snakemake's objects to snaketune.parity."""
from snaketune.parity import check_parity
from snaketune.provenance import rule_step

with rule_step(snakemake):
    check_parity(
        merged_dir=snakemake.input.merged,
        ggufs=dict(zip(snakemake.params.quants, snakemake.input.ggufs)),
        test_path=snakemake.input.test,
        out_json=snakemake.output[0],
        settings=snakemake.params.settings,
        lora=snakemake.input.get("lora"),
        base_gguf=snakemake.input.get("base_gguf"),
        base_quant=snakemake.params.base_quant,
        n_prompts=snakemake.params.prompts,
        threads=snakemake.threads,
    )
