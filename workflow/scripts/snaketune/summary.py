"""The eval stage's summary: base vs tuned for every specialist (results/eval/summary.{json,md}), with the
BFCL benchmark table when benchmarks ran."""

from __future__ import annotations

import json
from pathlib import Path

from .benchmarks import benchmark_table, read_summaries
from .files import atomic_path, write_json

SUMMARY_METRICS = ("exact_match", "tool_accuracy", "param_precision", "param_recall", "param_f1",
                   "json_valid_rate")


def summarise(base_paths: dict, tuned_paths: dict, out_json, out_md, benchmark_paths=()) -> dict:
    """One row per specialist: base vs tuned for every metric with the delta, targets met (and
    ``ast_accuracy`` under bfcl scoring); then the BFCL benchmark table when benchmarks ran."""
    rows = []
    def read(path):
        return json.loads(Path(path).read_text())

    results = {name: (read(base_paths[name]), read(tuned_paths[name])) for name in sorted(tuned_paths)}
    bfcl_scored = any(tuned.get("scoring") == "bfcl" for _, tuned in results.values())
    summary_metrics = SUMMARY_METRICS + (("ast_accuracy",) if bfcl_scored else ())
    for name, (base, tuned) in results.items():
        row = {"specialist": name, "n_examples": tuned["n_examples"],
               "scoring": tuned.get("scoring", "strict"), "metrics": {}, "targets_met": tuned["targets_met"],
               "targets": {k: v["passed"] for k, v in tuned["targets"].items()}}
        for metric in summary_metrics:
            b = (base["metrics"] or {}).get(metric)
            t = (tuned["metrics"] or {}).get(metric)
            row["metrics"][metric] = {"base": b, "tuned": t,
                                      "delta": (t - b) if b is not None and t is not None else None}
        rows.append(row)
    summary = {"specialists": rows}
    lines = ["# Evaluation summary: base vs tuned", "",
             "| specialist | n | " + " | ".join(summary_metrics) + " | targets met |",
             "|---|---|" + "---|" * len(summary_metrics) + "---|"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for row in rows:
        cells = [f"{fmt(m['base'])} → {fmt(m['tuned'])} "
                 f"({'+' if (m['delta'] or 0) >= 0 else ''}{fmt(m['delta'])})"
                 for m in row["metrics"].values()]
        lines.append(f"| {row['specialist']} | {row['n_examples']} | " + " | ".join(cells)
                     + f" | {'yes' if row['targets_met'] else 'no'} |")
    if bfcl_scored:
        lines += ["", "Scoring: " + ", ".join(f"{r['specialist']} {r['scoring']}" for r in rows)
                  + " (bfcl: BFCL's AST checker, see config/README.md)."]
    if benchmark_paths:
        benchmarks = read_summaries(benchmark_paths)
        summary["benchmarks"] = {b["specialist"]: {
            category: {k: c[k] for k in ("leaderboard_column", "n", "n_available", "sampled", "ast_accuracy")}
            for category, c in b["categories"].items()} for b in benchmarks}
        lines += [""] + benchmark_table(benchmarks)
    write_json(out_json, summary)
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary


__all__ = ["SUMMARY_METRICS", "summarise"]
