"""Training stage: the shared chat template, base loading, the tiny base, LoRA training, resume, reruns."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from snaketune.chat_template import (
    END_OF_TURN,
    apply_template,
    build_messages,
    encode_chat,
    gold_tool_names,
    specialist_chat,
    specialist_rows,
    split_prompt,
    stop_token_ids,
)
from snaketune.config import fill_stage_defaults, load_schema, specialist_settings
from snaketune.demo import generate_demo_rows
from snaketune.errors import SnaketuneError
from snaketune.files import read_jsonl, sha256_file, sha256_tree, write_jsonl
from snaketune.training import DETERMINISTIC_FILES

from pipeline import TINY_BASE_SHAPE

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "config" / "schemas" / "config.schema.yaml")
CONFIG_PATH = "config/config.yaml"  # the file errors about config keys name

SPECIALISTS = {
    "veran-tools": {"system_prompt": "You are Veran. Answer with a tool call.",
                    "focus_tools": ["yaze_debugger.read_memory", "yaze_debugger.write_memory",
                                    "yaze_debugger.assemble"]},
    "mesen-runner": {"system_prompt": "You drive Mesen2. Answer with a tool call.",
                     "focus_tools": ["mesen2.load_rom", "mesen2.run", "mesen2.screenshot",
                                     "mesen2.read_memory"]},
}
FAST_TRAIN = {"max_steps": 6, "batch_size": 2, "grad_accum": 1, "lr": 5.0e-3, "save_steps": 2,
              "logging_steps": 1, "tools_rendered": "called", "max_seq_len": 1024}
FAST_LORA = {"r": 4, "alpha": 8, "modules_to_save": ["embed_tokens", "lm_head"]}


def settings_for(name="veran-tools", train=None, lora=None, specialists=SPECIALISTS) -> dict:
    config = {"specialists": copy.deepcopy(specialists),
              "defaults": {"train": {**FAST_TRAIN, **(train or {})}, "lora": {**FAST_LORA, **(lora or {})}}}
    fill_stage_defaults(config, SCHEMA)
    return specialist_settings(config, name)


def tool_row(*calls, user="Do it.", content=None, tools=None, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": content,
                     "tool_calls": [{"type": "function",
                                     "function": {"name": n, "arguments": a}} for n, a in calls]})
    names = tools or sorted({n for n, _ in calls})
    return {"id": "r", "kind": "tool", "messages": messages,
            "tools": [{"type": "function", "function": {"name": n, "description": f"{n} tool",
                                                        "parameters": {"type": "object", "properties": {}}}}
                      for n in names]}


READ = ("yaze_debugger.read_memory", '{"address": "0x7E0010", "length": 4}')
WRITE = ("yaze_debugger.write_memory", '{"address": "0x7E0010", "data": "01 FF"}')


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Demo splits and a tiny base built from the training split (module-wide: built once)."""
    from snaketune.modeling import build_tiny_base

    root = tmp_path_factory.mktemp("tiny")
    rows = generate_demo_rows(96, seed=3)
    for i, row in enumerate(rows):
        row["id"], row["kind"], row["source"] = f"{i:04x}", "tool", "demo"
    write_jsonl(root / "train.jsonl", rows[:72])
    write_jsonl(root / "val.jsonl", rows[72:84])
    write_jsonl(root / "test.jsonl", rows[84:])
    build_tiny_base(root / "train.jsonl", root / "base", TINY_BASE_SHAPE, config_path=CONFIG_PATH)
    return root


# ------------------------------------------------------------------ chat template

