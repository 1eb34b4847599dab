"""Write cases/<format>.jsonl: accepted variants (expect a canonical row) and errors (expect a field path).

Each line: {"case": str, "row": <source row>, "expect": <canonical.jsonl index> | <chat row>}
       or  {"case": str, "row": <source row>, "error": "<source field path>"}
       plus an optional "config" (sharegpt: {"columns", "tags"}; axolotl: a dataset block) for that case.
"""

from __future__ import annotations

import copy
import json

from make_fixtures import HERE, ROWS, axolotl, canonical, dumps, openai_object, sharegpt, wrap

SEP = "\n</tool_response>\n<tool_response>\n"


def sg(i):
    return sharegpt(ROWS[i])


def ax(i):
    return axolotl(ROWS[i], i + 1)


def oa(i):
    return openai_object(ROWS[i], i + 1)


def edit(row, fn):
    row = copy.deepcopy(row)
    fn(row)
    return row


def set_call(conv_idx, call, key="conversations"):
    def f(r):
        r[key][conv_idx]["value"] = dumps(call)

    return f


FC0 = {"name": "get_forecast", "arguments": {"city": "Lisbon", "days": 3, "units": "celsius"}}

# a parallel call answered by LLaMA-Factory's joined observation, then a text answer
PAR_SG = {
    "conversations": [
        {
            "from": "human",
            "value": "Forecast for Tokyo (5 days, fahrenheit) and 1200.50 USD in yen, then summarise.",
        },
        {
            "from": "function_call",
            "value": dumps(
                [
                    {
                        "name": "get_forecast",
                        "arguments": {"city": "Tokyo", "days": 5, "units": "fahrenheit"},
                    },
                    {"name": "convert_currency", "arguments": {"amount": 1200.5, "from": "USD", "to": "JPY"}},
                ]
            ),
        },
        {"from": "observation", "value": '{"high_f": [70, 72, 68, 66, 71]}' + SEP + '{"result": 180312.5}'},
        {"from": "gpt", "value": "Highs of 66-72 °F; 1200.50 USD is about 180,312 JPY."},
    ],
    "tools": dumps(ROWS[1]["tools"]),
}
PAR_CANON = {
    "messages": [
        {"role": "user", "content": PAR_SG["conversations"][0]["value"]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_forecast",
                        "arguments": dumps({"city": "Tokyo", "days": 5, "units": "fahrenheit"}),
                    },
                },
                {
                    "type": "function",
                    "function": {
                        "name": "convert_currency",
                        "arguments": dumps({"amount": 1200.5, "from": "USD", "to": "JPY"}),
                    },
                },
            ],
        },
        {"role": "tool", "content": '{"high_f": [70, 72, 68, 66, 71]}'},
        {"role": "tool", "content": '{"result": 180312.5}'},
        {"role": "assistant", "content": PAR_SG["conversations"][3]["value"]},
    ],
    "tools": [wrap(t) for t in ROWS[1]["tools"]],
}
PAR_SG_ONE = edit(
    PAR_SG, lambda r: r["conversations"][2].update(value='{"high_f": [70, 72], "result": 180312.5}')
)
PAR_CANON_ONE = edit(
    PAR_CANON,
    lambda r: r["messages"].__setitem__(
        slice(2, 4), [{"role": "tool", "content": '{"high_f": [70, 72], "result": 180312.5}'}]
    ),
)


