"""Data stage: validation errors carry file:line:field, normalisation, ids, dedupe, leakage, split."""

import json
from pathlib import Path

import pytest

from snaketune.data import (
    gold_tools,
    load_sources,
    normalise_row,
    prepare_data,
    row_id,
    split_rows,
)
from snaketune.errors import SnaketuneError

TOOLS = [
    {"type": "function", "function": {"name": "mesen2.run", "description": "run frames",
                                      "parameters": {"type": "object", "properties": {"frames": {"type": "integer"}},
                                                     "required": ["frames"]}}},
    {"type": "function", "function": {"name": "mesen2.load_rom", "description": "load",
                                      "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                                                     "required": ["path"]}}},
]


def chat(user, name="mesen2.run", args='{"frames": 60}', tools=TOOLS):
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": None,
                          "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}]}],
            "tools": tools}


def write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def error_of(tmp_path, rows):
    src = write(tmp_path / "src.jsonl", rows)
    with pytest.raises(SnaketuneError) as info:
        load_sources({str(src): "auto"})
    return info.value


# ------------------------------------------------------------------ validation errors


def test_malformed_json_names_file_and_line(tmp_path):
    err = error_of(tmp_path, [chat("a"), chat("b"), '{"messages": [', chat("c")])
    assert err.path.endswith("src.jsonl") and err.line == 3
    assert "not valid JSON" in str(err) and str(err).startswith(f"{err.path}:3: ")


def test_arguments_as_an_object_are_the_string_row_and_a_number_is_refused(tmp_path):
    row = chat("a")
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"frames": 60}
    assert normalise_row(row) == normalise_row(chat("a"))  # the HF chat-template convention: same row, same id
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = 60
    err = error_of(tmp_path, [chat("ok"), row])
    assert err.line == 2
    assert err.field == "messages[1].tool_calls[0].function.arguments"
    assert "not of type string or object" in err.problem


def test_arguments_that_do_not_parse(tmp_path):
    err = error_of(tmp_path, [chat("a", args="{frames: 60")])
    assert err.field == "messages[1].tool_calls[0].function.arguments"
    assert "json.dumps" in err.fix


def test_call_to_unknown_tool(tmp_path):
    err = error_of(tmp_path, [chat("a", name="mesen2.explode")])
    assert err.field == "messages[1].tool_calls[0].function.name" and "mesen2.explode" in err.problem


def test_arguments_violate_parameter_schema(tmp_path):
    err = error_of(tmp_path, [chat("a", args='{"frames": "sixty"}')])
    assert err.field == "messages[1].tool_calls[0].function.arguments.frames"
    assert "parameters" in err.problem


def test_missing_messages_and_unknown_role(tmp_path):
    err = error_of(tmp_path, [{"tools": TOOLS}])
    assert "unknown row shape (keys: tools)" in err.problem and err.line == 1
    row = chat("a")
    row["messages"][0]["role"] = "human"
    err = error_of(tmp_path, [row])
    assert err.field == "messages[0].role" and "human" in err.problem


def test_wrong_types_and_required_fields(tmp_path):
    err = error_of(tmp_path, [{"messages": "hello"}])
    assert err.field == "messages" and "array" in err.problem
    err = error_of(tmp_path, [{"instruction": "do it"}])
    assert err.field == "output" and "missing" in err.problem


