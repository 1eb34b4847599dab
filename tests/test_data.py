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
                                      "parameters": {"type": "object",
                                                     "properties": {"frames": {"type": "integer"}},
                                                     "required": ["frames"]}}},
    {"type": "function", "function": {"name": "mesen2.load_rom", "description": "load",
                                      "parameters": {"type": "object",
                                                     "properties": {"path": {"type": "string"}},
                                                     "required": ["path"]}}},
]


def chat(user, name="mesen2.run", args='{"frames": 60}', tools=TOOLS):
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": None,
                          "tool_calls": [{"type": "function",
                                          "function": {"name": name, "arguments": args}}]}],
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
    assert normalise_row(row) == normalise_row(
        chat("a")
    )  # the HF chat-template convention: same row, same id
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
    assert [(r["line"], r["field"]) for r in loaded.rejected] == [
        (2, "messages[1].tool_calls[0].function.name"), (3, None)]


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
            rows.append(normalise_row(chat(f"load rom {i}", name="mesen2.load_rom",
                                           args=json.dumps({"path": f"r{i}.sfc"}))))
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
    src = write(tmp_path / "src.jsonl",
                [r for r in (chat(f"run {i}", args=json.dumps({"frames": i})) for i in range(30))])
    outputs = {k: str(tmp_path / "out" / f"{k}.jsonl") for k in ("train", "val", "test", "rejected")}
    outputs["stats"] = str(tmp_path / "out" / "stats.json")
    with pytest.raises(SnaketuneError) as info:
        prepare_data({str(src): "auto"}, outputs, ratios={"train": 0.8, "val": 0.1, "test": 0.1}, seed=42,
                     specialists={"loader": ["mesen2.load_rom"]}, config_files={"specialists": "my.yaml"})
    assert info.value.field == "specialists.loader.focus_tools" and info.value.path == "my.yaml"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    stats = prepare_data({str(src): "auto"}, outputs, ratios={"train": 0.8, "val": 0.1, "test": 0.1}, seed=42,
                         specialists={"runner": ["mesen2.run"]})
    assert stats["counts"] == {"train": 24, "val": 3, "test": 3}
    assert stats["per_tool"]["test"] == {"mesen2.run": 3}
    assert len(Path(outputs["test"]).read_text().splitlines()) == 3


# ------------------------------------------------------------------ input hygiene


def test_a_bom_on_line_one_is_accepted(tmp_path):
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + (json.dumps(chat("a")) + "\n" + json.dumps(chat("b")) + "\n").encode())
    loaded = load_sources({str(src): "auto"})
    assert [r["messages"][0]["content"] for r in loaded.rows] == ["a", "b"]
    assert loaded.rows[0]["id"] == normalise_row(chat("a"))["id"]


@pytest.mark.parametrize(
    "text,field",
    [
        ('{"frames": NaN}', "messages[1].tool_calls[0].function.arguments.frames"),
        ('{"frames": [1, Infinity]}', "messages[1].tool_calls[0].function.arguments.frames[1]"),
        ('{"frames": -Infinity}', "messages[1].tool_calls[0].function.arguments.frames"),
        ('{"frames": 1e999}', "messages[1].tool_calls[0].function.arguments.frames"),
    ],
)
def test_nan_and_infinity_inside_arguments_are_refused_with_their_field(tmp_path, text, field):
    err = error_of(tmp_path, [chat("ok"), chat("bad", args=text)])
    assert err.line == 2 and err.field == field, str(err)
    assert "RFC 8259" in err.problem and err.fix


def test_nan_anywhere_in_a_row_is_refused_with_its_field(tmp_path):
    line = json.dumps(chat("a")).replace('"content": "a"', '"content": NaN')
    err = error_of(tmp_path, [chat("ok"), line])
    assert (err.line, err.field) == (2, "messages[0].content") and "NaN is not valid JSON" in err.problem
    line = json.dumps({"instruction": "x", "output": "y", "score": 1}).replace("1}", "Infinity}")
    err = error_of(tmp_path, [line])
    assert (err.line, err.field) == (1, "score")


def test_every_tool_schema_is_checked_called_or_not(tmp_path):
    broken = {"type": "function", "function": {"name": "mesen2.broken", "parameters": {"type": "strnig"}}}
    err = error_of(tmp_path, [chat("a", tools=TOOLS + [broken])])
    assert err.field == "tools[2].function.parameters" and "mesen2.broken" in err.problem


def test_enum_errors_list_every_allowed_value(tmp_path):
    values = [f"bank_{i:02d}_of_the_cartridge" for i in range(30)]
    tool = {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {"type": "object", "properties": {"bank": {"enum": values}}},
        },
    }
    err = error_of(tmp_path, [chat("a", name="pick", args='{"bank": "bank_99"}', tools=[tool])])
    assert err.field == "messages[1].tool_calls[0].function.arguments.bank"
    assert all(f"'{v}'" in err.problem for v in values) and err.problem.endswith(
        "'bank_29_of_the_cartridge']"
    )


