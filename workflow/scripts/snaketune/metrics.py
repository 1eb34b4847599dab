"""Function-calling metrics for the eval stage: parse generated tool calls, score them, aggregate.

Pure functions only. Parsing uses ``json.loads`` and never raises on model output; scoring
compares JSON values by value (3 == 3.0) while keeping types apart (True != 1, "3" != 3).
Several calls in one turn are matched as a multiset, regardless of order (as BFCL's parallel
checker does).

Two scorings (``eval.scoring``). ``strict``: one gold answer per row, as above. ``bfcl``: the same
verdicts from the same parsed calls, plus BFCL's AST verdict (``ast_valid``, from snaketune.bfcl: acceptable
values, optional arguments, string normalisation, int for float) and parameter counts over the acceptable
sets instead of the single gold; aggregated as ``ast_accuracy`` overall, per tool and per category.
"""

from __future__ import annotations

import json
import math
from collections import Counter

from . import bfcl
from .errors import SnaketuneError

__all__ = [
    "parse_tool_calls", "gold_calls", "score_example", "aggregate", "targets_report", "text_exact_match",
    "token_f1", "score_text", "aggregate_text", "SCORINGS",
]

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"

TOOL_METRICS = ("exact_match", "tool_accuracy", "param_precision", "param_recall", "param_f1",
                "json_valid_rate", "unknown_tool_rate")
SCORINGS = ("strict", "bfcl")
_NOT_TARGETS = {"n", "per_tool", "per_category", "answers", "param_tp", "param_fp", "param_fn"}


# ---------------------------------------------------------------- parsing

def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # 1e999 would come back as inf, which JSON cannot write again
        raise ValueError(f"{text} overflows a float")
    return value


def _loads(text: str):
    """Strict JSON (no NaN / Infinity); raises ValueError on anything else, including deep nesting."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as err:
        raise ValueError("nested too deeply") from err


def _call_from_block(body: str):
    """A {"name", "arguments"} dict from one block's text, or None when it is malformed."""
    try:
        obj = _loads(body.strip())
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or "arguments" not in obj:
        return None
    args = obj["arguments"]
    if isinstance(args, str):  # the OpenAI form: arguments as a JSON string holding an object
        try:
            args = _loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": args}


def parse_tool_calls(text) -> tuple[list[dict], bool]:
    """The tool calls in a generated assistant turn, and whether the turn's calls are well formed.

    Returns ``(calls, valid)``: ``calls`` holds every block that parsed; ``valid`` is True when the
    text holds at least one ``<tool_call>`` block and every block parsed into a call. An unclosed
    block at the end (generation stopped inside it) counts as attempted and invalid.
    """
    if not isinstance(text, str):
        return [], False
    calls: list[dict] = []
    attempted = 0
    pos = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        if start < 0:
            break
        attempted += 1
        body_start = start + len(OPEN_TAG)
        end = text.find(CLOSE_TAG, body_start)
        if end < 0:  # unclosed final block: attempted, never a call
            break
        call = _call_from_block(text[body_start:end])
        if call is not None:
            calls.append(call)
        pos = end + len(CLOSE_TAG)
    return calls, attempted > 0 and len(calls) == attempted


def gold_calls(row: dict) -> list[dict]:
    """The gold calls of a canonical row: the tool calls of its final assistant message."""
    for message in reversed(row.get("messages", [])):
        if message.get("role") == "assistant":
            out = []
            for tc in message.get("tool_calls") or []:
                fn = tc["function"]
                args = fn.get("arguments", "{}")
                out.append({"name": fn["name"],
                            "arguments": json.loads(args) if isinstance(args, str) else args})
            return out
    return []


# ---------------------------------------------------------------- scoring

