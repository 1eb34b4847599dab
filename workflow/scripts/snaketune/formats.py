"""Source formats -> snaketune's canonical chat row, so users bring tool-use data in the shape they have.

Formats (``data.sources[].format``): ``chat`` (alias ``openai``: OpenAI chat rows, ``arguments`` as a JSON
string or, as Hugging Face chat templates want them, an object), ``sharegpt`` (LLaMA-Factory's tool-use
ShareGPT: ``conversations`` with human / gpt / function_call / observation turns, ``tools`` a JSON string),
``axolotl`` (axolotl's ``chat_template`` datasets: configurable message keys and role names) and ``bfcl``
(a BFCL question file joined with its possible_answer file; see ``bfcl_rows``). ``instruction`` rows are
handled by snaketune.data.

A converter returns ``(row, where)``: ``row`` is ``{"messages", "tools"}`` for data.normalise_row's checks,
``where`` maps canonical field paths back to the source's (``where.source_field``), so every error names the
field the user wrote. A ``#`` in a path steps into a JSON-encoded string (``tools#[0].parameters``).
The mapping rules and every edge case are written down in tests/formats/README.md.
"""

from __future__ import annotations

import difflib
import json
import math
import re

from .errors import SnaketuneError, field_path

FORMATS = ("auto", "chat", "openai", "instruction", "sharegpt", "axolotl", "bfcl")
ALIASES = {"openai": "chat"}
CANONICAL_ROLES = ("system", "user", "assistant", "tool")
LF_RESPONSE_SEP = "\n</tool_response>\n<tool_response>\n"  # LLaMA-Factory's join of parallel tool results


class ConvertError(SnaketuneError):
    """A problem at a source field path; snaketune.data adds the file and line."""

    def __init__(self, field: str | None, problem: str, fix: str | None = None):
        super().__init__(None, problem, field=field, fix=fix)


def _type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


# ------------------------------------------------------------------ strict JSON (RFC 8259: no NaN / Infinity)