# ------------------------------------------------------------------ acceptable answers (possible_answer)


def answered(answer, args='{"frames": 60}'):
    return dict(chat("run 60 frames", args=args), possible_answer=answer)


def test_possible_answer_is_kept_and_not_part_of_the_id():
    answer = [{"name": "mesen2.run", "arguments": {"frames": [60, 60.0], "speed": ["", 1]}}]
    row = normalise_row(answered(answer))
    assert row["possible_answer"] == answer and row["id"] == normalise_row(chat("run 60 frames"))["id"]
    nested = [{"name": "mesen2.run", "arguments": {"frames": [{"n": [60], "unit": ["", "frames"]}]}}]
    tool = {"type": "function", "function": {"name": "mesen2.run", "parameters": {"type": "object"}}}
    assert normalise_row(dict(chat("x", args='{"frames": {"n": 60}}', tools=[tool]), possible_answer=nested))


@pytest.mark.parametrize(
    "answer,field,words",
    [
        ([], "possible_answer", "0 item(s) for the last turn's 1 call(s)"),
        ([{"name": "mesen2.load_rom", "arguments": {}}], "possible_answer[0].name", "'mesen2.load_rom'"),
        (
            [{"name": "mesen2.run", "arguments": {"frames": [30, 90]}}],
            "possible_answer[0].arguments.frames",
            "not among its acceptable values",
        ),
        (
            [{"name": "mesen2.run", "arguments": {"frames": []}}],
            "possible_answer[0].arguments.frames",
            "non-empty",
        ),
        (
            [{"name": "mesen2.run", "arguments": {"frames": [60], "speed": [2]}}],
            "possible_answer[0].arguments.speed",
            "leaves 'speed' out",
        ),
        (
            [{"name": "mesen2.run", "arguments": {}}],
            "possible_answer[0].arguments",
            "has no acceptable values",
        ),
        (
            [{"name": "mesen2.run", "arguments": {"frames": [True]}}],
            "possible_answer[0].arguments.frames",
            "not among",
        ),
    ],
)
def test_possible_answer_errors_name_the_field(tmp_path, answer, field, words):
    err = error_of(tmp_path, [chat("ok"), answered(answer)])
    assert err.line == 2 and err.field == field and words in err.problem, str(err)
    assert err.fix


def test_possible_answer_survives_dedupe_and_split(tmp_path):
    rows = [
        dict(
            chat(f"run {i}", args=json.dumps({"frames": i})),
            possible_answer=[{"name": "mesen2.run", "arguments": {"frames": [i]}}],
        )
        for i in range(20)
    ]
    src = write(tmp_path / "src.jsonl", rows + rows[:3])
    outputs = {k: str(tmp_path / "out" / f"{k}.jsonl") for k in ("train", "val", "test", "rejected")}
    outputs["stats"] = str(tmp_path / "out" / "stats.json")
    stats = prepare_data(
        [{"path": str(src)}], outputs, ratios={"train": 0.8, "val": 0.1, "test": 0.1}, seed=1
    )
    assert stats["duplicates_removed"] == 3
    written = [
        json.loads(line)
        for k in ("train", "val", "test")
        for line in Path(outputs[k]).read_text().splitlines()
    ]
    assert len(written) == 20
    for row in written:
        frames = json.loads(row["messages"][-1]["tool_calls"][0]["function"]["arguments"])["frames"]
        assert row["possible_answer"] == [{"name": "mesen2.run", "arguments": {"frames": [frames]}}]


# ------------------------------------------------------------------ eval-only sources


def stage_outputs(tmp_path):
    outputs = {k: str(tmp_path / "out" / f"{k}.jsonl") for k in ("train", "val", "test", "rejected")}
    outputs["stats"] = str(tmp_path / "out" / "stats.json")
    return outputs


def test_eval_only_rows_go_to_test_and_nowhere_else(tmp_path):
    train = write(
        tmp_path / "train.jsonl", [chat(f"run {i}", args=json.dumps({"frames": i})) for i in range(30)]
    )
    bench = write(
        tmp_path / "bench.jsonl", [chat(f"benchmark {i}", args=json.dumps({"frames": i})) for i in range(7)]
    )
    outputs = stage_outputs(tmp_path)
    stats = prepare_data(
        [{"path": str(train)}, {"path": str(bench), "split": "test"}],
        outputs,
        ratios={"train": 0.8, "val": 0.1, "test": 0.1},
        seed=1,
    )
    splits = {
        k: [json.loads(x) for x in Path(outputs[k]).read_text().splitlines()]
        for k in ("train", "val", "test")
    }
    bench_ids = {
        normalise_row(chat(f"benchmark {i}", args=json.dumps({"frames": i})))["id"] for i in range(7)
    }
    assert bench_ids <= {r["id"] for r in splits["test"]}
    assert not bench_ids & {r["id"] for k in ("train", "val") for r in splits[k]}
    assert stats["counts"] == {"train": 24, "val": 3, "test": 3 + 7} and stats["held_out"] == 7
    assert stats["sources"][str(bench)]["split"] == "test"
    assert [r["id"] for r in splits["test"]] == sorted(r["id"] for r in splits["test"])


