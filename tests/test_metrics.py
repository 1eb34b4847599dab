"""Function-calling metrics on hand-computed cases: parsing, per-example verdicts, aggregates, targets."""

import copy
import json
from collections import Counter as _Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snaketune import bfcl
from snaketune.demo import generate_demo_rows
from snaketune.errors import SnaketuneError
from snaketune.metrics import (
    aggregate,
    gold_calls,
    parse_tool_calls,
    score_example,
    targets_report,
    text_exact_match,
    token_f1,
)

YAZE_TOOLS = [{"type": "function", "function": {"name": n, "description": "", "parameters": {}}}
              for n in ("yaze_debugger.read_memory", "yaze_debugger.write_memory", "yaze_debugger.assemble")]

READ = {"name": "yaze_debugger.read_memory", "arguments": {"address": "0x7E0010", "length": 4}}
LOAD = {"name": "mesen2.load_rom", "arguments": {"path": "roms/zelda3.sfc"}}
RUN = {"name": "mesen2.run", "arguments": {"frames": 60}}


def block(name, arguments: str) -> str:
    """One call as the chat template writes it (Qwen2.5): the arguments JSON inserted as-is."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def render(*calls) -> str:
    return "\n".join(block(c["name"], json.dumps(c["arguments"])) for c in calls)


def verdict(text, gold, tools=None):
    calls, valid = parse_tool_calls(text)
    return score_example(calls, valid, gold, tools)


def params(v):
    return v["param_tp"], v["param_fp"], v["param_fn"]


# ---------------------------------------------------------------- parsing

def test_parse_one_call():
    text = block("yaze_debugger.read_memory", '{"address": "0x7E0010", "length": 4}')
    assert parse_tool_calls(text) == ([READ], True)


def test_parse_several_blocks_with_text_around():
    text = "Sure.\n" + render(LOAD, RUN) + "\n<|im_end|>"
    assert parse_tool_calls(text) == ([LOAD, RUN], True)


def test_parse_arguments_given_as_json_string():
    text = '<tool_call>{"name": "mesen2.run", "arguments": "{\\"frames\\": 60}"}</tool_call>'
    assert parse_tool_calls(text) == ([RUN], True)


@pytest.mark.parametrize("body", [
    '{"name": "mesen2.run", "arguments": {"frames": }}',          # invalid JSON
    '{"name": "mesen2.run"}',                                      # no arguments
    '{"name": 7, "arguments": {}}',                                # name not a string
    '{"name": "mesen2.run", "arguments": [60]}',                   # arguments not an object
    '{"name": "mesen2.run", "arguments": "[60]"}',                 # string not holding an object
    '{"name": "mesen2.run", "arguments": "{frames: 60}"}',         # string not holding JSON
    '{"name": "mesen2.run", "arguments": {"frames": NaN}}',        # NaN is not JSON
    '{"name": "mesen2.run", "arguments": {"frames": 1e999}}',      # overflows to inf
    '["mesen2.run", {"frames": 60}]',                              # not an object
    '__import__("os").system("true")',                             # never evaluated
    "",
])
def test_malformed_block_is_invalid(body):
    assert parse_tool_calls(f"<tool_call>{body}</tool_call>") == ([], False)


def test_no_call_is_invalid():
    assert parse_tool_calls("I would read 4 bytes at 0x7E0010.") == ([], False)
    assert parse_tool_calls("") == ([], False)
    assert parse_tool_calls(None) == ([], False)


def test_unclosed_final_block_counts_as_attempted_and_invalid():
    text = render(LOAD) + '\n<tool_call>\n{"name": "mesen2.run", "arguments": {"fra'
    assert parse_tool_calls(text) == ([LOAD], False)


def test_one_bad_block_of_two_keeps_the_good_one():
    text = render(LOAD) + "\n<tool_call>\nnot json\n</tool_call>"
    assert parse_tool_calls(text) == ([LOAD], False)


def test_gold_calls_from_the_final_assistant_message():
    row = {"messages": [
        {"role": "user", "content": "Load roms/zelda3.sfc and run 60 frames."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "mesen2.load_rom",
                                              "arguments": '{"path": "roms/zelda3.sfc"}'}},
            {"type": "function", "function": {"name": "mesen2.run", "arguments": '{"frames": 60}'}},
        ]},
    ]}
    assert gold_calls(row) == [LOAD, RUN]
    assert gold_calls({"messages": [{"role": "user", "content": "hi"}]}) == []


# ---------------------------------------------------------------- per-example verdicts

def test_perfect_call():
    v = verdict(render(READ), [READ], YAZE_TOOLS)
    assert v["tool_correct"] and v["exact"] and v["json_valid"]
    assert not v["called_unknown_tool"]
    assert params(v) == (2, 0, 0)


def test_wrong_tool():
    pred = {"name": "yaze_debugger.write_memory", "arguments": {"address": "0x7E0010", "length": 4}}
    v = verdict(render(pred), [READ], YAZE_TOOLS)
    assert not v["tool_correct"] and not v["exact"] and v["json_valid"]
    assert params(v) == (0, 2, 2)  # triples carry the tool name, so nothing matches


def test_right_tool_wrong_argument():
    pred = {"name": READ["name"], "arguments": {"address": "0x7E0010", "length": 8}}
    v = verdict(render(pred), [READ])
    assert v["tool_correct"] and not v["exact"]
    assert params(v) == (1, 1, 1)


def test_right_tool_missing_argument():
    pred = {"name": READ["name"], "arguments": {"address": "0x7E0010"}}
    v = verdict(render(pred), [READ])
    assert v["tool_correct"] and not v["exact"]
    assert params(v) == (1, 0, 1)


def test_right_tool_extra_argument():
    pred = {"name": READ["name"], "arguments": {"address": "0x7E0010", "length": 4, "bank": "7E"}}
    v = verdict(render(pred), [READ])
    assert v["tool_correct"] and not v["exact"]
    assert params(v) == (2, 1, 0)


def test_numbers_compare_by_value_but_types_stay_apart():
    as_float = block(READ["name"], '{"address": "0x7E0010", "length": 4.0}')
    v = verdict(as_float, [READ])
    assert v["exact"] and params(v) == (2, 0, 0)

    as_string = block(READ["name"], '{"address": "0x7E0010", "length": "4"}')
    assert not verdict(as_string, [READ])["exact"]

    strict = {"name": "z3ed_cli.validate", "arguments": {"rom": "roms/zelda3.sfc", "strict": True}}
    as_one = block("z3ed_cli.validate", '{"rom": "roms/zelda3.sfc", "strict": 1}')
    v = verdict(as_one, [strict])
    assert not v["exact"] and params(v) == (1, 1, 1)

    one = {"name": "mesen2.run", "arguments": {"frames": 1}}
    assert not verdict(block("mesen2.run", '{"frames": true}'), [one])["exact"]


def test_strings_compare_exactly():
    lower = block(READ["name"], '{"address": "0x7e0010", "length": 4}')
    assert params(verdict(lower, [READ])) == (1, 1, 1)


def test_two_calls_in_swapped_order_match():
    v = verdict(render(RUN, LOAD), [LOAD, RUN])
    assert v["tool_correct"] and v["exact"]
    assert params(v) == (2, 0, 0)


def test_one_of_two_calls_missing():
    v = verdict(render(LOAD), [LOAD, RUN])
    assert not v["tool_correct"] and not v["exact"]
    assert params(v) == (1, 0, 1)


def test_same_call_twice_is_not_the_same_as_once():
    v = verdict(render(RUN, RUN), [RUN])
    assert v["tool_correct"] and not v["exact"]
    assert params(v) == (1, 1, 0)


def test_invalid_json():
    trailing_comma = '{"name": "yaze_debugger.read_memory", "arguments": {"length": 4,}}'
    v = verdict(f"<tool_call>\n{trailing_comma}\n</tool_call>", [READ])
    assert not v["json_valid"] and not v["tool_correct"] and not v["exact"]
    assert params(v) == (0, 0, 2)


def test_text_with_no_call():
    v = verdict("Reading 4 bytes at 0x7E0010 now.", [READ], YAZE_TOOLS)
    assert not v["json_valid"] and not v["tool_correct"] and not v["exact"]
    assert not v["called_unknown_tool"]
    assert params(v) == (0, 0, 2)


def test_call_to_a_tool_not_in_the_rows_tools():
    pred = {"name": "mesen2.read_memory", "arguments": {"address": "0x7E0010", "length": 4}}
    v = verdict(render(pred), [READ], YAZE_TOOLS)
    assert v["called_unknown_tool"] and v["unknown_tools"] == ["mesen2.read_memory"]
    assert not v["tool_correct"]
    assert not verdict(render(pred), [READ])["called_unknown_tool"]  # no tools given: not judged
    assert verdict(render(pred), [READ], ["mesen2.read_memory"])["called_unknown_tool"] is False


def test_unclosed_block_spoils_an_otherwise_exact_turn():
    text = render(READ) + '\n<tool_call>\n{"name": "yaze_debugger.read'
    v = verdict(text, [READ])
    assert v["tool_correct"] and not v["exact"] and not v["json_valid"]
    assert params(v) == (2, 0, 0)


def test_demo_gold_rendered_as_the_template_does_scores_perfectly():
    rows = generate_demo_rows(120, 5)
    examples = []
    for row in rows:
        text = "\n".join(block(tc["function"]["name"], tc["function"]["arguments"])
                         for tc in row["messages"][-1]["tool_calls"])
        examples.append(verdict(text, gold_calls(row), row["tools"]))
    metrics = aggregate(examples)
    for name in ("exact_match", "tool_accuracy", "param_precision", "param_recall", "param_f1",
                 "json_valid_rate"):
        assert metrics[name] == 1.0, name
    assert metrics["unknown_tool_rate"] == 0.0


# ---------------------------------------------------------------- aggregates

@pytest.fixture
def five_examples():
    bad_json = '<tool_call>{"name": "mesen2.run", "arguments": {"frames": 6O}}</tool_call>'
    wrong_len = {"name": READ["name"], "arguments": {"address": "0x7E0010", "length": 8}}
    return [
        verdict(render(READ), [READ]),               # e1 perfect              tp2
        verdict(render(wrong_len), [READ]),          # e2 wrong value          tp1 fp1 fn1
        verdict(render(RUN, LOAD), [LOAD, RUN]),     # e3 swapped, perfect     tp2
        verdict(render(LOAD), [LOAD, RUN]),          # e4 one call missing     tp1 fn1
        verdict(bad_json, [RUN]),                    # e5 invalid JSON         fn1
    ]


def test_aggregate_by_hand(five_examples):
    m = aggregate(five_examples)
    assert m["n"] == 5
    assert m["exact_match"] == pytest.approx(2 / 5)         # e1, e3
    assert m["tool_accuracy"] == pytest.approx(3 / 5)       # e1, e2, e3
    assert m["json_valid_rate"] == pytest.approx(4 / 5)
    assert (m["param_tp"], m["param_fp"], m["param_fn"]) == (6, 1, 3)
    assert m["param_precision"] == pytest.approx(6 / 7)
    assert m["param_recall"] == pytest.approx(6 / 9)
    assert m["param_f1"] == pytest.approx(0.75)  # 2 * 6/7 * 2/3 / (6/7 + 2/3)


def test_per_tool_breakdown_by_hand(five_examples):
    per_tool = aggregate(five_examples)["per_tool"]
    assert sorted(per_tool) == ["mesen2.load_rom", "mesen2.run", "yaze_debugger.read_memory"]

    read = per_tool["yaze_debugger.read_memory"]  # e1, e2: tp3 fp1 fn1
    assert read["n"] == 2 and read["exact_match"] == 0.5 and read["tool_accuracy"] == 1.0
    assert (read["param_precision"], read["param_recall"], read["param_f1"]) == (0.75, 0.75, 0.75)

    load = per_tool["mesen2.load_rom"]  # e3, e4: tp3 fp0 fn1
    assert load["n"] == 2 and load["exact_match"] == 0.5 and load["tool_accuracy"] == 0.5
    assert load["param_precision"] == 1.0 and load["param_recall"] == 0.75
    assert load["param_f1"] == pytest.approx(6 / 7)

    run = per_tool["mesen2.run"]  # e3, e4, e5: tp3 fp0 fn2
    assert run["n"] == 3 and run["exact_match"] == pytest.approx(1 / 3)
    assert run["json_valid_rate"] == pytest.approx(2 / 3)
    assert run["param_precision"] == 1.0 and run["param_recall"] == pytest.approx(0.6)
    assert run["param_f1"] == pytest.approx(0.75)
    assert "per_tool" not in run


def test_aggregate_is_json_ready(five_examples):
    assert json.loads(json.dumps(aggregate(five_examples))) == aggregate(five_examples)


def test_aggregate_of_nothing():
    m = aggregate([])
    assert m["n"] == 0 and m["exact_match"] is None and m["param_f1"] is None and m["per_tool"] == {}


def test_no_arguments_on_either_side_is_perfect():
    ping = {"name": "mesen2.screenshot", "arguments": {}}
    m = aggregate([verdict(render(ping), [ping])])
    assert (m["param_precision"], m["param_recall"], m["param_f1"]) == (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- targets

def test_targets_report(five_examples):
    m = aggregate(five_examples)
    report = targets_report(m, {"exact_match": 0.4, "tool_accuracy": 0.95, "param_f1": 0.75})
    assert report == {
        "exact_match": {"value": pytest.approx(0.4), "target": 0.4, "passed": True},
        "tool_accuracy": {"value": pytest.approx(0.6), "target": 0.95, "passed": False},
        "param_f1": {"value": pytest.approx(0.75), "target": 0.75, "passed": True},
    }
    assert targets_report(aggregate([]), {"exact_match": 0.9})["exact_match"]["passed"] is False


def test_unknown_target_is_a_user_error(five_examples):
    with pytest.raises(SnaketuneError, match=r"eval\.targets\.accuracy.*exact_match"):
        targets_report(aggregate(five_examples), {"accuracy": 0.9})


# ---------------------------------------------------------------- instruction / response data

def test_token_f1_by_hand():
    assert token_f1("the cat sat", "the cat sat down") == pytest.approx(6 / 7)  # P 1, R 3/4
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)
    assert token_f1("LDA #$01", "lda #$01") == pytest.approx(0.5)  # case counts in code
    assert token_f1("x", "y") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0 and token_f1("x", " ") == 0.0


def test_text_exact_match_normalises_whitespace_only():
    assert text_exact_match("  LDA #$01\n\tRTS ", "LDA #$01 RTS")
    assert not text_exact_match("LDA #$01", "lda #$01")


# ---------------------------------------------------------------- robustness

FRAGMENTS = ["<tool_call>", "</tool_call>", "{", "}", "[", "]", ":", ",", '"name"', '"arguments"',
             '"mesen2.run"', '"{}"', '"{\\"a\\": 1}"', "1", "3.0", "true", "null", "NaN", "1e999",
             "\n", " ", '"', "\\", "<tool_call", "x"]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)))
def test_parse_never_raises(text):
    calls, valid = parse_tool_calls(text)
    assert isinstance(valid, bool)
    assert all(isinstance(c["name"], str) and isinstance(c["arguments"], dict) for c in calls)
    assert not valid or calls
    json.dumps(calls, allow_nan=False)  # parsed calls can be written to the generations file
    v = score_example(calls, valid, [RUN], YAZE_TOOLS)
    json.dumps(v)


def test_deep_nesting_does_not_raise():
    text = "<tool_call>" + "[" * 100000 + "</tool_call>"
    assert parse_tool_calls(text) == ([], False)
    deep = '{"name": "a", "arguments": "' + "[" * 100000 + '"}'
    assert parse_tool_calls(f"<tool_call>{deep}</tool_call>") == ([], False)


# ---------------------------------------------------------------- bfcl scoring: agreement with BFCL's checker

CORPUS = [json.loads(line) for line in
          (Path(__file__).parent / "bfcl" / "agreement_corpus.jsonl").read_text().splitlines()]
PYTHON_CASES = [c for c in CORPUS if c["language"] == "python"]


@pytest.fixture(scope="module")
def reference(bfcl_wheel):
    from bfcl_reference import load_reference

    return load_reference(bfcl_wheel)


def corpus_row(case) -> dict:
    """The case as the project sees it: a canonical row from convert_case (raw docs kept under "bfcl")."""
    question = {"id": case["id"], "question": [[{"role": "user", "content": "-"}]],
                "function": case["function"]}
    row, _ = bfcl.convert_case(question, {"id": case["id"], "ground_truth": case["ground_truth"]},
                               case["category"])
    return row


def model_text(output) -> str:
    """A decoded BFCL output as the model would write it: one <tool_call> block per call."""
    return "\n".join(block(name, json.dumps(args)) for call in output for name, args in call.items())


def project_verdict(row, text) -> dict:
    calls, valid = parse_tool_calls(text)
    gold = gold_calls(row)
    return score_example(calls, valid, gold, row["tools"], bfcl.case_from_row(row, gold))


def test_corpus_covers_the_cases_that_matter():
    wanted = ["perfect", "second acceptable value", "optional omitted", "optional supplied", "int for float",
              "float for int", "wrong value", "wrong function", "case +", "punctuation",
              "extra argument", "missing required argument"]
    for category in ("simple_python", "multiple", "parallel", "parallel_multiple"):
        mine = [c["case"] for c in PYTHON_CASES if c["category"] == category]
        for want in wanted + (["reordered calls"] if "parallel" in category else []):
            assert any(want in k for k in mine), (category, want)
    assert _Counter(c["valid"] for c in PYTHON_CASES) == {True: 44, False: 55}


@pytest.mark.parametrize("case", PYTHON_CASES, ids=lambda c: f"{c['n']}-{c['category']}-{c['case'][:40]}")
def test_bfcl_verdict_agrees_with_bfcl_checker(case, reference):
    """Same verdict as BFCL's ast_checker (run now, from the wheel) and as recorded, on every corpus case:
    through the project's whole path (converted row, model text, parser, score_example) and, with the
    error type too, at the checker level (also for a model that writes dots as underscores)."""
    theirs = reference.check(case["category"], case["function"], case["ground_truth"], case["model_output"],
                             case["model_name"])
    assert theirs["valid"] == case["valid"]
    underscore_to_dot = reference.model_flags.get(case["model_name"].replace("_", "/"), False)
    mine = bfcl.check(case["function"], case["model_output"], case["ground_truth"], case["category"],
                      underscore_to_dot)
    assert mine == {"valid": theirs["valid"], "error_type": None if theirs["valid"] else theirs["error_type"]}
    if not underscore_to_dot:
        verdict = project_verdict(corpus_row(case), model_text(case["model_output"]))
        assert verdict["ast_valid"] == theirs["valid"]
        assert verdict["ast_error"] == mine["error_type"]
        assert verdict["category"] == case["category"]
        if verdict["ast_valid"]:  # a BFCL-valid output has nothing wrong in its arguments
            assert verdict["param_fp"] == verdict["param_fn"] == 0


def test_rows_with_only_json_schema_tools_agree():
    """A row that lost BFCL's raw docs (the data stage keeps only the converted tools) gets the same
    verdicts. (An `any` parameter, a string to BFCL, is untyped there: an int is refused by its value.)"""
    differ = []
    for case in PYTHON_CASES:
        if case["model_name"] != "snaketune":
            continue
        row = corpus_row(case)
        del row["bfcl"]
        gold = gold_calls(row)
        bare = bfcl.case_from_row(row, gold)
        bare["category"] = case["category"]
        calls, valid = parse_tool_calls(model_text(case["model_output"]))
        if bfcl.check_case(bare, calls, valid)["valid"] != case["valid"]:
            differ.append(case["id"])
    assert differ == []


def mutations(output):
    """Small edits of a decoded output, one at a time (the prototype's fuzz, cut down)."""
    yield output
    yield output[::-1]
    yield output[:-1]
    yield output + [copy.deepcopy(output[0])]
    for ci, call in enumerate(output):
        (name, args), = call.items()

        def edit(new_args, new_name=name, ci=ci):
            out = copy.deepcopy(output)
            out[ci] = {new_name: new_args}
            return out

        yield edit(args, name.replace(".", "_"))
        yield edit({**args, "zz_extra": 1})
        for p, v in args.items():
            yield edit({k: x for k, x in args.items() if k != p})
            if type(v) is int:
                yield from (edit({**args, p: w}) for w in (float(v), v + 1, str(v), bool(v)))
            elif type(v) is float:
                others = ((int(v),) if v.is_integer() else ()) + (v * 2 + 1,)
                yield from (edit({**args, p: w}) for w in others)
            elif type(v) is str:
                yield from (edit({**args, p: w}) for w in (v.upper(), f" {v}  ", v + "-.", v + "!", "", None))
            elif type(v) is list:
                others = (v[::-1], [], [float(x) for x in v if type(x) is int])
                yield from (edit({**args, p: w}) for w in others)
            elif type(v) is dict and v:
                yield edit({**args, p: {k: x for k, x in v.items() if k != next(iter(v))}})
                yield edit({**args, p: {**v, "zz": 1}})
            elif type(v) is bool:
                yield from (edit({**args, p: w}) for w in (not v, int(v)))


def test_bfcl_verdict_agrees_on_mutated_real_rows(bfcl_wheel, reference):
    """The first 15 rows of each category, each answer's own first acceptable values and ~30 edits of them:
    the project's whole path agrees with BFCL's checker on every one."""
    seen = _Counter()
    for category in ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple",
                     "live_multiple"):
        for question, answer in bfcl.read_category(bfcl_wheel, category)[:15]:
            row, _ = bfcl.convert_case(question, answer, category)
            gold = gold_calls(row)
            first = [{c["name"]: c["arguments"]} for c in gold]
            for output in mutations(first):
                theirs = reference.check(category, question["function"], answer["ground_truth"], output)
                verdict = project_verdict(row, model_text(output))
                assert verdict["ast_valid"] == theirs["valid"], (question["id"], output, theirs)
                seen[theirs["valid"]] += 1
    assert seen[True] > 100 and seen[False] > 500


