"""Eval stage: batched generation equals one-at-a-time, the eval JSON is valid and can be rechecked
from the generations file, the summary matches the per-specialist JSONs."""

import json

import pytest

from snaketune.data import normalise_row
from snaketune.demo import generate_demo_rows
from snaketune.errors import SnaketuneError
from snaketune.evaluation import (
    build_prompts,
    check_scoring_targets,
    evaluate,
    rescore_generations,
    unscored_record,
    validate_result,
)
from snaketune.files import write_jsonl
from snaketune.generation import generate, generate_one_at_a_time
from snaketune.summary import summarise

SETTINGS = {"name": "runner", "system_prompt": "Drive the emulator.", "focus_tools": [],
            "train": {"tools_rendered": "all"}}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from snaketune.modeling import build_tiny_base, load_base

    tmp = tmp_path_factory.mktemp("tiny")
    rows = [normalise_row(r) for r in generate_demo_rows(60, seed=3)]
    write_jsonl(tmp / "train.jsonl", rows)
    build_tiny_base(tmp / "train.jsonl", tmp / "base",
                    {"architecture": "qwen2", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                     "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "max_position_embeddings": 1024,
                     "seed": 1}, config_path="config/config.yaml")
    model, tokenizer = load_base({"name_or_path": str(tmp / "base")})
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer, rows


def test_batched_generation_equals_one_at_a_time(tiny_model):
    model, tokenizer, rows = tiny_model
    prompts = build_prompts(tokenizer, rows[:7], SETTINGS)
    ids = [p["ids"] for p in prompts]
    assert len({len(i) for i in ids}) > 1  # the batch really needs padding
    batched, n_batched = generate(model, tokenizer, ids, batch_size=4, max_new_tokens=12, progress=False)
    single = [generate(model, tokenizer, [i], batch_size=1, max_new_tokens=12,
                       progress=False)[0][0] for i in ids]
    assert batched == single
    assert n_batched == sum(min(len(s) + 1, 12) for s in single)


def test_prompt_is_the_chat_without_its_answer(tiny_model):
    _, tokenizer, rows = tiny_model
    prompt = build_prompts(tokenizer, rows[:1], SETTINGS)[0]
    text = tokenizer.decode(prompt["ids"])
    assert text.startswith("<|im_start|>system\nDrive the emulator.")
    assert text.endswith("<|im_start|>assistant\n")
    assert "<tool_call>\n{" not in text.split("</tools>")[1]


def gen_record(rid, text, gold, tools=("a", "b")):
    return {"id": rid, "kind": "tool", "text": text, "gold_calls": gold, "tool_names": list(tools)}