def test_tool_call_is_rendered_in_the_qwen25_form_with_arguments_as_is():
    messages, tools = build_messages(tool_row(READ), "sys")
    text = apply_template(None, messages, tools)
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "yaze_debugger.read_memory", "arguments": '
            '{"address": "0x7E0010", "length": 4}}\n</tool_call><|im_end|>\n') in text
    assert '\\"address' not in text  # the arguments string is not JSON-encoded a second time
    assert text.startswith("<|im_start|>system\nsys\n\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "yaze_debugger.read_memory"' in text


def test_two_calls_are_two_blocks_and_dict_arguments_are_json():
    row = tool_row(WRITE, READ)
    row["messages"][-1]["tool_calls"][1]["function"]["arguments"] = {"address": "0x7E0010", "length": 4}
    text = apply_template(None, *build_messages(row))
    assert text.endswith('"data": "01 FF"}}\n</tool_call>\n<tool_call>\n'
                         '{"name": "yaze_debugger.read_memory", '
                         '"arguments": {"address": "0x7E0010", "length": 4}}\n</tool_call><|im_end|>\n')


CHATS = {
    "one call": tool_row(READ),
    "two calls": tool_row(WRITE, READ),
    "content and call": tool_row(READ, content="Reading it now."),
    "text answer": {"messages": [{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello there."}]},
    "tool results": {"messages": [
        {"role": "user", "content": "Read then write."},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": READ[0], "arguments": READ[1]}}]},
        {"role": "tool", "tool_call_id": "1", "content": "00 00 00 00"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"type": "function", "function": {"name": WRITE[0], "arguments": WRITE[1]}}]},
    ], "tools": tool_row(READ, WRITE)["tools"]},
}


@pytest.mark.parametrize("name", sorted(CHATS))
def test_inference_prompt_is_a_prefix_of_the_training_text(name, tiny):
    from snaketune.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny / "base")
    messages, tools = build_messages(CHATS[name], "You are a test.")
    prompt_messages, answer = split_prompt(messages)
    assert answer is not None and answer["role"] == "assistant"
    full = apply_template(tokenizer, messages, tools)
    prompt = apply_template(tokenizer, prompt_messages, tools, add_generation_prompt=True)
    assert full.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")
    assert apply_template(None, messages, tools) == full  # the template alone renders the same text
    ids = encode_chat(tokenizer, messages, tools)["input_ids"]
    prompt_ids = encode_chat(tokenizer, prompt_messages, tools, add_generation_prompt=True)["input_ids"]
    assert ids[:len(prompt_ids)] == prompt_ids


def test_loss_mask_covers_exactly_what_the_assistant_writes(tiny):
    from snaketune.modeling import load_tokenizer
    from snaketune.training import tokenize_rows

    tokenizer = load_tokenizer(tiny / "base")
    row = tool_row(WRITE, READ, tools=[READ[0], WRITE[0]])
    settings = settings_for()
    (example,), skipped = tokenize_rows([row], tokenizer, settings)
    assert skipped == []
    kept = [t for t in example["labels"] if t != -100]
    answer = ('<tool_call>\n{"name": "yaze_debugger.write_memory", '
              '"arguments": {"address": "0x7E0010", "data": "01 FF"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "yaze_debugger.read_memory", '
              '"arguments": {"address": "0x7E0010", "length": 4}}\n</tool_call><|im_end|>')
    assert tokenizer.decode(kept) == answer
    messages, tools = specialist_chat(row, settings)
    prompt_ids = encode_chat(tokenizer, split_prompt(messages)[0], tools,
                             add_generation_prompt=True)["input_ids"]
    n = len(example["input_ids"])
    # prompt masked, the answer learned (ending on <|im_end|>), the trailing newline not
    assert example["labels"][:len(prompt_ids)] == [-100] * len(prompt_ids)
    assert example["labels"][len(prompt_ids):n - 1] == example["input_ids"][len(prompt_ids):n - 1]
    assert example["labels"][n - 2] == tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert example["labels"][-1] == -100


def test_a_row_without_an_assistant_answer_fails_loudly(tiny):
    from snaketune.modeling import load_tokenizer
    from snaketune.training import label_mask_tokens, tokenize_rows

    tokenizer = load_tokenizer(tiny / "base")
    row = {"id": "abc", "messages": [{"role": "user", "content": "hello"}], "tools": []}
    with pytest.raises(SnaketuneError, match="empty loss mask"):
        tokenize_rows([row], tokenizer, settings_for(), "train.jsonl")
    assert label_mask_tokens([[5, -100, -100]]) == 0  # position 0 is never a target
    assert label_mask_tokens([[-100, 5, 6], [-100, -100, -100]]) == 2


def test_specialist_subset_and_rendered_tools():
    rows = [tool_row(READ), tool_row(WRITE, READ), tool_row(("mesen2.run", '{"frames": 3}')),
            tool_row(READ, ("mesen2.run", "{}")),
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    focus = SPECIALISTS["veran-tools"]["focus_tools"]
    assert specialist_rows(rows, focus) == rows[:2]  # mixed-family and text rows are not this specialist's
    assert specialist_rows(rows, []) == rows
    assert gold_tool_names(rows[1]) == [WRITE[0], READ[0]]
    row = tool_row(READ, tools=[READ[0], WRITE[0], "yaze_debugger.assemble"], system="row prompt")
    messages, tools = build_messages(row, "specialist prompt", "all", system_prompt_mode="replace")
    assert [m["content"] for m in messages if m["role"] == "system"] == ["specialist prompt"]
    assert len(tools) == 3
    assert [t["function"]["name"] for t in build_messages(row, "", "called")[1]] == [READ[0]]
    # no specialist prompt: the row's stays
    assert build_messages(row, "", "all")[0][0]["content"] == "row prompt"


def test_compact_tools_keep_every_tool_and_what_a_call_needs():
    from snaketune.chat_template import compact_tool
    from snaketune.demo import FAMILIES

    row = {"messages": [{"role": "user", "content": "Load roms/a.sfc as PAL."}], "tools": FAMILIES["mesen2"]}
    full, compact = build_messages(row, "", "all")[1], build_messages(row, "", "compact")[1]
    # no tool dropped
    assert [t["function"]["name"] for t in compact] == [t["function"]["name"] for t in full]
    load = compact[0]["function"]
    assert load == {"name": "mesen2.load_rom", "description": "Load a ROM image into the Mesen2 emulator.",
                    "parameters": {"type": "object", "required": ["path"],
                                   "properties": {"path": {"type": "string"},
                                                  "region": {"type": "string", "enum": ["NTSC", "PAL"]}}}}
    # the row is untouched
    assert FAMILIES["mesen2"][0]["function"]["parameters"]["properties"]["path"]["pattern"]
    odd = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"x": True}}}}
    assert compact_tool(odd)["function"] == {"name": "f",
                                             "parameters": {"type": "object", "properties": {"x": {}},
                                                                         "required": []}}
    shorter = len(apply_template(None, *build_messages(row, "", "compact")))
    assert shorter < 0.8 * len(apply_template(None, *build_messages(row, "", "all")))


