"""BFCL as an eval target: the converter (BFCL rows -> canonical chat rows), the wheel, the stage."""

import json
from collections import Counter

import jsonschema
import pytest

from snaketune.benchmarks import (
    benchmark_table,
    category_of,
    evaluate_benchmarks,
    prepare_benchmark,
    prompt_settings,
    sample_indices,
    summarise_benchmarks,
    validate_benchmark_result,
)
from snaketune.bfcl import (
    BFCL_WHEEL_SHA256,
    convert_case,
    convert_category,
    fetch_wheel,
    read_category,
    to_json_schema,
)
from snaketune.chat_template import apply_template, specialist_chat, split_prompt
from snaketune.errors import SnaketuneError
from snaketune.evaluation import rescore_generations
from snaketune.files import read_json, read_jsonl, sha256_file, write_jsonl

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
        "database_name": ["StudentDB"], "table_name": ["", "students"],
        "conditions": [{"department": ["Science"]}],
        "fetch_limit": [""]}}]}
    row, _ = convert_case(QUESTION, answer)
    args = json.loads(row["messages"][-1]["tool_calls"][0]["function"]["arguments"])
    assert args == {"database_name": "StudentDB", "table_name": "students",
                    "conditions": {"department": "Science"}}
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
    expected = [next(iter(a.values())) for a in answer["ground_truth"]]
    assert [p["arguments"] for p in row["possible_answer"]] == expected


def test_system_turns_are_kept_and_mismatched_answer_refused():
    turn = [{"role": "system", "content": "sys"}, {"role": "user", "content": "u"}]
    question = {**QUESTION, "question": [turn]}
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


# ---------------------------------------------------------------- the stage's functions


def test_benchmark_names_are_bfcl_categories():
    assert category_of("bfcl_simple_python") == "simple_python"
    assert category_of("bfcl_live_parallel_multiple") == "live_parallel_multiple"
    for bad in ("bfcl_simple", "simple_python", "bfcl_simple_java"):
        with pytest.raises(SnaketuneError, match="not a known benchmark"):
            category_of(bad)


def test_sample_is_seeded_and_in_file_order():
    a = sample_indices(400, 5, 0, "simple_python")
    assert a == sample_indices(400, 5, 0, "simple_python") == sorted(a) and len(set(a)) == 5
    assert a != sample_indices(400, 5, 1, "simple_python")
    assert a != sample_indices(400, 5, 0, "multiple")
    assert sample_indices(3, 5, 0, "x") == sample_indices(3, None, 0, "x") == [0, 1, 2]


def test_prepare_benchmark_records_n_and_sampling(tmp_path, bfcl_wheel):
    stats = prepare_benchmark(bfcl_wheel, "bfcl_parallel", tmp_path / "p.jsonl", tmp_path / "p.json",
                              max_rows=4, seed=3)
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert read_json(tmp_path / "p.json") == stats
    assert stats["n"] == 4 and stats["n_available"] == 200 and stats["sampled"] is True
    assert stats["leaderboard_column"] == "Non-Live Parallel AST" and stats["category"] == "parallel"
    assert stats["wheel_sha256"] == BFCL_WHEEL_SHA256 and stats["type_mappings"]["dict->object"] >= 4
    expected = [f"parallel_{i}" for i in sample_indices(200, 4, 3, "parallel")]
    assert [r["id"] for r in rows] == expected and all(r["kind"] == "tool" for r in rows)
    full = prepare_benchmark(bfcl_wheel, "bfcl_multiple", tmp_path / "m.jsonl", tmp_path / "m.json")
    assert full["n"] == full["n_available"] == 200 and full["sampled"] is False


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from pipeline import small_base

    return small_base(tmp_path_factory.mktemp("tiny"))


