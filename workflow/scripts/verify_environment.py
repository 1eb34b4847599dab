"""Rule verify: check this machine against the committed lock and the config (snaketune.verify)."""

from snaketune.provenance import rule_step
from snaketune.verify import verify_environment

with rule_step(snakemake):
    verify_environment(
        locks={"cpu": snakemake.input.lock_cpu, "cuda": snakemake.input.lock_cuda},
        data_paths=snakemake.params.data,
        out_json=snakemake.output[0],
        settings=snakemake.params.settings,
    )
