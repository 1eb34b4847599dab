"""BFCL (Berkeley Function Calling Leaderboard): its data as canonical chat rows, and its AST checker's rules.

BFCL's data and checker ship in the ``bfcl-eval`` wheel. The wheel is never installed (it pins
numpy 1.26.4 and pulls ~30 SDKs): ``fetch_wheel`` downloads it with ``pip download --no-deps`` and
checks its sha256, ``read_category`` reads a category straight from the zip.

A BFCL AST row is a question row ``{"id", "question": [[messages]], "function": [docs]}`` and an
answer row ``{"id", "ground_truth": [{func_name: {param: [acceptable values]}}]}`` where ``""`` among
the acceptable values means the parameter may be omitted and a parameter the answer does not name
must not be supplied. ``convert_case`` turns the pair into a canonical chat row (see DESIGN.md) with
the row-level key ``possible_answer``: a list aligned with the final assistant turn's ``tool_calls``,
each ``{"name": tool, "arguments": {param: [acceptable values]}}``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

from .errors import SnaketuneError
from .files import atomic_path, sha256_file

BFCL_VERSION = "2026.3.23"
BFCL_WHEEL_SHA256 = "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"  # as PyPI lists it

# The AST-checked categories whose values are Python/JSON values (BFCL_v4_<category>.json). The
# java / javascript ones take source-code strings and are not supported.
PYTHON_AST_CATEGORIES = (
    "simple_python", "multiple", "parallel", "parallel_multiple",
    "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
)

# BFCL's Python-style parameter types -> JSON Schema types (None: no "type", any value).
TYPE_MAP = {
    "dict": "object", "float": "number", "tuple": "array", "any": None,
    "integer": "integer", "string": "string", "boolean": "boolean", "array": "array",
    # already JSON Schema (never seen in v4 data; accepted as they are)
    "object": "object", "number": "number",
}

OPTIONAL = ""  # the marker among acceptable values: the parameter may be omitted


# ---------------------------------------------------------------- types

def _mapping_name(old: str, new: str | None) -> str:
    return f"{old}->{new if new is not None else 'untyped'}"


def to_json_schema(spec: dict, counts: Counter, where: str = "parameters") -> dict:
    """A BFCL parameter schema with its types mapped to JSON Schema, nested properties and items too.

    Other keys (description, enum, default, required, ...) are kept as given. ``counts`` gains one
    ``"<bfcl>-><json>"`` entry per type that changed name.
    """
    if not isinstance(spec, dict):
        raise SnaketuneError(None, f"parameter schema is a {type(spec).__name__}, not an object", field=where,
                             fix="use a BFCL python-language category")
    out = {}
    for key, value in spec.items():
        if key == "type":
            if value not in TYPE_MAP:
                raise SnaketuneError(None, f"type {value!r} is not one of BFCL's python types "
                                     f"({', '.join(sorted(TYPE_MAP))})", field=f"{where}.type",
                                     fix="java / javascript categories are not supported; use "
                                     + ", ".join(PYTHON_AST_CATEGORIES))
            new = TYPE_MAP[value]
            if new != value:
                counts[_mapping_name(value, new)] += 1
            if new is not None:
                out["type"] = new
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: to_json_schema(sub, counts, f"{where}.properties.{name}")
                                 for name, sub in value.items()}
        elif key == "items" and isinstance(value, dict):
            out["items"] = to_json_schema(value, counts, f"{where}.items")
        else:
            out[key] = value
    return out


def _bfcl_type(spec) -> str | None:
    return spec.get("type") if isinstance(spec, dict) else None


# ---------------------------------------------------------------- gold values

def first_acceptable(acceptable: list, spec: dict | None):
    """The gold value for one parameter: its first acceptable value that is not ``""``.

    Returns ``(present, value)``; ``present`` is False when ``""`` (or nothing) is all there is. A dict
    parameter's acceptable values are dicts of acceptable lists (one level), an array-of-dicts
    parameter's are lists of such dicts: those are made concrete the same way.
    """
    for value in acceptable:
        if value == OPTIONAL and isinstance(value, str):
            continue
        return True, _concrete(value, spec)
    return False, None


def _concrete(value, spec):
    kind = _bfcl_type(spec)
    if kind in ("dict", "object") and isinstance(value, dict):
        return _concrete_dict(value, spec)
    if kind in ("array", "tuple") and isinstance(value, list) and _bfcl_type(spec.get("items")) in ("dict", "object"):
        return [_concrete_dict(v, spec["items"]) if isinstance(v, dict) else v for v in value]
    return value


def _concrete_dict(value: dict, spec: dict) -> dict:
    props = spec.get("properties") or {}
    out = {}
    for key, acceptable in value.items():
        if not isinstance(acceptable, list):  # not the {key: [acceptable]} form: a literal value
            out[key] = acceptable
            continue
        present, concrete = first_acceptable(acceptable, props.get(key))
        if present:
            out[key] = concrete
    return out


# ---------------------------------------------------------------- rows

def category_of(case_id: str) -> str:
    """BFCL's category from a row id: ``simple_python_0`` -> simple_python, ``live_multiple_1-2-0`` -> live_multiple."""
    return case_id.rsplit("_", 1)[0]