# ------------------------------------------------------------------ settings -> trainer arguments

def test_config_maps_to_cpu_training_arguments(tmp_path):
    from trl import SFTConfig

    from snaketune.training import lora_config, resolve_options, training_arguments

    settings = settings_for(
        train={
            "lr": 1.5e-3,
            "batch_size": 3,
            "grad_accum": 2,
            "seed": 11,
            "max_seq_len": 256,
            "warmup_ratio": 0.1,
            "group_by_length": True,
        }
    )
    options = resolve_options(settings["train"], "cpu", config_path=CONFIG_PATH)
    assert options == {"device": "cpu", "dtype": "fp32", "gradient_checkpointing": False, "packing": False,
                       "row_by_row": False, "trim_heap": False, "quantization": "none"}
    args = training_arguments(settings, options, tmp_path / "ckpt")
    assert args["learning_rate"] == 1.5e-3 and args["per_device_train_batch_size"] == 3
    assert args["gradient_accumulation_steps"] == 2 and args["seed"] == 11 and args["max_length"] == 256
    assert args["train_sampling_strategy"] == "group_by_length" and args["save_steps"] == 2
    config = SFTConfig(**args)
    # TRL's defaults are bf16=True and gradient_checkpointing=True: wrong on a CPU
    assert config.bf16 is False and config.fp16 is False
    assert config.gradient_checkpointing is False and config.activation_checkpointing is False
    assert config.use_cpu is True and config.packing is False and config.warmup_steps == 0.1
    forced = resolve_options(
        {**settings["train"], "gradient_checkpointing": True, "packing": True}, "cpu", config_path=CONFIG_PATH
    )
    assert forced["gradient_checkpointing"] and forced["packing"]
    lora = lora_config(settings)
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (4, 8, "all-linear")
    assert set(lora.modules_to_save) == {"embed_tokens", "lm_head"}
    with pytest.raises(SnaketuneError, match="fp16"):
        resolve_options({**settings["train"], "dtype": "fp16"}, "cpu", config_path=CONFIG_PATH)


def test_length_grouped_batches_are_reshuffled_every_epoch_and_reproducible():
    from snaketune.training import length_grouped_sampler

    lengths = [(i * 37) % 101 + 10 for i in range(90)]
    sampler = length_grouped_sampler(lengths, batch_size=8, seed=3)
    epochs = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert sorted(epochs[0]) == list(range(90)) and epochs[0] == epochs[2] and epochs[0] != epochs[1]
    batches = [epochs[1][i:i + 8] for i in range(0, 90, 8)]

    def padding_of(groups):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in groups)

    shuffled = [list(range(90))[i:i + 8] for i in range(0, 90, 8)]
    assert padding_of(batches) < 0.5 * padding_of(shuffled)


# ------------------------------------------------------------------ base loading

