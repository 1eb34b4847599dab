"""Export stage: merge, GGUF (f32 / f16 / q8_0, LoRA), parity in real llama.cpp, Modelfile.

Tiny random Qwen2 (tied embeddings, embed_tokens saved whole) and Llama (lm_head saved whole) bases
with LoRA adapters whose B weights are not zero. The Qwen2 one goes through the real workflow's export
rules; the Llama one through the package, plus a conversion that skips the q/k permutation, which
parity must catch.
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from snaketune import gguf_export  # noqa: E402
from snaketune.demo import generate_demo_rows  # noqa: E402
from snaketune.errors import SnaketuneError  # noqa: E402
from snaketune.files import write_jsonl  # noqa: E402
from snaketune.gguf_export import write_lora_gguf, write_model_gguf  # noqa: E402
from snaketune.merge import merge_adapter  # noqa: E402
from snaketune.modelfile import write_modelfile  # noqa: E402
from snaketune.parity import check_parity  # noqa: E402

from pipeline import make_workdir, snakemake  # noqa: E402

SPECIALIST = "veran-tools"
SYSTEM = "You are Veran, a debugging assistant. Answer with a tool call."
FOCUS = ["yaze_debugger.read_memory", "yaze_debugger.write_memory", "yaze_debugger.assemble"]
SETTINGS = {"name": SPECIALIST, "system_prompt": SYSTEM, "focus_tools": FOCUS, "train": {}}
SHAPE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
         "num_kv_heads": 2}
EXPORT_EXEMPT = ("snaketune_merge.json",)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus():
    rows = generate_demo_rows(160, seed=3)
    for i, row in enumerate(rows):
        row["id"] = f"row-{i:03d}"
    return rows


@pytest.fixture(scope="module")
def tokenizer(corpus):
    from snaketune.modeling import corpus_texts, train_tokenizer

    return train_tokenizer(corpus_texts(corpus[:120]), SHAPE["vocab_size"])


def build_pair(root: Path, tokenizer, arch: str, tied: bool, whole: str) -> tuple[Path, Path]:
    """A random base and a LoRA adapter with random (non-zero) B and one module saved whole, perturbed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from snaketune.modeling import tiny_model_config

    config = tiny_model_config({"architecture": arch, **SHAPE}, tokenizer, config_path="config/config.yaml")
    config.tie_word_embeddings = tied
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base, adapter = root / f"base-{arch}", root / f"adapter-{arch}"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False, modules_to_save=[whole]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.02)
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return base, adapter


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tokenizer, corpus):
    root = tmp_path_factory.mktemp("export")
    qwen = build_pair(root, tokenizer, "qwen2", tied=True, whole="embed_tokens")
    llama = build_pair(root, tokenizer, "llama", tied=False, whole="lm_head")
    test = root / "test.jsonl"
    write_jsonl(test, corpus[120:])
    return {"root": root, "qwen2": qwen, "llama": llama, "test": test}


def hf_logits(model_or_dir, ids, adapter=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_or_dir), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0].numpy()