def test_rescore_from_generations_file(tmp_path):
    gold = [{"name": "a", "arguments": {"x": 1}}]
    records = [
        gen_record("1", '<tool_call>\n{"name": "a", "arguments": {"x": 1.0}}\n</tool_call>', gold),
        gen_record("2", '<tool_call>\n{"name": "a", "arguments": {"x": 2}}\n</tool_call>', gold),
        gen_record("3", '<tool_call>\n{"name": "b", "arguments": {"x": 1}}\n</tool_call>', gold),
        gen_record("4", "no call at all", gold),
    ]
    write_jsonl(tmp_path / "g.jsonl", records)
    scores = rescore_generations(tmp_path / "g.jsonl",
                                 {"exact_match": 0.9, "tool_accuracy": 0.5, "param_f1": 0.5})
    m = scores["tool"]
    assert m["exact_match"] == 0.25 and m["tool_accuracy"] == 0.5 and m["json_valid_rate"] == 0.75
    # triples: tp 1 (rec 1); fp 2 (rec 2, 3); fn 3 (rec 2, 3, 4)
    assert (m["param_tp"], m["param_fp"], m["param_fn"]) == (1, 2, 3)
    assert m["param_f1"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    assert scores["targets"]["tool_accuracy"] == {"value": 0.5, "target": 0.5, "passed": True}
    assert scores["targets"]["exact_match"]["passed"] is False


def result(name, model, tool_acc, exact):
    metrics = {"exact_match": exact, "tool_accuracy": tool_acc, "param_precision": exact,
               "param_recall": exact, "param_f1": exact, "json_valid_rate": 1.0, "unknown_tool_rate": 0.0,
               "n": 10, "per_tool": {}}
    targets = {"tool_accuracy": {"value": tool_acc, "target": 0.9, "passed": tool_acc >= 0.9}}
    out = {"specialist": name, "model": model, "scoring": "strict", "n_examples": 10, "metrics": metrics,
           "text_metrics": None,
           "test_loss": 1.0, "perplexity": 2.718, "targets": targets,
           "targets_met": all(t["passed"] for t in targets.values()),
           "generation": {"batch_size": 8, "max_new_tokens": 32, "decoding": "greedy",
                          "stop_tokens": ["<|im_end|>"], "generated_tokens": 100},
           "hashes": {"base_model": "x@y", "adapter": None if model == "base" else "sha256:" + "0" * 64,
                      "test_file": "sha256:" + "1" * 64}}
    validate_result(out)
    return out


def test_summary_rows_match_the_jsons(tmp_path):
    paths = {"base": {}, "tuned": {}}
    for name, (b, t) in {"alpha": (0.1, 0.95), "beta": (0.0, 0.5)}.items():
        for kind, acc in (("base", b), ("tuned", t)):
            p = tmp_path / f"{kind}-{name}.json"
            p.write_text(json.dumps(result(name, kind, acc, acc / 2)))
            paths[kind][name] = p
    summary = summarise(paths["base"], paths["tuned"], tmp_path / "s.json", tmp_path / "s.md")
    alpha, beta = summary["specialists"]
    assert alpha["metrics"]["tool_accuracy"] == {"base": 0.1, "tuned": 0.95, "delta": pytest.approx(0.85)}
    assert alpha["targets_met"] is True and beta["targets_met"] is False
    md = (tmp_path / "s.md").read_text()
    assert "| alpha | 10 |" in md and "0.100 → 0.950 (+0.850)" in md


def test_schema_refuses_a_broken_result():
    bad = result("alpha", "tuned", 0.5, 0.5)
    bad["metrics"]["tool_accuracy"] = 1.5
    with pytest.raises(RuntimeError, match="tool_accuracy"):
        validate_result(bad)


# ---------------------------------------------------------------- the shared-prefix decoder

@pytest.fixture
def spied_generate(monkeypatch):
    """``generate`` with its decoders recorded and ``model.generate`` batches counted (the fallback)."""
    from snaketune import generation

    seen = {"decoders": [], "fallback_batches": 0}
    for_model, generate_hf = generation.SharedPrefixDecoder.for_model, generation.generate_left_padded

    def record(*args, **kwargs):
        decoder = for_model(*args, **kwargs)
        seen["decoders"].append(decoder)
        return decoder

    def count(*args, **kwargs):
        seen["fallback_batches"] += 1
        return generate_hf(*args, **kwargs)

    monkeypatch.setattr(generation.SharedPrefixDecoder, "for_model", record)
    monkeypatch.setattr(generation, "generate_left_padded", count)
    return seen


def stops_ending_rows_early(model, tokenizer, ids, monkeypatch):
    """The template's stop ids plus two tokens the tiny model emits, so that rows end at different steps
    (finished rows leave the batch and waiting prompts join it mid-way)."""
    from snaketune import generation
    from snaketune.chat_template import stop_token_ids

    stops = stop_token_ids(tokenizer)
    free_running, _ = generate_one_at_a_time(model, tokenizer, ids, 24)
    stops = stops + sorted({free_running[0][4], free_running[-1][10]} - set(stops))
    monkeypatch.setattr(generation, "stop_token_ids", lambda tok: list(stops))
    return stops


def test_shared_prefix_decoder_equals_plain_generate(tiny_model, spied_generate, monkeypatch):
    """Shared prefix + own greedy loop + prompt-lookup drafts + rows joining mid-way give exactly the
    token ids of ``model.generate`` one prompt at a time (fp32 on CPU; this seeded tiny model has no argmax
    near-ties on these prompts), twice the same."""
    import os

    model, tokenizer, rows = tiny_model
    ids = [p["ids"] for p in build_prompts(tokenizer, rows[:9], SETTINGS)]
    # a shared prefix, then differ
    assert len({len(i) for i in ids}) > 1 and len(os.path.commonprefix(ids)) > 50
    stops_ending_rows_early(model, tokenizer, ids, monkeypatch)
    reference, n_reference = generate_one_at_a_time(model, tokenizer, ids, 24)
    assert len({len(r) for r in reference}) > 2  # rows end at different steps
    outputs, n = generate(model, tokenizer, ids, batch_size=4, max_new_tokens=24, progress=False)
    assert outputs == reference and n == n_reference
    assert spied_generate["fallback_batches"] == 0
    stats = spied_generate["decoders"][-1].stats
    assert stats["accepted"] > 0  # multi-token verification really ran (the tiny model's outputs repeat)
    assert stats["forward_passes"] < n  # fewer passes than tokens
    assert generate(model, tokenizer, ids, batch_size=4, max_new_tokens=24, progress=False) == (outputs, n)


def test_shared_prefix_decoder_on_a_peft_model(tiny_model, spied_generate):
    """A PEFT-wrapped model (LoRA on every linear layer, non-zero, plus modules_to_save), not merged."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tokenizer, rows = tiny_model
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["lm_head"],
                      init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), lora).eval()
    ids = [p["ids"] for p in build_prompts(tokenizer, rows[:6], SETTINGS)]

    reference = generate_one_at_a_time(peft_model, tokenizer, ids, 16)
    assert generate(peft_model, tokenizer, ids, batch_size=4, max_new_tokens=16, progress=False) == reference
    assert spied_generate["fallback_batches"] == 0
    assert peft_model.config._attn_implementation == "sdpa"  # switched back after decoding


def test_shared_prefix_decoder_on_llama(tiny_model, spied_generate):
    """Another architecture: a random-init tiny Llama (seed 0: no argmax near-ties on these prompts)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer, rows = tiny_model
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=2048)).eval()
    ids = [p["ids"] for p in build_prompts(tokenizer, rows[:5], SETTINGS)]

    reference = generate_one_at_a_time(llama, tokenizer, ids, 16)
    assert generate(llama, tokenizer, ids, batch_size=2, max_new_tokens=16, progress=False) == reference
    assert spied_generate["fallback_batches"] == 0