def test_bfcl_scoring_keeps_strict_metrics_and_counts_acceptable_sets():
    row = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                         "unit": {"type": "string"}}, "required": ["city"]}}}],
           "messages": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": None, "tool_calls": [
               {"type": "function",
                "function": {"name": "f", "arguments": '{"city": "New York", "days": 3}'}}]}],
           "possible_answer": [{"name": "f", "arguments": {"city": ["New York", "NYC"], "days": [3],
                                                           "unit": ["", "celsius"]}}]}
    gold = gold_calls(row)
    case = bfcl.case_from_row(row, gold)
    assert case["category"] == "simple" and case["answers"] == "possible_answer"
    text = block("f", '{"city": "nyc", "days": 3, "unit": "Celsius"}')
    strict = verdict(text, gold, row["tools"])
    calls, valid = parse_tool_calls(text)
    both = score_example(calls, valid, gold, row["tools"], case)
    assert not strict["exact"] and params(strict) == (1, 2, 1)
    assert both["exact"] is False and both["tool_correct"] is True  # the strict verdicts stay
    assert both["ast_valid"] is True and both["ast_error"] is None
    assert params(both) == (3, 0, 0)
    # float for an integer: BFCL refuses it, and the argument is an FP and its answer an FN
    calls, valid = parse_tool_calls(block("f", '{"city": "NYC", "days": 3.0}'))
    bad = score_example(calls, valid, gold, row["tools"], case)
    assert bad["ast_valid"] is False and bad["ast_error"] == "type_error:simple" and params(bad) == (1, 1, 1)
    agg = aggregate([both, bad])
    assert agg["ast_accuracy"] == 0.5 and agg["exact_match"] == 0.0
    assert agg["per_category"]["simple"]["ast_accuracy"] == 0.5 and agg["per_category"]["simple"]["n"] == 2
    assert agg["per_tool"]["f"]["ast_accuracy"] == 0.5
    assert agg["answers"] == {"possible_answer": 2}
    assert (agg["param_tp"], agg["param_fp"], agg["param_fn"]) == (4, 1, 1)
    assert targets_report(agg, {"ast_accuracy": 0.4})["ast_accuracy"]["passed"] is True
    assert "ast_accuracy" not in aggregate([strict]) and "per_category" not in aggregate([strict])


