"""config/README.md's key tables, generated from the config schema: the schema is the one place a key's
default and meaning are written (``python -m snaketune.config_docs write`` after editing it)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

SCHEMA_PATH = "config/schemas/config.schema.yaml"
README_PATH = "config/README.md"
BLOCK = re.compile(r"<!-- begin config_docs (?P<name>\w+)[^>]*-->\n.*?<!-- end config_docs (?P=name) -->\n",
                   re.DOTALL)


def _resolved(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if not ref:
        return node
    target = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{key: value for key, value in node.items() if key != "$ref"}}


def _children(schema: dict, node: dict) -> list[tuple[str, dict]]:
    """(key suffix, node) of what a key holds: an object's properties, an array's item properties."""
    node = _resolved(schema, node)
    items = node.get("items")
    if node.get("type") == "array" and isinstance(items, dict) and "properties" in items:
        return [(f"[].{key}", child) for key, child in items["properties"].items()]
    return [(f".{key}", child) for key, child in (node.get("properties") or {}).items()]


def _rows(schema: dict, key: str, node: dict, defaults=None) -> list[tuple[str, str, str]]:
    """(key, default, meaning) for ``key`` and every key under it. A map's default (``{}``) is not shown:
    its keys' are. ``defaults`` holds the defaults of keys whose default is a block's (``defaults.train``)."""
    name = key.rsplit(".", 1)[-1]
    if "default" in node and not isinstance(node["default"], dict):
        default = _value(node["default"])
    elif defaults is not None and name in defaults:
        default = _value(defaults[name])
    else:
        default = ""
    meaning = " ".join(_resolved(schema, node).get("description", "").split())
    rows = [(key, default, meaning)]
    for suffix, child in _children(schema, node):
        rows += _rows(schema, key + suffix, child, defaults)
    return rows


def _value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("\n...\n").strip()
    return f"`{text}`"


def key_rows(schema: dict) -> dict[str, list[tuple[str, str, str]]]:
    """{table name: [(key, default, meaning), ...]}: one table per top-level key, in schema order, except
    that `defaults` and `specialists` share one (a specialist overrides any of the defaults' keys)."""
    tables: dict[str, list] = {}
    props = schema["properties"]
    for name, node in props.items():
        if name == "defaults":
            continue
        if name == "specialists":
            blocks = props["defaults"]["properties"]
            tables[name] = [row for key, child in node["additionalProperties"]["properties"].items()
                            for row in _rows(schema, key, child, blocks.get(key, {}).get("default"))]
        elif _children(schema, node):
            tables[name] = [row for suffix, child in _children(schema, node)
                            for row in _rows(schema, suffix.removeprefix("."), child)]
        else:
            tables[name] = _rows(schema, name, node)
    return tables


def undocumented(schema: dict) -> list[str]:
    """Keys the schema gives no description."""
    sections = [name for name, node in schema["properties"].items() if not node.get("description")]
    return sections + [key for rows in key_rows(schema).values() for key, _, meaning in rows if not meaning]


def render_table(rows) -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in rows:
        cell = meaning.replace("|", "\\|")
        lines.append(f"| `{key}` | {default} | {cell} |")
    return "\n".join(lines) + "\n"


def update_readme(text: str, schema: dict, schema_name: str = "schemas/config.schema.yaml") -> str:
    """``text`` with every generated block replaced by the table the schema gives; a table of the schema
    with no block in the text, or a block the schema has no table for, is an error."""
    tables = {name: render_table(rows) for name, rows in key_rows(schema).items()}
    found = [m.group("name") for m in BLOCK.finditer(text)]
    missing, unknown = sorted(set(tables) - set(found)), sorted(set(found) - set(tables))
    if missing or unknown:
        raise ValueError(f"config README: no generated block for {missing}" if missing
                         else f"config README: blocks for keys the schema does not have: {unknown}")

    def block(match) -> str:
        name = match.group("name")
        return (
            f"<!-- begin config_docs {name}: generated from {schema_name} "
            f"(python -m snaketune.config_docs write) -->\n{tables[name]}<!-- end config_docs {name} -->\n"
        )

    return BLOCK.sub(block, text)


def main(argv=None) -> int:
    """``python -m snaketune.config_docs write|check``: regenerate config/README.md's key tables from the
    config schema, or fail when they differ from what the schema gives."""
    parser = argparse.ArgumentParser(prog="python -m snaketune.config_docs", description=main.__doc__)
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("--schema", default=SCHEMA_PATH, help=f"default: {SCHEMA_PATH}")
    parser.add_argument("--readme", default=README_PATH, help=f"default: {README_PATH}")
    args = parser.parse_args(argv)
    schema = yaml.safe_load(Path(args.schema).read_text(encoding="utf-8"))
    readme = Path(args.readme)
    current = readme.read_text(encoding="utf-8")
    try:
        generated = update_readme(current, schema)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.action == "write":
        readme.write_text(generated, encoding="utf-8")
        print(f"wrote {readme}" if generated != current else f"{readme} is up to date")
        return 0
    if generated != current:
        print(f"{readme}'s key tables differ from {args.schema}: run `python -m snaketune.config_docs write`",
              file=sys.stderr)
        return 1
    print(f"{readme} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "key_rows",
    "undocumented",
    "render_table",
    "update_readme",
    "main",
]