def sharegpt_cases():
    c = []
    c.append(
        {
            "case": "system as turn [0] instead of the column",
            "expect": 3,
            "row": edit(
                sg(3), lambda r: r["conversations"].insert(0, {"from": "system", "value": r.pop("system")})
            ),
        }
    )
    c.append(
        {
            "case": "system turn and an identical system column",
            "expect": 3,
            "row": edit(
                sg(3), lambda r: r["conversations"].insert(0, {"from": "system", "value": r["system"]})
            ),
        }
    )
    c.append(
        {
            "case": "tools as a JSON list, not a string",
            "expect": 0,
            "row": edit(sg(0), lambda r: r.update(tools=json.loads(r["tools"]))),
        }
    )
    c.append(
        {
            "case": "tools wrapped {type, function}",
            "expect": 0,
            "row": edit(sg(0), lambda r: r.update(tools=dumps([wrap(t) for t in ROWS[0]["tools"]]))),
        }
    )
    c.append(
        {
            "case": "arguments as a JSON string inside the call (LLaMA-Factory would double-encode)",
            "expect": 0,
            "row": edit(sg(0), set_call(1, {**FC0, "arguments": dumps(FC0["arguments"])})),
        }
    )
    c.append(
        {
            "case": "compact spelling of the call JSON: same canonical row and id",
            "expect": 0,
            "row": edit(
                sg(0), lambda r: r["conversations"][1].update(value=json.dumps(FC0, separators=(",", ":")))
            ),
        }
    )
    c.append(
        {
            "case": "OpenAI-style tags (role/content/user/assistant), messages column",
            "expect": 0,
            "config": {
                "columns": {"messages": "messages"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                    "function_tag": "function_call",
                },
            },
            "row": {
                "messages": [
                    {
                        "role": {"human": "user", "function_call": "function_call"}[m["from"]],
                        "content": m["value"],
                    }
                    for m in sg(0)["conversations"]
                ],
                "tools": sg(0)["tools"],
            },
        }
    )
    c.append(
        {
            "case": "parallel calls, observation joined with LLaMA-Factory's separator -> 2 tool messages",
            "expect": PAR_CANON,
            "row": PAR_SG,
        }
    )
    c.append(
        {
            "case": "parallel calls, one unjoined observation -> 1 tool message",
            "expect": PAR_CANON_ONE,
            "row": PAR_SG_ONE,
        }
    )
    c.append(
        {
            "case": "empty system column is no system prompt",
            "expect": 0,
            "row": edit(sg(0), lambda r: r.update(system="")),
        }
    )
    # errors
    E = lambda case, field, row, **kw: c.append({"case": case, "error": field, "row": row, **kw})  # noqa: E731
    E("conversations missing", "conversations", {"tools": "[]"})
    E(
        "function_call value is not JSON",
        "conversations[1].value",
        edit(sg(0), lambda r: r["conversations"][1].update(value="get_forecast(city='Lisbon')")),
    )
    E("function_call value is an empty list", "conversations[1].value#", edit(sg(0), set_call(1, [])))
    E(
        "call without arguments",
        "conversations[1].value#.arguments",
        edit(sg(0), set_call(1, {"name": "get_forecast"})),
    )
    E(
        "call with an unexpected key",
        "conversations[1].value#.id",
        edit(sg(0), set_call(1, {**FC0, "id": "c1"})),
    )
    E(
        "parallel call whose arguments are a list",
        "conversations[1].value#[1].arguments",
        edit(sg(1), set_call(1, [FC0, {"name": "convert_currency", "arguments": [45.9, "EUR", "GBP"]}])),
    )
    E(
        "arguments string holding an array",
        "conversations[1].value#.arguments",
        edit(sg(0), set_call(1, {**FC0, "arguments": "[1, 2]"})),
    )
    E(
        "arguments null",
        "conversations[1].value#.arguments",
        edit(sg(0), set_call(1, {**FC0, "arguments": None})),
    )
    E(
        "two human turns in a row",
        "conversations[1].from",
        edit(sg(0), lambda r: r["conversations"].insert(1, {"from": "human", "value": "And Porto?"})),
    )
    E(
        "first turn is an observation",
        "conversations[0].from",
        edit(
            sg(0),
            lambda r: (
                r["conversations"].insert(0, {"from": "observation", "value": "{}"})
                or r["conversations"].insert(1, {"from": "gpt", "value": "ok"})
            ),
        ),
    )
    E(
        "observation after a gpt text turn",
        "conversations[2].from",
        edit(sg(2), lambda r: r["conversations"][1].update({"from": "gpt", "value": "Setting it now."})),
    )
    E(
        "system turn not first",
        "conversations[2].from",
        edit(sg(2), lambda r: r["conversations"][2].update({"from": "system", "value": "x"})),
    )
    E(
        "unknown role tag",
        "conversations[1].from",
        edit(sg(0), lambda r: r["conversations"][1].update({"from": "tool"})),
    )
    E(
        "ends on a human turn",
        "conversations[2].from",
        edit(sg(0), lambda r: r["conversations"].append({"from": "human", "value": "thanks"})),
    )
    E(
        "content not a string",
        "conversations[0].value",
        edit(sg(0), lambda r: r["conversations"][0].update(value=["What's", "the weather?"])),
    )
    E(
        "gpt turn with empty text",
        "conversations[3]",
        edit(sg(2), lambda r: r["conversations"][3].update(value="  ")),
    )
    E(
        "system column differs from the system turn",
        "system",
        edit(sg(3), lambda r: r["conversations"].insert(0, {"from": "system", "value": "Another prompt."})),
    )
    E("system column not a string", "system", edit(sg(3), lambda r: r.update(system=["a"])))
    E(
        "joined observation: 3 responses for 2 calls",
        "conversations[2].value",
        edit(PAR_SG, lambda r: r["conversations"][2].update(value=SEP.join(["{}", "{}", "{}"]))),
    )
    E("tools string is not JSON", "tools", edit(sg(0), lambda r: r.update(tools="[{name: get_forecast}]")))
    E(
        "tools string holds an object, not a list",
        "tools#",
        edit(sg(0), lambda r: r.update(tools=dumps(ROWS[0]["tools"][0]))),
    )
    E(
        "tool without a name",
        "tools#[0].name",
        edit(sg(0), lambda r: r.update(tools=dumps([{"description": "x"}]))),
    )
    E(
        "calls a tool not in tools",
        "conversations[1].value#.name",
        edit(sg(0), set_call(1, {**FC0, "name": "get_weather"})),
    )
    E(
        "integer parameter out of range (days 9 > 7)",
        "conversations[1].value#.arguments.days",
        edit(sg(0), set_call(1, {**FC0, "arguments": {**FC0["arguments"], "days": 9}})),
    )
    E(
        "integer parameter given 3.5",
        "conversations[1].value#.arguments.days",
        edit(sg(0), set_call(1, {**FC0, "arguments": {**FC0["arguments"], "days": 3.5}})),
    )
    E(
        "enum violation (kelvin)",
        "conversations[1].value#.arguments.units",
        edit(sg(0), set_call(1, {**FC0, "arguments": {**FC0["arguments"], "units": "kelvin"}})),
    )
    E(
        "missing required argument",
        "conversations[1].value#.arguments",
        edit(sg(0), set_call(1, {**FC0, "arguments": {"city": "Lisbon"}})),
    )
    E(
        "parallel call: second call's number is a string",
        "conversations[1].value#[1].arguments.amount",
        edit(
            sg(1),
            lambda r: r["conversations"][1].update(
                value=dumps(
                    [
                        {
                            "name": "get_forecast",
                            "arguments": {"city": "Tokyo", "days": 5, "units": "fahrenheit"},
                        },
                        {
                            "name": "convert_currency",
                            "arguments": {"amount": "1200.50", "from": "USD", "to": "JPY"},
                        },
                    ]
                )
            ),
        ),
    )
    E("multimodal column", "images", edit(sg(0), lambda r: r.update(images=["a.png"])))
    E("preference row", "chosen", edit(sg(0), lambda r: r.update(chosen={"from": "gpt", "value": "x"})))
    return c


