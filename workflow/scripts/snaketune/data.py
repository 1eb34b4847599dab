"""Data stage: validate raw JSONL rows, normalise them, give them ids, dedupe, split with a seed.

Every error a user can fix is a SnaketuneError naming file, line and field. Nothing is written
unless every step succeeds (outputs go through files.atomic_path).
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from .chat_template import gold_tool_names
from .errors import SnaketuneError, field_path
from .files import dumps_json, write_json, write_jsonl

__all__ = ["row_id", "normalise_row", "gold_tools", "load_sources", "split_rows", "prepare_data"]

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "config" / "schemas"
MAX_LINE_BYTES = 8 * 1024 * 1024
SPLITS = ("train", "val", "test")


def _load_schema(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / name).read_text(encoding="utf-8"))


_VALIDATORS: dict[str, jsonschema.protocols.Validator] = {}


def _validator(kind: str):
    if kind not in _VALIDATORS:
        schema = _load_schema(f"{kind}_row.schema.yaml")
        _VALIDATORS[kind] = jsonschema.Draft202012Validator(schema)
    return _VALIDATORS[kind]


def _short(value, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_error(path, line, err) -> SnaketuneError:
    parts = list(err.absolute_path)
    if err.validator == "required":
        missing = next((p for p in err.validator_value
                        if isinstance(err.instance, dict) and p not in err.instance), None)
        return SnaketuneError(path, f"required field '{missing}' is missing", line=line,
                              field=field_path(parts + [missing]), fix=f"add '{missing}' to the row")
    if err.validator == "enum":
        return SnaketuneError(path, f"{_short(err.instance)} is not one of {err.validator_value}", line=line,
                              field=field_path(parts),
                              fix=f"use one of {', '.join(map(str, err.validator_value))}")
    if err.validator == "type":
        expected = (err.validator_value if isinstance(err.validator_value, str)
                    else " or ".join(err.validator_value))
        return SnaketuneError(path, f"{_short(err.instance)} is not of type {expected}", line=line,
                              field=field_path(parts), fix=f"make it a JSON {expected}")
    problem = err.message if len(err.message) <= 200 else err.message[:197] + "..."
    return SnaketuneError(path, problem, line=line, field=field_path(parts) or None,
                          fix="see config/schemas/ for the row format")


# ---------------------------------------------------------------- reading


def iter_lines(path):
    """Yield (line number, parsed JSON) for each non-blank line; errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise SnaketuneError(path, "data source not found", fix="check data.sources[].path in the config")
    seen_any = False
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise SnaketuneError(path, f"line is {len(raw) / 2**20:.1f} MiB, over the "
                                     f"{MAX_LINE_BYTES // 2**20} MiB limit", line=number,
                                     fix="split the conversation or check the file is JSONL, "
                                         "one row per line")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SnaketuneError(path, f"not valid UTF-8 (byte {err.start})", line=number,
                                     fix="re-encode the file as UTF-8") from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise SnaketuneError(path, f"not valid JSON: {err.msg} (column {err.colno})", line=number,
                                     fix="write one JSON object per line") from None
            except RecursionError:
                raise SnaketuneError(path, "JSON nested too deeply", line=number,
                                     fix="flatten the row; conversations need only a few levels") from None
            seen_any = True
            yield number, value
    if not seen_any:
        raise SnaketuneError(path, "file holds no rows",
                             fix="add JSONL rows or remove the source from data.sources")


