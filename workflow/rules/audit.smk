# Audit and report: `snakemake audit` checks every result against its provenance record (never part of
# `rule all`); report_tables / parity_table turn the stages' JSON results into the tables that
# `snakemake --report results/report.html` shows. Logic lives in snaketune.audit and snaketune.report_tables.


report: "../report/workflow.rst"


# The audit reads the environment snakemake runs in and writes results/audit.json itself: with no
# inputs it never makes Snakemake rebuild what it is auditing, and with no outputs it runs every
# time it is asked for (a failed audit keeps its JSON, which Snakemake would delete as an output).
localrules:
    audit,


rule audit:
    params:
        provenance=PROVENANCE,
        expected=audit_expected_params,
        targets=final_targets(),
        strict=audit_strict(),
        report="results/audit.json",
        lock_report="results/env/lock_report.json",  # its index drift becomes notes
    log:
        "logs/audit.log",
    conda:
        "../../envs/tooling.yaml"  # the driver's env; with --use-conda its check of installed versions reads this env
    script:
        "../scripts/audit_results.py"


rule report_tables:
    input:
        split_stats="results/data/split_stats.json",
        verify="results/env/verify.json",
        eval_summary="results/eval/summary.json",
    output:
        split_stats=report(
            "results/report/split_stats.csv",
            caption="../report/split_stats.rst",
            category="Data",
            labels={"table": "split statistics"},
        ),
        verify=report(
            "results/report/verify.csv",
            caption="../report/verify.rst",
            category="Environment",
            labels={"table": "environment checks"},
        ),
        eval_summary=report(
            "results/report/eval_summary.csv",
            caption="../report/eval_summary.rst",
            category="Evaluation",
            labels={"table": "base vs tuned"},
        ),
    params:
        provenance=PROVENANCE,
    log:
        "logs/report/report_tables.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/write_report_tables.py"


rule parity_table:
    input:
        parity=expand("results/gguf/{specialist}.parity.json", specialist=SPECIALISTS),
    output:
        parity=report(
            "results/report/parity.csv",
            caption="../report/parity.rst",
            category="Export",
            labels={"table": "GGUF parity"},
        ),
    params:
        provenance=PROVENANCE,
        specialists=SPECIALISTS,
    log:
        "logs/report/parity_table.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/write_report_tables.py"