def test_rows_without_possible_answer_use_their_gold_as_the_only_answer():
    row = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "number"}, "opts": {"type": "object"},
                                         "tag": {"type": "string"}}}}},
                     {"type": "function", "function": {"name": "g", "parameters": {}}}],
           "messages": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": None, "tool_calls": [
               {"type": "function", "function": {
                   "name": "f", "arguments": '{"x": 2, "opts": {"a": "Hi"}, "tag": "Big Cat"}'}},
               {"type": "function", "function": {"name": "g", "arguments": "{}"}}]}]}
    gold = gold_calls(row)
    case = bfcl.case_from_row(row, gold)
    assert case["answers"] == "gold" and case["category"] == "parallel_multiple"
    assert case["ground_truth"][0] == {"f": {"x": [2], "opts": [{"a": ["Hi"]}], "tag": ["Big Cat"]}}

    def ok(text):
        return score_example(*parse_tool_calls(text), gold, row["tools"], case)["ast_valid"]

    g = block("g", "{}")
    assert ok(block("f", '{"x": 2.0, "opts": {"a": "hi"}, "tag": "big-cat"}') + g)  # any order below too
    assert ok(g + block("f", '{"x": 2, "opts": {"a": "Hi"}, "tag": "BigCat"}'))
    assert not ok(block("f", '{"x": 2, "opts": {"a": "Hi"}}') + g)  # a gold argument is not optional
    assert not ok(block("f", '{"x": 2, "opts": {"a": "Hi"}, "tag": "Big Cat", "y": 1}') + g)
    assert not ok(block("f", '{"x": 2, "opts": {"a": "Hi"}, "tag": "Big Cat"}'))  # one call missing
    # a malformed block makes the turn undecodable, whatever else parsed
    right = block("f", '{"x": 2, "opts": {"a": "Hi"}, "tag": "Big Cat"}') + g
    assert ok(right) and not ok(right + "<tool_call>{</tool_call>")
