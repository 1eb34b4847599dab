"""Source formats: the same rows in chat (string or object arguments), ShareGPT (LLaMA-Factory), axolotl and
BFCL give the same canonical rows, ids and split files; every edge case of tests/formats/README.md gives its
row or its error at the source field path; unknown shapes name the formats accepted and the keys seen."""

import json
import os
from pathlib import Path

import pytest
import yaml

from snaketune.data import load_sources, normalise_row, prepare_data
from snaketune.errors import SnaketuneError
from snaketune.formats import check_options, read_rows

FIXTURES = Path(__file__).resolve().parent / "formats"
# The axolotl dataset block the fixture is written for, pasted under options (its path is the source's).
AXOLOTL_OPTIONS = {
    k: v
    for k, v in yaml.safe_load((FIXTURES / "axolotl.config.yaml").read_text())["datasets"][0].items()
    if k != "path"
}
FORMATS = {
    "sharegpt": ("sharegpt", {}),
    "axolotl": ("axolotl", AXOLOTL_OPTIONS),
    "openai_object": ("chat", {}),
}


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


CANONICAL = read_jsonl(FIXTURES / "canonical.jsonl")
IDS = ["65fd26eee1069458", "e4027491bd8263bf", "7e03a61b4e7b8f21", "5c2072ce38d8f8ce"]


def core(row: dict) -> dict:
    return {"messages": row["messages"], "tools": row["tools"]}


def test_canonical_rows_are_fixed_points_with_the_documented_ids():
    rows = [normalise_row(r, declared="chat") for r in CANONICAL]
    assert [core(r) for r in rows] == CANONICAL
    assert [r["id"] for r in rows] == IDS


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_gives_the_canonical_rows_and_ids(name):
    declared, options = FORMATS[name]
    rows = [
        normalise_row(raw, declared=declared, options=options)
        for raw in read_jsonl(FIXTURES / f"{name}.jsonl")
    ]
    assert [core(r) for r in rows] == CANONICAL
    assert [r["id"] for r in rows] == IDS


def test_auto_tells_chat_and_sharegpt_apart():
    assert [normalise_row(r)["id"] for r in read_jsonl(FIXTURES / "sharegpt.jsonl")] == IDS
    assert [normalise_row(r)["id"] for r in read_jsonl(FIXTURES / "openai_object.jsonl")] == IDS


def case_params():
    for name in sorted(FORMATS):
        for n, case in enumerate(read_jsonl(FIXTURES / "cases" / f"{name}.jsonl"), 1):
            yield pytest.param(name, case, id=f"{name}:{n}")


@pytest.mark.parametrize("name,case", list(case_params()))
def test_case(name, case):
    declared, options = FORMATS[name]
    options = case.get("config", options)
    if "error" in case:
        with pytest.raises(SnaketuneError) as info:
            normalise_row(case["row"], declared=declared, options=options, path="src.jsonl", line=7)
        err = info.value
        assert err.field == case["error"], str(err)
        assert str(err).startswith(f"src.jsonl:7: {case['error']}: ") and err.fix, str(err)
        return
    want = case["expect"]
    want = CANONICAL[want] if isinstance(want, int) else core(normalise_row(want, declared="chat"))
    assert core(normalise_row(case["row"], declared=declared, options=options)) == want


def test_case_corpus_size():
    assert sum(len(read_jsonl(p)) for p in (FIXTURES / "cases").glob("*.jsonl")) == 77


def test_object_and_string_arguments_are_one_row():
    row = read_jsonl(FIXTURES / "openai_object.jsonl")[0]
    as_string = json.loads(json.dumps(row))
    for message in as_string["messages"]:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"], indent=2)
    assert normalise_row(row) == normalise_row(as_string)
    assert (
        normalise_row(row)["messages"][-1]["tool_calls"][0]["function"]["arguments"]
        == CANONICAL[0]["messages"][-1]["tool_calls"][0]["function"]["arguments"]
    )


def test_unknown_shape_names_the_formats_and_the_keys_it_saw():
    with pytest.raises(SnaketuneError) as info:
        normalise_row({"prompt": "hi", "completion": "there"}, path="x.jsonl", line=3)
    text = str(info.value)
    assert text.startswith("x.jsonl:3: unknown row shape (keys: completion, prompt)")
    for name in ("chat", "sharegpt", "instruction", "axolotl", "bfcl"):
        assert name in text
    assert "data.sources[].format" in info.value.fix
    with pytest.raises(SnaketuneError, match="needs its possible_answer file"):
        normalise_row({"id": "simple_0", "question": [[]], "function": []})