def test_evaluate_and_summarise_benchmarks(tmp_path, bfcl_wheel, tiny_base):
    """One model on two categories (2 rows each), scored with bfcl scoring; base vs tuned side by side."""
    rows_paths, stats_paths = {}, {}
    for benchmark in ("bfcl_simple_python", "bfcl_parallel_multiple"):
        rows_paths[benchmark] = tmp_path / f"{benchmark}.jsonl"
        stats_paths[benchmark] = tmp_path / f"{benchmark}.json"
        prepare_benchmark(bfcl_wheel, benchmark, rows_paths[benchmark], stats_paths[benchmark], max_rows=2)
    settings = {"name": "runner", "system_prompt": "Call the tools."}
    eval_cfg = {"batch_size": 4, "max_new_tokens": 8}
    result = evaluate_benchmarks(base_cfg=tiny_base, rows_paths=rows_paths, settings=settings,
                                 eval_cfg=eval_cfg,
                                 out_json=tmp_path / "base.json", out_generations=tmp_path / "base.gen.jsonl",
                                 threads=1, progress=False)
    assert read_json(tmp_path / "base.json") == result
    assert result["scoring"] == "bfcl" and result["model"] == "base"
    assert set(result["categories"]) == {"simple_python", "parallel_multiple"}
    for category, c in result["categories"].items():
        assert c["n"] == 2 and c["metrics"]["n"] == 2 and 0 <= c["metrics"]["ast_accuracy"] <= 1
        assert set(c["metrics"]["per_category"]) == {category}
        assert c["metrics"]["answers"] == {"possible_answer": 2}
    records = read_jsonl(tmp_path / "base.gen.jsonl")
    assert len(records) == 4 and {r["benchmark"] for r in records} == set(rows_paths)
    # the checker sees BFCL's raw docs (types as BFCL gives them)
    assert all(r["bfcl_case"]["functions"][0]["parameters"]["type"] == "dict" for r in records)
    # generations rescore to the same numbers (bfcl scoring)
    simple = [r for r in records if r["benchmark"] == "bfcl_simple_python"]
    write_jsonl(tmp_path / "simple.jsonl", simple)
    again = rescore_generations(tmp_path / "simple.jsonl", {}, scoring="bfcl")["tool"]
    assert again == result["categories"]["simple_python"]["metrics"]

    # a "tuned" result that got every simple_python row right: the summary sets them side by side
    tuned = json.loads(json.dumps(result))
    tuned["model"], tuned["hashes"]["adapter"] = "tuned", "sha256:" + "a" * 64
    tuned["categories"]["simple_python"]["metrics"]["ast_accuracy"] = 1.0
    (tmp_path / "tuned.json").write_text(json.dumps(tuned))
    summary = summarise_benchmarks(tmp_path / "base.json", tmp_path / "tuned.json", stats_paths,
                                   tmp_path / "s.json")
    simple_py = summary["categories"]["simple_python"]
    base_acc = result["categories"]["simple_python"]["metrics"]["ast_accuracy"]
    assert simple_py["ast_accuracy"] == {"base": base_acc, "tuned": 1.0, "delta": 1.0 - base_acc}
    assert (simple_py["n"], simple_py["n_available"], simple_py["sampled"]) == (2, 400, True)
    assert simple_py["leaderboard_column"] == "Python Simple AST (non-live table)"
    assert summary["wheel_sha256"] == BFCL_WHEEL_SHA256 and summary["system_prompt"] == "Call the tools."
    lines = benchmark_table([summary])
    start = "| runner | simple_python | Python Simple AST (non-live table) | 2 of 400 (sample) | "
    assert any(line.startswith(start) for line in lines)
    assert sum(line.startswith("| runner |") for line in lines) == 2


def test_benchmark_schema_refuses_a_broken_result():
    bad = {"specialist": "x", "model": "base", "scoring": "bfcl", "categories": {"simple_java": {}},
           "generation": {}, "hashes": {}}
    with pytest.raises(RuntimeError, match="benchmark_result"):
        validate_benchmark_result(bad, "model_result")