class _NonFinite:
    """Stands in for NaN / Infinity / an overflowing number while parsing; never leaves this module."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _non_finite_at(value):
    """(path parts, token) of the first NaN / Infinity in a parsed value, or None (no recursion)."""
    stack = [((), value)]
    while stack:
        parts, node = stack.pop()
        if isinstance(node, _NonFinite):
            return parts, node.token
        if isinstance(node, float) and not math.isfinite(node):  # from Python callers, not from parsed text
            return parts, repr(node)
        if isinstance(node, dict):
            stack.extend((parts + (k,), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((parts + (i,), v) for i, v in reversed(list(enumerate(node))))
    return None


class JSONError(ValueError):
    """Text that is not RFC 8259 JSON: ``parts`` is where in the value (for NaN), ``problem`` says what."""

    def __init__(
        self,
        problem: str,
        parts=(),
        fix: str = "write valid JSON (json.dumps writes it)",
        non_finite: bool = False,
    ):
        super().__init__(problem)
        self.problem, self.parts, self.fix, self.non_finite = problem, tuple(parts), fix, non_finite


def loads_strict(text: str):
    """json.loads that refuses NaN, Infinity and numbers that overflow to them (RFC 8259), as JSONError."""
    seen = []  # set when a NaN / Infinity was parsed: only then is the value searched for its place

    def constant(token):
        seen.append(token)
        return _NonFinite(token)

    def number(token):
        value = _parse_float(token)
        if isinstance(value, _NonFinite):
            seen.append(token)
        return value

    try:
        value = json.loads(text, parse_constant=constant, parse_float=number)
    except json.JSONDecodeError as err:
        raise JSONError(f"{err.msg} (column {err.colno})") from None
    except RecursionError:
        raise JSONError(
            "nested too deeply", fix="flatten the row; conversations need only a few levels"
        ) from None
    except ValueError as err:  # e.g. an integer past Python's digit limit
        raise JSONError(str(err).splitlines()[0]) from None
    found = _non_finite_at(value) if seen else None
    if found is not None:
        parts, token = found
        raise non_finite_error(token, parts)
    return value


def non_finite_error(token: str, parts=()) -> JSONError:
    return JSONError(
        f"{token} is not valid JSON (RFC 8259 has no NaN or Infinity)",
        parts,
        fix='write null, a finite number, or a string such as "NaN"',
        non_finite=True,
    )


def join(prefix: str, parts) -> str:
    return field_path([prefix, *parts]) if prefix else field_path(list(parts))


def _loads(text: str, path: str, what: str, inner: str | None = None):
    """Parse a JSON-encoded string field; errors name ``path`` (or ``inner`` + the place of a NaN)."""
    try:
        return loads_strict(text)
    except JSONError as err:
        if err.non_finite:
            raise ConvertError(
                join(inner if inner is not None else path, err.parts), err.problem, err.fix
            ) from None
        raise ConvertError(
            path, f"{what} is a string that is not valid JSON ({err.problem})", err.fix
        ) from None


class Where:
    """Canonical path -> source path, for errors raised after conversion (normalise_row's checks)."""

    def __init__(self, messages_key: str = "messages", tools_key: str = "tools"):
        self.messages_key, self.tools_key = messages_key, tools_key
        self.msg: list[str] = []  # canonical message index -> source path of the message
        self.calls: list[list[str] | None] = []  # canonical message index -> source path of each call
        self.args: list[list[str] | None] = []  # ... and of each call's arguments
        self.tools: list[str] = []  # canonical tool index -> source path of the function object
        self.keep_suffix = False  # messages[i].role stays .role (chat rows' keys are the canonical ones)

    def source_field(self, field: str | None) -> str | None:
        if not field:
            return field
        m = re.match(r"messages\[(\d+)\]\.tool_calls\[(\d+)\]\.function\.arguments(.*)$", field)
        if m and int(m.group(1)) < len(self.args) and self.args[int(m.group(1))]:
            return self.args[int(m.group(1))][int(m.group(2))] + m.group(3)
        m = re.match(r"messages\[(\d+)\]\.tool_calls\[(\d+)\]\.function(.*)$", field)
        if m and int(m.group(1)) < len(self.calls) and self.calls[int(m.group(1))]:
            return self.calls[int(m.group(1))][int(m.group(2))] + m.group(3)
        m = re.match(r"messages\[(\d+)\](.*)$", field)
        if m and int(m.group(1)) < len(self.msg):
            return self.msg[int(m.group(1))] + (m.group(2) if self.keep_suffix else "")
        m = re.match(r"tools\[(\d+)\]\.function(.*)$", field)
        if m and int(m.group(1)) < len(self.tools):
            return self.tools[int(m.group(1))] + m.group(2)
        return {"messages": self.messages_key, "tools": self.tools_key}.get(field, field)


# ------------------------------------------------------------------ shared pieces


def arguments_string(value, path: str) -> str:
    """Object -> its JSON string; a string holding an object -> re-spelt; anything else is an error."""
    if isinstance(value, str):
        parsed = _loads(value, path, "arguments", inner=path)
        if not isinstance(parsed, dict):
            raise ConvertError(
                path,
                f"arguments decode to a JSON {_type(parsed)}, not an object",
                'write arguments as a JSON object (or its string), e.g. "{}"',
            )
        return json.dumps(parsed, ensure_ascii=False)
    if isinstance(value, dict):
        found = _non_finite_at(value)  # a parsed line has none left; a Python caller's dict may
        if found is not None:
            err = non_finite_error(found[1], found[0])
            raise ConvertError(join(path, err.parts), err.problem, err.fix)
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        raise ConvertError(path, "arguments are null", "write {} for a call without arguments")
    raise ConvertError(
        path,
        f"arguments are a JSON {_type(value)}, not an object",
        'write arguments as a JSON object (or its string), e.g. "{}"',
    )


def content_text(value, path: str, role: str):
    """string | null | list of text parts -> string | None; a tool result object -> its JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for k, part in enumerate(value):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict) or part.get("type", "text") != "text":
                raise ConvertError(
                    f"{path}[{k}]",
                    "content part is not a text part",
                    "only text content is supported (no images or audio)",
                )
            text = next((part[key] for key in ("text", "content", "value") if key in part), None)
            if not isinstance(text, str):
                raise ConvertError(
                    f"{path}[{k}].text",
                    "text part has no string 'text'",
                    'write {"type": "text", "text": "..."}',
                )
            texts.append(text)
        return "".join(texts)
    if isinstance(value, dict) and role == "tool":
        return json.dumps(value, ensure_ascii=False)  # a structured tool result: serialised, never dropped
    raise ConvertError(
        path, f"content is a JSON {_type(value)}", "make it a string (or null on a tool-call turn)"
    )


def convert_tools(value, path: str, where: Where) -> list:
    """tools: a list or a JSON string of one; items wrapped in {"type": "function", "function"} or bare."""
    if value is None or value == "":
        return []
    inner = path
    if isinstance(value, str):
        value = _loads(value, path, "tools", inner=path + "#")
        inner = path + "#"
    if not isinstance(value, list):
        raise ConvertError(
            inner,
            f"tools is a JSON {_type(value)}, not a list",
            "write a list of tool definitions, even for one tool",
        )
    out = []
    for i, item in enumerate(value):
        base = f"{inner}[{i}]"
        if not isinstance(item, dict):
            raise ConvertError(
                base,
                f"tool is a JSON {_type(item)}, not an object",
                'write {"type": "function", "function": {"name", "description", "parameters"}}',
            )
        if "function" in item:
            if item.get("type", "function") != "function":
                raise ConvertError(
                    f"{base}.type",
                    f"tool type {item.get('type')!r} is not 'function'",
                    'only function tools are supported: "type": "function"',
                )
            fn, base = item["function"], f"{base}.function"
            if not isinstance(fn, dict):
                raise ConvertError(
                    base,
                    f"function is a JSON {_type(fn)}, not an object",
                    "write the function as {name, description, parameters}",
                )
        else:
            fn = item  # LLaMA-Factory's native shape: the bare function object
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConvertError(f"{base}.name", "tool has no name", "give every tool a non-empty 'name'")
        new = {"name": name}
        if fn.get("description") is not None:
            if not isinstance(fn["description"], str):
                raise ConvertError(f"{base}.description", "description is not a string", "make it a string")
            new["description"] = fn["description"]
        params = fn.get("parameters")
        if isinstance(params, str):  # axolotl allows a JSON-string schema (the datasets casting workaround)
            params = _loads(params, f"{base}.parameters", "parameters", inner=f"{base}.parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise ConvertError(
                    f"{base}.parameters",
                    f"parameters is a JSON {_type(params)}, not an object",
                    "make parameters a JSON Schema object",
                )
            new["parameters"] = params
        out.append({"type": "function", "function": new})
        where.tools.append(base)
    return out


def convert_tool_calls(value, path: str) -> tuple[list, list[str], list[str], list]:
    """OpenAI / HF tool_calls -> (canonical calls, source path of each call, of its arguments, ids)."""
    if not isinstance(value, list) or not value:
        raise ConvertError(
            path,
            "tool_calls is not a non-empty list",
            "write a list of calls, or leave tool_calls out of a text turn",
        )
    calls, paths, arg_paths, ids = [], [], [], []
    for c, call in enumerate(value):
        cpath = f"{path}[{c}]"
        if not isinstance(call, dict):
            raise ConvertError(
                cpath,
                f"tool call is a JSON {_type(call)}, not an object",
                'write {"type": "function", "function": {"name", "arguments"}}',
            )
        if call.get("type", "function") != "function":
            raise ConvertError(
                f"{cpath}.type",
                f"tool call type {call.get('type')!r} is not 'function'",
                'write "type": "function"',
            )
        if "function" in call:
            fn, fpath = call["function"], f"{cpath}.function"
            if not isinstance(fn, dict):
                raise ConvertError(
                    fpath,
                    f"function is a JSON {_type(fn)}, not an object",
                    "write the function as {name, arguments}",
                )
        else:
            fn, fpath = call, cpath  # flat {"name", "arguments"} (seen in HF-style data)
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ConvertError(f"{fpath}.name", "tool call has no name", "name the tool the call runs")
        if "arguments" not in fn:
            hint = " (found 'parameters': the Llama 3 spelling)" if "parameters" in fn else ""
            raise ConvertError(
                f"{fpath}.arguments",
                "tool call has no 'arguments'" + hint,
                "write the call as {name, arguments}; {} when it takes none",
            )
        calls.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": arguments_string(fn["arguments"], f"{fpath}.arguments"),
                },
            }
        )
        paths.append(fpath)
        arg_paths.append(f"{fpath}.arguments")
        ids.append(call.get("id"))
    return calls, paths, arg_paths, ids


def check_tool_results(messages, where: Where, ids_per_msg, tool_ids) -> None:
    """Each tool message follows an assistant call turn (or another tool message); no more results than
    calls; a tool_call_id, when given, names a call of that turn."""
    open_calls, seen = None, 0
    fix = "put each tool result right after the assistant turn whose call it answers"
    for m, msg in enumerate(messages):
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            open_calls, seen = ids_per_msg[m] or [None] * len(msg["tool_calls"]), 0
        elif msg["role"] == "tool":
            if open_calls is None:
                raise ConvertError(where.msg[m], "tool result does not follow an assistant tool call", fix)
            seen += 1
            if seen > len(open_calls):
                raise ConvertError(where.msg[m], f"{seen} tool results for {len(open_calls)} call(s)", fix)
            tid = tool_ids[m]
            if tid is not None and any(i is not None for i in open_calls) and tid not in open_calls:
                raise ConvertError(
                    where.msg[m] + ".tool_call_id",
                    f"tool_call_id {tid!r} is not an id of the preceding calls",
                    "give the result the id of the call it answers",
                )
        else:
            open_calls = None


# ------------------------------------------------------------------ sharegpt (LLaMA-Factory)

SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
ALTERNATION_FIX = "alternate human/observation with gpt/function_call turns, starting with human"


def _parse_function_value(text: str, path: str):
    obj = _loads(text, path, "function_call value", inner=path + "#")
    single = isinstance(obj, dict)
    items = [obj] if single else obj
    if not isinstance(items, list) or not items:
        raise ConvertError(
            path + "#",
            "function_call value is not a call object or a non-empty list of them",
            'write {"name": ..., "arguments": {...}} or a list of those',
        )
    calls, paths, arg_paths = [], [], []
    for k, call in enumerate(items):
        cpath = f"{path}#" if single else f"{path}#[{k}]"
        if not isinstance(call, dict):
            raise ConvertError(
                cpath,
                f"call is a JSON {_type(call)}, not an object",
                'write {"name": ..., "arguments": {...}}',
            )
        extra = sorted(set(call) - {"name", "arguments"})
        if extra:
            raise ConvertError(
                f"{cpath}.{extra[0]}",
                f"unexpected key {extra[0]!r} in a function_call",
                "a call is exactly {name, arguments}",
            )
        if not isinstance(call.get("name"), str) or not call["name"]:
            raise ConvertError(f"{cpath}.name", "call has no name", "name the tool the call runs")
        if "arguments" not in call:
            raise ConvertError(f"{cpath}.arguments", "call has no 'arguments'", "write {} when it takes none")
        calls.append(
            {
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": arguments_string(call["arguments"], f"{cpath}.arguments"),
                },
            }
        )
        paths.append(cpath)
        arg_paths.append(f"{cpath}.arguments")
    return calls, paths, arg_paths


def _add_message(messages: list, where: Where, message: dict, path: str, call_paths=None, arg_paths=None):
    """Append a canonical message and the source paths of it, its calls and their arguments."""
    messages.append(message)
    where.msg.append(path)
    where.calls.append(call_paths)
    where.args.append(arg_paths)


def _sharegpt_conversation(row: dict, cols: dict, t: dict) -> list:
    """The row's turns, once the row is one we read (no media, no preference pairs) and every turn is a
    {role tag: string, content tag: string} object."""
    rk, ck, mk = t["role_tag"], t["content_tag"], cols["messages"]
    for media in ("images", "videos", "audios"):
        if row.get(media):
            raise ConvertError(media, "multimodal rows are not supported", "remove the column or the row")
    for pref in ("chosen", "rejected", "kto_tag"):
        if pref in row:
            raise ConvertError(pref, "preference (ranking / KTO) rows are not supported", "use SFT rows")
    conv = row.get(mk)
    if not isinstance(conv, list) or not conv:
        raise ConvertError(
            mk,
            "missing or not a non-empty list"
            if conv is None or conv == []
            else f"is a JSON {_type(conv)}, not a list",
            f"write the turns as a list under '{mk}'",
        )
    for i, msg in enumerate(conv):
        if not isinstance(msg, dict):
            raise ConvertError(
                f"{mk}[{i}]",
                f"turn is a JSON {_type(msg)}, not an object",
                f'write {{"{rk}": ..., "{ck}": ...}}',
            )
        if not isinstance(msg.get(rk), str):
            raise ConvertError(
                f"{mk}[{i}].{rk}",
                "missing role tag" if rk not in msg else "role tag is not a string",
                f"give every turn a '{rk}' (or set options.tags.role_tag)",
            )
        if not isinstance(msg.get(ck), str):
            raise ConvertError(
                f"{mk}[{i}].{ck}",
                "missing content"
                if ck not in msg
                else f"content is a JSON {_type(msg.get(ck))}, not a string",
                f"give every turn a string '{ck}' (function_call values are JSON strings)",
            )
    return conv


def _sharegpt_system(row: dict, conv: list, cols: dict, t: dict) -> tuple[str, str | None, int]:
    """(system prompt, its source path, index of the first turn after it): a system turn at [0] or the
    system column (LLaMA-Factory: the turn wins; here they must agree)."""
    rk, ck, mk = t["role_tag"], t["content_tag"], cols["messages"]
    col = row.get(cols["system"]) if cols.get("system") else None
    if col is not None and not isinstance(col, str):
        raise ConvertError(cols["system"], f"system is a JSON {_type(col)}, not a string", "make it a string")
    offset, system, system_path = 0, (col or "").strip(), cols.get("system")
    if conv[0][rk] == t["system_tag"]:
        turn = conv[0][ck].strip()
        if system and turn and system != turn:
            raise ConvertError(
                cols["system"],
                "row has both a system column and a different system turn",
                "keep one system prompt",
            )
        system, system_path, offset = turn or system, f"{mk}[0]" if turn else system_path, 1
    return system, system_path, offset


def _check_sharegpt_tag(k: int, tag: str, t: dict, known: set, field: str) -> None:
    """Turn ``k`` after the system prompt: human first, then human/observation and gpt/function_call turns
    alternate; ``known`` holds those four tags, ``field`` is the turn's role tag path."""
    odd, even = (t["user_tag"], t["observation_tag"]), (t["assistant_tag"], t["function_tag"])
    allowed = odd if k % 2 == 0 else even
    if tag not in allowed:
        if tag == t["system_tag"]:
            problem = "system turn is only allowed first"
        elif tag not in known:
            problem = f"unknown role tag {tag!r}"
            if tag == "tool":
                raise ConvertError(
                    field,
                    problem,
                    "tools embedded in the prompt (Hermes) are not "
                    "supported; convert to function_call / observation turns",
                )
        else:
            expected = " or ".join(map(repr, allowed))
            problem = f"{tag!r} at this position; expected {expected} (turns alternate)"
        raise ConvertError(field, problem, ALTERNATION_FIX)
    if k == 0 and tag != t["user_tag"]:
        raise ConvertError(field, "first turn is not the user's", ALTERNATION_FIX)


def _observation_results(text: str, path: str, t: dict, after_call: bool, calls: int) -> list[str]:
    """An observation turn's tool results: one per call of the function_call turn it must follow."""
    rk, ck = t["role_tag"], t["content_tag"]
    if not after_call:
        raise ConvertError(
            f"{path}.{rk}", "observation does not follow a function_call turn", ALTERNATION_FIX
        )
    parts = text.split(LF_RESPONSE_SEP)
    if len(parts) > 1 and len(parts) != calls:
        raise ConvertError(
            f"{path}.{ck}",
            f"{len(parts)} joined tool responses for {calls} call(s)",
            "give one response per call",
        )
    return parts


def _sharegpt_turns(conv: list, offset: int, mk: str, t: dict, messages: list, where: Where) -> None:
    """Convert the turns after the system prompt (``conv[offset:]``) onto ``messages``."""
    rk, ck = t["role_tag"], t["content_tag"]
    known = {t["user_tag"], t["observation_tag"], t["assistant_tag"], t["function_tag"]}
    body = conv[offset:]
    if not body:
        raise ConvertError(mk, "no turns besides the system prompt", "add the human and gpt turns")
    prev_calls = 0
    for k, msg in enumerate(body):
        path, tag, text = f"{mk}[{k + offset}]", msg[rk], msg[ck]
        _check_sharegpt_tag(k, tag, t, known, f"{path}.{rk}")
        if tag == t["user_tag"]:
            _add_message(messages, where, {"role": "user", "content": text}, path)
        elif tag == t["assistant_tag"]:
            _add_message(messages, where, {"role": "assistant", "content": text}, path)
        elif tag == t["function_tag"]:
            calls, paths, arg_paths = _parse_function_value(text, f"{path}.{ck}")
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            _add_message(messages, where, message, path, paths, arg_paths)
            prev_calls = len(calls)
        else:  # observation
            after_call = body[k - 1][rk] == t["function_tag"]
            for part in _observation_results(text, path, t, after_call, prev_calls):
                _add_message(messages, where, {"role": "tool", "content": part}, path)


def convert_sharegpt(row: dict, options: dict | None = None):
    """LLaMA-Factory's tool-use ShareGPT row (columns and tags renamed by options) -> (chat row, Where)."""
    options = options or {}
    cols = {**SHAREGPT_COLUMNS, **(options.get("columns") or {})}
    t = {**SHAREGPT_TAGS, **(options.get("tags") or {})}
    mk = cols["messages"]
    where = Where(mk, cols.get("tools") or "tools")
    conv = _sharegpt_conversation(row, cols, t)
    system, system_path, offset = _sharegpt_system(row, conv, cols, t)
    messages = []
    if system:
        _add_message(messages, where, {"role": "system", "content": system}, system_path)
    _sharegpt_turns(conv, offset, mk, t, messages, where)
    if (len(conv) - offset) % 2:
        raise ConvertError(
            f"{mk}[{len(conv) - 1}].{t['role_tag']}",
            "conversation ends on a human/observation turn",
            "end with the gpt or function_call turn to learn",
        )
    tools = convert_tools(
        row.get(cols["tools"]) if cols.get("tools") else None, cols.get("tools") or "tools", where
    )
    return {"messages": messages, "tools": tools}, where


# ------------------------------------------------------------------ axolotl chat_template, and OpenAI chat

AXOLOTL_DEFAULT_ROLES = {
    "human": "user",
    "user": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "system": "system",
    "tool": "tool",
}
AXOLOTL_KEYS = {
    "field_messages",
    "message_property_mappings",
    "message_field_role",
    "message_field_content",
    "roles",
    "field_system",
    "field_tools",
    "field_thinking",
    "drop_system_message",
    "roles_to_train",
    "type",
}
# axolotl settings that do not change which rows snaketune learns from: accepted, and ignored.
AXOLOTL_IGNORED = {
    "train_on_eos",
    "message_field_training",
    "message_field_training_detail",
    "split_thinking",
    "chat_template",
    "template_thinking_key",
}
SHAREGPT_KEYS = {"columns", "tags", "formatting"}


def axolotl_settings(ds: dict) -> dict:
    """The dataset block's keys that matter, with axolotl's defaults and legacy merging."""
    mp = dict(ds.get("message_property_mappings") or {})
    for legacy, key in (("message_field_role", "role"), ("message_field_content", "content")):
        if ds.get(legacy):
            if key in mp and mp[key] != ds[legacy]:
                raise ConvertError(
                    legacy,
                    f"conflicts with message_property_mappings.{key} ({mp[key]!r})",
                    "keep one of the two spellings",
                )
            mp[key] = ds[legacy]
    mp.setdefault("role", "role")
    mp.setdefault("content", "content")
    roles = (
        {src: tgt for tgt, srcs in ds["roles"].items() for src in ([srcs] if isinstance(srcs, str) else srcs)}
        if ds.get("roles")
        else dict(AXOLOTL_DEFAULT_ROLES)
    )
    return {
        "field_messages": ds.get("field_messages") or "messages",
        "mappings": mp,
        "roles": roles,
        "field_system": ds.get("field_system") or "system",
        "field_tools": ds.get("field_tools") or "tools",
        "field_thinking": ds.get("field_thinking") or "reasoning_content",
        "drop_system_message": bool(ds.get("drop_system_message")),
    }


def _message_list(row, fm: str) -> tuple[list, str]:
    """(the row's messages, their source path): a list under ``fm``, or a JSON string of one."""
    raw, path0 = row.get(fm), fm
    if isinstance(raw, str):
        raw, path0 = _loads(raw, fm, "messages", inner=fm + "#"), fm + "#"
    if not isinstance(raw, list) or not raw:
        raise ConvertError(
            path0,
            "missing or not a non-empty list of messages",
            f"write the conversation as a list under '{fm}'",
        )
    return raw, path0


def _message_role(m, p: str, s: dict, strict_roles: bool) -> str:
    """The canonical role of source message ``m`` at ``p``, once it is an object we read."""
    mp = s["mappings"]
    if not isinstance(m, dict):
        raise ConvertError(
            p,
            f"message is a JSON {_type(m)}, not an object",
            f'write {{"{mp["role"]}": ..., "{mp["content"]}": ...}}',
        )
    if "function_call" in m or m.get(mp["role"]) == "function":
        raise ConvertError(
            p,
            "legacy OpenAI functions API (function_call / role 'function')",
            "convert to tool_calls and role 'tool'",
        )
    role = m.get(mp["role"])
    if not isinstance(role, str):
        raise ConvertError(
            f"{p}.{mp['role']}",
            "missing role" if role is None else "role is not a string",
            f"give every message a '{mp['role']}'",
        )
    mapped = s["roles"].get(role, role)
    if mapped not in CANONICAL_ROLES:
        hint = (
            "use system, user, assistant or tool"
            if strict_roles
            else "map it under options.roles, e.g. {assistant: [gpt, model]}"
        )
        raise ConvertError(
            f"{p}.{mp['role']}", f"role {role!r} is not one of {', '.join(CANONICAL_ROLES)}", hint
        )
    if m.get(s["field_thinking"]):
        raise ConvertError(
            f"{p}.{s['field_thinking']}",
            "reasoning content is not supported",
            "drop it or fold it into content",
        )
    return mapped


def _with_system(msgs: list, row, s: dict) -> list:
    """``msgs`` ((role, message, path) triples) with field_system prepended as axolotl does when the first
    message is not a system turn, and the system turn dropped under drop_system_message."""
    sys_val = row.get(s["field_system"]) if s["field_system"] else None
    if msgs[0][0] != "system" and sys_val is not None:
        if not isinstance(sys_val, str):
            raise ConvertError(
                s["field_system"], f"system is a JSON {_type(sys_val)}, not a string", "make it a string"
            )
        if sys_val.strip():
            msgs.insert(0, ("system", {s["mappings"]["content"]: sys_val}, s["field_system"]))
    if s["drop_system_message"] and msgs[0][0] == "system":
        msgs = msgs[1:]
    return msgs


def _convert_message(role: str, m: dict, p: str, mp: dict) -> tuple[dict, list, list, list, str | None]:
    """(canonical message, source paths of its calls and their arguments, the call ids, its tool_call_id)."""
    tc_key, id_key, name_key = (
        mp.get("tool_calls", "tool_calls"),
        mp.get("tool_call_id", "tool_call_id"),
        mp.get("name", "name"),
    )
    content = content_text(m.get(mp["content"]), f"{p}.{mp['content']}", role)
    new = {"role": role, "content": content}
    ids, tid, cpaths, apaths = None, None, None, None
    if m.get(tc_key) not in (None, []):
        if role != "assistant":
            raise ConvertError(
                f"{p}.{tc_key}",
                f"a {role} message carries tool_calls",
                "only assistant messages call tools",
            )
        calls, cpaths, apaths, ids = convert_tool_calls(m[tc_key], f"{p}.{tc_key}")
        new["tool_calls"] = calls
        if content is not None and not content.strip():
            new["content"] = None  # "" and null are one spelling of a pure call turn (one id)
    if role == "tool":
        tid = m.get(id_key)
        if tid is not None and not isinstance(tid, str):
            raise ConvertError(
                f"{p}.{id_key}", "tool_call_id is not a string", "make it the call's id string"
            )
        if isinstance(m.get(name_key), str) and m[name_key]:
            new["name"] = m[name_key]
    return new, cpaths, apaths, ids, tid


def _convert_messages(row, s, strict_roles: bool):
    """The messages of a chat / axolotl row under settings ``s`` (axolotl_settings) -> (messages, Where)."""
    raw, path0 = _message_list(row, s["field_messages"])
    where = Where(path0, s["field_tools"])
    paths = [f"{path0}[{i}]" for i in range(len(raw))]
    msgs = [(_message_role(m, p, s, strict_roles), m, p) for m, p in zip(raw, paths)]
    msgs = _with_system(msgs, row, s)
    out, ids_per_msg, tool_ids = [], [], []
    for role, m, p in msgs:
        new, cpaths, apaths, ids, tid = _convert_message(role, m, p, s["mappings"])
        _add_message(out, where, new, p, cpaths, apaths)
        ids_per_msg.append(ids)
        tool_ids.append(tid)
    check_tool_results(out, where, ids_per_msg, tool_ids)
    return out, where


def convert_axolotl(row: dict, options: dict | None = None):
    s = axolotl_settings(options or {})
    messages, where = _convert_messages(row, s, strict_roles=False)
    tools = convert_tools(row.get(s["field_tools"]), s["field_tools"], where)
    return {"messages": messages, "tools": tools}, where


def convert_chat(row: dict, options: dict | None = None):
    """OpenAI chat rows, ``arguments`` as a JSON string or an object (Hugging Face's convention)."""
    if "functions" in row:
        raise ConvertError(
            "functions",
            "legacy OpenAI 'functions' list",
            "rename it to tools: [{type: function, function: ...}]",
        )
    s = {**axolotl_settings({"roles": {r: [r] for r in CANONICAL_ROLES}}), "field_system": None}
    messages, where = _convert_messages(row, s, strict_roles=True)
    where.keep_suffix = True
    tools = convert_tools(row.get("tools"), "tools", where)
    return {"messages": messages, "tools": tools}, where


def convert_instruction(value) -> tuple[list, list]:
    """(messages, tools) of an instruction row (already checked against its schema)."""
    prompt = value["instruction"].strip()
    if value.get("input", "").strip():
        prompt += "\n\n" + value["input"].strip()
    messages = [{"role": "system", "content": value["system"].strip()}] if value.get("system") else []
    messages += [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": value["output"].strip()},
    ]
    return messages, []


CONVERTERS = {"chat": convert_chat, "sharegpt": convert_sharegpt, "axolotl": convert_axolotl}


# ------------------------------------------------------------------ which format, and its options


def detect_format(row, declared: str = "auto") -> str:
    """The format of one row: the declared one, or (auto) the one its keys show; unknown shapes are errors."""
    declared = ALIASES.get(declared, declared)
    if declared != "auto":
        return declared
    if isinstance(row, dict):
        if "messages" in row:
            return "chat"
        if "conversations" in row:
            return "sharegpt"
        if "instruction" in row:
            return "instruction"
        if "question" in row and "function" in row:
            raise ConvertError(
                None,
                "a BFCL question row needs its possible_answer file",
                "declare the source as {path: ..., format: bfcl, answers: path/to/possible_answer}",
            )
    keys = ", ".join(sorted(map(str, row))) if isinstance(row, dict) else ""
    raise ConvertError(
        None,
        f"unknown row shape (keys: {keys or 'none'}); accepted formats: chat ('messages'), "
        "sharegpt ('conversations'), instruction ('instruction' + 'output'), axolotl and bfcl "
        "(declared with format:)",
        "set data.sources[].format (and options for axolotl / sharegpt keys); config/README.md",
    )


AXOLOTL_NAME_OPTIONS = (  # options that name a key of the user's rows
    "field_messages",
    "field_system",
    "field_tools",
    "field_thinking",
    "message_field_role",
    "message_field_content",
)


def _check_known_keys(fmt: str, options: dict, known: set) -> None:
    """Every option is one the format has; a misspelt one names its closest match."""
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise ConvertError(
                str(key),
                f"unknown {fmt} option",
                f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(sorted(known))}",
            )