def test_assistant_head_loss_equals_the_full_logits_loss_and_its_gradients(tiny):
    """The LM head applied at labelled positions only gives the loss and gradients of the full logits."""
    import collections
    import types

    import torch
    from peft import get_peft_model

    from snaketune.modeling import load_base
    from snaketune.training import assistant_head_loss, lora_config, tokenize_rows

    settings = settings_for(train={"tools_rendered": "all"}, lora={"dropout": 0.0})  # no random masks
    model, tokenizer = load_base({"name_or_path": str(tiny / "base")})
    torch.manual_seed(0)
    model = get_peft_model(model, lora_config(settings))
    examples, _ = tokenize_rows(read_jsonl(tiny / "train.jsonl")[:3], tokenizer, settings)
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros((3, width), dtype=torch.long)
    labels, attn = torch.full_like(ids, -100), torch.zeros_like(ids)
    for r, e in enumerate(examples):  # right padding, as the collator pads
        n = len(e["input_ids"])
        ids[r, :n], labels[r, :n], attn[r, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    trainer = types.SimpleNamespace(_metrics={"train": collections.defaultdict(list)}, _total_train_tokens=0)
    model.train()
    ours = assistant_head_loss(trainer, model, {"input_ids": ids, "attention_mask": attn, "labels": labels})
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=attn).logits
    full = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)
    full.backward()
    assert abs(ours.item() - full.item()) < 1e-5 and ours.item() > 1.0
    assert len(grads) > 4
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(grads[name], param.grad, atol=1e-6, rtol=1e-4), name
    assert trainer._total_train_tokens == int(attn.sum())
    assert 0 <= trainer._metrics["train"]["mean_token_accuracy"][0] <= 1


