"""The one exception type for errors a user can fix, printed as one line naming where and how."""

from __future__ import annotations

import json

__all__ = ["SnaketuneError", "field_path", "config_error", "short_value", "schema_problem"]


class SnaketuneError(Exception):
    """A problem in the user's data, config or environment.

    Printed as ``path:line: field: problem (fix: ...)`` so a user can jump to the place.
    """

    def __init__(self, path=None, problem: str = "", *, line: int | None = None,
                 field: str | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = ""
        if self.path is not None:  # None: no file to name (a config key given without its file)
            text = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        if self.field:
            text += f"{self.field}: "
        text += self.problem
        if self.fix:
            text += f" (fix: {self.fix})"
        return text

    def __str__(self) -> str:  # one line, whatever the parts hold
        return self.message.replace("\n", " ")


def field_path(parts) -> str:
    """['messages', 1, 'tool_calls'] -> 'messages[1].tool_calls' (rows and config keys alike)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def config_error(key: str, problem: str, fix: str | None = None, *,
                 config_path: str | None) -> SnaketuneError:
    """An error about a config key (the key path is the 'field') in the config file ``config_path``."""
    return SnaketuneError(config_path, problem, field=key, fix=fix)


def short_value(value, limit: int | None = 80) -> str:
    """A JSON value for a message: strings quoted and cut with '...'; long arrays and objects are described,
    never cut in the middle."""
    if isinstance(value, str):
        text = repr(value)
        return text if limit is None or len(text) <= limit else text[: limit - 4] + "...'"
    text = json.dumps(value, ensure_ascii=False)
    if limit is None or len(text) <= limit:
        return text
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    return text


def schema_problem(err) -> str:
    """A jsonschema ValidationError as one readable sentence; an allowed-values list is always whole."""
    if err.validator == "enum":
        allowed = ", ".join(short_value(v, None) for v in err.validator_value)
        return f"{short_value(err.instance)} is not one of [{allowed}]"
    if err.validator == "type":
        expected = (
            err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        )
        return f"{short_value(err.instance)} is not of type {expected}"
    message = err.message
    whole = repr(err.instance)
    if len(message) > 300 and message.startswith(whole):  # jsonschema leads with the whole instance
        message = short_value(err.instance) + message[len(whole):]
    return message
