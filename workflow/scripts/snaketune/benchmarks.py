"""Benchmark stage: public benchmarks (BFCL's AST categories) as eval targets for specialists and their base.

``prepare_benchmark`` converts one BFCL category from the pinned wheel into canonical rows (capped by a
seeded sample when asked); ``evaluate_benchmarks`` scores one model on every configured category with
``bfcl`` scoring through the eval stage's own generation path (``evaluation.generate_records``), prompts
showing every tool's full JSON Schema and the specialist's system prompt; ``summarise_benchmarks`` sets
base and tuned side by side per category, under BFCL's own category names and leaderboard columns.
"""

from __future__ import annotations

import random

import jsonschema
import yaml

from . import metrics
from .bfcl import BFCL_VERSION, LEADERBOARD_COLUMNS, convert_category, in_leaderboard_order
from .devices import device_preference, resolve_device
from .errors import SnaketuneError
from .evaluation import SCHEMA_PATH as EVAL_SCHEMA_PATH
from .evaluation import generate_records, load_for_eval, model_fingerprint
from .files import read_json, read_jsonl, sha256_file, sha256_tree, write_json, write_jsonl

SCHEMA_PATH = EVAL_SCHEMA_PATH.with_name("benchmark_result.schema.yaml")
PREFIX = "bfcl_"
PROMPT_FORMAT = "chat format {}; every tool's full JSON Schema; the specialist's system prompt"


def category_of(benchmark: str, config_path: str | None = None) -> str:
    """BFCL's category of a configured benchmark name (``bfcl_simple_python`` -> ``simple_python``)."""
    category = benchmark[len(PREFIX):] if benchmark.startswith(PREFIX) else None
    if category not in LEADERBOARD_COLUMNS:
        raise SnaketuneError(config_path, f"{benchmark!r} is not a known benchmark",
                             field="eval.benchmarks",
                             fix="use " + ", ".join(PREFIX + c for c in LEADERBOARD_COLUMNS))
    return category


def sample_indices(n_available: int, max_rows: int | None, seed: int, category: str) -> list[int]:
    """Which rows a capped run scores: all, or a seeded sample of ``max_rows`` kept in file order."""
    if not max_rows or max_rows >= n_available:
        return list(range(n_available))
    return sorted(random.Random(f"{seed}:{category}").sample(range(n_available), max_rows))


def prepare_benchmark(wheel_path, benchmark: str, out_rows, out_stats, *, max_rows: int | None = None,
                      seed: int = 0, config_path: str | None = None) -> dict:
    """One benchmark's rows file (canonical rows, BFCL ids) and its stats (n, sample, types mapped, wheel)."""
    category = category_of(benchmark, config_path)
    converted, type_mappings = convert_category(wheel_path, category)
    keep = sample_indices(len(converted), max_rows, seed, category)
    rows = [{"id": converted[i]["bfcl"]["id"], "kind": "tool", **converted[i]} for i in keep]
    stats = {"benchmark": benchmark, "category": category,
             "leaderboard_column": LEADERBOARD_COLUMNS[category], "n": len(rows),
             "n_available": len(converted), "sampled": len(rows) < len(converted),
             "max_rows": max_rows, "seed": seed, "type_mappings": type_mappings,
             "bfcl_version": BFCL_VERSION, "wheel_sha256": sha256_file(wheel_path)}
    write_jsonl(out_rows, rows)
    write_json(out_stats, stats)
    print(f"{benchmark}: {stats['n']} of {stats['n_available']} rows"
          + (f" (seeded sample, seed {seed})" if stats["sampled"] else ""))
    return stats


# ---------------------------------------------------------------- schema

def _validator(ref: str | None = None):
    """A validator of benchmark_result.schema.yaml (or one of its $defs), which refers to eval_result's."""
    from referencing import Registry, Resource

    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    eval_schema = yaml.safe_load(EVAL_SCHEMA_PATH.read_text(encoding="utf-8"))
    registry = Registry().with_resource(EVAL_SCHEMA_PATH.name, Resource.from_contents(eval_schema))
    if ref:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{ref}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_benchmark_result(result: dict, ref: str | None = None) -> None:
    err = jsonschema.exceptions.best_match(_validator(ref).iter_errors(result))
    if err is not None:  # our own bug: fail before anything is written
        raise RuntimeError(f"benchmark result breaks {SCHEMA_PATH.name}: "
                           f"{'/'.join(map(str, err.absolute_path))}: {err.message}")


# ---------------------------------------------------------------- scoring one model

def prompt_settings(settings: dict) -> dict:
    """What a benchmark prompt takes from a specialist: its system prompt; every tool shown in full."""
    return {"name": settings["name"], "system_prompt": settings.get("system_prompt", ""), "focus_tools": [],
            "train": {"tools_rendered": "all"}}


