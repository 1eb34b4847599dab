"""The project's chat template, and what a specialist shows the model (its rows, system prompt and tools).

How a base writes a conversation is its chat format (snaketune.chat_format); the helpers below render in
the format a tokenizer carries. The project template (``chat_template.jinja`` beside this file, the tiny
base's and any ChatML base's format) writes ChatML turns and Qwen2.5-style tools.
An assistant tool call is rendered exactly as::

    <tool_call>
    {"name": "<name>", "arguments": <the OpenAI arguments string, as-is>}
    </tool_call>

one block per call; ``{% generation %}`` marks what the assistant writes (content, calls and
``<|im_end|>``), though the loss mask is computed from prefixes for every format (chat_format). The
inference prompt (every message but the final assistant turn, plus the generation prompt) is an exact
prefix of the training text, both as text and as token ids.
"""

from __future__ import annotations

import copy
from pathlib import Path

__all__ = [
    "CHAT_TEMPLATE", "END_OF_TURN", "PAD_TOKEN", "GENERATION_PROMPT", "SPECIAL_TOKENS", "TEMPLATE_TOKENS",
    "gold_tool_names", "in_subset", "specialist_rows", "compact_tool", "build_messages",
    "prompt_tools_rendered", "specialist_chat", "split_prompt", "attach_template", "apply_template",
    "encode_chat", "stop_token_ids"
]

TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")
CHAT_TEMPLATE = TEMPLATE_PATH.read_text(encoding="utf-8")

END_OF_TURN = "<|im_end|>"  # the assistant's stop token (also the tokenizer's eos for the tiny base)
START_OF_TURN = "<|im_start|>"
PAD_TOKEN = "<|endoftext|>"
GENERATION_PROMPT = "<|im_start|>assistant\n"
# Tokens the template writes: special (never in user text, stripped by skip_special_tokens) and plain
# added tokens that stay visible in decoded text (the metrics parser looks for <tool_call>).
SPECIAL_TOKENS = [PAD_TOKEN, START_OF_TURN, END_OF_TURN]
TEMPLATE_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>",
                   "</tools>"]

TOOLS_RENDERED = ("all", "compact", "called")
SYSTEM_PROMPT_MODES = ("replace", "prepend", "keep")
# What ``compact`` keeps of a parameter's JSON Schema: its type and its allowed values.
COMPACT_PARAMETER_KEYS = ("type", "enum")


def gold_tool_names(row: dict) -> list[str]:
    """Names of the tools the row's final assistant turn calls (in order; empty for a text answer)."""
    messages = row.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        return []
    names = []
    for call in messages[-1].get("tool_calls") or []:
        fn = call.get("function", call)
        names.append(fn.get("name"))
    return names


def in_subset(row: dict, focus_tools) -> bool:
    """A specialist's example: its gold calls are all among ``focus_tools`` (every row when none are given).

    With focus tools, a row without tool calls (a text answer) belongs to no specialist's subset.
    """
    if not focus_tools:
        return True
    names = gold_tool_names(row)
    return bool(names) and set(names) <= set(focus_tools)


def specialist_rows(rows, focus_tools) -> list[dict]:
    return [row for row in rows if in_subset(row, focus_tools)]


def _called_names(messages) -> set[str]:
    names = set()
    for message in messages:
        for call in message.get("tool_calls") or []:
            names.add(call.get("function", call).get("name"))
    return names


def compact_tool(tool: dict) -> dict:
    """A tool definition cut to what choosing and calling it needs: name, description, parameter names
    with their types and allowed values, and which are required (patterns, bounds and per-parameter
    descriptions dropped). The same function of the row's tools at training and inference time."""
    tool = tool.get("function", tool) if tool.get("type", "function") == "function" else tool
    params = tool.get("parameters") or {}
    slim = {"name": tool.get("name")}
    if tool.get("description"):
        slim["description"] = tool["description"]
    slim["parameters"] = {
        "type": params.get("type", "object"),
        "properties": {key: {k: v for k, v in spec.items() if k in COMPACT_PARAMETER_KEYS}
                       # a boolean JSON Schema (true: anything) says nothing
                       if isinstance(spec, dict) else {}
                       for key, spec in (params.get("properties") or {}).items()},
        "required": list(params.get("required") or []),
    }
    return {"type": "function", "function": slim}