def test_generate_falls_back_to_model_generate(tiny_model, spied_generate):
    """A generation config that changes greedy choices (here a repetition penalty) goes through
    ``model.generate``, whose outputs it then gives."""
    import copy


    model, tokenizer, rows = tiny_model
    penalised = copy.deepcopy(model)
    penalised.generation_config.repetition_penalty = 1.3
    ids = [p["ids"] for p in build_prompts(tokenizer, rows[:5], SETTINGS)]
    reference = generate_one_at_a_time(penalised, tokenizer, ids, 12)
    assert generate(penalised, tokenizer, ids, batch_size=2, max_new_tokens=12, progress=False) == reference
    assert spied_generate["decoders"] == [None] and spied_generate["fallback_batches"] == 3


# ---------------------------------------------------------------- scoring: strict | bfcl

WEATHER = {"type": "function", "function": {"name": "weather", "description": "", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                     "unit": {"type": "string"}}, "required": ["city"]}}}


def weather_row(rid, possible=True):
    row = {"id": rid, "kind": "tool", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in NYC for 3 days?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function",
             "function": {"name": "weather", "arguments": '{"city": "New York", "days": 3}'}}]}]}
    if possible:
        row["possible_answer"] = [{"name": "weather", "arguments": {
            "city": ["New York", "NYC"], "days": [3], "unit": ["", "celsius"]}}]
    return row


def call(args: str) -> str:
    return f'<tool_call>\n{{"name": "weather", "arguments": {args}}}\n</tool_call>'


def test_rescore_in_both_scorings(tmp_path):
    texts = [call('{"city": "New York", "days": 3}'),           # the gold: right either way
             call('{"city": "nyc", "days": 3, "unit": "Celsius"}'),  # acceptable, not the gold
             call('{"city": "NYC", "days": 3.0}'),             # float for an integer
             "no call at all"]
    records = [unscored_record(weather_row(str(i)), text, ["weather"]) for i, text in enumerate(texts)]
    records.append(unscored_record(weather_row("nopa", possible=False),
                                   call('{"city": "new-york", "days": 3}'), ["weather"]))
    write_jsonl(tmp_path / "g.jsonl", records)
    strict = rescore_generations(tmp_path / "g.jsonl", {"exact_match": 0.5})
    bfcl = rescore_generations(tmp_path / "g.jsonl", {"exact_match": 0.5, "ast_accuracy": 0.5},
                               scoring="bfcl")
    s, b = strict["tool"], bfcl["tool"]
    assert "ast_accuracy" not in s and s["exact_match"] == pytest.approx(1 / 5)  # only the gold itself
    assert b["exact_match"] == s["exact_match"] and b["tool_accuracy"] == s["tool_accuracy"] == 0.8
    # BFCL: the gold, the acceptable alternative, and the gold-only row with case/punctuation folded
    assert b["ast_accuracy"] == pytest.approx(3 / 5)
    assert b["answers"] == {"possible_answer": 4, "gold": 1}
    assert b["per_category"]["simple"]["n"] == 5
    # acceptable-set counts: rows 0, 1 (unit is a TP), 4 perfect; row 2: days FP + FN; row 3: city, days FN
    assert (b["param_tp"], b["param_fp"], b["param_fn"]) == (2 + 3 + 1 + 0 + 2, 1, 1 + 2)
    # strict triples against the gold: rows 1, 2, 4 miss on city; row 1's unit is an FP
    assert (s["param_tp"], s["param_fp"], s["param_fn"]) == (2 + 1 + 1 + 0 + 1, 2 + 1 + 1, 1 + 1 + 2 + 1)
    assert bfcl["targets"]["ast_accuracy"] == {"value": pytest.approx(0.6), "target": 0.5, "passed": True}
    assert "ast_accuracy" not in strict["targets"]
    # a file from before bfcl scoring (no bfcl_case) rescores strict, and says why it cannot do bfcl
    old = [{k: v for k, v in r.items() if k != "bfcl_case"} for r in records]
    write_jsonl(tmp_path / "old.jsonl", old)
    assert rescore_generations(tmp_path / "old.jsonl", {})["tool"] == {**s}
    with pytest.raises(SnaketuneError, match="predates bfcl scoring"):
        rescore_generations(tmp_path / "old.jsonl", {}, scoring="bfcl")