def assert_gguf_header(path, arch: str, quant: str, n_tensors: int, pre: str = "qwen2"):
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()
              if name not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    assert fields["general.architecture"] == arch
    assert fields["general.type"] == "model"
    assert fields["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[quant]
    assert fields[f"{arch}.block_count"] == SHAPE["num_layers"]
    assert fields[f"{arch}.embedding_length"] == SHAPE["hidden_size"]
    assert fields[f"{arch}.attention.head_count_kv"] == SHAPE["num_kv_heads"]
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == pre
    assert bool(fields["tokenizer.ggml.add_bos_token"]) is False
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == SHAPE["vocab_size"]
    assert len(reader.tensors) == n_tensors
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == quant.upper()
    return {t.name for t in reader.tensors}


# --- Qwen2 through the workflow's export rules ---------------------------------------------------

@pytest.mark.e2e
def test_qwen2_export_rules_end_to_end(fixtures, tmp_path):
    """merge -> gguf (f32, f16, q8_0) + base GGUF + LoRA GGUF -> parity in llama.cpp -> Modelfile."""
    base, adapter = fixtures["qwen2"]
    config = {
        "base_model": {"name_or_path": str(base)},
        "specialists": {SPECIALIST: {"system_prompt": SYSTEM, "focus_tools": FOCUS}},
        "export": {"quants": ["f32", "f16", "q8_0"], "lora_gguf": True, "parity": True, "parity_prompts": 2},
    }
    wd = make_workdir(tmp_path / "wd", config)
    (wd / "results" / "data").mkdir(parents=True)
    shutil.copy(fixtures["test"], wd / "results" / "data" / "test.jsonl")
    shutil.copytree(adapter, wd / "results" / "adapters" / SPECIALIST)
    targets = [f"results/gguf/{SPECIALIST}.parity.json", f"results/gguf/{SPECIALIST}.Modelfile"]
    snakemake(wd, *targets, "--allowed-rules", "merge", "gguf", "base_gguf", "lora_gguf", "gguf_parity",
              "modelfile")

    merged = wd / "results" / "merged" / SPECIALIST
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json"):
        assert (merged / name).is_file(), name
    ids = list(range(5, 60))
    np.testing.assert_allclose(hf_logits(merged, ids), hf_logits(base, ids, adapter), atol=1e-4)
    assert json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is False

    out = wd / "results" / "gguf"
    # the trained embed_tokens copy unties the base's tied embeddings: output.weight of its own
    for quant in ("f32", "f16", "q8_0"):
        names = assert_gguf_header(out / f"{SPECIALIST}.{quant}.gguf", "qwen2", quant, 2 + 2 * 12 + 1)
        assert {"blk.0.attn_q.bias", "output.weight"} <= names
    base_names = assert_gguf_header(out / "base" / "base.f32.gguf", "qwen2", "f32", 2 + 2 * 12 + 1)
    assert "output.weight" in base_names  # kept apart for the LoRA's embed_tokens delta
    lora = gguf.GGUFReader(str(out / f"{SPECIALIST}.lora.gguf"))
    assert lora.fields["general.type"].contents() == "adapter"
    assert lora.fields["adapter.type"].contents() == "lora"
    lora_names = {t.name for t in lora.tensors}
    assert {"blk.1.attn_q.weight.lora_a", "blk.1.attn_q.weight.lora_b",
            "token_embd.weight.lora_a"} <= lora_names
    assert len(lora_names) == 2 * (2 * 7 + 1)

    report = json.loads((out / f"{SPECIALIST}.parity.json").read_text())
    assert report["passed"] and set(report["results"]) == {"f32", "f16", "q8_0", "lora"}
    results = report["results"]
    assert all(r["tokenizer_match"] and r["chat_template_match"] for r in results.values())
    assert results["f32"]["worst"]["last_max_abs_diff"] <= 1e-4
    assert results["lora"]["worst"]["last_max_abs_diff"] <= 1e-4
    assert max(results[key]["worst"]["last_rel_diff"] for key in ("f32", "lora")) <= 1e-4
    assert results["f16"]["worst"]["last_rel_diff"] <= 5e-2
    assert results["f16"]["worst"]["last_cosine_min"] > 0.9999
    assert results["q8_0"]["worst"]["last_cosine_min"] >= 0.99
    assert all(g["same_text"] for g in results["f32"]["greedy"])

    modelfile = (out / f"{SPECIALIST}.Modelfile").read_text()
    assert f"FROM ./{SPECIALIST}.q8_0.gguf" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert f'SYSTEM """{SYSTEM}"""' in modelfile
    assert "<tool_call>" in modelfile and "{{ .System }}" in modelfile
    for log in ("merge", "gguf_parity", "lora_gguf"):
        assert any((wd / "logs" / "export" / log).iterdir())

    # bytes depend on the inputs alone, not on the path or the time
    again = tmp_path / "again.f16.gguf"
    write_model_gguf(merged, again, "f16", name=SPECIALIST)
    assert sha(again) == sha(out / f"{SPECIALIST}.f16.gguf")


# --- Llama through the package ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_export(fixtures):
    base, adapter = fixtures["llama"]
    root = fixtures["root"] / "llama-out"
    merged = root / "merged"
    report = merge_adapter(base, adapter, merged, config_path="config/config.yaml")
    ggufs = {q: root / f"{SPECIALIST}.{q}.gguf" for q in ("f32", "f16", "q8_0")}
    for quant, path in ggufs.items():
        write_model_gguf(merged, path, quant, name=SPECIALIST)
    write_model_gguf(base, root / "base.f32.gguf", "f32", name="base", untie=True)
    write_lora_gguf(adapter, base, root / "lora.gguf", name=SPECIALIST, config_path="config/config.yaml")
    return {"root": root, "merged": merged, "ggufs": ggufs, "merge_report": report, "base": base,
            "adapter": adapter}


def test_llama_merge_matches_base_plus_adapter(llama_export):
    from transformers import AutoModelForCausalLM

    merged = llama_export["merged"]
    assert llama_export["merge_report"]["passed"]
    model = AutoModelForCausalLM.from_pretrained(str(merged))  # plain transformers, no PEFT
    assert model.config.model_type == "llama"
    ids = list(range(3, 70))
    np.testing.assert_allclose(hf_logits(merged, ids),
                               hf_logits(llama_export["base"], ids, llama_export["adapter"]), atol=1e-4)


def test_llama_gguf_metadata_and_parity(llama_export, fixtures, tmp_path):
    import llama_cpp

    for quant, path in llama_export["ggufs"].items():
        names = assert_gguf_header(path, "llama", quant, 2 + 2 * 9 + 1)
        assert "output.weight" in names and "blk.0.attn_q.bias" not in names
    llm = llama_cpp.Llama(str(llama_export["ggufs"]["q8_0"]), n_ctx=64, verbose=False)
    assert llm.n_vocab() == SHAPE["vocab_size"]
    llm.close()
    out = tmp_path / "parity.json"
    report = check_parity(llama_export["merged"], llama_export["ggufs"], fixtures["test"], out, SETTINGS,
                          lora=llama_export["root"] / "lora.gguf",
                          base_gguf=llama_export["root"] / "base.f32.gguf", base_quant="f32", n_prompts=2,
                          threads=1, new_tokens=8)
    assert report["passed"] and json.loads(out.read_text())["passed"]
    assert report["results"]["f32"]["worst"]["last_max_abs_diff"] <= 1e-4
    assert report["results"]["lora"]["worst"]["last_max_abs_diff"] <= 1e-4
    worst = report["results"]["f16"]["worst"]
    assert worst["last_rel_diff"] <= 5e-2 and worst["last_cosine_min"] >= 0.9999
    # the scale the relative limits use: the std of the tiny random model's logits
    assert 0 < report["results"]["f32"]["prompts"][0]["logit_scale"] < 5


def test_parity_fails_when_one_tensor_is_perturbed(llama_export, fixtures, tmp_path, monkeypatch):
    """Noise of a tenth of its spread on one weight (blk.0.attn_v): the f16 limits, relative to the logits'
    scale, still catch it."""
    real = gguf_export.checkpoint_tensor

    def perturbed(name, weights, hf_name, qtype, spec):
        planned = real(name, weights, hf_name, qtype, spec)
        if hf_name != "model.layers.0.self_attn.v_proj.weight":
            return planned
        blocks = planned.blocks
        rng = np.random.default_rng(0)

        def noisy():
            for block in blocks():
                data = gguf_export.widen(block)
                yield data + rng.standard_normal(data.shape).astype(np.float32) * 0.1 * data.std()

        planned.blocks = noisy
        return planned

    monkeypatch.setattr(gguf_export, "checkpoint_tensor", perturbed)
    broken = tmp_path / "perturbed.f16.gguf"
    write_model_gguf(llama_export["merged"], broken, "f16", name=SPECIALIST)
    out = tmp_path / "parity.json"
    with pytest.raises(SnaketuneError, match="parity failed.*f16: logits on prompt .* of the logits' std"):
        check_parity(llama_export["merged"], {"f16": broken}, fixtures["test"], out, SETTINGS, n_prompts=2,
                     threads=1, new_tokens=4)
    assert not out.exists()


def test_parity_fails_without_the_llama_permutation(llama_export, fixtures, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "llama_permute", lambda weights, n_head: weights)
    broken = tmp_path / "broken.f32.gguf"
    write_model_gguf(llama_export["merged"], broken, "f32", name=SPECIALIST)
    out = tmp_path / "parity.json"
    with pytest.raises(SnaketuneError, match="parity failed.*f32: logits"):
        check_parity(llama_export["merged"], {"f32": broken}, fixtures["test"], out, SETTINGS, n_prompts=1,
                     threads=1, new_tokens=4)
    assert not out.exists()
    # at f16's limits too: the permutation error is orders of magnitude above them
    broken16 = tmp_path / "broken.f16.gguf"
    write_model_gguf(llama_export["merged"], broken16, "f16", name=SPECIALIST)
    with pytest.raises(SnaketuneError, match="parity failed.*f16: logits"):
        check_parity(llama_export["merged"], {"f16": broken16}, fixtures["test"], out, SETTINGS, n_prompts=1,
                     threads=1, new_tokens=4)


# --- writer details -------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["qwen2", "llama-bpe", "smaug-bpe", "gpt-2"])
def test_pre_tokenizer_name_matches_llama_cpp_tokens(split, corpus, fixtures, tmp_path):
    """Each supported split gets its llama.cpp name, and llama.cpp then yields HF's token ids."""
    import llama_cpp
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from snaketune.modeling import corpus_texts
    from snaketune.parity import PROBE_TEXTS

    regex = {"qwen2": gguf_export.QWEN2_REGEX, "llama-bpe": gguf_export.LLAMA3_REGEX,
             "smaug-bpe": gguf_export.LLAMA3_REGEX}.get(split)
    tok = Tokenizer(models.BPE(ignore_merges=split == "llama-bpe"))  # as Llama 3's own tokenizer.json
    tok.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False) if regex is None else
                         pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                           use_regex=False)]))
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus_texts(corpus[:60]), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model_dir = tmp_path / "model"
    shutil.copytree(fixtures["llama"][0], model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).unlink()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>").save_pretrained(model_dir)
    out = tmp_path / "vocab.gguf"
    assert write_model_gguf(model_dir, out, "f32")["pre_tokenizer"] == split
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    for text in PROBE_TEXTS:
        expected = hf(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected
    llm.close()


def test_unsupported_architecture_names_the_supported_ones(fixtures, tmp_path):
    model_dir = tmp_path / "phi"
    shutil.copytree(fixtures["llama"][0], model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(model_type="phi3", architectures=["Phi3ForCausalLM"])
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SnaketuneError, match=r"'phi3'.*llama, mistral, qwen2"):
        write_model_gguf(model_dir, tmp_path / "phi.gguf", "f16")
    assert not (tmp_path / "phi.gguf").exists()


def test_unknown_pre_tokenizer_is_a_clear_error(fixtures, tmp_path):
    model_dir = tmp_path / "ws"
    shutil.copytree(fixtures["llama"][0], model_dir)
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Whitespace"}
    (model_dir / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(SnaketuneError, match="pre-tokenizer.*Whitespace.*GPT-2, Qwen2 or Llama-3"):
        write_model_gguf(model_dir, tmp_path / "ws.gguf", "f16")


def test_interrupted_write_leaves_no_gguf(fixtures, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = gguf_export.encode

    def dies_midway(data, qtype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(data, qtype)

    monkeypatch.setattr(gguf_export, "encode", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_model_gguf(fixtures["llama"][0], tmp_path / "x.f16.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


VARIANTS = {
    # Mistral checkpoints run as llama.cpp's llama architecture, permutation included
    "mistral": ("MistralConfig", {"sliding_window": None}),
    # Llama 3.2: tied embeddings and llama3 RoPE scaling (a rope_freqs tensor)
    "llama3-rope-tied": ("LlamaConfig", {"tie_word_embeddings": True, "max_position_embeddings": 8192,
                                         "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
                                                             "factor": 32.0, "low_freq_factor": 1.0,
                                                             "high_freq_factor": 4.0,
                                                             "original_max_position_embeddings": 8192}}),
    "llama-attention-bias": ("LlamaConfig", {"attention_bias": True}),
    "qwen2-yarn": ("Qwen2Config",
                   {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                                                       "original_max_position_embeddings": 256}}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_architecture_variants_match_in_llama_cpp(variant, tokenizer, tmp_path):
    import llama_cpp
    import transformers
    from transformers import AutoModelForCausalLM

    cls, extra = VARIANTS[variant]
    shape = {"vocab_size": SHAPE["vocab_size"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 1024, "tie_word_embeddings": False}
    config = getattr(transformers, cls)(**{**shape, **extra})
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.5)  # zero-initialised biases would hide a missed bias permutation
    model_dir = tmp_path / variant
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / f"{variant}.f32.gguf"
    written = write_model_gguf(model_dir, out, "f32")
    assert written["arch"] == ("qwen2" if cls == "Qwen2Config" else "llama")
    names = {t.name for t in gguf.GGUFReader(str(out)).tensors}
    assert ("rope_freqs.weight" in names) == ("llama3" in variant)
    assert ("output.weight" in names) == (not config.tie_word_embeddings)
    ids = list(range(10, 300))
    llm = llama_cpp.Llama(str(out), n_ctx=512, logits_all=True, type_k=llama_cpp.GGML_TYPE_F32,
                          type_v=llama_cpp.GGML_TYPE_F32, n_threads=1, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    llm.close()
    assert np.abs(got - hf_logits(model_dir, ids)).max() <= 1e-4


def test_modelfile_stops_and_template(llama_export, tmp_path):
    out = tmp_path / f"{SPECIALIST}.Modelfile"
    text = write_modelfile(out, llama_export["ggufs"]["q8_0"], llama_export["merged"], SYSTEM,
                           name=SPECIALIST)
    assert out.read_text() == text
    lines = text.splitlines()
    assert f"FROM ./{SPECIALIST}.q8_0.gguf" in lines
    assert [line for line in lines if line.startswith("PARAMETER stop")] == ['PARAMETER stop "<|im_end|>"']
    assert text.count('"""') == 4
    with pytest.raises(SnaketuneError, match="triple quotes"):
        write_modelfile(tmp_path / "bad.Modelfile", llama_export["ggufs"]["q8_0"],
                        llama_export["merged"], 'say """')


GO_HARNESS = r"""package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

// Stand-ins for Ollama's api types; String() returns the JSON the test hands over, so the comparison
// is about the template's tags and newlines, not Go's JSON spacing.
type Raw string

func (r Raw) String() string { return string(r) }

type ToolCallFunction struct {
	Name      string
	Arguments Raw
}
type ToolCall struct{ Function ToolCallFunction }
type Message struct {
	Role      string
	Content   string
	ToolCalls []ToolCall
}
type Tool struct{ Function Raw }

func main() {
	tpl, _ := os.ReadFile(os.Args[1])
	data, _ := os.ReadFile(os.Args[2])
	var cases []struct {
		System   string
		Tools    []string
		Messages []struct {
			Role      string
			Content   string
			ToolCalls []struct{ Name, Arguments string }
		}
	}
	if err := json.Unmarshal(data, &cases); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(string(tpl)))
	var outs []string
	for _, c := range cases {
		var msgs []Message
		for _, m := range c.Messages {
			msg := Message{Role: m.Role, Content: m.Content}
			for _, tc := range m.ToolCalls {
				msg.ToolCalls = append(msg.ToolCalls, ToolCall{ToolCallFunction{tc.Name, Raw(tc.Arguments)}})
			}
			msgs = append(msgs, msg)
		}
		var tools []Tool
		for _, s := range c.Tools {
			tools = append(tools, Tool{Raw(s)})
		}
		var b strings.Builder
		values := map[string]any{"System": c.System, "Messages": msgs, "Tools": tools,
			"Response": "", "Prompt": ""}
		if err := t.Execute(&b, values); err != nil {
			panic(err)
		}
		outs = append(outs, b.String())
	}
	enc, _ := json.Marshal(outs)
	fmt.Println(string(enc))
}
"""


@pytest.mark.parametrize("form", ["chatml", "chatml-turns", "gemma"])
def test_ollama_template_renders_like_the_chat_template(form, tmp_path):
    """The Modelfile's Go template, run by Go's text/template, gives the Jinja template's text: the project
    template's twin, and the generated twin of a turn-based format with (ChatML) and without (Gemma: the
    system prompt folded into the first user turn) a system role. Ollama adds the bos itself."""
    import subprocess

    from transformers.utils.chat_template_utils import render_jinja_template

    from snaketune.chat_format import CHATML, GEMMA, ChatFormat, project_format, turns_template
    from snaketune.demo import TOOLS
    from snaketune.modelfile import CHATML_TOOLS_TEMPLATE, turns_go_template

    turns = GEMMA if form == "gemma" else CHATML
    fmt = project_format() if form == "chatml" else ChatFormat(form, turns_template(turns, form),
                                                                turns.end_of_turn, turns=turns)
    go_template = CHATML_TOOLS_TEMPLATE if form == "chatml" else turns_go_template(turns)

    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go)")
    tools = [TOOLS["mesen2.run"], TOOLS["mesen2.read_memory"]]
    run = {"type": "function", "function": {"name": "mesen2.run", "arguments": '{"frames": 60}'}}
    read = {"type": "function", "function": {"name": "mesen2.read_memory",
                                             "arguments": '{"region": "wram", "address": "0x7E0010"}'}}
    chats = [
        ("sys", tools, [{"role": "user", "content": "Run 60 frames."}]),
        ("sys", [], [{"role": "user", "content": "Hi"}]),
        ("", tools, [{"role": "user", "content": "Run 60 frames."}]),
        ("", [], [{"role": "user", "content": "Hi"}]),
        ("sys", tools, [{"role": "user", "content": "Run."},
                        {"role": "assistant", "content": None, "tool_calls": [run]},
                        {"role": "tool", "content": "ok"}]),
        ("sys", tools, [{"role": "user", "content": "Run."},
                        {"role": "assistant", "content": "Sure.", "tool_calls": [run, read]},
                        {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "Done."},
                        {"role": "user", "content": "Again"}]),
        ("sys", tools, [{"role": "user", "content": "Run."},
                        {"role": "assistant", "content": None, "tool_calls": [run, read]},
                        {"role": "tool", "content": "ok"}]),
    ]
    cases, expected = [], []
    for system, chat_tools, messages in chats:
        messages = ([{"role": "system", "content": system}] if system else []) + messages
        expected.append(fmt.render(None, messages, chat_tools, add_generation_prompt=True)
                        .removeprefix(turns.bos))
        functions = []
        # the function part of Jinja's tojson, which Ollama's {{ .Function }} stands for
        for tool in chat_tools:
            text = render_jinja_template([[{"role": "user", "content": ""}]], tools=[tool],
                                         chat_template="{{ tools[0] | tojson }}")[0][0]
            functions.append(text[text.index('"function": ') + len('"function": '):-1])
        cases.append({"System": system, "Tools": functions, "Messages": [
            {"Role": m["role"], "Content": m.get("content") or "",
             "ToolCalls": [{"Name": c["function"]["name"], "Arguments": c["function"]["arguments"]}
                           for c in m.get("tool_calls") or []]} for m in messages]})
    (tmp_path / "main.go").write_text(GO_HARNESS)
    (tmp_path / "template.txt").write_text(go_template)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run(["go", "run", "main.go", "template.txt", "cases.json"], cwd=tmp_path,
                          capture_output=True, text=True,
                          env={**__import__("os").environ, "GOCACHE": str(tmp_path / "gocache"),
                                          "GOFLAGS": "-mod=mod", "GO111MODULE": "off"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected
