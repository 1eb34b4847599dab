"""Acceptable answers (``possible_answer``): what a row accepts besides its own gold call, for eval.

The format agreed between the data and eval stages: a row-level key ``"possible_answer"``, a list aligned
with the final assistant message's ``tool_calls`` (same order and length), each item
``{"name": "<tool name>", "arguments": {"<param>": [acceptable values...]}}``; ``""`` in a list means the
parameter may be left out. A dict parameter's acceptable value may itself be ``{key: [acceptable values]}``
(BFCL nests them one level), a list's a list of such items.
"""

from __future__ import annotations

import copy
import json

from .errors import SnaketuneError, short_value


def _json_equal(a, b) -> bool:
    """JSON equality: 3 == 3.0, but true is not 1 and "1" is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def acceptable(value, candidate) -> bool:
    """``value`` is ``candidate``, or fits it where BFCL nests acceptable sets: a dict parameter's candidate
    is {key: [acceptable values]} ("" among them: the key may be left out), a list's such items in order.
    """
    if _json_equal(value, candidate):
        return True
    if (
        isinstance(candidate, dict)
        and isinstance(value, dict)
        and all(isinstance(v, list) for v in candidate.values())
    ):
        return set(value) <= set(candidate) and all(
            any(acceptable(value[key], c) for c in options) if key in value else "" in options
            for key, options in candidate.items()
        )
    if isinstance(candidate, list) and isinstance(value, list) and len(candidate) == len(value):
        return all(acceptable(v, c) for v, c in zip(value, candidate))
    return False


def check_possible_answer(answer, messages) -> list:
    """The row's acceptable answers, aligned with its final assistant turn's calls, or a SnaketuneError.

    ``[{"name": tool, "arguments": {param: [acceptable values...]}}]``, one item per call, in order; ``""``
    in a list lets the parameter be left out. The row's own (gold) call must be one of the acceptable answers.
    """
    fix = 'write [{"name": <tool>, "arguments": {<param>: [<values>]}}], one per call of the last turn'
    calls = messages[-1].get("tool_calls") or []
    if not isinstance(answer, list):
        raise SnaketuneError(
            None,
            f"possible_answer is a JSON {type(answer).__name__}, not a list",
            field="possible_answer",
            fix=fix,
        )
    if len(answer) != len(calls):
        raise SnaketuneError(
            None,
            f"possible_answer has {len(answer)} item(s) for the last turn's {len(calls)} call(s)",
            field="possible_answer",
            fix=fix,
        )
    for k, (item, call) in enumerate(zip(answer, calls)):
        at = f"possible_answer[{k}]"
        if (
            not isinstance(item, dict)
            or set(item) - {"name", "arguments"}
            or not isinstance(item.get("arguments"), dict)
        ):
            raise SnaketuneError(
                None, "an item is not {name, arguments: {param: [values]}}", field=at, fix=fix
            )
        name = call["function"]["name"]
        if item.get("name") != name:
            raise SnaketuneError(
                None,
                f"names {item.get('name')!r} where call {k} of the last turn calls {name!r}",
                field=f"{at}.name",
                fix="list the acceptable answers in the order of the calls",
            )
        gold = json.loads(call["function"]["arguments"])
        for param, values in item["arguments"].items():
            where = f"{at}.arguments.{param}"
            if not isinstance(values, list) or not values:
                raise SnaketuneError(
                    None,
                    "acceptable values are not a non-empty list",
                    field=where,
                    fix='list every acceptable value, with "" when the parameter may be left out',
                )
            if param not in gold and "" not in values:
                raise SnaketuneError(
                    None,
                    f"the row's call leaves {param!r} out, which its acceptable values do not allow",
                    field=where,
                    fix='add "" to the list, or the value to the call',
                )
            if param in gold and not any(acceptable(gold[param], v) for v in values):
                raise SnaketuneError(
                    None,
                    f"the row's call has {short_value(gold[param])}, which is not among "
                    f"its acceptable values",
                    field=where,
                    fix="add the call's value to the list (or fix the call)",
                )
        for param in gold:
            if param not in item["arguments"]:
                raise SnaketuneError(
                    None,
                    f"the row's call has {param!r}, which has no acceptable values",
                    field=f"{at}.arguments",
                    fix=f"add {param!r}: [<acceptable values>]",
                )
    return copy.deepcopy(answer)


__all__ = [
    "acceptable",
    "check_possible_answer",
]