def canonical(value):
    """A hashable form of a JSON value: numbers by value (3 == 3.0), booleans and strings apart."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        return ("num", value)
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("null",)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, canonical(value[k])) for k in sorted(value)))
    return ("other", repr(value))


def _call_key(call):
    return call["name"], canonical(call["arguments"])


def _triples(calls) -> Counter:
    return Counter((c["name"], key, canonical(v)) for c in calls for key, v in c["arguments"].items())


def _tool_names(tools) -> set[str]:
    """Names from OpenAI tool definitions, {"name": ...} dicts or plain strings."""
    names = set()
    for tool in tools:
        if isinstance(tool, str):
            names.add(tool)
        elif isinstance(tool, dict):
            fn = tool.get("function", tool)
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.add(fn["name"])
    return names


def score_example(pred_calls, valid, gold_calls, tools=None, case=None) -> dict:
    """Per-example verdicts (JSON-ready).

    ``exact`` needs a well-formed turn and the same multiset of (name, arguments) as the gold;
    ``tool_correct`` compares the sets of called names; parameters are scored over
    (tool, key, value) triples as true / false positives and false negatives.

    With ``case`` (``bfcl.case_from_row``: ``bfcl`` scoring) the verdict adds ``ast_valid`` /
    ``ast_error`` (BFCL's AST checker), ``category`` and ``answers``, and the parameter counts come from
    the acceptable sets (``bfcl.arg_counts``).
    """
    pred_names = {c["name"] for c in pred_calls}
    gold_names = {c["name"] for c in gold_calls}
    pred_t, gold_t = _triples(pred_calls), _triples(gold_calls)
    tp = sum((pred_t & gold_t).values())
    unknown = sorted(pred_names - _tool_names(tools)) if tools is not None else []
    out = {
        "tool_correct": pred_names == gold_names,
        "exact": bool(valid) and Counter(map(_call_key, pred_calls)) == Counter(map(_call_key, gold_calls)),
        "param_tp": tp,
        "param_fp": sum(pred_t.values()) - tp,
        "param_fn": sum(gold_t.values()) - tp,
        "json_valid": bool(valid),
        "called_unknown_tool": bool(unknown),
        "unknown_tools": unknown,
        "pred_tools": sorted(pred_names),
        "gold_tools": sorted(gold_names),
    }
    if case is not None:
        verdict = bfcl.check_case(case, pred_calls, valid)
        out.update({"ast_valid": verdict["valid"], "ast_error": verdict["error_type"],
                    "category": case["category"], "answers": case["answers"]})
        out.update(bfcl.arg_counts(case["functions"], bfcl.decoded(pred_calls), case["ground_truth"]))
    return out


def _ratio(num, den, empty):
    return num / den if den else empty


def _summarise(examples) -> dict:
    n = len(examples)
    tp = sum(e["param_tp"] for e in examples)
    fp = sum(e["param_fp"] for e in examples)
    fn = sum(e["param_fn"] for e in examples)
    if n == 0:
        return {**{m: None for m in TOOL_METRICS}, "n": 0, "param_tp": 0, "param_fp": 0, "param_fn": 0}
    # Nothing predicted and nothing to predict is perfect; one side empty alone scores 0.
    precision = _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0)
    recall = _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0)
    out = {
        "exact_match": sum(e["exact"] for e in examples) / n,
        "tool_accuracy": sum(e["tool_correct"] for e in examples) / n,
        "param_precision": precision,
        "param_recall": recall,
        "param_f1": _ratio(2 * precision * recall, precision + recall, 0.0),
        "json_valid_rate": sum(e["json_valid"] for e in examples) / n,
        "unknown_tool_rate": sum(e["called_unknown_tool"] for e in examples) / n,
        "n": n,
        "param_tp": tp,
        "param_fp": fp,
        "param_fn": fn,
    }
    if all("ast_valid" in e for e in examples):  # bfcl scoring
        out["ast_accuracy"] = sum(e["ast_valid"] for e in examples) / n
    return out


def aggregate(examples) -> dict:
    """Micro-averaged metrics over per-example verdicts, plus ``per_tool`` over the examples
    whose gold calls include each tool. Metrics are None when there are no examples.

    Under ``bfcl`` scoring also ``ast_accuracy``, ``per_category`` (BFCL's category of each row) and
    ``answers`` (how many rows had acceptable sets, ``possible_answer``, and how many only their ``gold``).
    """
    examples = list(examples)
    out = _summarise(examples)
    tools = sorted({t for e in examples for t in e["gold_tools"]})
    out["per_tool"] = {t: _summarise([e for e in examples if t in e["gold_tools"]]) for t in tools}
    if examples and all("ast_valid" in e for e in examples):
        categories = sorted({e["category"] for e in examples})
        out["per_category"] = {c: _summarise([e for e in examples if e["category"] == c]) for c in categories}
        out["answers"] = dict(sorted(Counter(e["answers"] for e in examples).items()))
    return out


def targets_report(metrics: dict, targets: dict, *, config_path: str | None = None) -> dict:
    """{metric: {"value", "target", "passed"}} for each target (value >= target) of ``eval.targets`` in the
    config file ``config_path``."""
    report = {}
    for name, target in targets.items():
        if name not in metrics or name in _NOT_TARGETS:
            known = ", ".join(sorted(m for m in metrics if m not in _NOT_TARGETS))
            raise SnaketuneError(config_path, "is not a metric the evaluation computes",
                                 field=f"eval.targets.{name}", fix=f"use one of: {known}")
        value = metrics[name]
        report[name] = {"value": value, "target": target,
                        "passed": value is not None and value >= target}
    return report


# ---------------------------------------------------------------- instruction / response data

def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def text_exact_match(pred: str, gold: str) -> bool:
    """Equal after collapsing runs of whitespace and trimming the ends (case and punctuation count)."""
    return normalise_whitespace(pred) == normalise_whitespace(gold)


def token_f1(pred: str, gold: str) -> float:
    """SQuAD-style token F1 over whitespace tokens (bag of tokens; both empty scores 1.0).

    Unlike SQuAD, no lower-casing or punctuation stripping: in code and hex, those carry meaning.
    """
    p, g = pred.split(), gold.split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def score_text(pred: str, gold: str) -> dict:
    return {"exact": text_exact_match(pred, gold), "token_f1": token_f1(pred, gold)}


def aggregate_text(examples) -> dict:
    """Mean exact match and token F1 over ``score_text`` verdicts (None when there are none)."""
    examples = list(examples)
    n = len(examples)
    if n == 0:
        return {"exact_match": None, "token_f1": None, "n": 0}
    return {"exact_match": sum(e["exact"] for e in examples) / n,
            "token_f1": sum(e["token_f1"] for e in examples) / n,
            "n": n}