def detect_format(row, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    if isinstance(row, dict) and "messages" in row:
        return "chat"
    if isinstance(row, dict) and "instruction" in row:
        return "instruction"
    return "unknown"


# ---------------------------------------------------------------- validation + normalisation


def _check_tool_calls(path, line, row) -> None:
    """What the schema cannot say: arguments parse, the tool exists, arguments fit its parameters."""
    tools = {t["function"]["name"]: t["function"] for t in row.get("tools", [])}
    for m, message in enumerate(row["messages"]):
        if message["role"] != "assistant":
            continue
        for c, call in enumerate(message.get("tool_calls", [])):
            where = f"messages[{m}].tool_calls[{c}].function"
            name = call["function"]["name"]
            try:
                args = json.loads(call["function"]["arguments"])
            except (json.JSONDecodeError, RecursionError) as err:
                reason = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
                raise SnaketuneError(path, f"arguments are not a JSON string that parses ({reason})",
                                     line=line, field=f"{where}.arguments",
                                     fix="encode the arguments object with json.dumps") from None
            if not isinstance(args, dict):
                raise SnaketuneError(path, f"arguments decode to {type(args).__name__}, not an object",
                                     line=line, field=f"{where}.arguments",
                                     fix='write arguments as a JSON object string, e.g. "{}"')
            if name not in tools:
                raise SnaketuneError(path, f"calls tool {name!r}, which is not in the row's tools", line=line,
                                     field=f"{where}.name",
                                     fix="add the tool's definition to 'tools' or fix the name")
            params = tools[name].get("parameters")
            if params:
                try:
                    jsonschema.Draft202012Validator.check_schema(params)
                except jsonschema.SchemaError as err:
                    idx = [t["function"]["name"] for t in row["tools"]].index(name)
                    raise SnaketuneError(path, f"tool {name!r} has an invalid parameters schema: "
                                         f"{err.message[:120]}", line=line,
                                         field=f"tools[{idx}].function.parameters",
                                         fix="make parameters a valid JSON Schema object") from None
                validator = jsonschema.Draft202012Validator(params)
                err = jsonschema.exceptions.best_match(validator.iter_errors(args))
                if err is not None:
                    sub = field_path(list(err.absolute_path))
                    raise SnaketuneError(path, f"arguments do not match {name!r}'s parameters: "
                                         f"{err.message[:160]}", line=line,
                                         field=f"{where}.arguments" + (f".{sub}" if sub else ""),
                                         fix="make the arguments satisfy the tool's parameter schema")


def _check_turns(path, line, messages) -> None:
    if messages[-1]["role"] != "assistant":
        raise SnaketuneError(path, f"last message has role {messages[-1]['role']!r}", line=line,
                             field=f"messages[{len(messages) - 1}].role",
                             fix="end every row with the assistant turn to learn")
    if not any(m["role"] == "user" for m in messages):
        raise SnaketuneError(path, "no user message", line=line, field="messages", fix="add a user turn")
    for i, message in enumerate(messages):
        answerless = message["role"] == "assistant" and not message.get("tool_calls")
        if answerless and not (message.get("content") or "").strip():
            raise SnaketuneError(path, "assistant message has neither content nor tool_calls", line=line,
                                 field=f"messages[{i}]", fix="give the assistant turn text or a tool call")


def _normalise_tool(tool: dict) -> dict:
    fn = tool["function"]
    return {"type": "function", "function": {
        "name": fn["name"],
        "description": fn.get("description", ""),
        "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
    }}


def _normalise_message(message: dict) -> dict:
    out = {"role": message["role"], "content": message.get("content")}
    if message["role"] == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = [
            {"type": "function", "function": {
                "name": call["function"]["name"],
                # one spelling of the same arguments: whitespace and escapes do not make a new row
                "arguments": json.dumps(json.loads(call["function"]["arguments"]), ensure_ascii=False),
            }}
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


def normalise_row(value, *, path="<input>", line: int | None = None, declared: str = "auto") -> dict:
    """Validate one parsed JSON value and return the canonical row, or raise SnaketuneError."""
    if not isinstance(value, dict):
        raise SnaketuneError(path, f"row is a JSON {type(value).__name__}, not an object", line=line,
                             fix="write one JSON object per line")
    kind = detect_format(value, declared)
    if kind == "unknown":
        raise SnaketuneError(path, "row is neither chat ('messages') nor instruction "
                             "('instruction'/'output')", line=line, field="messages",
                             fix="add a 'messages' list (see config/README.md)")
    err = jsonschema.exceptions.best_match(_validator(kind).iter_errors(value))
    if err is not None:
        raise _schema_error(path, line, err)
    if kind == "instruction":
        prompt = value["instruction"].strip()
        if value.get("input", "").strip():
            prompt += "\n\n" + value["input"].strip()
        messages = ([{"role": "system", "content": value["system"].strip()}] if value.get("system") else [])
        messages += [{"role": "user", "content": prompt},
                     {"role": "assistant", "content": value["output"].strip()}]
        tools = []
    else:
        _check_turns(path, line, value["messages"])
        _check_tool_calls(path, line, value)
        messages = [_normalise_message(m) for m in value["messages"]]
        tools = [_normalise_tool(t) for t in value.get("tools", [])]
        names = [t["function"]["name"] for t in tools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SnaketuneError(path, f"tool {dupes[0]!r} is defined twice", line=line, field="tools",
                                 fix="give each tool one definition per row")
    has_calls = any(m.get("tool_calls") for m in messages)
    return {"id": row_id(messages, tools), "kind": "tool" if has_calls else "text",
            "messages": messages, "tools": tools}


def gold_tools(row) -> list[str]:
    """Names of the tools the final assistant turn calls (sorted, unique)."""
    return sorted(set(gold_tool_names(row)))


def prompt_key(row) -> str:
    """Rows with the same prompt (everything but the answer) must share a split, or test leaks."""
    blob = json.dumps({"messages": row["messages"][:-1], "tools": row["tools"]}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- loading all sources


@dataclass
class Loaded:
    rows: list = field(default_factory=list)
    duplicates: int = 0
    rejected: list = field(default_factory=list)
    per_source: dict = field(default_factory=dict)


def load_sources(sources: dict[str, str], on_invalid: str = "error") -> Loaded:
    """Read every source ({path: format}); dedupe within a source, refuse a row found in two sources."""
    loaded = Loaded()
    first_seen: dict[str, tuple[str, int]] = {}
    for path, declared in sources.items():
        counts = Counter()
        for line, value in iter_lines(path):
            try:
                row = normalise_row(value, path=path, line=line, declared=declared)
            except SnaketuneError as err:
                if on_invalid != "skip":
                    raise
                loaded.rejected.append({"source": str(path), "line": line, "field": err.field,
                                        "problem": err.problem})
                counts["rejected"] += 1
                continue
            seen = first_seen.get(row["id"])
            if seen is not None:
                if seen[0] != str(path):
                    raise SnaketuneError(path, f"row also appears in {seen[0]}:{seen[1]} "
                                         "(leakage across sources)", line=line,
                                         fix="keep each example in one source file")
                loaded.duplicates += 1
                counts["duplicates"] += 1
                continue
            first_seen[row["id"]] = (str(path), line)
            row["source"] = str(path)
            loaded.rows.append(row)
            counts["rows"] += 1
        loaded.per_source[str(path)] = {"rows": counts["rows"], "duplicates": counts["duplicates"],
                                        "rejected": counts["rejected"]}
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


def check_specialists(splits: dict[str, list], specialists: dict[str, list], *, config_path: str) -> None:
    """Each focus tool must occur; each specialist needs train and test rows (else an error naming the
    specialist's key in the config file ``config_path``)."""
    seen = {split: Counter(t for r in rows for t in gold_tools(r)) for split, rows in splits.items()}
    everywhere = sum(seen.values(), Counter())
    for name, focus in specialists.items():
        for tool in focus:
            if tool not in everywhere:
                raise SnaketuneError(config_path, f"focus tool {tool!r} never occurs in the data",
                                     field=f"specialists.{name}.focus_tools",
                                     fix="fix the tool name or add examples that call it")
        for split in ("train", "test"):
            has = (sum(seen[split][t] for t in focus) if focus else len(splits[split]))
            if has == 0:
                raise SnaketuneError(config_path,
                                     f"the split leaves specialist {name!r} with no {split} rows",
                                     field="data.split",
                                     fix=f"add data for {', '.join(focus) or 'it'} "
                                         f"or raise the {split} ratio")


def length_stats(rows) -> dict:
    chars = [sum(len(m.get("content") or "")
                 + sum(len(c["function"]["arguments"]) for c in m.get("tool_calls", []))
                 for m in r["messages"]) for r in rows]
    if not chars:
        return {"min_chars": 0, "max_chars": 0, "mean_chars": 0.0, "median_chars": 0.0}
    return {"min_chars": min(chars), "max_chars": max(chars),
            "mean_chars": round(statistics.fmean(chars), 2), "median_chars": float(statistics.median(chars))}


def split_stats(splits, loaded: Loaded, seed: int, ratios: dict) -> dict:
    return {
        "seed": seed,
        "ratios": ratios,
        "counts": {s: len(rows) for s, rows in splits.items()},
        "total": sum(len(rows) for rows in splits.values()),
        "duplicates_removed": loaded.duplicates,
        "invalid_rows": len(loaded.rejected),
        "sources": loaded.per_source,
        "per_tool": {s: dict(sorted(Counter(t for r in rows for t in gold_tools(r)).items()))
                     for s, rows in splits.items()},
        "kinds": {s: dict(sorted(Counter(r["kind"] for r in rows).items())) for s, rows in splits.items()},
        "lengths": {s: length_stats(rows) for s, rows in splits.items()},
    }


def prepare_data(sources: dict[str, str], outputs: dict[str, str], *, ratios: dict, seed: int,
                 config_path: str,
                 on_invalid: str = "error", specialists: dict[str, list] | None = None) -> dict:
    """The whole data stage: sources -> train/val/test JSONL + split_stats.json + rejected.jsonl.

    ``config_path``: the config file the ratios, seed and specialists come from (errors name it).
    """
    loaded = load_sources(sources, on_invalid)
    if len(loaded.rows) < 3:
        first = next(iter(sources), "<no sources>")
        raise SnaketuneError(first, f"only {len(loaded.rows)} distinct valid rows after removing "
                             f"{loaded.duplicates} duplicates and {len(loaded.rejected)} invalid rows",
                             fix="provide at least 3 distinct rows (every row may be a duplicate)")
    splits = split_rows(loaded.rows, ratios, seed)
    check_specialists(splits, specialists or {}, config_path=config_path)
    stats = split_stats(splits, loaded, seed, ratios)
    for name in SPLITS:
        write_jsonl(outputs[name], splits[name])
    write_jsonl(outputs["rejected"], loaded.rejected)
    write_json(outputs["stats"], stats)
    print(dumps_json({k: stats[k] for k in ("counts", "duplicates_removed", "invalid_rows")}), end="")
    return stats