def axolotl_cases():
    c = []
    c.append(
        {
            "case": "arguments as JSON strings (axolotl json.loads them)",
            "expect": 1,
            "row": edit(
                ax(1),
                lambda r: [
                    call["function"].update(arguments=dumps(call["function"]["arguments"]))
                    for call in r["conversations"][1]["tool_calls"]
                ],
            ),
        }
    )
    c.append(
        {
            "case": "messages stored as a JSON string",
            "expect": 0,
            "row": edit(ax(0), lambda r: r.update(conversations=dumps(r["conversations"]))),
        }
    )
    c.append(
        {
            "case": "content as text parts (concatenated)",
            "expect": 0,
            "row": edit(
                ax(0),
                lambda r: r["conversations"][0].update(
                    value=[
                        {"type": "text", "text": "What's the weather in Lisbon "},
                        {"type": "text", "text": "for the next 3 days, in celsius?", "train": False},
                    ]
                ),
            ),
        }
    )
    c.append(
        {
            "case": "system from field_system (row-level 'system')",
            "expect": 3,
            "row": edit(ax(3), lambda r: r.update(system=r["conversations"].pop(0)["value"])),
        }
    )
    c.append(
        {
            "case": "tools as a JSON string, parameters as JSON strings",
            "expect": 0,
            "row": edit(
                ax(0),
                lambda r: (
                    [t["function"].update(parameters=dumps(t["function"]["parameters"])) for t in r["tools"]],
                    r.update(tools=dumps(r["tools"])),
                ),
            ),
        }
    )
    c.append(
        {
            "case": "call turn without a content key, tool name on the result",
            "expect": edit(canonical(ROWS[2]), lambda r: r["messages"][2].update(name="set_thermostat")),
            "row": edit(
                ax(2),
                lambda r: (
                    r["conversations"][1].pop("value"),
                    r["conversations"][2].update(name="set_thermostat"),
                ),
            ),
        }
    )
    c.append(
        {
            "case": "default keys (messages/role/content) and default roles",
            "expect": 0,
            "config": {},
            "row": {
                "messages": [
                    {
                        "role": {"human": "user", "gpt": "assistant"}[m["from"]],
                        "content": m["value"],
                        **({"tool_calls": m["tool_calls"]} if "tool_calls" in m else {}),
                    }
                    for m in ax(0)["conversations"]
                ],
                "tools": ax(0)["tools"],
            },
        }
    )
    c.append(
        {
            "case": "legacy message_field_role/message_field_content",
            "expect": 0,
            "config": {
                "field_messages": "conversations",
                "message_field_role": "from",
                "message_field_content": "value",
                "roles": {"user": ["human"], "assistant": ["gpt"]},
            },
            "row": ax(0),
        }
    )
    E = lambda case, field, row, **kw: c.append({"case": case, "error": field, "row": row, **kw})  # noqa: E731
    E(
        "role value not mapped by roles:",
        "conversations[1].from",
        edit(ax(0), lambda r: r["conversations"][1].update({"from": "model"})),
    )
    E("missing role key", "conversations[0].from", edit(ax(0), lambda r: r["conversations"][0].pop("from")))
    E(
        "arguments string is not JSON",
        "conversations[1].tool_calls[0].function.arguments",
        edit(
            ax(0),
            lambda r: r["conversations"][1]["tool_calls"][0]["function"].update(arguments="{city: Lisbon}"),
        ),
    )
    E(
        "tool result before any call",
        "conversations[1]",
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "observation", "value": "{}"},
                {"from": "gpt", "value": "ok"},
            ],
            "tools": ax(0)["tools"],
        },
    )
    E(
        "tool_call_id names no call of the preceding turn",
        "conversations[2].tool_call_id",
        edit(ax(2), lambda r: r["conversations"][2].update(tool_call_id="call_9_9")),
    )
    E(
        "reasoning_content present",
        "conversations[1].reasoning_content",
        edit(ax(0), lambda r: r["conversations"][1].update(reasoning_content="The user wants Lisbon.")),
    )
    E(
        "tool_calls on a user message",
        "conversations[0].tool_calls",
        edit(ax(0), lambda r: r["conversations"][0].update(tool_calls=r["conversations"][1]["tool_calls"])),
    )
    E(
        "number parameter given a word",
        "conversations[1].tool_calls[0].function.arguments.temperature",
        edit(
            ax(2),
            lambda r: r["conversations"][1]["tool_calls"][0]["function"]["arguments"].update(
                temperature="warm"
            ),
        ),
    )
    E(
        "ends on a tool result",
        "conversations[2]",
        edit(ax(2), lambda r: r.update(conversations=r["conversations"][:3])),
    )
    E(
        "image content part",
        "conversations[0].value[0]",
        edit(ax(0), lambda r: r["conversations"][0].update(value=[{"type": "image", "image": "a.png"}])),
    )
    E("tools is an object", "tools", edit(ax(0), lambda r: r.update(tools={"get_forecast": {}})))
    return c