def test_empty_file_and_non_utf8(tmp_path):
    err = error_of(tmp_path, [])
    assert "no rows" in err.problem
    src = tmp_path / "bad.jsonl"
    src.write_bytes(json.dumps(chat("a")).encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(SnaketuneError) as info:
        load_sources({str(src): "auto"})
    assert info.value.line == 2 and "UTF-8" in info.value.problem


def test_skip_mode_reports_rejected_rows(tmp_path):
    src = write(tmp_path / "src.jsonl", [chat("a"), chat("b", name="nope"), "[1, 2]", chat("c")])
    loaded = load_sources({str(src): "auto"}, on_invalid="skip")
    assert len(loaded.rows) == 2
    assert [(r["line"], r["field"]) for r in loaded.rejected] == [(2, "messages[1].tool_calls[0].function.name"), (3, None)]


# ------------------------------------------------------------------ normalisation and ids


def test_instruction_rows_become_a_chat_pair():
    row = normalise_row({"instruction": " Say hi ", "input": "to Link", "output": "Hi Link"})
    assert row["messages"] == [{"role": "user", "content": "Say hi\n\nto Link"},
                               {"role": "assistant", "content": "Hi Link"}]
    assert row["kind"] == "text" and row["tools"] == []


def test_id_is_stable_and_ignores_argument_spelling():
    a = normalise_row(chat("run", args='{"frames": 60}'))
    b = normalise_row(chat("run", args='{ "frames":60 }'))
    c = normalise_row(chat("run", args='{"frames": 61}'))
    assert a["id"] == b["id"] != c["id"]
    assert a["id"] == row_id(a["messages"], a["tools"]) and len(a["id"]) == 16
    assert a["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"frames": 60}'


def test_exact_duplicates_dropped_and_cross_source_leakage_refused(tmp_path):
    one = write(tmp_path / "one.jsonl", [chat("a"), chat("a"), chat("b")])
    loaded = load_sources({str(one): "auto"})
    assert len(loaded.rows) == 2 and loaded.duplicates == 1
    two = write(tmp_path / "two.jsonl", [chat("z"), chat("b")])
    with pytest.raises(SnaketuneError) as info:
        load_sources({str(one): "auto", str(two): "auto"})
    assert info.value.path == str(two) and info.value.line == 2
    assert f"{one}:3" in info.value.problem


# ------------------------------------------------------------------ split


def many_rows(n=60):
    rows = []
    for i in range(n):
        if i % 3:
            rows.append(normalise_row(chat(f"run {i} frames", args=json.dumps({"frames": i}))))
        else:
            rows.append(normalise_row(chat(f"load rom {i}", name="mesen2.load_rom", args=json.dumps({"path": f"r{i}.sfc"}))))
    return rows


def test_split_is_seeded_stratified_and_disjoint():
    rows = many_rows()
    ratios = {"train": 0.8, "val": 0.1, "test": 0.1}
    a = split_rows(rows, ratios, seed=1)
    b = split_rows(list(reversed(rows)), ratios, seed=1)
    c = split_rows(rows, ratios, seed=2)
    assert a == b
    assert [r["id"] for r in a["test"]] != [r["id"] for r in c["test"]]
    ids = [set(r["id"] for r in a[s]) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == 60
    for split in ("val", "test"):  # both strata in every split, close to the ratio
        tools = [gold_tools(r)[0] for r in a[split]]
        assert tools.count("mesen2.run") == 4 and tools.count("mesen2.load_rom") == 2


def test_rows_with_the_same_prompt_share_a_split():
    rows = [normalise_row(chat("same prompt", args=json.dumps({"frames": i}))) for i in range(10)]
    rows += many_rows(30)
    splits = split_rows(rows, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=3)
    holding = [s for s, rs in splits.items() if any(r["messages"][0]["content"] == "same prompt" for r in rs)]
    assert len(holding) == 1


def test_prepare_data_writes_everything_or_nothing(tmp_path):
    src = write(tmp_path / "src.jsonl", [r for r in (chat(f"run {i}", args=json.dumps({"frames": i})) for i in range(30))])
    outputs = {k: str(tmp_path / "out" / f"{k}.jsonl") for k in ("train", "val", "test", "rejected")}
    outputs["stats"] = str(tmp_path / "out" / "stats.json")
    with pytest.raises(SnaketuneError) as info:
        prepare_data({str(src): "auto"}, outputs, ratios={"train": 0.8, "val": 0.1, "test": 0.1}, seed=42,
                     specialists={"loader": ["mesen2.load_rom"]})
    assert info.value.field == "specialists.loader.focus_tools"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    stats = prepare_data({str(src): "auto"}, outputs, ratios={"train": 0.8, "val": 0.1, "test": 0.1}, seed=42,
                         specialists={"runner": ["mesen2.run"]})
    assert stats["counts"] == {"train": 24, "val": 3, "test": 3}
    assert stats["per_tool"]["test"] == {"mesen2.run": 3}
    assert len(Path(outputs["test"]).read_text().splitlines()) == 3


# ------------------------------------------------------------------ end to end (real Snakemake)

from pipeline import make_workdir, planned_jobs, snakemake  # noqa: E402

SPLIT_TARGET = "results/data/split_stats.json"
DATA_RULES = {"prepare_data"}


def tiny_config(**data):
    config = {
        "data": {"demo": {"enabled": True, "rows": 150, "seed": 7}, "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 1}},
        "specialists": {"runner": {"focus_tools": ["mesen2.run"]}, "all-tools": {}},
        "export": {"enabled": False},
    }
    config["data"].update(data)
    return config


@pytest.mark.e2e
def test_data_stage_end_to_end(tmp_path):
    a = make_workdir(tmp_path / "a", tiny_config())
    snakemake(a, SPLIT_TARGET, "results/env/verify.json")
    stats = json.loads((a / SPLIT_TARGET).read_text())
    rows = {s: [json.loads(l) for l in (a / f"results/data/{s}.jsonl").read_text().splitlines()] for s in ("train", "val", "test")}
    assert stats["counts"] == {s: len(r) for s, r in rows.items()}
    assert stats["total"] + stats["duplicates_removed"] == 150
    assert stats["per_tool"]["test"]["mesen2.run"] >= 1
    ids = [r["id"] for rs in rows.values() for r in rs]
    assert len(ids) == len(set(ids))
    assert all(r["messages"][-1]["role"] == "assistant" for rs in rows.values() for r in rs)
    verify = json.loads((a / "results/env/verify.json").read_text())
    assert verify["checks"]

    # up to date: nothing to do
    assert planned_jobs(a, SPLIT_TARGET) == {}
    # a new split seed reruns only the data rules
    make_workdir(a, tiny_config(split={"train": 0.8, "val": 0.1, "test": 0.1, "seed": 2}))
    assert set(planned_jobs(a, SPLIT_TARGET)) == DATA_RULES

    # a second clean run gives the same bytes
    b = make_workdir(tmp_path / "b", tiny_config())
    snakemake(b, SPLIT_TARGET)
    for name in ("train", "val", "test"):
        assert (a / f"results/data/{name}.jsonl").read_bytes() == (b / f"results/data/{name}.jsonl").read_bytes()


@pytest.mark.e2e
def test_malformed_source_line_stops_with_file_and_line(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    good = chat("run 60 frames")
    write(work / "mine.jsonl", [good, chat("run 61", args='{"frames": 61}'), '{"messages": [oops', chat("x")])
    make_workdir(work, tiny_config(demo={"enabled": False}, sources=[{"path": "mine.jsonl"}]))
    proc = snakemake(work, SPLIT_TARGET, check=False)
    assert proc.returncode != 0
    assert "mine.jsonl:3: not valid JSON" in proc.stdout + proc.stderr
    assert not (work / "results/data").exists() or not any((work / "results/data").rglob("*.jsonl"))


# ------------------------------------------------------------------ fuzzing: never a stray exception

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "human", 3, None])
calls = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["mesen2.run", "mesen2.load_rom", "nope", ""]),
     "arguments": st.one_of(st.text(max_size=20), st.just('{"frames": 3}'), st.just('{"path": 1}'), json_values)})})
