"""Data stage: read the sources in their formats (snaketune.formats), check and normalise each row, give it
an id, dedupe, keep eval-only sources out of training, split with a seed.

Every error a user can fix is a SnaketuneError naming file, line and field (as the source spells it).
Nothing is written unless every step succeeds (outputs go through files.atomic_path); skipped rows are
written even then, beside the log, when a later check stops the stage.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from . import formats
from .answers import check_possible_answer
from .chat_template import gold_tool_names
from .config import origin_of
from .errors import SnaketuneError, field_path, schema_problem
from .files import dumps_json, write_json, write_jsonl

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "config" / "schemas"
MAX_LINE_BYTES = formats.MAX_LINE_BYTES
SPLITS = ("train", "val", "test")
# Python type names in parameter schemas (BFCL's, and rows converted from it by hand): what JSON Schema says.
PYTHON_TYPES = {
    "dict": "object",
    "float": "number",
    "tuple": "array",
    "list": "array",
    "int": "integer",
    "str": "string",
    "bool": "boolean",
    "any": "(no type)",
}


def _load_schema(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / name).read_text(encoding="utf-8"))


_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}


def _validator(kind: str):
    if kind not in _VALIDATORS:
        schema = _load_schema(f"{kind}_row.schema.yaml")
        _VALIDATORS[kind] = jsonschema.Draft202012Validator(schema)
    return _VALIDATORS[kind]


def _schema_error(path, line, err) -> SnaketuneError:
    parts = list(err.absolute_path)
    if err.validator == "required":
        missing = next(
            (p for p in err.validator_value if isinstance(err.instance, dict) and p not in err.instance), None
        )
        return SnaketuneError(
            path,
            f"required field '{missing}' is missing",
            line=line,
            field=field_path(parts + [missing]),
            fix=f"add '{missing}' to the row",
        )
    if err.validator == "enum":
        return SnaketuneError(
            path,
            schema_problem(err),
            line=line,
            field=field_path(parts),
            fix=f"use one of {', '.join(map(str, err.validator_value))}",
        )
    if err.validator == "type":
        expected = (
            err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        )
        return SnaketuneError(
            path, schema_problem(err), line=line, field=field_path(parts), fix=f"make it a JSON {expected}"
        )
    return SnaketuneError(
        path,
        schema_problem(err),
        line=line,
        field=field_path(parts) or None,
        fix="see config/schemas/ for the row format",
    )


# ---------------------------------------------------------------- reading


def iter_lines(path):
    """Yield (line number, parsed JSON) for each row of a source; errors name the line (formats.read_rows)."""
    return formats.read_rows(path)


# ---------------------------------------------------------------- validation + normalisation


def _python_types(schema) -> list[str]:
    """Python type names used as JSON Schema types anywhere in ``schema`` (sorted, unique)."""
    found, stack = set(), [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            types = node.get("type")
            found.update(
                t
                for t in (types if isinstance(types, list) else [types])
                if isinstance(t, str) and t in PYTHON_TYPES
            )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(found)


# Rows of a dataset share a few tools: each distinct schema is checked once (check_schema is the costly part).
_SCHEMA_FAULTS: dict[str, jsonschema.SchemaError | None] = {}
_ARGUMENT_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}
_CACHE_LIMIT = 4096


def _cached(cache: dict, params: dict, make):
    key = json.dumps(params, sort_keys=True, ensure_ascii=False)
    if key not in cache:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = make(params)
    return cache[key]


def _schema_fault(params: dict):
    try:
        jsonschema.Draft202012Validator.check_schema(params)
    except jsonschema.SchemaError as err:
        return err
    return None


def _check_tool_schemas(tools) -> None:
    """Every tool's parameters is a JSON Schema, whether the row calls it or not (it goes into prompts)."""
    for j, tool in enumerate(tools):
        params = tool["function"].get("parameters")
        if not params:
            continue
        err = _cached(_SCHEMA_FAULTS, params, _schema_fault)
        if err is not None:
            python = _python_types(params)
            fix = (
                (
                    "write JSON Schema types: "
                    + ", ".join(f"{t} -> {PYTHON_TYPES[t]}" for t in python)
                    + " (format: bfcl maps them itself)"
                )
                if python
                else "make parameters a valid JSON Schema object"
            )
            raise SnaketuneError(
                None,
                f"tool {tool['function']['name']!r} has an invalid parameters schema: {schema_problem(err)}",
                field=f"tools[{j}].function.parameters",
                fix=fix,
            )