def openai_cases():
    c = []
    c.append(
        {
            "case": "OpenAI string arguments (the canonical spelling) also accepted",
            "expect": 1,
            "row": edit(
                oa(1),
                lambda r: [
                    call["function"].update(arguments=dumps(call["function"]["arguments"]))
                    for call in r["messages"][1]["tool_calls"]
                ],
            ),
        }
    )
    c.append(
        {
            "case": "flat tool call {name, arguments} without the function wrapper",
            "expect": 0,
            "row": edit(
                oa(0),
                lambda r: r["messages"][1].update(
                    tool_calls=[{"name": "get_forecast", "arguments": FC0["arguments"]}]
                ),
            ),
        }
    )
    c.append(
        {
            "case": 'content "" on a call turn == null',
            "expect": 0,
            "row": edit(oa(0), lambda r: r["messages"][1].update(content="")),
        }
    )
    c.append(
        {
            "case": "tool result content as an object (serialised)",
            "expect": 2,
            "row": edit(
                oa(2), lambda r: r["messages"][2].update(content=json.loads(r["messages"][2]["content"]))
            ),
        }
    )
    c.append(
        {
            "case": "bare tools (no {type, function} wrapper)",
            "expect": 0,
            "row": edit(oa(0), lambda r: r.update(tools=ROWS[0]["tools"])),
        }
    )
    c.append(
        {
            "case": "no ids anywhere",
            "expect": 2,
            "row": edit(
                oa(2),
                lambda r: (
                    [call.pop("id") for call in r["messages"][1]["tool_calls"]],
                    r["messages"][2].pop("tool_call_id"),
                ),
            ),
        }
    )
    c.append(
        {
            "case": "extra OpenAI keys (strict, parallel_tool_calls, weight) ignored",
            "expect": 0,
            "row": edit(
                oa(0),
                lambda r: (
                    r.update(parallel_tool_calls=True),
                    r["tools"][0]["function"].update(strict=False),
                    r["messages"][1].update(weight=1),
                ),
            ),
        }
    )
    E = lambda case, field, row, **kw: c.append({"case": case, "error": field, "row": row, **kw})  # noqa: E731
    E(
        "legacy function_call message",
        "messages[1]",
        edit(
            oa(0),
            lambda r: r["messages"].__setitem__(
                1,
                {
                    "role": "assistant",
                    "function_call": {"name": "get_forecast", "arguments": dumps(FC0["arguments"])},
                },
            ),
        ),
    )
    E("legacy top-level functions", "functions", edit(oa(0), lambda r: r.update(functions=ROWS[0]["tools"])))
    E(
        "role ipython (Llama 3 tool role)",
        "messages[2].role",
        edit(oa(2), lambda r: r["messages"][2].update(role="ipython")),
    )
    E(
        "tool call type not function",
        "messages[1].tool_calls[0].type",
        edit(oa(0), lambda r: r["messages"][1]["tool_calls"][0].update(type="code_interpreter")),
    )
    E(
        "arguments null",
        "messages[1].tool_calls[0].function.arguments",
        edit(oa(0), lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments=None)),
    )
    E(
        "'parameters' instead of 'arguments'",
        "messages[1].tool_calls[0].function.arguments",
        edit(
            oa(0),
            lambda r: r["messages"][1]["tool_calls"][0].update(
                function={"name": "get_forecast", "parameters": FC0["arguments"]}
            ),
        ),
    )
    E(
        "more tool results than calls",
        "messages[3]",
        edit(
            oa(2),
            lambda r: r["messages"].insert(3, {"role": "tool", "tool_call_id": "call_3_0", "content": "{}"}),
        ),
    )
    E("tool defined twice", "tools", edit(oa(0), lambda r: r["tools"].append(copy.deepcopy(r["tools"][0]))))
    E(
        "tools[0].type is not function",
        "tools[0].type",
        edit(oa(0), lambda r: r["tools"][0].update(type="retrieval")),
    )
    E(
        "invalid parameters schema",
        "tools[0].function.parameters",
        edit(
            oa(0), lambda r: r["tools"][0]["function"]["parameters"]["properties"]["days"].update(type="int")
        ),
    )
    E(
        "empty tool_calls list and no content",
        "messages[1]",
        edit(oa(0), lambda r: r["messages"][1].update(tool_calls=[])),
    )
    return c


def main():
    (HERE / "cases").mkdir(exist_ok=True)
    for name, cases in (
        ("sharegpt", sharegpt_cases()),
        ("axolotl", axolotl_cases()),
        ("openai_object", openai_cases()),
    ):
        with open(HERE / "cases" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for case in cases:
                fh.write(dumps(case) + "\n")


if __name__ == "__main__":
    main()