def _check_sharegpt_options(options: dict) -> None:
    """columns and tags rename only the keys LLaMA-Factory has, to non-empty names; formatting is sharegpt."""
    for key, allowed in (("columns", SHAREGPT_COLUMNS), ("tags", SHAREGPT_TAGS)):
        value = options.get(key) or {}
        if not isinstance(value, dict):
            raise ConvertError(key, f"{key} is not a mapping", f"write {key}: {{name: value}}")
        for name, text in value.items():
            if name not in allowed:
                raise ConvertError(
                    f"{key}.{name}",
                    f"unknown sharegpt {key[:-1]}",
                    f"use one of {', '.join(allowed)} (multimodal and ranking columns are not supported)",
                )
            if not isinstance(text, str) or not text:
                raise ConvertError(f"{key}.{name}", "is not a non-empty string", "name the key in your rows")
    if options.get("formatting", "sharegpt") != "sharegpt":
        raise ConvertError(
            "formatting",
            f"formatting {options['formatting']!r} is not sharegpt",
            "use format: instruction for alpaca rows",
        )


def _check_axolotl_roles(roles) -> None:
    """roles: canonical role -> a name or a list of names the rows use for it."""
    if not isinstance(roles, dict):
        raise ConvertError("roles", "is not a mapping", "write e.g. {user: [human], assistant: [gpt]}")
    for target, sources in roles.items():
        if target not in CANONICAL_ROLES:
            raise ConvertError(
                f"roles.{target}",
                f"{target!r} is not one of {', '.join(CANONICAL_ROLES)}",
                "map your names onto system, user, assistant and tool",
            )
        if not (
            isinstance(sources, str)
            or (isinstance(sources, list) and all(isinstance(x, str) for x in sources))
        ):
            raise ConvertError(f"roles.{target}", "is not a list of names", f"write {target}: [name, ...]")