def _check_tool_calls(row, lenient: bool = False) -> int:
    """What the schema cannot say: arguments parse, the tool exists, arguments fit its parameters.

    ``lenient`` (BFCL rows, whose answers and checker are the reference, not their schemas): calls whose
    arguments do not fit are counted, not refused. Returns that count.
    """
    outside = 0
    tools = {t["function"]["name"]: t["function"] for t in row.get("tools", [])}
    _check_tool_schemas(row.get("tools", []))
    for m, message in enumerate(row["messages"]):
        if message["role"] != "assistant":
            continue
        for c, call in enumerate(message.get("tool_calls") or []):
            where = f"messages[{m}].tool_calls[{c}].function"
            name = call["function"]["name"]
            args = json.loads(call["function"]["arguments"])  # the converter checked it
            if name not in tools:
                raise SnaketuneError(
                    None,
                    f"calls tool {name!r}, which is not in the row's tools",
                    field=f"{where}.name",
                    fix="add the tool's definition to 'tools' or fix the name",
                )
            params = tools[name].get("parameters")
            if params:
                validator = _cached(_ARGUMENT_VALIDATORS, params, jsonschema.Draft202012Validator)
                err = jsonschema.exceptions.best_match(validator.iter_errors(args))
                if err is not None and lenient:
                    outside += 1
                elif err is not None:
                    sub = field_path(list(err.absolute_path))
                    raise SnaketuneError(
                        None,
                        f"arguments do not match the parameters of {name!r}: {schema_problem(err)}",
                        field=f"{where}.arguments" + (f".{sub}" if sub else ""),
                        fix="make the arguments satisfy the tool's parameter schema",
                    )
    return outside


def _check_turns(messages) -> None:
    if messages[-1]["role"] != "assistant":
        raise SnaketuneError(
            None,
            f"last message has role {messages[-1]['role']!r}",
            field=f"messages[{len(messages) - 1}].role",
            fix="end every row with the assistant turn to learn",
        )
    if not any(m["role"] == "user" for m in messages):
        raise SnaketuneError(None, "no user message", field="messages", fix="add a user turn")
    for i, message in enumerate(messages):
        if (
            message["role"] == "assistant"
            and not message.get("tool_calls")
            and not (message.get("content") or "").strip()
        ):
            raise SnaketuneError(
                None,
                "assistant message has neither content nor tool_calls",
                field=f"messages[{i}]",
                fix="give the assistant turn text or a tool call",
            )


def _normalise_tool(tool: dict) -> dict:
    fn = tool["function"]
    return {
        "type": "function",
        "function": {
            "name": fn["name"],
            "description": fn.get("description", ""),
            "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
        },
    }


def _normalise_message(message: dict) -> dict:
    out = {"role": message["role"], "content": message.get("content")}
    if message["role"] == "assistant" and message.get("tool_calls"):
        # the converter spelt the arguments once (json.dumps of the object): whitespace makes no new row
        out["tool_calls"] = [
            {
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
            }
            for call in message["tool_calls"]
        ]
    if message["role"] == "tool" and message.get("name"):
        out["name"] = message["name"]
    if isinstance(out["content"], str):
        out["content"] = out["content"].strip()
    return out


