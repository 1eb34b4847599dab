"""What the config asks the workflow to build: rule all's targets, and which GGUF types export uses where."""

from __future__ import annotations

# GGUF types from most to least precise.
QUANTS_BY_PRECISION = ("f32", "f16", "q8_0")


def lora_base_quant(quants) -> str:
    """The type of the base GGUF that LoRA GGUFs apply to: the most precise configured one (parity holds
    base + LoRA to that type's limits)."""
    return next(q for q in QUANTS_BY_PRECISION if q in quants)


def modelfile_quant(quants) -> str:
    """The GGUF an Ollama Modelfile runs: q8_0 when configured, else the most compact configured type."""
    return next(q for q in reversed(QUANTS_BY_PRECISION) if q in quants)


def base_gguf_path(quants) -> str:
    return f"results/gguf/base/base.{lora_base_quant(quants)}.gguf"


def final_targets(config: dict) -> list[str]:
    """Every result `rule all` builds (and the audit expects), for a validated config (defaults filled)."""
    specialists = sorted(config["specialists"])
    export = config["export"]
    targets = ["results/env/requirements.lock.txt", "results/env/lock_report.json", "results/env/verify.json",
               "results/data/split_stats.json"]
    targets += [f"results/adapters/{name}" for name in specialists]
    targets.append("results/eval/summary.md")
    if export["enabled"]:
        targets += [f"results/gguf/{name}.{quant}.gguf" for name in specialists for quant in export["quants"]]
        targets += [f"results/gguf/{name}.Modelfile" for name in specialists]
        if export["lora_gguf"]:
            targets += [f"results/gguf/{name}.lora.gguf" for name in specialists]
            targets.append(base_gguf_path(export["quants"]))
        if export["parity"]:
            targets += [f"results/gguf/{name}.parity.json" for name in specialists]
    targets += [
        "results/report/split_stats.csv",
        "results/report/verify.csv",
        "results/report/eval_summary.csv",
    ]
    if export["enabled"] and export["parity"]:
        targets.append("results/report/parity.csv")
    if config["eval"].get("benchmarks"):
        targets += [f"results/eval/benchmarks/{name}.json" for name in specialists]
        targets.append("results/report/bfcl.csv")
    return targets


__all__ = [
    "QUANTS_BY_PRECISION",
    "lora_base_quant",
    "modelfile_quant",
    "base_gguf_path",
    "final_targets",
]