def test_options_are_checked_by_name():
    check_options("axolotl", AXOLOTL_OPTIONS)
    info = json.loads((FIXTURES / "sharegpt.dataset_info.json").read_text())["snaketune_fixture"]
    check_options("sharegpt", {"formatting": info["formatting"], "columns": info["columns"]})
    for fmt, options, field, words in [
        ("axolotl", {"field_mesages": "x"}, "field_mesages", "did you mean 'field_messages'"),
        ("axolotl", {"roles_to_train": ["user", "assistant"]}, "roles_to_train", "assistant turns only"),
        ("axolotl", {"roles": {"bot": ["gpt"]}}, "roles.bot", "not one of"),
        (
            "axolotl",
            {"message_field_role": "from", "message_property_mappings": {"role": "speaker"}},
            "message_field_role",
            "conflicts",
        ),
        ("sharegpt", {"columns": {"images": "pics"}}, "columns.images", "unknown sharegpt column"),
        ("sharegpt", {"tags": {"role_tag": ""}}, "tags.role_tag", "non-empty string"),
        ("chat", {"field_messages": "x"}, "field_messages", "takes no options"),
    ]:
        with pytest.raises(SnaketuneError) as info:
            check_options(fmt, options)
        assert info.value.field == field and words in str(info.value), str(info.value)


# ------------------------------------------------------------------ the data stage: same bytes, any format


def run_stage(tmp_path: Path, name: str, text: str, declared: str, options: dict) -> dict:
    """prepare_data on one source named data.jsonl (rows carry their source path), in its own directory."""
    work = tmp_path / name
    work.mkdir()
    (work / "data.jsonl").write_text(text, encoding="utf-8")
    outputs = {k: str(work / "out" / f"{k}.jsonl") for k in ("train", "val", "test", "rejected")}
    outputs["stats"] = str(work / "out" / "stats.json")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        prepare_data(
            [{"path": "data.jsonl", "format": declared, "options": options}],
            outputs,
            ratios={"train": 0.5, "val": 0.25, "test": 0.25},
            seed=3,
        )
    finally:
        os.chdir(cwd)
    return {k: (work / "out" / f"{k}.jsonl").read_bytes() for k in ("train", "val", "test")}


def test_the_data_stage_writes_the_same_bytes_for_every_format(tmp_path):
    outputs = {}
    for name, (declared, options) in sorted(FORMATS.items()):
        outputs[name] = run_stage(tmp_path, name, (FIXTURES / f"{name}.jsonl").read_text(), declared, options)
    # and as a file holding one JSON array of rows (LLaMA-Factory's .json datasets), with a BOM
    rows = read_jsonl(FIXTURES / "sharegpt.jsonl")
    outputs["sharegpt-array"] = run_stage(
        tmp_path, "sharegpt-array", "\ufeff" + json.dumps(rows, indent=2), "auto", {}
    )
    outputs["canonical"] = run_stage(
        tmp_path, "canonical", (FIXTURES / "canonical.jsonl").read_text(), "auto", {}
    )
    first = outputs.pop("canonical")
    assert sorted(json.loads(line)["id"] for part in first.values() for line in part.splitlines()) == sorted(
        IDS
    )
    for name, got in outputs.items():
        assert got == first, name


def test_a_json_array_file_names_each_row_by_its_line(tmp_path):
    rows = read_jsonl(FIXTURES / "sharegpt.jsonl")
    rows[2]["conversations"][1]["from"] = "robot"
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows, indent=2))
    starts = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line == "  {"]
    assert [n for n, _ in read_rows(path)] == starts
    with pytest.raises(SnaketuneError) as info:
        load_sources([{"path": str(path), "format": "sharegpt"}])
    assert info.value.line == starts[2] and info.value.field == "conversations[1].from"
    path.write_text(json.dumps(rows[:2]))  # one line
    assert [n for n, _ in read_rows(path)] == [1, 1]


# ------------------------------------------------------------------ BFCL

QUESTION = {
    "id": "simple_python_7",
    "question": [[{"role": "user", "content": "Area of a 3 by 4 triangle?"}]],
    "function": [
        {
            "name": "triangle_area",
            "description": "Area of a triangle.",
            "parameters": {
                "type": "dict",
                "properties": {
                    "base": {"type": "float"},
                    "height": {"type": "float"},
                    "unit": {"type": "string", "description": "optional"},
                    "extra": {"type": "any"},
                    "dims": {"type": "tuple", "items": {"type": "integer"}},
                },
                "required": ["base", "height"],
            },
        }
    ],
}
ANSWER = {
    "id": "simple_python_7",
    "ground_truth": [{"triangle_area": {"base": [3.0, 3], "height": [4], "unit": ["", "units"]}}],
}


def bfcl_files(tmp_path, questions, answers):
    (tmp_path / "q.json").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tmp_path / "a.json").write_text("".join(json.dumps(a) + "\n" for a in answers))
    return {"path": str(tmp_path / "q.json"), "format": "bfcl", "answers": str(tmp_path / "a.json")}