def build_messages(row: dict, system_prompt: str = "", tools_rendered: str = "all",
                   focus_tools=None, system_prompt_mode: str = "prepend") -> tuple[list[dict], list[dict]]:
    """The messages and tools a specialist shows the model for one canonical row.

    ``system_prompt`` (when not empty) and the row's own system message, by ``system_prompt_mode``:
    ``replace`` drops the row's; ``prepend`` writes the specialist's prompt, a blank line, then the row's
    (which often carries the task's facts); ``keep`` keeps the row's and uses the specialist's only for a
    row without one. ``tools_rendered``:
    ``all`` shows the row's tools as given; ``compact`` all of them through ``compact_tool`` (a quarter
    of the prompt tokens fewer on the demo data); ``called`` only those the row's assistant turns call
    (much shorter prompts, but they name the answer, so eval never uses it). ``focus_tools``, when
    given, also drops tools outside the specialist's focus. Tool order is the row's.
    """
    if tools_rendered not in TOOLS_RENDERED:
        raise ValueError(f"tools_rendered must be one of {TOOLS_RENDERED}, got {tools_rendered!r}")
    if system_prompt_mode not in SYSTEM_PROMPT_MODES:
        raise ValueError(
            f"system_prompt_mode must be one of {SYSTEM_PROMPT_MODES}, got {system_prompt_mode!r}"
        )
    messages = copy.deepcopy(list(row.get("messages") or []))
    has_own = bool(messages) and messages[0].get("role") == "system"
    own = (messages[0].get("content") or "") if has_own else ""
    if system_prompt and not (own and system_prompt_mode == "keep"):
        if own and system_prompt_mode == "prepend":
            system_prompt = f"{system_prompt}\n\n{own}"
        messages = [{"role": "system", "content": system_prompt}] + messages[has_own:]
    tools = copy.deepcopy(list(row.get("tools") or []))
    if tools_rendered == "called":
        called = _called_names(messages)
        tools = [t for t in tools if t.get("function", t).get("name") in called]
    elif tools_rendered == "compact":
        tools = [compact_tool(t) for t in tools]
    if focus_tools:
        tools = [t for t in tools if t.get("function", t).get("name") in set(focus_tools)]
    return messages, tools


def prompt_tools_rendered(settings: dict) -> str:
    """How an inference (eval) prompt shows the row's tools: as training did, except that ``called``
    would name the answer, so such prompts show ``all``."""
    rendered = settings.get("train", {}).get("tools_rendered", "all")
    return "all" if rendered == "called" else rendered


def specialist_chat(row: dict, settings: dict) -> tuple[list[dict], list[dict]]:
    """``build_messages`` with a specialist's merged settings (``config.specialist_settings``)."""
    return build_messages(row, settings.get("system_prompt", ""),
                          settings.get("train", {}).get("tools_rendered", "all"),
                          system_prompt_mode=settings.get("system_prompt_mode", "prepend"))


def split_prompt(messages: list[dict]) -> tuple[list[dict], dict | None]:
    """(prompt messages, the final assistant message) — the prompt is what inference sees."""
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1], messages[-1]
    return list(messages), None


def attach_template(tokenizer):
    """Give ``tokenizer`` the project template as its chat format (snaketune.chat_format)."""
    from .chat_format import attach_format, project_format

    return attach_format(tokenizer, project_format())


def apply_template(tokenizer, messages, tools=None, add_generation_prompt: bool = False) -> str:
    """Render ``messages`` (and ``tools``) in the tokenizer's chat format (the project template where the
    tokenizer carries none, or ``tokenizer`` is None)."""
    from .chat_format import format_of

    return format_of(tokenizer).render(tokenizer, messages, tools, add_generation_prompt)


def encode_chat(tokenizer, messages, tools=None, add_generation_prompt: bool = False) -> dict:
    """Token ids and the assistant mask (1 on what the assistant writes, its end-of-turn token included),
    in the tokenizer's chat format."""
    from .chat_format import format_of

    return format_of(tokenizer).encode(tokenizer, messages, tools, add_generation_prompt)


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end a generated assistant turn: the format's end-of-turn token and the tokenizer's eos."""
    from .chat_format import format_of

    return format_of(tokenizer).stop_ids(tokenizer)
