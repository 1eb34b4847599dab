"""Entry script of rule prepare_data: wires Snakemake's objects to snaketune.data."""
from snaketune.data import prepare_data
from snaketune.provenance import rule_step

with rule_step(snakemake):
    split = dict(snakemake.params.split)
    stats = prepare_data(
        sources=snakemake.params.sources,
        outputs={name: snakemake.output[name] for name in ("train", "val", "test", "stats", "rejected")},
        ratios={k: split[k] for k in ("train", "val", "test")},
        seed=split["seed"],
        on_invalid=snakemake.params.on_invalid,
        specialists=snakemake.params.specialists,
        config_files=snakemake.params.config_files,
        rejected_log=snakemake.log.rejected,
    )
print(stats["summary"])  # the one line the terminal shows (the log has it too)