def test_bfcl_rows_map_python_types_and_keep_their_answers(tmp_path):
    second = dict(QUESTION, id="simple_python_8")
    source = bfcl_files(tmp_path, [QUESTION, second], [ANSWER, dict(ANSWER, id="simple_python_8")])
    loaded = load_sources([source])
    row = loaded.rows[0]
    params = row["tools"][0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["base"] == {"type": "number"}
    assert params["properties"]["extra"] == {} and params["properties"]["dims"]["type"] == "array"
    assert json.loads(row["messages"][-1]["tool_calls"][0]["function"]["arguments"]) == {
        "base": 3.0,
        "height": 4,
        "unit": "units",
    }
    assert row["possible_answer"] == [
        {"name": "triangle_area", "arguments": ANSWER["ground_truth"][0]["triangle_area"]}
    ]
    assert row["bfcl"]["id"] == "simple_python_7" and row["bfcl"]["category"] == "simple_python"
    # same content, another BFCL id: one row (possible_answer and bfcl are not part of the id)
    assert len(loaded.rows) == 1 and loaded.duplicates == 1
    # counted over the rows kept
    assert dict(loaded.type_counts) == {
        "dict->object": 1,
        "float->number": 2,
        "any->untyped": 1,
        "tuple->array": 1,
    }


def test_bfcl_question_without_an_answer_is_its_line(tmp_path):
    source = bfcl_files(tmp_path, [QUESTION, dict(QUESTION, id="simple_python_9")], [ANSWER])
    with pytest.raises(SnaketuneError) as info:
        load_sources([source])
    assert info.value.line == 2 and info.value.field == "id" and "simple_python_9" in info.value.problem


def test_python_types_in_a_chat_row_say_how_to_map_them():
    row = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {
                        "type": "dict",
                        "properties": {"x": {"type": "float"}, "y": {"type": "tuple"}, "z": {"type": "any"}},
                    },
                },
            }
        ],
    }
    with pytest.raises(SnaketuneError) as info:
        normalise_row(row)
    assert info.value.field == "tools[0].function.parameters"
    assert info.value.fix.startswith(
        "write JSON Schema types: any -> (no type), dict -> object, float -> number, tuple -> array"
    )


def test_every_bfcl_python_case_converts(bfcl_wheel):
    """All 2,351 of BFCL's Python AST cases go through the data stage's checks but the two whose answers list
    no acceptable value for a parameter (refused with that reason)."""
    from snaketune.bfcl import PYTHON_AST_CATEGORIES, read_category
    from snaketune.data import convert_row

    total, refused, types = 0, [], {}
    for category in PYTHON_AST_CATEGORIES:
        pairs = read_category(bfcl_wheel, category)
        answers = {a["id"]: a for _, a in pairs}
        for line, (question, _) in enumerate(pairs, 1):
            total += 1
            try:
                _, notes = convert_row(
                    question, path=category, line=line, declared="bfcl", options={"answers": answers}
                )
            except SnaketuneError as err:
                refused.append((question["id"], err.field, err.problem))
                continue
            for key, n in notes["type_counts"].items():
                types[key] = types.get(key, 0) + n
    assert total == 2351
    assert [(i, "non-empty" in p) for i, _, p in refused] == [
        ("live_simple_106-63-0", True),
        ("live_simple_112-68-0", True),
    ]
    assert set(types) == {"dict->object", "float->number", "tuple->array", "any->untyped"}


def write_variants(path: Path, rows: list, n: int = 3) -> None:
    """``n`` copies of each row with the first user turn changed (``(take k)``): enough rows per stratum for
    every split."""
    out = []
    for k in range(n):
        for row in rows:
            row = json.loads(json.dumps(row))
            turns = row.get("messages") or row.get("conversations")
            turn = next(t for t in turns if t.get("role", t.get("from")) in ("user", "human"))
            key = "content" if "content" in turn else "value"
            turn[key] += f" (take {k})"
            out.append(json.dumps(row))
    path.write_text("".join(line + "\n" for line in out))


@pytest.mark.e2e
def test_the_pipeline_splits_axolotl_and_openai_rows_into_the_same_bytes(tmp_path):
    """Through Snakemake: a source's format and options reach the data stage (rule params), and the
    same rows in two formats give the same split files."""
    from pipeline import make_workdir, snakemake

    runs = {}
    for name, source in {
        "axolotl": {"path": "rows.jsonl", "format": "axolotl", "options": AXOLOTL_OPTIONS},
        "openai_object": {"path": "rows.jsonl"},
    }.items():
        work = make_workdir(tmp_path / name, {
            "data": {"demo": {"enabled": False}, "sources": [source],
                     "split": {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 3}},
            "specialists": {"all-tools": {}}, "export": {"enabled": False}})
        write_variants(work / "rows.jsonl", read_jsonl(FIXTURES / f"{name}.jsonl"))
        proc = snakemake(work, "results/data/split_stats.json")
        assert "kept 12, skipped 0, duplicates 0: see results/data/rejected.jsonl" in proc.stdout
        runs[name] = {k: (work / f"results/data/{k}.jsonl").read_bytes() for k in ("train", "val", "test")}
    assert runs["axolotl"] == runs["openai_object"]
    assert sum(len(part.splitlines()) for part in runs["axolotl"].values()) == 12