def row_id(messages, tools) -> str:
    """Stable content id: sha256 of the canonical JSON of the normalised row (first 16 hex)."""
    blob = json.dumps({"messages": messages, "tools": tools}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def convert_row(
    value, *, path="<input>", line: int | None = None, declared: str = "auto", options: dict | None = None
) -> tuple[dict, dict]:
    """(canonical row, notes) for one parsed JSON value, or a SnaketuneError naming path, line and the field
    as the source spells it. ``notes``: what the source format changed (BFCL: Python types mapped)."""

    def located(err: SnaketuneError, where=None) -> SnaketuneError:
        field = where.source_field(err.field) if where is not None else err.field
        return SnaketuneError(path, err.problem, line=line, field=field, fix=err.fix)

    notes = {}
    if not isinstance(value, dict):
        raise SnaketuneError(
            path,
            f"row is a JSON {type(value).__name__}, not an object",
            line=line,
            fix="write one JSON object per line (or one JSON array of rows for the whole file)",
        )
    try:
        kind = formats.detect_format(value, declared)
        if kind == "bfcl":
            value, notes["type_counts"] = formats.convert_bfcl(value, (options or {}).get("answers") or {})
            kind = "chat"
    except SnaketuneError as err:
        raise located(err) from None
    if kind in ("chat", "instruction"):
        err = jsonschema.exceptions.best_match(_validator(kind).iter_errors(value))
        if err is not None:
            raise _schema_error(path, line, err)
    where = None
    try:
        if kind == "instruction":
            messages, tools = formats.convert_instruction(value)
        else:
            row, where = formats.convert(kind, value, options)
            _check_turns(row["messages"])
            outside = _check_tool_calls(row, lenient=declared == "bfcl")
            if outside:
                notes["calls_outside_schema"] = outside
            messages = [_normalise_message(m) for m in row["messages"]]
            tools = [_normalise_tool(t) for t in row["tools"]]
            names = [t["function"]["name"] for t in tools]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise SnaketuneError(
                    None,
                    f"tool {dupes[0]!r} is defined twice",
                    field="tools",
                    fix="give each tool one definition per row",
                )
        answer = None
        if value.get("possible_answer") is not None:
            answer = check_possible_answer(value["possible_answer"], messages)
        source_case = value.get("bfcl") if kind == "chat" and isinstance(value.get("bfcl"), dict) else None
    except SnaketuneError as err:
        raise located(err, where) from None
    has_calls = any(m.get("tool_calls") for m in messages)
    out = {
        "id": row_id(messages, tools),
        "kind": "tool" if has_calls else "text",
        "messages": messages,
        "tools": tools,
    }
    if answer is not None:
        out["possible_answer"] = answer  # what eval accepts; not part of the id
    if source_case is not None:
        out["bfcl"] = copy.deepcopy(source_case)  # BFCL's id, category and raw docs, for its checker at eval
    return out, notes


def normalise_row(
    value, *, path="<input>", line: int | None = None, declared: str = "auto", options: dict | None = None
) -> dict:
    """Validate one parsed JSON value and return the canonical row, or raise SnaketuneError."""
    return convert_row(value, path=path, line=line, declared=declared, options=options)[0]


def gold_tools(row) -> list[str]:
    """Names of the tools the final assistant turn calls (sorted, unique)."""
    return sorted(set(gold_tool_names(row)))


def prompt_key(row) -> str:
    """Rows with the same prompt (everything but the answer) must share a split, or test leaks."""
    blob = json.dumps(
        {"messages": row["messages"][:-1], "tools": row["tools"]}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- loading all sources


@dataclass
class Loaded:
    rows: list = field(default_factory=list)
    duplicates: int = 0
    rejected: list = field(default_factory=list)
    per_source: dict = field(default_factory=dict)
    type_counts: Counter = field(default_factory=Counter)  # Python types mapped to JSON Schema (BFCL)
    held_out: set = field(default_factory=set)  # ids of eval-only rows: the test split's, never trained on


def source_specs(sources) -> list[dict]:
    """``data.sources`` entries ({path, format, options, answers, split}), or the short {path: format} map."""
    if isinstance(sources, dict):
        return [{"path": str(path), "format": fmt} for path, fmt in sources.items()]
    return [{"path": str(spec)} if isinstance(spec, (str, Path)) else dict(spec) for spec in sources]


def _rejected(err: SnaketuneError, source) -> dict:
    return {
        "source": str(source),
        "line": err.line,
        "field": err.field,
        "problem": err.problem,
        "fix": err.fix,
    }


def load_sources(sources, on_invalid: str = "error", into: Loaded | None = None) -> Loaded:
    """Read every source; dedupe within a source, refuse a row found in two sources, keep eval-only rows
    (split: test) apart from every row that could be trained on. ``into`` holds what was read so far
    when an error stops it (the rejected rows are written even then)."""
    loaded = into if into is not None else Loaded()
    first_seen: dict[str, tuple[str, int]] = {}
    trainable_prompts: dict[str, tuple[str, int]] = {}
    held_out: list[tuple[dict, str, int]] = []
    for spec in source_specs(sources):
        path, declared = spec["path"], spec.get("format", "auto")
        options = dict(spec.get("options") or {})
        eval_only = spec.get("split", "auto") == "test"
        counts = Counter()
        if declared == "bfcl":
            options["answers"] = formats.read_bfcl_answers(spec["answers"])
        for line, value in iter_lines(path):
            try:
                row, notes = convert_row(value, path=path, line=line, declared=declared, options=options)
            except SnaketuneError as err:
                if on_invalid != "skip":
                    raise
                loaded.rejected.append(_rejected(err, path))
                counts["rejected"] += 1
                continue
            seen = first_seen.get(row["id"])
            if seen is not None:
                if seen[0] != str(path):
                    raise SnaketuneError(
                        path,
                        f"row also appears in {seen[0]}:{seen[1]} (leakage across sources)",
                        line=line,
                        fix="keep each example in one source file",
                    )
                loaded.duplicates += 1
                counts["duplicates"] += 1
                continue
            loaded.type_counts.update(notes.get("type_counts") or {})
            counts["calls_outside_schema"] += notes.get("calls_outside_schema", 0)
            first_seen[row["id"]] = (str(path), line)
            row["source"] = str(path)
            if eval_only:
                loaded.held_out.add(row["id"])
                held_out.append((row, str(path), line))
            else:
                trainable_prompts.setdefault(prompt_key(row), (str(path), line))
            loaded.rows.append(row)
            counts["rows"] += 1
        loaded.per_source[str(path)] = {
            "rows": counts["rows"],
            "duplicates": counts["duplicates"],
            "rejected": counts["rejected"],
            "split": "test" if eval_only else "auto",
        }
        if declared == "bfcl":  # gold calls BFCL accepts that its own parameter schemas do not (kept)
            loaded.per_source[str(path)]["calls_outside_schema"] = counts["calls_outside_schema"]
    for row, path, line in held_out:  # a held-out row whose prompt a trainable row shares would leak
        seen = trainable_prompts.get(prompt_key(row))
        if seen is not None:
            raise SnaketuneError(
                path,
                f"this eval-only row's prompt is also in {seen[0]}:{seen[1]}, which may be "
                "trained on (leakage into the held-out test set)",
                line=line,
                fix="remove the example from one of the two files",
            )
    return loaded


# ---------------------------------------------------------------- split


def stratum(row) -> str:
    tools = gold_tools(row)
    return "+".join(tools) if tools else f"<{row['kind']}>"


def split_rows(rows: list, ratios: dict, seed: int) -> dict[str, list]:
    """Seeded split stratified by the gold tool set; rows sharing a prompt stay in one split."""
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[stratum(row)][prompt_key(row)].append(row)
    out = {name: [] for name in SPLITS}
    for name in sorted(groups):
        keys = sorted(groups[name])
        random.Random(f"{seed}:{name}").shuffle(keys)
        n = len(keys)
        n_test = round(n * ratios["test"])
        n_val = round(n * ratios["val"])
        if n >= 3:  # a stratum big enough to appear everywhere should
            n_test = max(n_test, 1 if ratios["test"] > 0 else 0)
            n_val = max(n_val, 1 if ratios["val"] > 0 else 0)
        n_test = min(n_test, n)
        n_val = min(n_val, n - n_test)
        for i, key in enumerate(keys):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            out[split].extend(groups[name][key])
    for name in SPLITS:
        out[name].sort(key=lambda r: r["id"])
    return out


def check_specialists(splits: dict[str, list], specialists: dict[str, list], config_path) -> None:
    """Each focus tool must occur; each specialist needs train and test rows.

    ``config_path``: the file to name, or {key: file} (the rule's ``config_files``) for the keys it names.
    """

    def where(key):
        return (
            origin_of(config_path, key, None)
            if isinstance(config_path, dict)
            else config_path
        )

    seen = {split: Counter(t for r in rows for t in gold_tools(r)) for split, rows in splits.items()}
    everywhere = sum(seen.values(), Counter())
    for name, focus in specialists.items():
        for tool in focus:
            if tool not in everywhere:
                raise SnaketuneError(
                    where(f"specialists.{name}.focus_tools"),
                    f"focus tool {tool!r} never occurs in the data",
                    field=f"specialists.{name}.focus_tools",
                    fix="fix the tool name or add examples that call it",
                )
        for split in ("train", "test"):
            has = sum(seen[split][t] for t in focus) if focus else len(splits[split])
            if has == 0:
                raise SnaketuneError(
                    where("data.split"),
                    f"the split leaves specialist {name!r} with no {split} rows",
                    field="data.split",
                    fix=f"add data for {', '.join(focus) or 'it'} or raise the {split} ratio",
                )


def length_stats(rows) -> dict:
    chars = [
        sum(
            len(m.get("content") or "")
            + sum(len(c["function"]["arguments"]) for c in m.get("tool_calls", []))
            for m in r["messages"]
        )
        for r in rows
    ]
    if not chars:
        return {"min_chars": 0, "max_chars": 0, "mean_chars": 0.0, "median_chars": 0.0}
    return {
        "min_chars": min(chars),
        "max_chars": max(chars),
        "mean_chars": round(statistics.fmean(chars), 2),
        "median_chars": float(statistics.median(chars)),
    }


def split_stats(
    splits, loaded: Loaded, seed: int, ratios: dict, rejected_path="results/data/rejected.jsonl"
) -> dict:
    total = sum(len(rows) for rows in splits.values())
    return {
        "seed": seed,
        "ratios": ratios,
        "counts": {s: len(rows) for s, rows in splits.items()},
        "total": total,
        "duplicates_removed": loaded.duplicates,
        "invalid_rows": len(loaded.rejected),
        "held_out": len(loaded.held_out),
        "summary": summary_line(total, len(loaded.rejected), loaded.duplicates, rejected_path),
        "sources": loaded.per_source,
        "python_types_mapped": dict(sorted(loaded.type_counts.items())),  # BFCL: "dict->object": n, ...
        "per_tool": {
            s: dict(sorted(Counter(t for r in rows for t in gold_tools(r)).items()))
            for s, rows in splits.items()
        },
        "kinds": {s: dict(sorted(Counter(r["kind"] for r in rows).items())) for s, rows in splits.items()},
        "lengths": {s: length_stats(rows) for s, rows in splits.items()},
    }


def summary_line(kept: int, skipped: int, duplicates: int, rejected_path) -> str:
    return f"kept {kept}, skipped {skipped}, duplicates {duplicates}: see {rejected_path}"


def prepare_data(
    sources,
    outputs: dict[str, str],
    *,
    ratios: dict,
    seed: int,
    on_invalid: str = "error",
    specialists: dict[str, list] | None = None,
    config_files: dict | None = None,
    rejected_log=None,
) -> dict:
    """The whole data stage: sources -> train/val/test JSONL + split_stats.json + rejected.jsonl.

    ``sources``: ``data.sources`` entries (or {path: format}). ``config_files``: {config key: file} for
    errors about the config. ``rejected_log``: where the skipped rows go when a later check stops the stage
    (Snakemake removes a failed job's outputs, rejected.jsonl among them; its log directory stays).
    """
    loaded = Loaded()
    try:
        loaded = load_sources(sources, on_invalid, into=loaded)
        if len(loaded.rows) - len(loaded.held_out) < 3:
            first = source_specs(sources)[0]["path"] if source_specs(sources) else "<no sources>"
            raise SnaketuneError(
                first,
                f"only {len(loaded.rows) - len(loaded.held_out)} distinct valid rows to "
                f"split after removing {loaded.duplicates} duplicates and {len(loaded.rejected)} "
                "invalid rows",
                fix="provide at least 3 distinct rows (every row may be a duplicate)",
            )
        trainable = [row for row in loaded.rows if row["id"] not in loaded.held_out]
        splits = split_rows(trainable, ratios, seed)
        splits["test"] = sorted(
            splits["test"] + [r for r in loaded.rows if r["id"] in loaded.held_out], key=lambda r: r["id"]
        )
        check_specialists(splits, specialists or {}, config_files or {})
    except SnaketuneError as err:
        if not (loaded.rejected and rejected_log):
            raise
        write_jsonl(rejected_log, loaded.rejected)
        raise SnaketuneError(
            err.path,
            f"{err.problem}; {len(loaded.rejected)} skipped rows, each with its fix, are in {rejected_log}",
            line=err.line,
            field=err.field,
            fix=err.fix,
        ) from None
    stats = split_stats(splits, loaded, seed, ratios, outputs["rejected"])
    for name in SPLITS:
        write_jsonl(outputs[name], splits[name])
    write_jsonl(outputs["rejected"], loaded.rejected)
    write_json(outputs["stats"], stats)
    print(dumps_json({k: stats[k] for k in ("counts", "duplicates_removed", "invalid_rows")}), end="")
    print(stats["summary"])
    return stats


__all__ = [
    "iter_lines",
    "row_id",
    "convert_row",
    "normalise_row",
    "gold_tools",
    "prompt_key",
    "Loaded",
    "source_specs",
    "load_sources",
    "stratum",
    "split_rows",
    "check_specialists",
    "length_stats",
    "split_stats",
    "summary_line",
    "prepare_data",
    "PYTHON_TYPES",
    "SPLITS",
]