def _check_axolotl_options(options: dict) -> None:
    """A chat_template dataset block: key names are strings, roles map onto ours, assistant turns train."""
    if options.get("type", "chat_template") != "chat_template":
        raise ConvertError(
            "type",
            f"axolotl type {options['type']!r} is not chat_template",
            "snaketune reads axolotl's chat_template datasets",
        )
    for key in AXOLOTL_NAME_OPTIONS:
        if key in options and not (isinstance(options[key], str) and options[key]):
            raise ConvertError(key, "is not a non-empty string", "name the key in your rows")
    mappings = options.get("message_property_mappings") or {}
    if not isinstance(mappings, dict) or not all(isinstance(v, str) and v for v in mappings.values()):
        raise ConvertError(
            "message_property_mappings",
            "is not a mapping of names to names",
            "write e.g. {role: from, content: value}",
        )
    _check_axolotl_roles(options.get("roles") or {})
    if "drop_system_message" in options and not isinstance(options["drop_system_message"], bool):
        raise ConvertError("drop_system_message", "is not true or false", "write true or false")
    if options.get("roles_to_train", ["assistant"]) not in (["assistant"], None):
        raise ConvertError(
            "roles_to_train",
            "snaketune trains on assistant turns only",
            "remove roles_to_train or set it to [assistant]",
        )
    axolotl_settings(options)  # legacy / new mapping conflicts


