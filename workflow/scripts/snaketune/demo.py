"""A seeded demo dataset: short tool-use conversations for three specialists of a SNES ROM-hacking toolchain.

Every row is canonical OpenAI chat format (one user turn, one assistant turn with tool calls) and
carries the tool definitions of its toolchain family. The argument values are written literally
into the user text, and prompts stay short, so that a tiny model can learn to copy them.
"""

from __future__ import annotations

import copy
import json
import random
import string

from .errors import SnaketuneError
from .files import write_jsonl

__all__ = ["FAMILIES", "TOOLS", "PHRASINGS", "generate_demo_rows", "write_demo_dataset"]

_HEX_ADDRESS = "^0x[0-9A-F]{6}$"
_SFC_PATH = r"^[a-z0-9_]+(/[a-z0-9_]+)*\.sfc$"


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


_ADDRESS = {"type": "string", "pattern": _HEX_ADDRESS, "description": "24-bit SNES address, e.g. 0x7E0010"}
_LENGTH = {"type": "integer", "minimum": 1, "maximum": 256, "description": "number of bytes"}
_ROM = {"type": "string", "pattern": _SFC_PATH, "description": "path of the ROM image"}
_TARGETS = ["header", "rooms", "sprites", "overworld", "dungeons", "palettes"]
_RESOURCES = ["graphics", "palettes", "tilemaps", "music", "text", "sprites"]

# The three families, in a fixed order; a row carries the tools of its own family only.
FAMILIES: dict[str, list[dict]] = {
    "yaze_debugger": [
        _tool("yaze_debugger.read_memory", "Read bytes from the emulated SNES memory in the yaze debugger.",
              {"address": _ADDRESS, "length": _LENGTH}, ["address", "length"]),
        _tool("yaze_debugger.write_memory", "Write bytes into the emulated SNES memory in the yaze debugger.",
              {"address": _ADDRESS,
               "data": {"type": "string", "pattern": "^[0-9A-F]{2}( [0-9A-F]{2})*$",
                        "description": "bytes as space-separated hex pairs, e.g. 01 FF"}},
              ["address", "data"]),
        _tool("yaze_debugger.assemble", "Assemble 65816 code (asar syntax) and patch it into the ROM.",
              {"code": {"type": "string", "minLength": 1, "description": "instructions separated by ' : '"},
               "origin": {**_ADDRESS, "description": "ROM address to assemble at, e.g. 0x008000"}},
              ["code"]),
    ],
    "z3ed_cli": [
        _tool("z3ed_cli.inspect", "Print a summary of one part of a Zelda 3 ROM.",
              {"rom": _ROM,
               "target": {"type": "string", "enum": _TARGETS}},
              ["rom", "target"]),
        _tool("z3ed_cli.extract", "Extract a resource from a ROM into a directory.",
              {"rom": _ROM, "resource": {"type": "string", "enum": _RESOURCES},
               "out_dir": {"type": "string", "pattern": "^[a-z0-9_]+(/[a-z0-9_]+)*$"}},
              ["rom", "resource", "out_dir"]),
        _tool("z3ed_cli.import", "Import an edited resource file back into a ROM.",
              {"rom": _ROM, "resource": {"type": "string", "enum": _RESOURCES},
               "source": {"type": "string", "pattern": r"^[a-z0-9_]+(/[a-z0-9_]+)*\.[a-z]+$"},
               "backup": {"type": "boolean", "description": "keep a .bak copy of the ROM first"}},
              ["rom", "resource", "source"]),
        _tool("z3ed_cli.validate", "Check a ROM's checksum, header and internal tables.",
              {"rom": _ROM, "strict": {"type": "boolean", "description": "fail on warnings too"}},
              ["rom"]),
    ],
    "mesen2": [
        _tool("mesen2.load_rom", "Load a ROM image into the Mesen2 emulator.",
              {"path": _ROM, "region": {"type": "string", "enum": ["NTSC", "PAL"]}},
              ["path"]),
        _tool("mesen2.run", "Run the emulator for a number of frames.",
              {"frames": {"type": "integer", "minimum": 1, "maximum": 100000}},
              ["frames"]),
        _tool("mesen2.screenshot", "Save a screenshot of the current frame as PNG.",
              {"path": {"type": "string", "pattern": r"^[a-z0-9_]+(/[a-z0-9_]+)*\.png$"}},
              ["path"]),
        _tool("mesen2.read_memory", "Read bytes from one of the emulator's memory regions.",
              {"address": _ADDRESS, "length": _LENGTH,
               "memory_type": {"type": "string", "enum": ["wram", "sram", "vram", "cgram", "oam"]}},
              ["address", "length"]),
    ],
}