messages = st.lists(st.fixed_dictionaries({"role": roles},
                                          optional={"content": st.one_of(st.none(), st.text(max_size=20), json_values),
                                                    "tool_calls": st.one_of(st.lists(calls, max_size=2), json_values)}),
                    max_size=4)
near_rows = st.fixed_dictionaries({"messages": messages},
                                  optional={"tools": st.one_of(st.just(TOOLS), st.lists(json_values, max_size=2), json_values)})
instruction_rows = st.fixed_dictionaries({"instruction": st.one_of(st.text(max_size=10), json_values)},
                                         optional={"input": st.one_of(st.text(max_size=10), json_values),
                                                   "output": st.one_of(st.text(max_size=10), json_values)})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, near_rows, instruction_rows))
def test_any_json_value_gives_a_row_or_our_error(value):
    try:
        row = normalise_row(value, path="fuzz.jsonl", line=1)
    except SnaketuneError as err:
        assert str(err).startswith("fuzz.jsonl:1: ")
        return
    assert row["messages"][-1]["role"] == "assistant" and len(row["id"]) == 16
    json.dumps(row)  # the normalised row always serialises


def test_deeply_nested_json_is_our_error(tmp_path):
    err = error_of(tmp_path, ["[" * 100000 + "]" * 100000])
    assert err.line == 1 and "nested too deeply" in err.problem
    err = error_of(tmp_path, [chat("a", args="[" * 100000 + "]" * 100000)])
    assert err.field == "messages[1].tool_calls[0].function.arguments"