def check_options(fmt: str, options: dict) -> None:
    """A source's ``options`` for its format; errors name the option (a field under options)."""
    fmt = ALIASES.get(fmt, fmt)
    if not options:
        return
    if not isinstance(options, dict):
        raise ConvertError(None, "options is not a mapping", "write options: {key: value}")
    if fmt not in ("sharegpt", "axolotl"):
        raise ConvertError(
            next(iter(options)),
            f"format {fmt!r} takes no options",
            "remove options, or set format: sharegpt or axolotl",
        )
    if fmt == "sharegpt":
        _check_known_keys(fmt, options, SHAREGPT_KEYS)
        _check_sharegpt_options(options)
    else:
        _check_known_keys(fmt, options, AXOLOTL_KEYS | AXOLOTL_IGNORED)
        _check_axolotl_options(options)


def convert(kind: str, row: dict, options: dict | None = None):
    """(chat row, Where) for a row of ``kind`` (chat, sharegpt, axolotl)."""
    return CONVERTERS[kind](row, options)


# ------------------------------------------------------------------ reading files

MAX_LINE_BYTES = 8 * 1024 * 1024
BOM = "\ufeff"


def _line_error(path, number, err: JSONError) -> SnaketuneError:
    if err.non_finite:
        return SnaketuneError(
            path, err.problem, line=number, field=field_path(list(err.parts)) or None, fix=err.fix
        )
    if err.problem == "nested too deeply":
        return SnaketuneError(path, "JSON nested too deeply", line=number, fix=err.fix)
    return SnaketuneError(
        path,
        f"not valid JSON: {err.problem}",
        line=number,
        fix="write one JSON object per line (or one JSON array of rows for the whole file)",
    )


