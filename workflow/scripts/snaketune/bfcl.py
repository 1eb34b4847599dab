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

The scorer (``check``, ``check_case``, ``arg_counts``) follows BFCL's AST checker rule for rule (see
/work/notes/bfcl.md; written from the rules, not copied): acceptable values, optional arguments, string
normalisation, int accepted for float but not float for int, unexpected arguments refused, parallel calls
matched in any order (greedily, as BFCL does), one call in simple / multiple categories. tests/test_metrics.py
checks it against BFCL's own ``ast_checker`` loaded from the wheel, verdict for verdict.
"""

from __future__ import annotations

import functools
import json
import re
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

# BFCL v4 category -> the column of the public leaderboard (its overall table; simple_python's own
# number is only in the non-live table, the overall "Non-Live Simple AST" also averages Java and JS).
LEADERBOARD_COLUMNS = {
    "simple_python": "Python Simple AST (non-live table)",
    "multiple": "Non-Live Multiple AST",
    "parallel": "Non-Live Parallel AST",
    "parallel_multiple": "Non-Live Parallel Multiple AST",
    "live_simple": "Live Simple AST",
    "live_multiple": "Live Multiple AST",
    "live_parallel": "Live Parallel AST",
    "live_parallel_multiple": "Live Parallel Multiple AST",
}


def in_leaderboard_order(categories: dict) -> list[tuple[str, dict]]:
    """{category: ...} items in the leaderboard's column order (JSON files keep them sorted by name)."""
    order = list(LEADERBOARD_COLUMNS)
    return sorted(categories.items(),
                  key=lambda item: order.index(item[0]) if item[0] in order else len(order))


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
    items_kind = _bfcl_type(spec.get("items")) if isinstance(spec, dict) else None
    if kind in ("array", "tuple") and isinstance(value, list) and items_kind in ("dict", "object"):
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
    """BFCL's category from a row id: ``simple_python_0`` -> simple_python, ``live_multiple_1-2-0`` ->
    live_multiple."""
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
        tools.append({"type": "function", "function": {
            "name": fn["name"], "description": fn.get("description", ""), "parameters": params}})
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
                raise SnaketuneError(source, "bfcl-eval wheel not found", field="eval.bfcl_wheel",
                                     fix="point eval.bfcl.wheel at the downloaded .whl or set it to null")
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", f"bfcl-eval=={version}", "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wheels = sorted(Path(tmp).glob("bfcl_eval-*.whl"))
            if done.returncode != 0 or not wheels:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
                raise SnaketuneError(None, f"could not download bfcl-eval=={version}: {tail[0]}",
                                     field="eval.benchmarks",
                                     fix="check access to PyPI, or set eval.bfcl_wheel to a local copy")
            got = wheels[0]
        actual = sha256_file(got)
        if actual != sha256:
            raise SnaketuneError(got, f"sha256 {actual} is not the pinned {sha256}", field="eval.bfcl_wheel",
                                 fix=f"use the bfcl-eval=={version} wheel as PyPI serves it")
        with atomic_path(dest) as tmp_dest:
            shutil.copyfile(got, tmp_dest)
    return dest


# ---------------------------------------------------------------- the AST checker's rules

# Parameter type names -> the Python type a decoded JSON value must have. BFCL's (string, integer, float,
# boolean, array, tuple, dict, any: ``any`` means a string to BFCL) and JSON Schema's (number behaves as
# float, object as dict), so rows that carry only converted tools are scored the same way.
PY_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
            "dict": dict, "any": str, "number": float, "object": dict, "null": type(None)}
SEQUENCE_TYPES = ("array", "tuple")   # the only types whose items' type is checked (one level)
WIDEN_TO_FLOAT = ("float", "number")  # an int is accepted (as its float) where these are expected

_DROPPED_CHARS = re.compile(r"[ ,./\-_*^]")


def norm_str(text: str) -> str:
    """BFCL's string normalisation: drop space , . / - _ * ^; lowercase; single quote -> double quote."""
    return _DROPPED_CHARS.sub("", text).lower().replace("'", '"')


def _norm_if_str(value):
    return norm_str(value) if type(value) is str else value


def _answer_type(acceptable):
    """The type of the first acceptable value that is not the optional marker (None if there is none)."""
    for value in acceptable:
        if value != OPTIONAL:
            return type(value)
    return None


def _spec_type(spec) -> type | None:
    """The Python type a parameter's schema asks for; None when it names none (untyped JSON Schema)."""
    name = spec.get("type") if isinstance(spec, dict) else None
    return PY_TYPES.get(name) if isinstance(name, str) else None