TOOLS: dict[str, dict] = {t["function"]["name"]: t for family in FAMILIES.values() for t in family}


def family_of(tool_name: str) -> str:
    return tool_name.split(".", 1)[0]


# Phrasings: (user text, calls). Each call is (tool, {argument: placeholder}, {argument: fixed value}).
# A placeholder is filled with a seeded value and written into the text as-is.
def _one(tool, *texts, fixed=None, rename=None):
    """Single-call phrasings whose placeholders are named after the tool's arguments (or renamed)."""
    rename = rename or {}
    out = []
    for text in texts:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f]
        out.append((text, [(tool, {rename.get(n, n): n for n in names}, dict(fixed or {}))]))
    return out


PHRASINGS: dict[str, list] = {
    "yaze_debugger.read_memory": _one(
        "yaze_debugger.read_memory",
        "Read {length} bytes at {address}.",
        "Show {length} bytes of memory from {address}.",
        "Dump {length} bytes starting at {address} in the debugger.",
        "What are the {length} bytes at {address}?",
        "Peek {address}, {length} bytes.",
    ),
    "yaze_debugger.write_memory": _one(
        "yaze_debugger.write_memory",
        "Write {data} to {address}.",
        "Poke {data} at {address}.",
        "Set memory at {address} to {data}.",
        "Store the bytes {data} at address {address}.",
        "In the debugger, write {data} at {address}.",
    ),
    "yaze_debugger.assemble": _one(
        "yaze_debugger.assemble",
        "Assemble {code}",
        "Assemble this: {code}",
        "Patch in {code}",
        "Assemble {code} at {origin}.",
        "At {origin}, assemble: {code}",
        "Put {code} at {origin}.",
    ),
    "z3ed_cli.inspect": _one(
        "z3ed_cli.inspect",
        "Inspect the {target} of {rom}.",
        "Show the {target} in {rom}.",
        "List {target} for {rom}.",
        "What do the {target} of {rom} look like?",
        "z3ed: inspect {target} in {rom}.",
    ),
    "z3ed_cli.extract": _one(
        "z3ed_cli.extract",
        "Extract the {resource} from {rom} into {out_dir}.",
        "Dump {resource} of {rom} to {out_dir}.",
        "Export {rom} {resource} to {out_dir}.",
        "Pull the {resource} out of {rom}, save in {out_dir}.",
        "z3ed: extract {resource} from {rom} to {out_dir}.",
    ),
    "z3ed_cli.import": _one(
        "z3ed_cli.import",
        "Import {source} as {resource} into {rom}.",
        "Put {source} back into {rom} as {resource}.",
        "Load the {resource} from {source} into {rom}.",
        "Patch {rom} with {resource} from {source}.",
    ) + _one(
        "z3ed_cli.import",
        "Import {source} as {resource} into {rom}, keep a backup.",
        "Back up {rom}, then import {resource} from {source}.",
        fixed={"backup": True},
    ) + _one(
        "z3ed_cli.import",
        "Import {source} as {resource} into {rom} without a backup.",
        fixed={"backup": False},
    ),
    "z3ed_cli.validate": _one(
        "z3ed_cli.validate",
        "Validate {rom}.",
        "Check {rom} for errors.",
        "Is {rom} a valid ROM?",
        "Run the z3ed checks on {rom}.",
    ) + _one(
        "z3ed_cli.validate",
        "Strictly validate {rom}.",
        "Validate {rom} in strict mode.",
        fixed={"strict": True},
    ),
    "mesen2.load_rom": _one(
        "mesen2.load_rom",
        "Load {path}.",
        "Open {path} in Mesen2.",
        "Boot {path} in the emulator.",
        "Start the emulator with {path}.",
        "Load {path} as {region}.",
        "Open {path} in {region} mode.",
    ),
    "mesen2.run": _one(
        "mesen2.run",
        "Run {frames} frames.",
        "Advance the emulator {frames} frames.",
        "Let it run for {frames} frames.",
        "Emulate {frames} frames.",
        "Step forward {frames} frames.",
    ),
    "mesen2.screenshot": _one(
        "mesen2.screenshot",
        "Take a screenshot to {shot}.",
        "Save the screen as {shot}.",
        "Capture the frame to {shot}.",
        "Screenshot, save to {shot}.",
        rename={"shot": "path"},
    ),
    "mesen2.read_memory": _one(
        "mesen2.read_memory",
        "Read {length} bytes at {address} in Mesen2.",
        "Emulator: show {length} bytes from {address}.",
        "Mesen2 memory at {address}, {length} bytes.",
        "Read {length} bytes of {memory_type} at {address}.",
        "Dump {length} bytes from {memory_type} at {address}.",
    ),
}

