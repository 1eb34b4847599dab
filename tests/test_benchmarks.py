"""BFCL as an eval target: the converter (BFCL rows -> canonical chat rows), the wheel, the benchmark stage."""

import json
from collections import Counter

import jsonschema
import pytest

from snaketune.bfcl import (
    BFCL_WHEEL_SHA256,
    convert_case,
    convert_category,
    fetch_wheel,
    read_category,
    to_json_schema,
)
from snaketune.errors import SnaketuneError
from snaketune.files import sha256_file

# simple_python_89-like: a dict parameter with nested properties, an optional string, alternatives
QUESTION = {
    "id": "simple_python_89",
    "question": [[{"role": "user", "content": "Fetch the science students of Bluebird High School."}]],
    "function": [{
        "name": "db_fetch_records",
        "description": "Fetch records from a database.",
        "parameters": {"type": "dict", "properties": {
            "database_name": {"type": "string", "description": "Database."},
            "table_name": {"type": "string", "description": "Table."},
            "conditions": {"type": "dict", "description": "Filters.", "properties": {
                "department": {"type": "string"},
                "school": {"type": "string"},
                "year": {"type": "integer"}}},
            "fetch_limit": {"type": "integer", "description": "Limit.", "default": 0},
        }, "required": ["database_name", "table_name", "conditions"]},
    }],
}
ANSWER = {"id": "simple_python_89", "ground_truth": [{"db_fetch_records": {
    "database_name": ["StudentDB"],
    "table_name": ["students"],
    "conditions": [{"department": ["Science"], "school": ["Bluebird High School", "Bluebird HS"],
                    "year": ["", 2024]}],
    "fetch_limit": ["", 0],
}}]}


def test_convert_case_row_shape():
    row, counts = convert_case(QUESTION, ANSWER)
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][0]["content"].startswith("Fetch the science")
    call = row["messages"][-1]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "db_fetch_records"
    # first acceptable value that is not "": a dict parameter's acceptable dict is made concrete per key
    assert json.loads(call["function"]["arguments"]) == {
        "database_name": "StudentDB", "table_name": "students",
        "conditions": {"department": "Science", "school": "Bluebird High School", "year": 2024},
        "fetch_limit": 0}
    assert row["possible_answer"] == [{"name": "db_fetch_records",
                                       "arguments": ANSWER["ground_truth"][0]["db_fetch_records"]}]
    assert row["bfcl"] == {"id": "simple_python_89", "category": "simple_python",
                           "function": QUESTION["function"]}
    # the top-level and the nested dict mapped to object
    assert counts == {"dict->object": 2}
    params = row["tools"][0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["conditions"]["type"] == "object"
    assert params["properties"]["conditions"]["properties"]["year"] == {"type": "integer"}
    assert params["properties"]["fetch_limit"] == {"type": "integer", "description": "Limit.", "default": 0}
    assert params["required"] == ["database_name", "table_name", "conditions"]


def test_parameter_whose_only_value_is_optional_marker_is_omitted():
    answer = {"id": "simple_python_89", "ground_truth": [{"db_fetch_records": {
        "database_name": ["StudentDB"], "table_name": ["", "students"], "conditions": [{"department": ["Science"]}],
        "fetch_limit": [""]}}]}
    row, _ = convert_case(QUESTION, answer)
    args = json.loads(row["messages"][-1]["tool_calls"][0]["function"]["arguments"])
    assert args == {"database_name": "StudentDB", "table_name": "students", "conditions": {"department": "Science"}}
    assert list(args) == ["database_name", "table_name", "conditions"]  # the answer's order


def test_type_mapping_nested_properties_and_items():
    counts = Counter()
    spec = {"type": "dict", "properties": {
        "rate": {"type": "float", "description": "r"},
        "point": {"type": "tuple", "items": {"type": "float"}},
        "anything": {"type": "any", "description": "a"},
        "rows": {"type": "array", "items": {"type": "dict", "properties": {
            "name": {"type": "string"}, "weights": {"type": "array", "items": {"type": "float"}},
            "meta": {"type": "any"}}, "required": ["name"]}},
        "flag": {"type": "boolean", "enum": [True, False]},
        "n": {"type": "integer", "maximum": 5}}, "required": ["rate"], "optional": ["n"]}
    out = to_json_schema(spec, counts)
    assert out == {"type": "object", "properties": {
        "rate": {"type": "number", "description": "r"},
        "point": {"type": "array", "items": {"type": "number"}},
        "anything": {"description": "a"},
        "rows": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "weights": {"type": "array", "items": {"type": "number"}},
            "meta": {}}, "required": ["name"]}},
        "flag": {"type": "boolean", "enum": [True, False]},
        "n": {"type": "integer", "maximum": 5}}, "required": ["rate"], "optional": ["n"]}
    assert counts == {"dict->object": 2, "float->number": 3, "tuple->array": 1, "any->untyped": 2}
    jsonschema.Draft202012Validator.check_schema(out)
    assert spec["properties"]["rate"]["type"] == "float"  # the input is left as it was