def _type_check(value, acceptable, expected, item_expected):
    """(error_type or None, compare_as_variable): BFCL's one-level type check."""
    ans_type = _answer_type(acceptable)
    as_variable = ans_type is not None and ans_type is not expected
    if type(value) is expected:
        if item_expected is None:
            return None, as_variable
        # some acceptable entry is not a list (e.g. the "" marker: nothing is checked), or every item has
        # the items' type or the type of that acceptable list's own elements
        for acc in acceptable:
            if type(acc) is not list:
                return None, as_variable
            acc_type = _answer_type(acc)
            if all(type(v) is item_expected or (acc_type is not None and type(v) is acc_type) for v in value):
                return None, as_variable
        return "type_error:nested", as_variable
    if ans_type is not None and type(value) is ans_type:  # typed like the answer: BFCL's "variable" escape
        return None, True
    return "type_error:simple", as_variable


def _dict_error(value: dict, candidates) -> str | None:
    """None when ``value`` matches one candidate ``{key: [acceptable]}`` (keys one level deep)."""
    error = "dict_checker:unclear"
    for cand in candidates:
        if cand == OPTIONAL:
            continue
        error = None
        for key, v in value.items():
            if key not in cand:
                error = "value_error:dict_key"
                break
            if _norm_if_str(v) not in [_norm_if_str(a) for a in cand[key]]:
                error = "value_error:dict_value"
                break
        for key, acc in cand.items():  # checked even after a bad value: a missing key's error wins
            if key not in value and OPTIONAL not in acc:
                error = "value_error:dict_key"
                break
        if error is None:
            return None
    return error


def _list_of_dicts_error(value: list, candidates) -> str | None:
    error = "list_dict_checker:unclear"
    for cand in candidates:
        if len(value) != len(cand):
            error = "value_error:list_dict_count"
            continue
        error = None
        for v, c in zip(value, cand):
            error = _dict_error(v, [c])
            if error:
                break
        if error is None:
            return None
    return error


def _list_matches(value: list, candidates) -> bool:
    mine = [_norm_if_str(v) for v in value]
    return any(mine == [_norm_if_str(a) for a in cand] for cand in candidates)  # "" iterates as []


def check_value(value, acceptable: list, spec) -> str | None:
    """None when a supplied argument value is acceptable for its parameter, else BFCL's error type."""
    expected = _spec_type(spec)
    if expected is None:  # untyped: no type check; compared by the value's own kind
        if type(value) is str:
            ok = norm_str(value) in [norm_str(a) for a in acceptable if type(a) is str]
            return None if ok else "value_error:string"
        if type(value) is list:
            return None if _list_matches(value, acceptable) else "value_error:list/tuple"
        return None if value in acceptable else "value_error:others"
    kind = spec["type"]
    item_expected = None
    if kind in SEQUENCE_TYPES:
        item_expected = _spec_type(spec.get("items"))
    if kind in WIDEN_TO_FLOAT and type(value) is int:
        value = float(value)
    error, as_variable = _type_check(value, acceptable, expected, item_expected)
    if error:
        return error
    if not as_variable:
        if expected is dict:
            return _dict_error(value, acceptable)
        if expected is list and item_expected is dict:
            return _list_of_dicts_error(value, acceptable)
        if expected is str:
            ok = norm_str(value) in [norm_str(a) for a in acceptable if type(a) is str]
            return None if ok else "value_error:string"
        if expected is list:
            return None if _list_matches(value, acceptable) else "value_error:list/tuple"
    return None if value in acceptable else "value_error:others"  # Python ==: 1 == 1.0, True == 1


def expected_name(name: str, underscore_to_dot: bool) -> str:
    return name.replace(".", "_") if underscore_to_dot else name


def _parameters(fn) -> tuple[dict, list]:
    params = (fn or {}).get("parameters") or {}
    return params.get("properties") or {}, params.get("required") or []


def check_call(fn: dict | None, call: dict, answer: dict, underscore_to_dot: bool = False) -> str | None:
    """None when one decoded call ``{name: args}`` satisfies one answer ``{name: {arg: [acceptable]}}``
    for the function doc ``fn``; else the first failure's error type."""
    if fn is None:
        return "simple_function_checker:unknown_function"  # the answer names a function the row lacks
    name = expected_name(fn["name"], underscore_to_dot)
    if name not in call:
        return "simple_function_checker:wrong_func_name"
    args = call[name]
    accepted = next(iter(answer.values()))
    props, required = _parameters(fn)
    if any(p not in args for p in required):
        return "simple_function_checker:missing_required"
    for param, value in args.items():
        if param not in props or param not in accepted:
            return "simple_function_checker:unexpected_param"
        error = check_value(value, accepted[param], props[param])
        if error:
            return error
    if any(p not in args and OPTIONAL not in acc for p, acc in accepted.items()):
        return "simple_function_checker:missing_optional"
    return None