def test_benchmark_prompt_shows_full_json_schema_and_system_prompt():
    row, _ = convert_case(QUESTION, ANSWER)
    settings = prompt_settings({"name": "runner", "system_prompt": "Call the tools.",
                                "train": {"tools_rendered": "compact"}})
    messages, tools = specialist_chat({"id": "x", "kind": "tool", **row}, settings)
    text = apply_template(None, split_prompt(messages)[0], tools, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nCall the tools.")
    assert '"type": "object"' in text and '"dict"' not in text
    assert '"description": "Filters."' in text and '"default": 0' in text  # not the compact rendering
    assert "StudentDB" not in text  # nor the answer


# ---------------------------------------------------------------- end to end on the tiny pipeline

@pytest.mark.e2e
def test_benchmarks_end_to_end(tmp_path, bfcl_wheel):
    """The tiny pipeline with four BFCL categories capped at 3 rows: the benchmark JSON, summary.md's
    table and the report CSV; the wheel's hash in the provenance record."""
    from pipeline import DEMO_SPECIALISTS, run_pipeline, tiny_config

    name = "veran-tools"
    benchmarks = ["bfcl_simple_python", "bfcl_multiple", "bfcl_parallel", "bfcl_parallel_multiple"]
    config = tiny_config({name: DEMO_SPECIALISTS[name]},
                         eval_cfg={"benchmarks": benchmarks, "benchmark_max_rows": 3,
                                   "bfcl_wheel": str(bfcl_wheel)})
    work = run_pipeline(tmp_path / "w", config,
                        targets=["results/eval/summary.md", "results/report/bfcl.csv"])
    result = read_json(work / f"results/eval/benchmarks/{name}.json")
    assert result["specialist"] == name and result["scoring"] == "bfcl"
    assert result["wheel_sha256"] == BFCL_WHEEL_SHA256 and result["adapter"].startswith("sha256:")
    assert set(result["categories"]) == {"simple_python", "multiple", "parallel", "parallel_multiple"}
    for category, c in result["categories"].items():
        assert (c["n"], c["sampled"]) == (3, True) and c["n_available"] in (200, 400)
        for model in ("base", "tuned"):
            m = c["metrics"][model]
            assert m["n"] == 3 and 0 <= m["ast_accuracy"] <= 1 and m["per_category"][category]["n"] == 3
        acc = c["ast_accuracy"]
        assert acc["delta"] == pytest.approx(acc["tuned"] - acc["base"])
        assert acc["base"] == c["metrics"]["base"]["ast_accuracy"]
    for model in ("base", "tuned"):
        records = read_jsonl(work / f"results/eval/benchmarks/{model}/{name}.generations.jsonl")
        assert len(records) == 12 and sum(r["verdict"]["ast_valid"] for r in records) == round(
            sum(3 * c["metrics"][model]["ast_accuracy"] for c in result["categories"].values()))
    md = (work / "results/eval/summary.md").read_text()
    assert "## BFCL (Berkeley Function Calling Leaderboard)" in md
    rows = [line for line in md.splitlines() if line.startswith(f"| {name} | ") and "AST" in line]
    order = [row.split(" | ")[1] for row in rows]
    assert order == ["simple_python", "multiple", "parallel", "parallel_multiple"]
    assert "| 3 of 400 (sample) |" in md and "| 3 of 200 (sample) |" in md
    csv_text = (work / "results/report/bfcl.csv").read_text()
    assert len(csv_text.strip().splitlines()) == 5 and "Non-Live Parallel Multiple AST" in csv_text
    record = read_json(work / "results/provenance/bfcl_wheel/all.json")
    assert [o["sha256"] for o in record["outputs"]] == [BFCL_WHEEL_SHA256]


def test_report_tables_for_bfcl():
    from snaketune.report_tables import bfcl_rows, eval_rows

    metric = {"base": 0.25, "tuned": 0.75, "delta": 0.5}
    strict = {"specialists": [{"specialist": "a", "n_examples": 4, "targets_met": True,
                               "metrics": {m: metric for m in ("exact_match", "tool_accuracy", "param_f1",
                                                               "json_valid_rate")}}]}
    assert eval_rows(strict)[0] == ["specialist", "n", "exact match", "tool accuracy", "param F1",
                                    "JSON valid", "targets met"]
    strict["specialists"][0]["metrics"]["ast_accuracy"] = metric
    rows = eval_rows(strict)
    assert rows[0][-2] == "AST accuracy (BFCL)" and rows[1][-2] == "0.250 → 0.750 (+0.500)"
    cat = {"leaderboard_column": "Non-Live Multiple AST", "n": 3, "n_available": 200, "sampled": True,
           "ast_accuracy": {"base": 0.0, "tuned": 2 / 3, "delta": 2 / 3},
           "metrics": {"base": {}, "tuned": {"tool_accuracy": 1.0, "param_f1": 0.5}}}
    parallel = {**cat, "leaderboard_column": "Non-Live Parallel AST"}
    summary = {"specialist": "a", "categories": {"parallel": parallel, "multiple": cat}}
    same = ["3", "200", "yes", "0.000", "0.667", "+0.667", "1.000", "0.500"]
    assert bfcl_rows([summary])[1:] == [["a", "multiple", "Non-Live Multiple AST", *same],
                                        ["a", "parallel", "Non-Live Parallel AST", *same]]