# A few two-call turns, all within one family (the order of the calls is the order in the text).
COMBOS: list = [
    ("Load {path} and run {frames} frames.",
     [("mesen2.load_rom", {"path": "path"}, {}), ("mesen2.run", {"frames": "frames"}, {})]),
    ("Open {path} in Mesen2, then advance {frames} frames.",
     [("mesen2.load_rom", {"path": "path"}, {}), ("mesen2.run", {"frames": "frames"}, {})]),
    ("Run {frames} frames and save a screenshot to {shot}.",
     [("mesen2.run", {"frames": "frames"}, {}), ("mesen2.screenshot", {"path": "shot"}, {})]),
    ("Write {data} to {address}, then read {length} bytes at {address}.",
     [("yaze_debugger.write_memory", {"address": "address", "data": "data"}, {}),
      ("yaze_debugger.read_memory", {"address": "address", "length": "length"}, {})]),
    ("Import {source} as {resource} into {rom}, then validate {rom}.",
     [("z3ed_cli.import", {"rom": "rom", "resource": "resource", "source": "source"}, {}),
      ("z3ed_cli.validate", {"rom": "rom"}, {})]),
    ("Inspect the header of {rom} and validate it.",
     [("z3ed_cli.inspect", {"rom": "rom"}, {"target": "header"}), ("z3ed_cli.validate", {"rom": "rom"}, {})]),
]

_ROM_NAMES = ["zelda3", "alttp", "lttp_hack", "oracle", "goddess", "parallel", "redux", "practice",
              "rando", "msu", "hardmode", "door_rando"]
_ROM_DIRS = ["roms", "build", "roms/hacks"]
_WORDS = ["link", "title", "hyrule", "boss", "menu", "dungeon", "sword", "castle", "forest", "ending"]
_RESOURCE_EXT = {"graphics": "png", "palettes": "pal", "tilemaps": "bin", "music": "spc",
                 "text": "txt", "sprites": "bin"}


def _asm(rng: random.Random) -> str:
    choices = [
        lambda: f"LDA #${rng.randrange(256):02X}",
        lambda: f"STA ${rng.randrange(0x10000):04X}",
        lambda: f"INC ${rng.randrange(256):02X}",
        lambda: f"JSL ${rng.randrange(0x400000):06X}",
        lambda: "SEP #$20",
        lambda: "REP #$30",
        lambda: "NOP",
    ]
    body = [choices[rng.randrange(len(choices))]() for _ in range(rng.randint(1, 3))]
    return " : ".join(body + [rng.choice(["RTL", "RTS"])])