def _doc(functions, name):
    return next((f for f in functions if f.get("name") == name), None)


def is_call_list(output) -> bool:
    return isinstance(output, list) and all(
        type(c) is dict and len(c) == 1 and type(next(iter(c.values()))) is dict for c in output)


def check(functions: list, output: list, ground_truth: list, category: str,
          underscore_to_dot: bool = False) -> dict:
    """BFCL's verdict for one row: ``{"valid": bool, "error_type": str | None}``.

    ``functions``: the row's function docs; ``output``: decoded calls ``[{name: {arg: value}}]``;
    ``ground_truth``: ``[{name: {arg: [acceptable]}}]``; ``category``: BFCL's (its name decides the rule
    on the number of calls, as in BFCL: "parallel" in it, then "multiple", else simple).
    """
    def verdict(error):
        return {"valid": error is None, "error_type": error}

    if not is_call_list(output):
        return verdict("ast_decoder:decoder_wrong_output_format")
    if "parallel" in category:  # every answer matched by a distinct call, any order (greedy, as BFCL)
        if len(output) != len(ground_truth):
            return verdict("parallel_function_checker_no_order:wrong_count")
        used = set()
        for answer in ground_truth:
            fn = _doc(functions, next(iter(answer)))
            hit = next((i for i, call in enumerate(output)
                        if i not in used and check_call(fn, call, answer, underscore_to_dot) is None), None)
            if hit is None:
                return verdict("parallel_function_checker_no_order:cannot_find_match")
            used.add(hit)
        return verdict(None)
    if "multiple" in category:  # exactly one call, the right one among the offered functions
        if len(output) != len(ground_truth):
            return verdict("multiple_function_checker:wrong_count")
        fn = _doc(functions, next(iter(ground_truth[0])))
        return verdict(check_call(fn, output[0], ground_truth[0], underscore_to_dot))
    if len(output) != 1:
        return verdict("simple_function_checker:wrong_count")
    fn = functions[0] if functions else None
    return verdict(check_call(fn, output[0], ground_truth[0], underscore_to_dot))


# ---------------------------------------------------------------- per-argument counts

def arg_counts(functions: list, output: list, ground_truth: list, underscore_to_dot: bool = False) -> dict:
    """Per-argument TP / FP / FN under acceptable-value sets (BFCL itself has no such score).

    Calls pair with answers of the same function name by the assignment with the fewest FP + FN, then the
    most TP (exact up to 12 calls, greedy beyond). In a pair, a supplied argument is a TP when
    ``check_value`` accepts it, else an FP (also when the answer does not list it); an answer argument is
    an FN when it is not a TP and is mandatory (no ``""``). An omitted optional argument counts nowhere.
    Unpaired calls give all their arguments as FPs, unpaired answers all their mandatory ones as FNs.
    A BFCL-valid output always has FP = FN = 0.
    """
    def pair_counts(fn, args, accepted):
        props, _ = _parameters(fn)
        good = {p for p, v in args.items()
                if p in props and p in accepted and check_value(v, accepted[p], props[p]) is None}
        missed = sum(1 for p, acc in accepted.items() if p not in good and OPTIONAL not in acc)
        return len(good), len(args) - len(good), missed

    cost, mandatory = [], []
    for answer in ground_truth:
        (gold_name, accepted), = answer.items()
        fn = _doc(functions, gold_name)
        name = expected_name(gold_name, underscore_to_dot)
        cost.append([pair_counts(fn, call[name], accepted) if name in call else None for call in output])
        mandatory.append(sum(1 for acc in accepted.values() if OPTIONAL not in acc))
    out_args = [len(next(iter(call.values()))) for call in output]

    def badness(c):
        return (c[1] + c[2], -c[0])

    if len(output) <= 12:
        @functools.cache
        def best(ai, used):
            if ai == len(ground_truth):
                return 0, sum(n for o, n in enumerate(out_args) if not used >> o & 1), 0
            tp, fp, fn = best(ai + 1, used)
            options = [(tp, fp, fn + mandatory[ai])]  # this answer left unpaired
            for o, c in enumerate(cost[ai]):
                if c is not None and not used >> o & 1:
                    tp, fp, fn = best(ai + 1, used | 1 << o)
                    options.append((tp + c[0], fp + c[1], fn + c[2]))
            return min(options, key=badness)

        tp, fp, fn = best(0, 0)
    else:
        pairs = sorted(((c, ai, oi) for ai, row in enumerate(cost) for oi, c in enumerate(row) if c),
                       key=lambda p: (badness(p[0]), p[1], p[2]))
        tp = fp = fn = 0
        used_a, used_o = set(), set()
        for c, ai, oi in pairs:
            if ai not in used_a and oi not in used_o:
                used_a.add(ai)
                used_o.add(oi)
                tp, fp, fn = tp + c[0], fp + c[1], fn + c[2]
        fn += sum(m for ai, m in enumerate(mandatory) if ai not in used_a)
        fp += sum(n for oi, n in enumerate(out_args) if oi not in used_o)
    return {"param_tp": tp, "param_fp": fp, "param_fn": fn}


