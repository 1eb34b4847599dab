"""Entry script of rules report_tables, parity_table and benchmark_table (snaketune.report_tables)."""
from snaketune.provenance import rule_step
from snaketune.report_tables import write_report_tables

with rule_step(snakemake):
    write_report_tables(
        inputs=dict(snakemake.input.items()),
        outputs=dict(snakemake.output.items()),
        specialists=snakemake.params.get("specialists", []),
    )
