"""Write the format fixtures: the same 4 logical rows in each source format, plus canonical.jsonl.

python3 make_fixtures.py   (writes next to this file; deterministic)

Rows:
  1 single call                      (get_forecast: string + integer + enum)
  2 parallel two-call final turn     (get_forecast + convert_currency: number + enums)
  3 multi-turn: call -> tool result -> assistant text -> user -> final call (set_thermostat)
  4 system prompt + one call         (convert_currency)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------- tools (bare function objects)

GET_FORECAST = {
    "name": "get_forecast",
    "description": "Daily weather forecast for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Lisbon"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7, "description": "Number of days"},
            "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "days"],
    },
}
CONVERT_CURRENCY = {
    "name": "convert_currency",
    "description": "Convert an amount between currencies at today's rate.",
    "parameters": {
        "type": "object",
        "properties": {
            "amount": {"type": "number", "exclusiveMinimum": 0},
            "from": {"type": "string", "enum": ["USD", "EUR", "GBP", "JPY"]},
            "to": {"type": "string", "enum": ["USD", "EUR", "GBP", "JPY"]},
        },
        "required": ["amount", "from", "to"],
    },
}
SET_THERMOSTAT = {
    "name": "set_thermostat",
    "description": "Set a room's target temperature.",
    "parameters": {
        "type": "object",
        "properties": {
            "room": {"type": "string"},
            "temperature": {"type": "number", "description": "Target in degrees Celsius"},
            "mode": {"type": "string", "enum": ["heat", "cool", "auto"]},
            "hold_minutes": {"type": "integer", "minimum": 0},
        },
        "required": ["room", "temperature", "mode"],
    },
}

# --------------------------------------------------------------------- logical rows
# Each turn: ("system"|"user"|"assistant_text"|"tool", text) or ("calls", [(name, args_dict), ...])

ROWS = [
    {
        "tools": [GET_FORECAST, CONVERT_CURRENCY],
        "turns": [
            ("user", "What's the weather in Lisbon for the next 3 days, in celsius?"),
            ("calls", [("get_forecast", {"city": "Lisbon", "days": 3, "units": "celsius"})]),
        ],
    },
    {
        "tools": [GET_FORECAST, CONVERT_CURRENCY],
        "turns": [
            (
                "user",
                "I'm flying to Tokyo: give me the 5-day forecast in fahrenheit and convert 1200.50 USD to yen.",  # noqa: E501
            ),
            (
                "calls",
                [
                    ("get_forecast", {"city": "Tokyo", "days": 5, "units": "fahrenheit"}),
                    ("convert_currency", {"amount": 1200.5, "from": "USD", "to": "JPY"}),
                ],
            ),
        ],
    },
    {
        "tools": [SET_THERMOSTAT],
        "turns": [
            ("user", "Heat the living room to 21.5 degrees and hold it for 90 minutes."),
            (
                "calls",
                [
                    (
                        "set_thermostat",
                        {"room": "living room", "temperature": 21.5, "mode": "heat", "hold_minutes": 90},
                    )
                ],
            ),
            ("tool", '{"ok": true, "room": "living room", "target": 21.5, "eta_minutes": 12}'),
            (
                "assistant_text",
                "Done: the living room is heating to 21.5 °C (about 12 minutes) and will hold for 90 minutes.",  # noqa: E501
            ),
            ("user", "Great. Now cool the bedroom to 19 for two hours."),
            (
                "calls",
                [
                    (
                        "set_thermostat",
                        {"room": "bedroom", "temperature": 19, "mode": "cool", "hold_minutes": 120},
                    )
                ],
            ),
        ],
    },
    {
        "tools": [GET_FORECAST, CONVERT_CURRENCY],
        "turns": [
            ("system", "You are a terse travel assistant. Prefer tools over guessing."),
            ("user", "How much is 45.90 EUR in pounds?"),
            ("calls", [("convert_currency", {"amount": 45.9, "from": "EUR", "to": "GBP"})]),
        ],
    },
]


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def wrap(fn: dict) -> dict:
    return {"type": "function", "function": copy.deepcopy(fn)}


# --------------------------------------------------------------------- canonical (what normalise_row emits)


def canonical(row) -> dict:
    messages = []
    for kind, body in row["turns"]:
        if kind in ("system", "user"):
            messages.append({"role": kind, "content": body})
        elif kind == "assistant_text":
            messages.append({"role": "assistant", "content": body})
        elif kind == "tool":
            messages.append({"role": "tool", "content": body})
        else:
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"type": "function", "function": {"name": n, "arguments": dumps(a)}} for n, a in body
                    ],
                }
            )
    return {"messages": messages, "tools": [wrap(t) for t in row["tools"]]}


# --------------------------------------------------------------------- sharegpt, LLaMA-Factory defaults


def sharegpt(row) -> dict:
    out, conv = {}, []
    for kind, body in row["turns"]:
        if kind == "system":
            out["system"] = body  # the `system` column (a system turn at [0] is the other spelling)
        elif kind == "user":
            conv.append({"from": "human", "value": body})
        elif kind == "assistant_text":
            conv.append({"from": "gpt", "value": body})
        elif kind == "tool":
            conv.append({"from": "observation", "value": body})
        else:
            calls = [{"name": n, "arguments": a} for n, a in body]
            conv.append({"from": "function_call", "value": dumps(calls[0] if len(calls) == 1 else calls)})
    return {"conversations": conv, **out, "tools": dumps(row["tools"])}


# --------------------------------------------------------------------- axolotl chat_template, custom keys
# config: field_messages: conversations; message_property_mappings: {role: from, content: value};
#         roles: {user: [human], assistant: [gpt], system: [system], tool: [observation]}


def axolotl(row, n: int) -> dict:
    conv, call_ids = [], []
    for kind, body in row["turns"]:
        if kind == "system":
            conv.append({"from": "system", "value": body})
        elif kind == "user":
            conv.append({"from": "human", "value": body})
        elif kind == "assistant_text":
            conv.append({"from": "gpt", "value": body})
        elif kind == "tool":
            conv.append({"from": "observation", "value": body, "tool_call_id": call_ids[0]})
        else:
            call_ids = [f"call_{n}_{i}" for i in range(len(body))]
            conv.append(
                {
                    "from": "gpt",
                    "value": "",
                    "tool_calls": [
                        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                        for cid, (name, args) in zip(call_ids, body)
                    ],
                }
            )
    return {"conversations": conv, "tools": [wrap(t) for t in row["tools"]]}


# --------------------------------------------------------------------- OpenAI chat, arguments as object (HF)


def openai_object(row, n: int) -> dict:
    messages, call_ids = [], []
    for kind, body in row["turns"]:
        if kind in ("system", "user"):
            messages.append({"role": kind, "content": body})
        elif kind == "assistant_text":
            messages.append({"role": "assistant", "content": body})
        elif kind == "tool":
            messages.append({"role": "tool", "tool_call_id": call_ids[0], "content": body})
        else:
            call_ids = [f"call_{n}_{i}" for i in range(len(body))]
            messages.append(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                        for cid, (name, args) in zip(call_ids, body)
                    ],
                }
            )
    return {"messages": messages, "tools": [wrap(t) for t in row["tools"]]}


AXOLOTL_CONFIG = """\
# The axolotl dataset block the fixture axolotl.jsonl is written for (snaketune reads the same keys).
datasets:
  - path: axolotl.jsonl
    type: chat_template
    field_messages: conversations
    message_property_mappings:
      role: from
      content: value
    roles:
      user: [human]
      assistant: [gpt]
      system: [system]
      tool: [observation]
    field_tools: tools
    roles_to_train: [assistant]
"""

LLAMAFACTORY_INFO = {
    "snaketune_fixture": {
        "file_name": "sharegpt.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
    }
}


def write_jsonl(name, rows):
    with open(HERE / name, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(dumps(r) + "\n")


def main():
    write_jsonl("canonical.jsonl", [canonical(r) for r in ROWS])
    write_jsonl("sharegpt.jsonl", [sharegpt(r) for r in ROWS])
    write_jsonl("axolotl.jsonl", [axolotl(r, i + 1) for i, r in enumerate(ROWS)])
    write_jsonl("openai_object.jsonl", [openai_object(r, i + 1) for i, r in enumerate(ROWS)])
    (HERE / "axolotl.config.yaml").write_text(AXOLOTL_CONFIG, encoding="utf-8")
    (HERE / "sharegpt.dataset_info.json").write_text(
        json.dumps(LLAMAFACTORY_INFO, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
