"""Entry script of rule audit: wires Snakemake's objects to snaketune.audit (no provenance of its own)."""
import sys

from snaketune.audit import run_audit
from snaketune.logs import to_log_file

with to_log_file(snakemake.log[0]):
    run_audit(
        out_json=snakemake.params.report,
        expected=snakemake.params.expected,
        targets=snakemake.params.targets,
        strict=snakemake.params.strict,
        lock_report=snakemake.params.lock_report,
        records_root=snakemake.params.provenance["records"],
        lock_dir=snakemake.params.provenance["locks"],
        echo=sys.__stdout__,  # the table reaches the terminal as well as the log
    )