def test_an_eval_only_row_that_could_be_trained_on_is_leakage(tmp_path):
    train = write(
        tmp_path / "train.jsonl", [chat(f"run {i}", args=json.dumps({"frames": i})) for i in range(30)]
    )
    bench = write(tmp_path / "bench.jsonl", [chat("benchmark"), chat("run 4", args='{"frames": 4}')])
    with pytest.raises(SnaketuneError) as info:  # the same row
        load_sources([{"path": str(bench), "split": "test"}, {"path": str(train)}])
    assert (info.value.path, info.value.line) == (str(train), 5) and f"{bench}:2" in info.value.problem
    write(bench, [chat("benchmark"), chat("run 4", args='{"frames": 44}')])
    with pytest.raises(SnaketuneError) as info:  # the same prompt, another answer
        load_sources([{"path": str(bench), "split": "test"}, {"path": str(train)}])
    assert (info.value.path, info.value.line) == (str(bench), 2)
    assert f"{train}:5" in info.value.problem and "held-out" in info.value.problem


# ------------------------------------------------------------------ skipped rows, the summary line


def test_skipped_rows_carry_their_fix_and_the_summary_line_counts_them(tmp_path, capsys):
    rows = [chat(f"run {i}", args=json.dumps({"frames": i})) for i in range(12)]
    src = write(
        tmp_path / "src.jsonl", rows[:6] + [chat("x", name="nope"), rows[0], '{"messages": 3}'] + rows[6:]
    )
    outputs = stage_outputs(tmp_path)
    stats = prepare_data(
        {str(src): "auto"}, outputs, ratios={"train": 0.8, "val": 0.1, "test": 0.1}, seed=1, on_invalid="skip"
    )
    rejected = [json.loads(x) for x in Path(outputs["rejected"]).read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejected] == [
        (7, "messages[1].tool_calls[0].function.name"),
        (9, "messages"),
    ]
    assert all(r["fix"] and r["problem"] and r["source"] == str(src) for r in rejected)
    line = f"kept 12, skipped 2, duplicates 1: see {outputs['rejected']}"
    assert stats["summary"] == line and line in capsys.readouterr().out.splitlines()


def test_skip_with_too_few_rows_left_still_writes_the_rejected_rows(tmp_path):
    src = write(
        tmp_path / "src.jsonl", [chat("a"), chat("b", name="nope"), chat("c", args="{oops"), chat("d")]
    )
    outputs, log = stage_outputs(tmp_path), tmp_path / "logs" / "rejected.jsonl"
    with pytest.raises(SnaketuneError) as info:
        prepare_data(
            {str(src): "auto"},
            outputs,
            ratios={"train": 0.8, "val": 0.1, "test": 0.1},
            seed=1,
            on_invalid="skip",
            rejected_log=str(log),
        )
    assert "only 2 distinct valid rows" in info.value.problem and str(log) in info.value.problem
    assert [json.loads(x)["line"] for x in log.read_text().splitlines()] == [2, 3]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_config_errors_of_the_data_stage_name_the_file_the_key_came_from(tmp_path):
    src = write(tmp_path / "src.jsonl", [chat(f"run {i}", args=json.dumps({"frames": i})) for i in range(30)])
    with pytest.raises(SnaketuneError) as info:
        prepare_data(
            {str(src): "auto"},
            stage_outputs(tmp_path),
            ratios={"train": 0.8, "val": 0.1, "test": 0.1},
            seed=1,
            specialists={"loader": ["mesen2.load_rom"]},
            config_files={"specialists": "my.yaml", "data.split": "config/config.yaml"},
        )
    assert str(info.value).startswith("my.yaml: specialists.loader.focus_tools: focus tool 'mesen2.load_rom'")
    with pytest.raises(SnaketuneError) as info:
        prepare_data(
            {str(src): "auto"},
            stage_outputs(tmp_path),
            ratios={"train": 1.0, "val": 0.0, "test": 0.0},
            seed=1,
            specialists={"runner": ["mesen2.run"]},
            config_files={"specialists": "my.yaml", "data.split": "split.yaml"},
        )
    assert str(info.value).startswith(
        "split.yaml: data.split: the split leaves specialist 'runner' with no test"
    )


