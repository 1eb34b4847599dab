# snaketune: tool-use / instruction data -> evaluated, exported LoRA specialists, reproducibly.
# Stages live in workflow/rules/*.smk; their logic in the snaketune package (workflow/scripts/snaketune).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/env.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/benchmarks.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/audit.smk"


rule all:
    input:
        final_targets(),
    default_target: True