@pytest.mark.parametrize("bad", ["HashMap", "String", "long", None])
def test_java_and_unknown_types_are_refused(bad):
    with pytest.raises(SnaketuneError, match="not one of BFCL's python types") as err:
        to_json_schema({"type": "dict", "properties": {"x": {"type": bad}}}, Counter())
    assert err.value.field == "parameters.properties.x.type"


def test_list_of_dicts_answer_is_made_concrete():
    question = {"id": "parallel_9", "question": [[{"role": "user", "content": "q"}]], "function": [{
        "name": "f", "description": "", "parameters": {"type": "dict", "properties": {
            "items": {"type": "array", "items": {"type": "dict", "properties": {
                "a": {"type": "string"}, "b": {"type": "integer"}}}}}, "required": ["items"]}}]}
    answer = {"id": "parallel_9", "ground_truth": [
        {"f": {"items": [[{"a": ["x", "X"], "b": ["", 1]}, {"a": ["y"], "b": [""]}]]}},
        {"f": {"items": [[]]}}]}
    row, _ = convert_case(question, answer)
    assert row["bfcl"]["category"] == "parallel"
    calls = [json.loads(c["function"]["arguments"]) for c in row["messages"][-1]["tool_calls"]]
    assert calls == [{"items": [{"a": "x", "b": 1}, {"a": "y"}]}, {"items": []}]
    assert [p["arguments"] for p in row["possible_answer"]] == [next(iter(a.values())) for a in answer["ground_truth"]]


def test_system_turns_are_kept_and_mismatched_answer_refused():
    question = {**QUESTION, "question": [[{"role": "system", "content": "sys"}, {"role": "user", "content": "u"}]]}
    row, _ = convert_case(question, ANSWER)
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    with pytest.raises(SnaketuneError, match="no matching possible answer"):
        convert_case(QUESTION, {**ANSWER, "id": "simple_python_90"})


# ---------------------------------------------------------------- the real wheel

def test_wheel_hash_and_categories(bfcl_wheel):
    assert sha256_file(bfcl_wheel) == BFCL_WHEEL_SHA256
    assert fetch_wheel(bfcl_wheel) == bfcl_wheel  # present and right: kept
    pairs = read_category(bfcl_wheel, "simple_python")
    assert len(pairs) == 400 and pairs[0][0]["id"] == pairs[0][1]["id"] == "simple_python_0"
    expected = {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200}
    for category, n in expected.items():
        rows, counts = convert_category(bfcl_wheel, category)
        assert len(rows) == n
        assert counts["dict->object"] >= n  # every function's parameters at least
        assert all(row["bfcl"]["category"] == category for row in rows)
        for row in rows:  # every converted tool schema is valid JSON Schema, calls aligned with answers
            for tool in row["tools"]:
                jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
            calls = row["messages"][-1]["tool_calls"]
            assert [c["function"]["name"] for c in calls] == [p["name"] for p in row["possible_answer"]]
    row, _ = convert_case(*pairs[0])
    assert json.loads(row["messages"][-1]["tool_calls"][0]["function"]["arguments"]) == {
        "base": 10, "height": 5, "unit": "units"}


def test_fetch_wheel_refuses_a_wrong_hash(tmp_path, bfcl_wheel):
    with pytest.raises(SnaketuneError, match="is not the pinned"):
        fetch_wheel(tmp_path / "w.whl", sha256="0" * 64, source=bfcl_wheel)
    assert not (tmp_path / "w.whl").exists()
    with pytest.raises(SnaketuneError, match="wheel not found"):
        fetch_wheel(tmp_path / "w.whl", source=tmp_path / "missing.whl")
    assert sha256_file(fetch_wheel(tmp_path / "w.whl", source=bfcl_wheel)) == BFCL_WHEEL_SHA256


def test_unsupported_category_is_refused(bfcl_wheel):
    with pytest.raises(SnaketuneError, match="not supported"):
        read_category(bfcl_wheel, "simple_java")
