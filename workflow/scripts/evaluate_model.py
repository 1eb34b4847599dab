"""Entry script of rules evaluate_base / evaluate_tuned: wires Snakemake's objects to snaketune.evaluation."""
from snaketune.evaluation import evaluate
from snaketune.provenance import rule_step
from snaketune.tracking import log_eval, tracking_settings

with rule_step(snakemake):
    evaluate(
        base_cfg=snakemake.params.base_cfg,
        test_path=snakemake.input.test,
        settings=snakemake.params.spec,
        eval_cfg=snakemake.params.eval_cfg,
        adapter_dir=snakemake.input.get("adapter"),
        out_json=snakemake.output.result,
        out_generations=snakemake.output.generations,
        out_timing=snakemake.output.timing,
        threads=snakemake.threads,
        config_path=snakemake.params.config_path,
        gpus=snakemake.resources.gpu,
    )
    if snakemake.input.get("adapter"):  # evaluate_tuned: its metrics join the MLflow run of the adapter
        log_eval(tracking_settings(snakemake.config, snakemake.wildcards.specialist,
                                   config_path=snakemake.params.config_path),
                 snakemake.input.adapter, snakemake.output.result)