def test_the_report_table_shows_the_summary(tmp_path):
    from snaketune.report_tables import split_stats_rows

    src = write(tmp_path / "src.jsonl", [chat(f"run {i}", args=json.dumps({"frames": i})) for i in range(10)]
                + [chat("run 1", args='{"frames": 1}'), chat("x", name="nope")])
    stats = prepare_data(
        {str(src): "auto"},
        stage_outputs(tmp_path),
        ratios={"train": 0.8, "val": 0.1, "test": 0.1},
        seed=1,
        on_invalid="skip",
    )
    rows = split_stats_rows(stats)
    assert rows[-3][:2] == ["all", "10"]
    assert rows[-2][:2] == ["skipped: rejected.jsonl", "1"] and rows[-1][:2] == ["duplicates", "1"]


# ------------------------------------------------------------------ end to end (real Snakemake)

from pipeline import make_workdir, planned_jobs, snakemake  # noqa: E402

SPLIT_TARGET = "results/data/split_stats.json"
DATA_RULES = {"prepare_data"}


def tiny_config(**data):
    config = {
        "data": {"demo": {"enabled": True, "rows": 150, "seed": 7},
                 "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 1}},
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
    rows = {s: [json.loads(line) for line in (a / f"results/data/{s}.jsonl").read_text().splitlines()]
            for s in ("train", "val", "test")}
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
        split = f"results/data/{name}.jsonl"
        assert (a / split).read_bytes() == (b / split).read_bytes()


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


def readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index(f"## {title}")
    return text[start : text.index("\n## ", start + 1)]


def dbg_rows(n: int = 40) -> list:
    """Rows for the README's debugger specialist: OpenAI chat with object arguments (a format users have)."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": f"{name} at an address",
                "parameters": {
                    "type": "object",
                    "properties": {"address": {"type": "integer"}},
                    "required": ["address"],
                },
            },
        }
        for name in ("dbg.read", "dbg.write")
    ]
    return [
        {
            "messages": [
                {"role": "user", "content": f"{('read', 'write')[i % 2]} at {i}"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {
                                "name": ("dbg.read", "dbg.write")[i % 2],
                                "arguments": {"address": i},
                            },
                        }
                    ],
                },
            ],
            "tools": tools,
        }
        for i in range(n)
    ]


@pytest.mark.e2e
def test_readme_bring_your_own_data_runs_as_written(tmp_path):
    """README "Bring your own data and model": its config file and command, on the default config/config.yaml,
    run the data stage and plan exactly the specialists the file names."""
    import re

    import yaml

    section = readme_section("Bring your own data and model")
    user_config = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1).strip()
    assert command.startswith(".venv/bin/snakemake ") and "--configfile my.yaml" in command
    args = command.split()[1:]
    for flag in ("--cores", "--resources"):  # the test helper sets these for this machine
        i = args.index(flag)
        del args[i : i + 2]
    default = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    work = make_workdir(tmp_path / "w", default)
    (work / "my.yaml").write_text(user_config)
    (work / "data").mkdir()
    write(work / "data" / "my_tools.jsonl", dbg_rows())

    proc = snakemake(work, SPLIT_TARGET, *args)  # targets first: --configfile takes several values
    assert "kept 40, skipped 0, duplicates 0: see results/data/rejected.jsonl" in proc.stdout + proc.stderr
    stats = json.loads((work / SPLIT_TARGET).read_text())
    assert stats["total"] == 40 and set(stats["per_tool"]["train"]) == {"dbg.read", "dbg.write"}
    jobs = planned_jobs(work, *args)
    assert jobs["train"] == 1 and jobs["evaluate_tuned"] == 1 and "prepare_data" not in jobs
    dry = snakemake(work, "-n", *args).stdout
    assert "results/adapters/debugger" in dry and "veran-tools" not in dry and "mesen-runner" not in dry
    # the default config stays as it was, and without the user's file the demo's specialists come back
    assert yaml.safe_load((work / "config" / "config.yaml").read_text()) == default
    assert planned_jobs(work)["train"] == 3


# ------------------------------------------------------------------ fuzzing: never a stray exception

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                      children, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "human", 3, None])
calls = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["mesen2.run", "mesen2.load_rom", "nope", ""]),
     "arguments": st.one_of(st.text(max_size=20), st.just('{"frames": 3}'), st.just('{"path": 1}'),
                            json_values)})})
messages = st.lists(st.fixed_dictionaries(
    {"role": roles},
    optional={"content": st.one_of(st.none(), st.text(max_size=20), json_values),
              "tool_calls": st.one_of(st.lists(calls, max_size=2), json_values)}), max_size=4)
near_rows = st.fixed_dictionaries(
    {"messages": messages},
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