# ---------------------------------------------------------------- canonical rows

def infer_category(n_calls: int, n_tools: int) -> str:
    """A row's BFCL-style category: one call -> simple / multiple, several -> parallel / parallel_multiple
    (by whether the row offers one tool or several)."""
    if n_calls <= 1:
        return "simple" if n_tools <= 1 else "multiple"
    return "parallel" if n_tools <= 1 else "parallel_multiple"


def _derived_acceptable(value, spec):
    """A gold value as the only acceptable one (dict parameters in BFCL's {key: [acceptable]} form)."""
    kind = _bfcl_type(spec)
    if kind in ("dict", "object") and isinstance(value, dict):
        return [{k: [v] for k, v in value.items()}]
    items = spec.get("items") if isinstance(spec, dict) else None
    if (kind in SEQUENCE_TYPES and isinstance(value, list) and _bfcl_type(items) in ("dict", "object")
            and all(isinstance(v, dict) for v in value)):
        return [[{k: [x] for k, x in v.items()} for v in value]]
    return [value]


def case_from_row(row: dict, gold: list[dict]) -> dict:
    """What BFCL's checker needs for a canonical tool row: ``{"category", "functions", "ground_truth",
    "answers"}``.

    ``functions``: BFCL's raw docs when the row came from BFCL (``row["bfcl"]``), else the row's tools.
    ``ground_truth``: from ``possible_answer`` (``answers: "possible_answer"``), else each gold argument's
    value as its only acceptable one (``answers: "gold"``). ``gold``: the row's gold calls
    (``metrics.gold_calls``).
    """
    source = row.get("bfcl") or {}
    functions = source.get("function") or [t.get("function", t) for t in row.get("tools") or []]
    if row.get("possible_answer") is not None:
        ground_truth = [{p["name"]: p["arguments"]} for p in row["possible_answer"]]
        answers = "possible_answer"
    else:
        ground_truth = []
        for call in gold:
            props, _ = _parameters(_doc(functions, call["name"]))
            ground_truth.append({call["name"]: {k: _derived_acceptable(v, props.get(k))
                                                for k, v in call["arguments"].items()}})
        answers = "gold"
    category = source.get("category") or infer_category(len(ground_truth), len(functions))
    return {"category": category, "functions": functions, "ground_truth": ground_truth, "answers": answers}


def decoded(pred_calls: list[dict]) -> list[dict]:
    """Parsed calls (``metrics.parse_tool_calls``) in BFCL's decoded form ``[{name: {arg: value}}]``."""
    return [{c["name"]: c["arguments"]} for c in pred_calls]


def check_case(case: dict, pred_calls: list[dict], valid: bool) -> dict:
    """BFCL's verdict for a turn's parsed calls. A turn with a malformed ``<tool_call>`` block fails to
    decode (``ast_decoder:decoder_failed``); one with no block decodes to no calls."""
    if not valid and pred_calls:
        return {"valid": False, "error_type": "ast_decoder:decoder_failed"}
    return check(case["functions"], decoded(pred_calls), case["ground_truth"], case["category"])


__all__ = [
    "BFCL_VERSION",
    "BFCL_WHEEL_SHA256",
    "PYTHON_AST_CATEGORIES",
    "LEADERBOARD_COLUMNS",
    "in_leaderboard_order",
    "TYPE_MAP",
    "OPTIONAL",
    "to_json_schema",
    "first_acceptable",
    "category_of",
    "convert_case",
    "read_category",
    "convert_category",
    "fetch_wheel",
    "norm_str",
    "check_value",
    "check_call",
    "check",
    "arg_counts",
    "infer_category",
    "case_from_row",
    "decoded",
    "check_case",
]
