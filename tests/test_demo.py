"""The demo dataset: deterministic, balanced, and every call valid against its tool's schema."""

import collections
import hashlib
import json

import jsonschema
import pytest

from snaketune.demo import FAMILIES, PHRASINGS, TOOLS, generate_demo_rows, write_demo_dataset
from snaketune.errors import SnaketuneError
from snaketune.files import read_jsonl

ALL_TOOLS = {
    "yaze_debugger.read_memory", "yaze_debugger.write_memory", "yaze_debugger.assemble",
    "z3ed_cli.inspect", "z3ed_cli.extract", "z3ed_cli.import", "z3ed_cli.validate",
    "mesen2.load_rom", "mesen2.run", "mesen2.screenshot", "mesen2.read_memory",
}


@pytest.fixture(scope="module")
def rows():
    return generate_demo_rows()


def _calls(row):
    return [tc["function"] for tc in row["messages"][-1]["tool_calls"]]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_demo_dataset(tmp_path / "a.jsonl", 874, 42, config_path="config/config.yaml")
    write_demo_dataset(tmp_path / "b.jsonl", 874, 42, config_path="config/config.yaml")
    write_demo_dataset(tmp_path / "c.jsonl", 874, 7, config_path="config/config.yaml")
    assert _sha(tmp_path / "a.jsonl") == _sha(tmp_path / "b.jsonl")
    assert _sha(tmp_path / "a.jsonl") != _sha(tmp_path / "c.jsonl")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_default_count_and_small_sizes(rows, tmp_path):
    assert len(rows) == 874
    assert len(generate_demo_rows(5, 1)) == 5
    write_demo_dataset(tmp_path / "d.jsonl", 30, 3, config_path="config/config.yaml")
    assert len(read_jsonl(tmp_path / "d.jsonl")) == 30


def test_rows_are_distinct(rows):
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)


def test_every_tool_present_at_least_40_times(rows):
    counts = collections.Counter(c["name"] for row in rows for c in _calls(row))
    assert set(counts) == ALL_TOOLS == set(TOOLS)
    assert min(counts.values()) >= 40, counts
    assert max(counts.values()) < 3 * min(counts.values())  # roughly balanced


def test_some_rows_hold_two_calls(rows):
    multi = [r for r in rows if len(_calls(r)) == 2]
    assert 20 <= len(multi) <= 150


def test_rows_are_openai_chat_format(rows):
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and isinstance(user["content"], str) and user["content"]
        assert assistant["role"] == "assistant" and assistant["content"] is None
        for tc in assistant["tool_calls"]:
            assert tc["type"] == "function"
            assert isinstance(tc["function"]["arguments"], str)
        for tool in row["tools"]:
            assert tool["type"] == "function"
            assert set(tool["function"]) == {"name", "description", "parameters"}


def test_tool_schemas_are_valid_json_schemas():
    for tool in TOOLS.values():
        jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])


def test_every_call_validates_against_its_tool_schema(rows):
    for i, row in enumerate(rows):
        offered = {t["function"]["name"]: t["function"]["parameters"] for t in row["tools"]}
        for call in _calls(row):
            assert call["name"] in offered, (i, call)
            args = json.loads(call["arguments"])
            jsonschema.validate(args, offered[call["name"]])


def test_row_tools_are_one_family(rows):
    families = [[t["function"]["name"] for t in fam] for fam in FAMILIES.values()]
    for row in rows:
        assert [t["function"]["name"] for t in row["tools"]] in families


def test_argument_values_appear_in_the_user_text(rows):
    for row in rows:
        text = row["messages"][0]["content"]
        for call in _calls(row):
            for key, value in json.loads(call["arguments"]).items():
                if isinstance(value, bool) or (key == "target" and value == "header"):
                    continue  # said in words ("keep a backup", "strict", "the header ... validate it")
                assert str(value) in text, (text, key, value)


def test_phrasing_variety(rows):
    assert all(len(p) >= 4 for p in PHRASINGS.values())
    prompts_by_tool = collections.defaultdict(set)
    for row in rows:
        calls = _calls(row)
        if len(calls) == 1:
            # the prompt with its argument values masked out shows which phrasing was used
            text = row["messages"][0]["content"]
            for value in json.loads(calls[0]["arguments"]).values():
                text = text.replace(str(value), "_")
            prompts_by_tool[calls[0]["name"]].add(text)
    for tool in ALL_TOOLS:
        assert len(prompts_by_tool[tool]) >= 4, (tool, prompts_by_tool[tool])


def test_prompts_are_short(rows):
    assert max(len(r["messages"][0]["content"]) for r in rows) <= 120


def test_bad_row_count_is_a_user_error():
    with pytest.raises(SnaketuneError, match="data.demo.rows"):
        generate_demo_rows(0, 42)