def test_row_batches_split_right_padded_batches_only():
    import torch

    from snaketune.training import row_batches

    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])
    mask = (ids != 0).long()
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    rows = row_batches({"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert [r["input_ids"].tolist() for r in rows] == [[[5, 6, 7]], [[8, 9]], [[1, 2, 3, 4]]]
    assert [r["attention_mask"].tolist() for r in rows] == [[[1, 1, 1]], [[1, 1]], [[1, 1, 1, 1]]]
    assert rows[1]["labels"].tolist() == [[8, 9]]
    left = torch.tensor([[0, 5, 6], [7, 8, 9]])
    assert row_batches({"input_ids": left, "attention_mask": (left != 0).long()}) is None  # left padding
    assert row_batches({"input_ids": ids[:1], "attention_mask": mask[:1]}) is None  # one row
    assert row_batches({"input_ids": ids, "attention_mask": mask, "position_ids": [0, 1]}) is None
    assert row_batches({"input_ids": ids}) is None  # no mask: nothing says where the padding is


def test_a_step_row_by_row_has_the_gradients_of_the_padded_batch(tiny, tmp_path):
    """What train.row_by_row runs (the trainer's own training_step, each row unpadded) sums to the padded
    batch's loss and gradients."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig

    from snaketune.modeling import load_base
    from snaketune.training import label_mask_tokens, lora_config, tokenize_rows, trainer_class

    settings = settings_for(train={"tools_rendered": "all"}, lora={"dropout": 0.0})
    model, tokenizer = load_base({"name_or_path": str(tiny / "base")})
    examples, _ = tokenize_rows(read_jsonl(tiny / "train.jsonl")[:3], tokenizer, settings)
    assert len({len(e["input_ids"]) for e in examples}) == 3  # rows of different lengths: real padding
    torch.manual_seed(0)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", bf16=False,
                     activation_checkpointing=False, per_device_train_batch_size=3)
    trainer = trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(examples),
                              processing_class=tokenizer, peft_config=lora_config(settings), row_by_row=True)
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer.data_collator(examples)
    items = label_mask_tokens(batch["labels"])

    def step(row_by_row: bool):
        trainer.row_by_row = row_by_row
        trainer.model.zero_grad()
        loss = trainer.training_step(trainer.model, dict(batch), num_items_in_batch=torch.tensor(items))
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss.item(), grads

    padded_loss, padded = step(False)
    rows_loss, rows = step(True)
    assert padded_loss > 1.0 and abs(rows_loss - padded_loss) < 1e-5
    assert len(padded) > 4
    for name, grad in padded.items():
        assert torch.allclose(rows[name], grad, atol=1e-6, rtol=1e-4), name
    assert trainer._total_train_tokens == 2 * int(batch["attention_mask"].sum())  # padding never counted


def test_tiny_base_is_deterministic_and_loads(tiny, tmp_path):
    from snaketune.modeling import build_tiny_base, load_base

    build_tiny_base(tiny / "train.jsonl", tmp_path / "again", TINY_BASE_SHAPE, config_path=CONFIG_PATH)
    assert sha256_tree(tmp_path / "again") == sha256_tree(tiny / "base")
    model, tokenizer = load_base({"name_or_path": str(tiny / "base")})
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 32
    assert model.config.vocab_size % 32 == 0 and model.config.vocab_size >= len(tokenizer)
    for token in ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    assert stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # <tool_call> stays visible in decoded text (the metrics parser looks for it)
    ids = tokenizer.encode("<tool_call>\n{}\n</tool_call><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<tool_call>\n{}\n</tool_call>"
    llama = build_tiny_base(
        tiny / "train.jsonl",
        tmp_path / "llama",
        {**TINY_BASE_SHAPE, "architecture": "llama"},
        config_path=CONFIG_PATH,
    )
    assert (
        llama is None
        and json.loads((tmp_path / "llama" / "config.json").read_text())["model_type"] == "llama"
    )


def test_base_loading_errors_say_what_to_do(tmp_path, monkeypatch):
    from snaketune.modeling import load_base_model, load_tokenizer

    with pytest.raises(SnaketuneError, match="does not exist"):
        load_base_model(str(tmp_path / "missing"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(SnaketuneError, match="pickled weights"):
        load_base_model(str(pickled))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SnaketuneError) as err:
        load_tokenizer("snaketune-tests/no-such-model")
    assert "HF_HUB_OFFLINE" in str(err.value) and "HF_TOKEN" in str(err.value) and "\n" not in str(err.value)


def test_quantization_errors_are_clear(monkeypatch):
    from snaketune.modeling import quantization_config

    assert quantization_config("none") is None
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(SnaketuneError, match="bitsandbytes"):
        quantization_config("4bit")


# ------------------------------------------------------------------ training (in process)

def _train(tiny, out, ckpt, **kw):
    from snaketune.training import train_adapter

    return train_adapter(
        tiny / "base",
        tiny / "train.jsonl",
        tiny / "val.jsonl",
        out,
        settings_for(**kw),
        ckpt,
        base_cfg={"name_or_path": "results/base/tiny"},
        threads=1,
        config_path=CONFIG_PATH,
    )


def test_train_adapter_writes_a_complete_loadable_adapter_and_is_reproducible(tiny, tmp_path):
    from peft import PeftModel

    from snaketune.modeling import load_base

    metrics = _train(tiny, tmp_path / "a", tmp_path / "ck_a")
    out = tmp_path / "a"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "specialist_config.json", "train_metrics.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert not (out / "runs").exists()  # TensorBoard events go to results/tracking/, live (test_tracking.py)
    assert metrics["global_step"] == 6 and len(metrics["loss"]) == 6 and metrics["eval_loss"] > 0
    assert metrics["train_examples"] == len(specialist_rows(read_jsonl(tiny / "train.jsonl"),
                                                            SPECIALISTS["veran-tools"]["focus_tools"]))
    spec = json.loads((out / "specialist_config.json").read_text())
    assert spec["system_prompt"] == SPECIALISTS["veran-tools"]["system_prompt"]
    assert spec["data"]["train"]["sha256"] == sha256_file(tiny / "train.jsonl")
    assert spec["base_model"]["sha256"] == sha256_tree(tiny / "base") and spec["seed"] == 42
    assert spec["resolved"]["bf16"] is False and spec["resolved"]["learning_rate"] == 5.0e-3
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "results/base/tiny"  # not this run's temporary path
    model, tokenizer = load_base({"name_or_path": str(tiny / "base")})
    tuned = PeftModel.from_pretrained(model, str(out))
    assert any("lora_A" in n for n, _ in tuned.named_parameters())
    # Same inputs elsewhere: the same adapter bytes
    _train(tiny, tmp_path / "b", tmp_path / "ck_b")
    for name in DETERMINISTIC_FILES:
        assert sha256_file(out / name) == sha256_file(tmp_path / "b" / name), name
    # A finished checkpoint for the same inputs is resumed: no step is trained again, same bytes
    again = _train(tiny, tmp_path / "c", tmp_path / "ck_a")
    assert again["resumed_from_step"] == 6
    weights = "adapter_model.safetensors"
    assert sha256_file(tmp_path / "c" / weights) == sha256_file(out / weights)


def test_cpu_training_of_a_wide_base_trims_the_heap_after_every_step(tiny, tmp_path, monkeypatch):
    from snaketune import devices, host_memory, training

    calls = []
    monkeypatch.setattr(training, "trim_heap", lambda: calls.append(1) or True)
    _train(tiny, tmp_path / "narrow", tmp_path / "ck_n", train={"max_steps": 2})
    assert calls == []  # the tiny base: trimming would only cost time (15-20 %)
    monkeypatch.setattr(devices, "WIDE_BASE", 16)  # the tests' tiny base (hidden 32) plays a wide one
    metrics = _train(tiny, tmp_path / "t", tmp_path / "ck_t", train={"max_steps": 3})
    spec = json.loads((tmp_path / "t" / "specialist_config.json").read_text())
    assert spec["resolved"]["row_by_row"] is True and spec["resolved"]["trim_heap"] is True
    assert spec["resolved"]["per_device_eval_batch_size"] == 1
    assert metrics["global_step"] == 3 and len(calls) == 3
    # and on this (glibc) machine the real call releases what was freed
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # ~128 MB from the heap (below the mmap threshold)
    del blocks
    assert host_memory.trim_heap() is True


def test_row_by_row_is_off_with_several_training_processes(tiny, tmp_path, monkeypatch):
    from snaketune import devices, training

    monkeypatch.setattr(devices, "WIDE_BASE", 16)
    monkeypatch.setattr(training, "rank_and_world", lambda: (0, 2))
    run = training.start_run(tiny / "base", settings_for(), {"name_or_path": "results/base/tiny"}, 1, 0,
                             tmp_path / "ck", CONFIG_PATH)
    assert run.world_size == 2 and run.options["row_by_row"] is False and run.options["trim_heap"] is True
    monkeypatch.setattr(training, "rank_and_world", lambda: (0, 1))
    run = training.start_run(tiny / "base", settings_for(), {"name_or_path": "results/base/tiny"}, 1, 0,
                             tmp_path / "ck", CONFIG_PATH)
    assert run.options["row_by_row"] is True


def test_packing_can_be_switched_on_on_cpu(tiny, tmp_path):
    metrics = _train(tiny, tmp_path / "p", tmp_path / "ck_p", train={"packing": True, "max_steps": 3})
    spec = json.loads((tmp_path / "p" / "specialist_config.json").read_text())
    assert spec["resolved"]["packing"] is True and metrics["global_step"] == 3


def test_qlora_4bit_trains_a_few_steps_where_bitsandbytes_can(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    from snaketune.modeling import load_base_model

    try:
        load_base_model(str(tiny / "base"), quantization="4bit")
    except SnaketuneError as err:
        pytest.skip(f"4-bit not available here: {err}")
    metrics = _train(tiny, tmp_path / "q", tmp_path / "ck_q", train={"quantization": "4bit", "max_steps": 3})
    assert metrics["global_step"] == 3 and (tmp_path / "q" / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------ end to end (Snakemake)

def e2e_config(specialists=SPECIALISTS, train=None) -> dict:
    return {
        "base_model": {"name_or_path": "results/base/tiny"},
        "tiny_base": TINY_BASE_SHAPE,
        "data": {"demo": {"enabled": True, "rows": 120, "seed": 5}, "sources": [],
                 "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 1}},
        "defaults": {"lora": FAST_LORA,
                     "train": {**FAST_TRAIN, "max_steps": 40, "save_steps": 4, **(train or {})},
                     "resources": {"gpus": 0, "threads": 1, "mem_mb": 1000}},
        "specialists": copy.deepcopy(specialists),
    }


ADAPTERS = [f"results/adapters/{name}" for name in sorted(SPECIALISTS)]


def _kill_tree(workdir: Path) -> int:
    """SIGKILL every process whose working directory is ``workdir`` (the run we started there)."""
    killed = 0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if Path(f"/proc/{pid}/cwd").resolve() == workdir.resolve() and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
        except (OSError, ValueError):
            continue
    return killed


@pytest.mark.e2e
def test_pipeline_trains_reruns_nothing_retrains_one_and_resumes_after_sigkill(tmp_path):
    from peft import PeftModel

    from snaketune.modeling import load_base

    from pipeline import make_workdir, planned_jobs, snakemake

    config = e2e_config()
    a = make_workdir(tmp_path / "a", config)
    snakemake(a, *ADAPTERS)
    for target in ADAPTERS:
        assert (a / target / "adapter_model.safetensors").is_file()
        assert (a / target / "specialist_config.json").is_file()
    assert (a / "benchmarks/train/veran-tools.tsv").is_file()
    model, _ = load_base({"name_or_path": str(a / "results/base/tiny")})
    PeftModel.from_pretrained(model, str(a / ADAPTERS[1]))
    assert planned_jobs(a, *ADAPTERS) == {}
    clean = sha256_file(a / "results/adapters/veran-tools/adapter_model.safetensors")

    # one specialist's lr changes: only that specialist retrains
    changed = copy.deepcopy(config)
    changed["specialists"]["mesen-runner"]["train"] = {"lr": 1.0e-3}
    make_workdir(a, changed)
    assert planned_jobs(a, *ADAPTERS) == {"train": 1}

    # a clean run elsewhere gives the same bytes; killed mid-training and rerun, it resumes to the same bytes
    b = make_workdir(tmp_path / "b", config)
    snakemake(b, "results/base/tiny", "results/data/val.jsonl")
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", ADAPTERS[1]], cwd=b,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = b / "results/checkpoints/veran-tools"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any((c / "trainer_state.json").is_file() for c in checkpoints.glob("checkpoint-*")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before a checkpoint could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    _kill_tree(b)
    proc.wait()
    assert not (b / ADAPTERS[1]).exists()
    snakemake(b, "--unlock")  # a killed Snakemake leaves its lock, as after a power loss
    snakemake(b, "--rerun-incomplete", ADAPTERS[1])
    log = (b / "logs/train/veran-tools.log").read_text()
    assert "resuming from checkpoint" in log and "same inputs and params" in log
    assert sha256_file(b / ADAPTERS[1] / "adapter_model.safetensors") == clean


# ------------------------------------------------------------------ the embedded default must learn (item 7)

@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SNAKETUNE_SLOW") != "1", reason="about 6 minutes; set SNAKETUNE_SLOW=1")
def test_default_config_specialists_call_the_right_tool(tmp_path):
    """Item 7, measured by the eval stage: on the default config every tuned specialist calls the right tool
    on >= 90 % of its test rows where the base scores <= 10 %, and the train jobs take <= 8 minutes."""
    from pipeline import make_workdir, snakemake

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    work = make_workdir(tmp_path / "default", config)
    started = time.monotonic()
    snakemake(work, *[f"results/adapters/{name}" for name in config["specialists"]], timeout=3600)
    # data, tiny base and the three train jobs, as scheduled on this machine
    train_wall = time.monotonic() - started
    snakemake(work, "results/eval/summary.json", timeout=3600)
    for name in config["specialists"]:
        base = json.loads((work / f"results/eval/base/{name}.json").read_text())["metrics"]["tool_accuracy"]
        tuned = json.loads((work / f"results/eval/tuned/{name}.json").read_text())["metrics"]["tool_accuracy"]
        assert base <= 0.10 and tuned >= 0.90, (name, base, tuned)
    assert train_wall <= 8 * 60, train_wall
    print(f"data + tiny base + train jobs: {train_wall:.0f} s")


# ------------------------------------------------------------------ multi-process training (issue 6 item 4)

def test_process_count_is_one_per_gpu_held_or_train_processes():
    from snaketune.launch import needs_launcher, process_count

    auto = settings_for()
    assert "processes" not in auto["train"]  # absent = auto: single-process settings (and bytes) as before
    assert (
        process_count(auto, [], config_path=CONFIG_PATH) == 1
        and process_count(auto, ["0"], config_path=CONFIG_PATH) == 1
    )
    assert process_count(auto, ["2", "3"], config_path=CONFIG_PATH) == 2
    assert (
        process_count(auto, ["2", "3"], cuda=False, config_path=CONFIG_PATH) == 1
    )  # cards torch cannot use: one CPU process, as before
    forced = settings_for(train={"processes": 2})
    assert (
        process_count(forced, [], config_path=CONFIG_PATH) == 2
    )  # CPU processes (gloo): how it is tested without a GPU
    assert process_count(settings_for(train={"processes": 1}), ["0", "1"], config_path=CONFIG_PATH) == 1
    with pytest.raises(SnaketuneError, match="train.processes.*holds 1 GPU"):
        process_count(forced, ["0"], config_path=CONFIG_PATH)
    assert not needs_launcher(1, auto) and needs_launcher(2, auto)
    assert needs_launcher(1, settings_for(train={"deepspeed": "config/deepspeed/zero2.json"}))


def test_processes_key_is_checked_against_the_schema():
    from snaketune.config import check_config

    def config(processes):
        return {"specialists": {"a": {"train": {"processes": processes}}}}

    check_config(config("auto"), SCHEMA, CONFIG_PATH)
    check_config(config(4), SCHEMA, CONFIG_PATH)
    for bad in (0, "two"):
        with pytest.raises(SnaketuneError, match="specialists.a.train.processes"):
            check_config(config(bad), SCHEMA, CONFIG_PATH)


def test_torchrun_command_and_child_environment():
    from snaketune.launch import PACKAGE_PARENT, child_env, per_process_threads, torchrun_command

    command = torchrun_command(2, "/tmp/args.json", python="/venv/bin/python")
    assert command == [
        "/venv/bin/python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "0",
        "-m",
        "snaketune.launch",
        "/tmp/args.json",
    ]
    env = child_env(2, 8, {"PYTHONPATH": "/elsewhere", "CUDA_VISIBLE_DEVICES": "2,3"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PACKAGE_PARENT), "/elsewhere"]
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "2,3"  # the job's slot, passed on
    assert per_process_threads(1, 2) == 1 and per_process_threads(16, 4) == 4


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_parse_with_their_zero_stage(stage):
    config = json.loads((REPO / "config" / "deepspeed" / f"zero{stage}.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    # "auto": the Trainer fills them from the specialist's settings, so one file serves every specialist
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert "optimizer" not in config and "scheduler" not in config  # train.lr / lr_scheduler stay in charge
    if stage == 3:  # rank 0 saves the adapter from weights gathered off every rank
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_a_user_error_in_a_torchrun_child_ends_the_step_with_its_message(tiny, tmp_path, capsys):
    from snaketune.launch import launch_training

    settings = settings_for(train={"processes": 2})
    settings["focus_tools"] = ["no_such.tool"]
    with pytest.raises(SnaketuneError, match="no training rows call only veran-tools's focus tools") as err:
        launch_training(
            [],
            base_dir=str(tiny / "base"),
            train_path=str(tiny / "train.jsonl"),
            val_path=str(tiny / "val.jsonl"),
            out_dir=tmp_path / "out",
            settings=settings,
            checkpoint_dir=tmp_path / "ck",
            base_cfg={"name_or_path": "results/base/tiny"},
            threads=1,
            config_path=CONFIG_PATH,
        )
    assert (
        err.value.field == "specialists.veran-tools.focus_tools" and err.value.fix
    )  # the child's error, whole
    assert (
        "[rank 0]" in capsys.readouterr().out
    )  # the children's output reached this process's stdout (the log)
    assert not (tmp_path / "out").exists()


TWO_PROCESSES = "defaults:\n  train: {processes: 2}\n"  # the README's example file (it merges into defaults)


@pytest.mark.e2e
def test_pipeline_trains_a_specialist_with_two_gloo_processes(tmp_path):
    """Two torchrun processes on the CPU: world size 2 in the log, one complete adapter that loads."""
    from peft import PeftModel

    from snaketune.modeling import load_base

    from pipeline import make_workdir, snakemake

    work = make_workdir(tmp_path / "ddp", e2e_config(train={"max_steps": 6, "save_steps": 3}))
    (work / "two-processes.yaml").write_text(TWO_PROCESSES)
    # --configfile takes several
    snakemake(work, ADAPTERS[1], "--configfile", "two-processes.yaml", timeout=600)

    log = (work / "logs/train/veran-tools.log").read_text()
    assert "training with 2 processes" in log
    assert "torch.distributed.run --standalone --nproc-per-node 2" in log
    for rank in (0, 1):
        assert f"[rank {rank}] snaketune.launch: distributed: world size 2, rank {rank}, backend gloo" in log
    assert "Traceback" not in log
    out = work / ADAPTERS[1]
    for name in DETERMINISTIC_FILES + ("train_metrics.json",):
        assert (out / name).is_file(), name
    # rank 0 alone reports: one TensorBoard run, outside the adapter
    (run_dir,) = (work / "results/tracking/tensorboard/veran-tools").iterdir()
    assert len(list(run_dir.glob("events.out.tfevents*"))) >= 1 and not (out / "runs").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["veran-tools", "veran-tools.timing.json"]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["global_step"] == 6 and len(metrics["loss"]) == 6 and metrics["world_size"] == 2
    spec = json.loads((out / "specialist_config.json").read_text())
    assert spec["train"]["processes"] == 2
    assert spec["resolved"]["world_size"] == 2 and spec["resolved"]["ddp_backend"] == "gloo"
    # each rank trained on its own half of every global batch: rank 1's RNG state sits in the checkpoint
    checkpoint = work / "results/checkpoints/veran-tools/checkpoint-6"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    model, _ = load_base({"name_or_path": str(work / "results/base/tiny")})
    tuned = PeftModel.from_pretrained(model, str(out))
    assert any("lora_A" in n for n, _ in tuned.named_parameters())
    record = json.loads((work / "results/provenance/train/veran-tools.json").read_text())
    assert "training.py" in record["code"]["package"]["imported"]
    assert {"torch", "transformers", "peft", "trl"} <= set(record["environment"]["packages"])