def _array_rows(path, text: str):
    """(line, row) for each element of a file holding one JSON array (LLaMA-Factory's .json datasets)."""
    decoder = json.JSONDecoder(parse_constant=_NonFinite, parse_float=_parse_float)
    ws = re.compile(r"\s*")
    idx = ws.match(text, 0).end() + 1  # past the '['
    while True:
        idx = ws.match(text, idx).end()
        if text.startswith("]", idx):
            break
        number = text.count("\n", 0, idx) + 1
        try:
            value, idx = decoder.raw_decode(text, idx)
        except json.JSONDecodeError as err:
            raise _line_error(path, err.lineno, JSONError(f"{err.msg} (column {err.colno})")) from None
        except (RecursionError, ValueError) as err:
            problem = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0]
            raise _line_error(path, number, JSONError(problem)) from None
        found = _non_finite_at(value)
        if found is not None:
            raise _line_error(path, number, non_finite_error(found[1], found[0]))
        yield number, value
        idx = ws.match(text, idx).end()
        if text.startswith(",", idx):
            idx += 1
        elif not text.startswith("]", idx):
            raise _line_error(
                path, text.count("\n", 0, idx) + 1, JSONError("expected ',' or ']' between rows")
            )


def _decode(path, number: int, raw: bytes) -> str:
    if len(raw) > MAX_LINE_BYTES:
        raise SnaketuneError(
            path,
            f"line is {len(raw) / 2**20:.1f} MiB, over the {MAX_LINE_BYTES // 2**20} MiB limit",
            line=number,
            fix="split the conversation or check the file is JSONL, one row per line",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SnaketuneError(
            path, f"not valid UTF-8 (byte {err.start})", line=number, fix="re-encode the file as UTF-8"
        ) from None
    return (
        text[1:] if number == 1 and text.startswith(BOM) else text
    )  # a BOM is a UTF-8 file's marker, not data


def _jsonl_rows(path):
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            text = _decode(path, number, raw)
            if not text.strip():
                continue
            try:
                yield number, loads_strict(text)
            except JSONError as err:
                raise _line_error(path, number, err) from None


def _is_array_file(path) -> bool:
    """A file holding one JSON array of rows: pretty-printed (its first line does not parse alone) or all on
    one line (an array of objects and nothing after it)."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            text = _decode(path, number, raw)
            if not text.strip():
                continue
            if not text.lstrip().startswith("["):
                return False
            try:
                value = loads_strict(text)
            except JSONError:
                return True
            return (
                isinstance(value, list)
                and bool(value)
                and all(isinstance(v, dict) for v in value)
                and not fh.read().strip()
            )
    return False


def read_rows(path):
    """Yield (line number, parsed JSON) for each row of a JSONL file (blank lines skipped), or of a file that
    holds one JSON array of rows. A UTF-8 BOM is accepted; NaN / Infinity are not (RFC 8259)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise SnaketuneError(path, "data source not found", fix="check data.sources[].path in the config")
    if _is_array_file(path):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SnaketuneError(
                path,
                f"not valid UTF-8 (byte {err.start})",
                line=raw.count(b"\n", 0, err.start) + 1,
                fix="re-encode the file as UTF-8",
            ) from None
        rows = _array_rows(path, text[1:] if text.startswith(BOM) else text)
    else:
        rows = _jsonl_rows(path)
    seen_any = False
    for number, value in rows:
        seen_any = True
        yield number, value
    if not seen_any:
        raise SnaketuneError(
            path, "file holds no rows", fix="add JSONL rows or remove the source from data.sources"
        )


# ------------------------------------------------------------------ BFCL (questions + possible_answer file)


def read_bfcl_answers(path) -> dict:
    """{id: possible-answer entry} of a BFCL possible_answer file (JSONL: {"id", "ground_truth"} per line)."""
    answers = {}
    for number, value in read_rows(path):
        if not isinstance(value, dict) or not isinstance(value.get("id"), str):
            raise SnaketuneError(
                path,
                "a possible_answer row without a string 'id'",
                line=number,
                field="id",
                fix="use BFCL's possible_answer file for the same category as the questions",
            )
        answers[value["id"]] = value
    return answers


def convert_bfcl(question, answers: dict) -> tuple[dict, dict]:
    """(chat row with possible_answer, {python type: count}) for one BFCL question joined by id."""
    if not isinstance(question, dict) or not isinstance(question.get("id"), str):
        raise ConvertError(
            "id", "a BFCL question without a string 'id'", "use BFCL's question files as shipped"
        )
    answer = answers.get(question["id"])
    if answer is None:
        raise ConvertError(
            "id",
            f"no possible answer has id {question['id']!r}",
            "point answers: at the possible_answer file of the same category",
        )
    from .bfcl import convert_case

    try:
        return convert_case(question, answer)
    except SnaketuneError as err:
        raise ConvertError(err.field, err.problem, err.fix) from None
    except (KeyError, TypeError, ValueError) as err:
        raise ConvertError(
            None,
            f"not a BFCL case snaketune can convert: {type(err).__name__}: {err}",
            "use BFCL's single-turn categories (simple, multiple, parallel, parallel_multiple)",
        ) from None


__all__ = [
    "FORMATS",
    "ALIASES",
    "ConvertError",
    "JSONError",
    "loads_strict",
    "non_finite_error",
    "Where",
    "arguments_string",
    "content_text",
    "convert_tools",
    "convert_tool_calls",
    "check_tool_results",
    "convert_sharegpt",
    "axolotl_settings",
    "convert_axolotl",
    "convert_chat",
    "convert_instruction",
    "detect_format",
    "check_options",
    "convert",
    "MAX_LINE_BYTES",
    "BOM",
    "read_rows",
    "read_bfcl_answers",
    "convert_bfcl",
]