def _value(placeholder: str, rng: random.Random, picked: dict):
    """A seeded value for a placeholder; values already picked for this row are reused."""
    if placeholder in picked:
        return picked[placeholder]
    if placeholder == "address":
        value = f"0x{rng.choice(['7E', '7F'])}{rng.randrange(0x10000):04X}"
    elif placeholder == "origin":
        value = f"0x{rng.randrange(0x40):02X}{rng.randrange(0x8000, 0x10000):04X}"
    elif placeholder == "length":
        value = rng.randint(1, 64)
    elif placeholder == "data":
        value = " ".join(f"{rng.randrange(256):02X}" for _ in range(rng.randint(1, 4)))
    elif placeholder == "code":
        value = _asm(rng)
    elif placeholder in ("rom", "path"):
        value = f"{rng.choice(_ROM_DIRS)}/{rng.choice(_ROM_NAMES)}.sfc"
    elif placeholder == "target":
        value = rng.choice(_TARGETS)
    elif placeholder == "resource":
        value = rng.choice(_RESOURCES)
    elif placeholder == "out_dir":
        value = f"out/{rng.choice(_WORDS)}_{rng.choice(['gfx', 'dump', 'rip', 'export'])}"
    elif placeholder == "source":
        resource = _value("resource", rng, picked)
        value = f"assets/{rng.choice(_WORDS)}_{rng.randint(1, 9)}.{_RESOURCE_EXT[resource]}"
    elif placeholder == "region":
        value = rng.choice(["NTSC", "PAL"])
    elif placeholder == "frames":
        value = rng.choice([rng.randint(1, 600), rng.randint(600, 10000)])
    elif placeholder == "shot":
        value = f"shots/{rng.choice(_WORDS)}_{rng.randint(1, 99)}.png"
    elif placeholder == "memory_type":
        value = rng.choice(["wram", "sram", "vram", "cgram", "oam"])
    else:  # a phrasing names a placeholder we cannot fill: a bug in this module
        raise KeyError(placeholder)
    picked[placeholder] = value
    return value


def _make_row(phrasing, rng: random.Random) -> dict:
    text, calls = phrasing
    picked: dict = {}
    # Fill placeholders in the order they appear in the text, so values are drawn in a fixed order.
    for _, name, _, _ in string.Formatter().parse(text):
        if name:
            _value(name, rng, picked)
    tool_calls = []
    for tool, mapping, fixed in calls:
        props = TOOLS[tool]["function"]["parameters"]["properties"]
        args = {}
        for key in props:  # schema order, so the arguments JSON is stable
            if key in mapping:
                args[key] = picked[mapping[key]]
            elif key in fixed:
                args[key] = fixed[key]
        tool_calls.append({"type": "function",
                           "function": {"name": tool, "arguments": json.dumps(args)}})
    family = family_of(calls[0][0])
    return {
        "messages": [
            {"role": "user", "content": text.format(**picked)},
            {"role": "assistant", "content": None, "tool_calls": tool_calls},
        ],
        "tools": copy.deepcopy(FAMILIES[family]),
    }


def generate_demo_rows(n_rows: int = 874, seed: int = 42, *, config_path: str | None = None) -> list[dict]:
    """``n_rows`` distinct rows, the same for the same seed, roughly balanced across the 11 tools.

    Rows come in rounds of twelve slots (each tool once, plus one two-call turn), shuffled per
    round, so every tool gets about n_rows / 12 single-call rows. Errors about ``data.demo.rows`` name
    the config file ``config_path``.
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 1:
        raise SnaketuneError(config_path, f"must be a positive integer, got {n_rows!r}",
                             field="data.demo.rows", fix="set data.demo.rows to e.g. 874")
    rng = random.Random(seed)
    tool_names = list(PHRASINGS)
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < n_rows:
        slots = tool_names + ["<combo>"]
        rng.shuffle(slots)
        for slot in slots:
            if len(rows) == n_rows:
                break
            pool = COMBOS if slot == "<combo>" else PHRASINGS[slot]
            for _attempt in range(100):  # redraw the rare duplicate; the data stage would drop it
                row = _make_row(pool[rng.randrange(len(pool))], rng)
                key = json.dumps(row, sort_keys=True)
                if key not in seen:
                    break
            else:
                raise SnaketuneError(config_path, f"cannot draw {n_rows} distinct demo rows",
                                     field="data.demo.rows", fix="ask for fewer demo rows")
            seen.add(key)
            rows.append(row)
    return rows


def write_demo_dataset(out_path, n_rows: int, seed: int, *, config_path: str) -> None:
    """Write the demo rows (``data.demo`` of the config file ``config_path``) as JSONL to ``out_path``."""
    write_jsonl(out_path, generate_demo_rows(n_rows, seed, config_path=config_path))
