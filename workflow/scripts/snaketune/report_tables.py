"""Tables for Snakemake's HTML report: the stages' JSON results as small CSV files.

The report's captions (workflow/report/*.rst) show each CSV as a table with docutils' ``csv-table``, so
a reader sees the split statistics, the environment checks, base vs tuned scores and GGUF parity
without opening a JSON file. Numbers are rounded for reading; the JSON files keep full precision.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from .files import atomic_path, read_json

__all__ = ["write_report_tables", "eval_rows", "bfcl_rows", "split_stats_rows"]

METRICS = ("exact_match", "tool_accuracy", "param_f1", "json_valid_rate")
METRIC_NAMES = {"exact_match": "exact match", "tool_accuracy": "tool accuracy", "param_f1": "param F1",
                "json_valid_rate": "JSON valid", "ast_accuracy": "AST accuracy (BFCL)"}


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def split_stats_rows(stats: dict) -> list[list[str]]:
    header = ["split", "rows", "share", "tool-call rows", "text rows", "distinct tools", "mean chars",
              "median chars"]
    total = stats.get("total") or 0
    rows = [header]
    for split in ("train", "val", "test"):
        n = stats["counts"].get(split, 0)
        kinds = stats.get("kinds", {}).get(split, {})
        lengths = stats.get("lengths", {}).get(split, {})
        rows.append([split, str(n), f"{n / total:.1%}" if total else "–", str(kinds.get("tool", 0)),
                     str(kinds.get("text", 0)), str(len(stats.get("per_tool", {}).get(split, {}))),
                     _num(lengths.get("mean_chars"), 1), _num(lengths.get("median_chars"), 1)])
    rows.append(["all", str(total), "100.0%" if total else "–", "", "", "", "", ""])
    # The data stage's one-line summary: what was kept, skipped (rejected.jsonl) and dropped as duplicates.
    rows.append(["skipped: rejected.jsonl", str(stats.get("invalid_rows", 0)), "", "", "", "", "", ""])
    rows.append(["duplicates", str(stats.get("duplicates_removed", 0)), "", "", "", "", "", ""])
    return rows


def verify_rows(report: dict) -> list[list[str]]:
    rows = [["check", "status", "detail", "fix"]]
    for check in report.get("checks", []):
        rows.append([check["name"], check["status"].upper(), check["detail"], check.get("fix") or ""])
    return rows


def eval_rows(summary: dict) -> list[list[str]]:
    """One row per specialist: n, then base → tuned (delta) for each headline metric, targets met."""
    specialists = summary.get("specialists", [])
    # bfcl scoring adds BFCL's AST accuracy (strict-scored runs keep the table they always had)
    bfcl_scored = any("ast_accuracy" in r["metrics"] for r in specialists)
    metrics = METRICS + (("ast_accuracy",) if bfcl_scored else ())
    rows = [["specialist", "n"] + [METRIC_NAMES[m] for m in metrics] + ["targets met"]]
    for row in specialists:
        cells = []
        for metric in metrics:
            m = row["metrics"].get(metric, {})
            delta = m.get("delta")
            sign = "+" if (delta or 0) >= 0 else ""
            cells.append(f"{_num(m.get('base'))} → {_num(m.get('tuned'))}"
                         + (f" ({sign}{_num(delta)})" if delta is not None else ""))
        rows.append([row["specialist"], str(row["n_examples"]), *cells,
                     "yes" if row["targets_met"] else "no"])
    return rows


def parity_rows(reports: dict) -> list[list[str]]:
    """One row per GGUF (and base + LoRA) of every specialist: passed, worst logits, greedy agreement."""
    rows = [["specialist", "file", "passed", "tokenizer", "template", "max abs logit diff", "min cosine",
             "argmax agreement", "greedy same"]]
    for name in sorted(reports):
        for key, result in sorted(reports[name].get("results", {}).items()):
            worst = result.get("worst", {})
            greedy = result.get("greedy", [])
            label = result.get("file", key) + (f" + {result['lora_file']}" if result.get("lora_file") else "")
            rows.append([name, label, _num(result.get("passed")), _num(result.get("tokenizer_match")),
                         _num(result.get("chat_template_match")), _num(worst.get("last_max_abs_diff"), 5),
                         _num(worst.get("last_cosine_min"), 5), _num(worst.get("argmax_agreement_min")),
                         f"{sum(bool(g.get('same_text')) for g in greedy)}/{len(greedy)}"])
    return rows


def bfcl_rows(summaries: list[dict]) -> list[list[str]]:
    """One row per specialist and BFCL category: n (of how many; sample?), AST accuracy base → tuned."""
    rows = [["specialist", "BFCL category", "leaderboard column", "n", "of", "sampled", "AST accuracy base",
             "AST accuracy tuned", "delta", "tool accuracy tuned", "param F1 tuned"]]
    from .bfcl import in_leaderboard_order

    for summary in summaries:
        for category, c in in_leaderboard_order(summary["categories"]):
            acc, tuned = c["ast_accuracy"], c["metrics"]["tuned"]
            delta = ("+" if acc["delta"] >= 0 else "") + _num(acc["delta"])
            rows.append([summary["specialist"], category, c["leaderboard_column"], str(c["n"]),
                         str(c["n_available"]), _num(c["sampled"]), _num(acc["base"]), _num(acc["tuned"]),
                         delta, _num(tuned.get("tool_accuracy")), _num(tuned.get("param_f1"))])
    return rows


def rst_safe(text: str) -> str:
    """A cell that docutils' csv-table shows as written (it parses cells as reStructuredText)."""
    text = re.sub(r"([\\*`|])", r"\\\1", str(text))
    return re.sub(r"_(?=\W|$)", r"\\_", text)


def write_csv(path, rows) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[rst_safe(cell) for cell in row] for row in rows])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


TABLES = {
    "split_stats": lambda path: split_stats_rows(read_json(path)),
    "verify": lambda path: verify_rows(read_json(path)),
    "eval_summary": lambda path: eval_rows(read_json(path)),
}


def write_report_tables(inputs: dict, outputs: dict, specialists=()) -> None:
    """Rules `report_tables` / `parity_table` / `benchmark_table`: one CSV per output, named like its input.

    ``inputs`` / ``outputs``: table name -> path; ``parity`` takes one parity JSON per specialist, ``bfcl``
    one benchmark JSON per specialist.
    """
    for name, out in outputs.items():
        if name == "parity":
            rows = parity_rows({spec: read_json(p) for spec, p in zip(specialists, inputs["parity"])})
        elif name == "bfcl":
            rows = bfcl_rows([read_json(p) for p in inputs["bfcl"]])
        else:
            rows = TABLES[name](inputs[name])
        write_csv(out, rows)
        print(f"report table {name}: {Path(out)} ({len(rows) - 1} rows)")