def convert_case(question: dict, answer: dict, category: str | None = None) -> tuple[dict, dict]:
    """One BFCL question row + its possible-answer row -> (canonical chat row, type mappings made).

    The row: ``messages`` = the question's turns, then a gold assistant turn whose ``tool_calls`` take,
    per parameter, the first acceptable value that is not ``""`` (a parameter with only ``""`` is
    omitted); ``tools`` = the row's ``function`` docs with types mapped to JSON Schema;
    ``possible_answer`` = the answer's acceptable values aligned with the tool calls; ``bfcl`` = the
    BFCL id, category and raw function docs (the AST checker's own input, e.g. ``any`` means a string).
    """
    case_id = question.get("id", "<no id>")
    if answer is None or answer.get("id", case_id) != case_id:
        raise SnaketuneError(None, f"BFCL row {case_id!r} has no matching possible answer "
                             f"(got {None if answer is None else answer.get('id')!r})", field="ground_truth",
                             fix="pair each question row with the answer row of the same id")
    category = category or category_of(case_id)
    counts: Counter = Counter()
    messages = [dict(m) for turn in question["question"] for m in turn]
    tools = []
    docs = {}
    for i, fn in enumerate(question["function"]):
        params = to_json_schema(fn.get("parameters") or {"type": "dict", "properties": {}}, counts,
                                f"{case_id}: function[{i}].parameters")
        tools.append({"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                                       "parameters": params}})
        docs[fn["name"]] = fn
    calls, possible = [], []
    for item in answer["ground_truth"]:
        if not isinstance(item, dict) or len(item) != 1:
            raise SnaketuneError(None, f"BFCL answer {case_id!r} holds {item!r}, not one {{name: arguments}}",
                                 field="ground_truth", fix="use an AST category (not multi-turn or agentic)")
        (name, accepted), = item.items()
        props = ((docs.get(name) or {}).get("parameters") or {}).get("properties") or {}
        arguments = {}
        for param, acceptable in accepted.items():
            present, value = first_acceptable(acceptable, props.get(param))
            if present:
                arguments[param] = value
        calls.append({"type": "function",
                      "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}})
        possible.append({"name": name, "arguments": accepted})
    messages.append({"role": "assistant", "content": None, "tool_calls": calls})
    row = {"messages": messages, "tools": tools, "possible_answer": possible,
           "bfcl": {"id": case_id, "category": category, "function": question["function"]}}
    return row, dict(sorted(counts.items()))


# ---------------------------------------------------------------- the wheel

def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_category(wheel_path, category: str) -> list[tuple[dict, dict]]:
    """[(question row, answer row)] of ``BFCL_v4_<category>.json`` in the wheel, id-aligned, in file order.

    BFCL's ``.json`` data files are JSON Lines.
    """
    if category not in PYTHON_AST_CATEGORIES:
        raise SnaketuneError(wheel_path, f"BFCL category {category!r} is not supported",
                             field="eval.benchmarks", fix="use one of " + ", ".join(PYTHON_AST_CATEGORIES))
    with zipfile.ZipFile(wheel_path) as zf:
        questions = _jsonl(zf.read(f"bfcl_eval/data/BFCL_v4_{category}.json").decode("utf-8"))
        answers = {a["id"]: a for a in
                   _jsonl(zf.read(f"bfcl_eval/data/possible_answer/BFCL_v4_{category}.json").decode("utf-8"))}
    missing = [q["id"] for q in questions if q["id"] not in answers]
    if missing:
        raise SnaketuneError(wheel_path, f"{len(missing)} {category} rows have no possible answer "
                             f"(first: {missing[0]})", fix="check the wheel is the pinned bfcl-eval release")
    return [(q, answers[q["id"]]) for q in questions]


def convert_category(wheel_path, category: str) -> tuple[list[dict], dict]:
    """Every row of a category converted, and the type mappings made over all of them."""
    rows, total = [], Counter()
    for question, answer in read_category(wheel_path, category):
        row, counts = convert_case(question, answer, category)
        rows.append(row)
        total.update(counts)
    return rows, dict(sorted(total.items()))


def fetch_wheel(dest, version: str = BFCL_VERSION, sha256: str = BFCL_WHEEL_SHA256, *,
                source=None) -> Path:
    """The bfcl-eval wheel at ``dest``, its sha256 checked: kept if already there, else copied from
    ``source`` (a local wheel) or downloaded with ``pip download --no-deps``. Never installed."""
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        if source:
            got = Path(source)
            if not got.is_file():
                raise SnaketuneError(source, "bfcl-eval wheel not found", field="eval.bfcl.wheel",
                                     fix="point eval.bfcl.wheel at the downloaded .whl or set it to null")
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", f"bfcl-eval=={version}", "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("bfcl_eval-*.whl"))
            if done.returncode != 0 or not wheels:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
                raise SnaketuneError(None, f"could not download bfcl-eval=={version}: {tail[0]}",
                                     field="eval.benchmarks",
                                     fix="check network access to PyPI, or set eval.bfcl.wheel to a local copy")
            got = wheels[0]
        actual = sha256_file(got)
        if actual != sha256:
            raise SnaketuneError(got, f"sha256 {actual} is not the pinned {sha256}", field="eval.bfcl.sha256",
                                 fix=f"use the bfcl-eval=={version} wheel from PyPI, or pin its real hash")
        with atomic_path(dest) as tmp_dest:
            shutil.copyfile(got, tmp_dest)
    return dest
