"""Rule lock: merge envs/*.yaml and resolve this machine's lock variant with uv (snaketune.envlock)."""

from snaketune.envlock import write_lock
from snaketune.provenance import rule_step

with rule_step(snakemake):
    write_lock(
        env_files=snakemake.input.envs,
        settings_path=snakemake.input.settings,
        lock_out=snakemake.output.lock,
        report_out=snakemake.output.report,
        committed=snakemake.input.committed,
    )