def test_ast_accuracy_target_needs_bfcl_scoring():
    assert check_scoring_targets({"targets": {"ast_accuracy": 0.5}, "scoring": "bfcl"}) == "bfcl"
    assert check_scoring_targets({"targets": {}}) == "strict"
    with pytest.raises(SnaketuneError, match="only by bfcl scoring") as err:
        check_scoring_targets({"targets": {"ast_accuracy": 0.5}, "scoring": "strict"})
    assert err.value.field == "eval.targets.ast_accuracy"


@pytest.fixture(scope="module")
def tiny_base_cfg(tmp_path_factory):
    from pipeline import small_base

    return small_base(tmp_path_factory.mktemp("tinybase"))


@pytest.mark.parametrize("scoring", ["strict", "bfcl"])
def test_evaluate_writes_a_valid_result_in_either_scoring(tmp_path, tiny_base_cfg, scoring):
    rows = [weather_row("a"), weather_row("b", possible=False)]
    write_jsonl(tmp_path / "test.jsonl", rows)
    targets = {"tool_accuracy": 0.5, **({"ast_accuracy": 0.5} if scoring == "bfcl" else {})}
    out = {name: tmp_path / f"{name}.json" for name in ("result", "timing")}
    result = evaluate(base_cfg=tiny_base_cfg, test_path=tmp_path / "test.jsonl", settings=SETTINGS,
                      eval_cfg={"batch_size": 2, "max_new_tokens": 6, "targets": targets, "scoring": scoring},
                      out_json=out["result"], out_generations=tmp_path / "g.jsonl", out_timing=out["timing"],
                      threads=1, progress=False, config_path="config/config.yaml")
    assert result["scoring"] == scoring and result["n_examples"] == 2
    assert ("ast_accuracy" in result["metrics"]) == (scoring == "bfcl")
    assert set(result["targets"]) == set(targets)
    again = rescore_generations(tmp_path / "g.jsonl", targets, scoring=scoring)
    assert again["tool"] == result["metrics"] and again["targets"] == result["targets"]
    if scoring == "bfcl":
        assert result["metrics"]["answers"] == {"gold": 1, "possible_answer": 1}
        broken = json.loads(json.dumps(result))
        del broken["metrics"]["ast_accuracy"]
        with pytest.raises(RuntimeError, match="ast_accuracy"):
            validate_result(broken)


def test_summary_adds_ast_accuracy_and_the_bfcl_table(tmp_path):
    paths = {"base": {}, "tuned": {}}
    for kind, acc in (("base", 0.25), ("tuned", 0.75)):
        res = result("alpha", kind, acc, acc)
        res["scoring"] = "bfcl"
        res["metrics"].update({"ast_accuracy": acc, "answers": {"gold": 10},
                               "per_category": {"simple": {"ast_accuracy": acc, "n": 10}}})
        validate_result(res)
        paths[kind]["alpha"] = tmp_path / f"{kind}.json"
        paths[kind]["alpha"].write_text(json.dumps(res))
    bench = {"specialist": "alpha", "categories": {"parallel": {
        "benchmark": "bfcl_parallel", "leaderboard_column": "Non-Live Parallel AST", "n": 3,
        "n_available": 200, "sampled": True, "seed": 0,
        "ast_accuracy": {"base": 0.0, "tuned": 1 / 3, "delta": 1 / 3},
        "metrics": {"base": {}, "tuned": {"exact_match": 0.0, "tool_accuracy": 1.0, "param_f1": 0.5,
                                          "json_valid_rate": 1.0}}}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    summary = summarise(paths["base"], paths["tuned"], tmp_path / "s.json", tmp_path / "s.md",
                        benchmark_paths=[tmp_path / "bench.json"])
    assert summary["specialists"][0]["metrics"]["ast_accuracy"] == {"base": 0.25, "tuned": 0.75, "delta": 0.5}
    assert summary["benchmarks"]["alpha"]["parallel"]["n_available"] == 200
    md = (tmp_path / "s.md").read_text()
    assert "| ast_accuracy | targets met |" in md and "0.250 → 0.750 (+0.500)" in md
    assert ("| alpha | parallel | Non-Live Parallel AST | 3 of 200 (sample) | 0.000 → 0.333 (+0.333) | "
            "0.000 | 1.000 | 0.500 | 1.000 |") in md