def evaluate_benchmarks(*, base_cfg: dict, rows_paths: dict, settings: dict, eval_cfg: dict, out_json,
                        out_generations, adapter_dir=None, threads: int | None = None,
                        progress: bool = True, config_path: str | None = None, gpus: int = 0) -> dict:
    """Score one model (base, or base + adapter) on every benchmark of ``rows_paths`` ({benchmark: rows}),
    on the device ``resources.device`` and the job's ``gpus`` choose (snaketune.devices)."""
    device = resolve_device(gpus, device_preference(settings), config_path=config_path)
    settings = prompt_settings(settings)
    model, tokenizer = load_for_eval(base_cfg, adapter_dir, threads, config_path=config_path, device=device)
    categories, all_records, total_tokens = {}, [], 0
    for benchmark, path in rows_paths.items():
        rows = read_jsonl(path)
        records, n_generated, seconds = generate_records(model, tokenizer, rows, settings, eval_cfg,
                                                         scoring="bfcl", progress=progress)
        for rec in records:
            rec["benchmark"] = benchmark
        all_records.extend(records)
        total_tokens += n_generated
        category = category_of(benchmark)
        scores = metrics.aggregate(r["verdict"] for r in records)
        categories[category] = {"benchmark": benchmark, "n": len(records), "metrics": scores,
                                "rows_file": "sha256:" + sha256_file(path)}
        print(f"{settings['name']} {category}: ast_accuracy={scores['ast_accuracy']:.3f} (n={len(records)}, "
              f"{seconds:.1f} s, {n_generated} tokens)")
    result = {
        "specialist": settings["name"],
        "model": "tuned" if adapter_dir is not None else "base",
        "scoring": "bfcl",
        "categories": categories,
        "generation": {"batch_size": eval_cfg["batch_size"], "max_new_tokens": eval_cfg["max_new_tokens"],
                       "decoding": "greedy", "generated_tokens": total_tokens,
                       "system_prompt": settings["system_prompt"],
                       "prompt_format": PROMPT_FORMAT.format(_format_label(tokenizer)), "device": device},
        "hashes": {"base_model": model_fingerprint(base_cfg),
                   "adapter": ("sha256:" + sha256_tree(adapter_dir)) if adapter_dir is not None else None},
    }
    validate_benchmark_result(result, "model_result")
    write_jsonl(out_generations, all_records)
    write_json(out_json, result)
    return result


def _format_label(tokenizer) -> str:
    from .chat_format import format_of

    fmt = format_of(tokenizer)
    return f"{fmt.name} (sha256 {fmt.sha256[:12]})"


# ---------------------------------------------------------------- base vs tuned

TABLE_METRICS = ("exact_match", "tool_accuracy", "param_f1", "json_valid_rate")


def summarise_benchmarks(base_path, tuned_path, stats_paths: dict, out_json) -> dict:
    """``results/eval/benchmarks/{specialist}.json``: per BFCL category n (of how many, sampled?), ast
    accuracy base vs tuned with the delta, and the other metrics of both."""
    base, tuned = read_json(base_path), read_json(tuned_path)
    categories = {}
    wheel = None
    for benchmark, path in stats_paths.items():
        stats = read_json(path)
        wheel = stats["wheel_sha256"]  # one wheel file feeds every category
        category = stats["category"]
        b = base["categories"][category]["metrics"]
        t = tuned["categories"][category]["metrics"]
        categories[category] = {
            "benchmark": benchmark, "leaderboard_column": stats["leaderboard_column"],
            "n": tuned["categories"][category]["n"], "n_available": stats["n_available"],
            "sampled": stats["sampled"], "seed": stats["seed"],
            "ast_accuracy": {"base": b["ast_accuracy"], "tuned": t["ast_accuracy"],
                             "delta": t["ast_accuracy"] - b["ast_accuracy"]},
            "metrics": {"base": b, "tuned": t},
        }
    summary = {"specialist": tuned["specialist"], "scoring": "bfcl", "bfcl_version": BFCL_VERSION,
               "wheel_sha256": wheel,
               "prompt_format": tuned["generation"]["prompt_format"],
               "system_prompt": tuned["generation"]["system_prompt"],
               "base_model": tuned["hashes"]["base_model"], "adapter": tuned["hashes"]["adapter"],
               "categories": categories}
    validate_benchmark_result(summary)
    write_json(out_json, summary)
    return summary


def fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def benchmark_table(summaries: list[dict]) -> list[str]:
    """Markdown lines: one row per specialist and BFCL category (for results/eval/summary.md)."""
    note = ("Same base, same category names as the public leaderboard; the prompt format is this project's "
            "(see README: Comparing with the BFCL leaderboard), and n may be a sample.")
    lines = ["## BFCL (Berkeley Function Calling Leaderboard), AST categories, bfcl scoring", "", note, "",
             "| specialist | BFCL category | leaderboard column | n | AST accuracy base → tuned (delta) | "
             + " | ".join(f"{m} (tuned)" for m in TABLE_METRICS) + " |",
             "|---|---|---|---|---|" + "---|" * len(TABLE_METRICS)]
    for summary in summaries:
        for category, c in in_leaderboard_order(summary["categories"]):
            acc = c["ast_accuracy"]
            n = f"{c['n']} of {c['n_available']}" + (" (sample)" if c["sampled"] else "")
            sign = "+" if acc["delta"] >= 0 else ""
            lines.append(f"| {summary['specialist']} | {category} | {c['leaderboard_column']} | {n} | "
                         f"{fmt(acc['base'])} → {fmt(acc['tuned'])} ({sign}{fmt(acc['delta'])}) | "
                         + " | ".join(fmt(c["metrics"]["tuned"].get(m)) for m in TABLE_METRICS) + " |")
    return lines


def read_summaries(paths) -> list[dict]:
    return [read_json(p) for p in sorted(paths, key=str)]


__all__ = [
    "benchmark_table",
    "category_of",
    "evaluate_benchmarks",
    "prepare_benchmark",
    "summarise_benchmarks",
    "read_summaries",
    "prompt_settings",
    "sample_indices",
    "validate_benchmark_result",
]
