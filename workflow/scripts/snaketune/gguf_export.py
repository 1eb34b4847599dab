"""GGUF files for llama.cpp / Ollama: a merged checkpoint (f32, f16, q8_0) or a LoRA adapter alone.

Llama, Qwen2 and Mistral checkpoints are written with the ``gguf`` package, each tensor streamed from
the safetensors file in row blocks (memory holds one block, never a whole tensor or model). Bytes
depend only on the inputs (no time, no paths), so the reproducibility checks can hash them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SnaketuneError
from .files import atomic_path

__all__ = [
    "ARCHITECTURES", "SUPPORTED_FAMILIES", "QUANTS", "LORA_ALPHA_KEY", "QWEN2_REGEX", "LLAMA3_REGEX",
    "local_model_dir", "model_spec", "encode", "widen", "checkpoint_tensor", "tokenizer_metadata",
    "write_model_gguf", "write_lora_gguf"
]

log = logging.getLogger("snaketune.gguf")

# HF model_type -> GGUF architecture; llama.cpp runs Mistral checkpoints as llama (as its converter does).
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
SUPPORTED_FAMILIES = tuple(ARCHITECTURES)
QUANTS = ("f32", "f16", "q8_0")
LORA_ALPHA_KEY = "adapter.lora.alpha"

# Pre-tokenizer split regexes as tokenizer.json spells them -> llama.cpp's name for the same split.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# (split regex, model.ignore_merges) -> name; llama.cpp ties ignore_merges to the name (llama-bpe: on).
PRE_TOKENIZERS = {(QWEN2_REGEX, False): "qwen2", (LLAMA3_REGEX, True): "llama-bpe",
                  (LLAMA3_REGEX, False): "smaug-bpe", (GPT2_REGEX, False): "gpt-2"}
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
EXPORT_FIX = (f"GGUF export supports the {', '.join(SUPPORTED_FAMILIES)} families; use such a base, "
              "or set export.enabled: false")


def _gguf():
    import gguf

    return gguf


# --- where the weights are -----------------------------------------------------------------------

def local_model_dir(name_or_path, revision=None, *, config_path: str | None = None) -> Path:
    """A local directory holding the checkpoint: the path itself, or its hub snapshot (config, tokenizer,
    weights).

    ``config_path``: the config file that names the checkpoint (the base), for errors about it.
    """
    from .modeling import check_local_dir, hub_error, looks_local

    name = str(name_or_path)
    if looks_local(name):
        return check_local_dir(name, config_path=config_path)
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(name, revision=revision,
                                 allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer*"])
    except Exception as err:  # network, auth, missing revision: one clear line either way
        raise hub_error(name, revision, err, config_path=config_path) from err
    return check_local_dir(path, config_path=config_path)


# safetensors dtype -> numpy dtype of its bytes. bf16 has no numpy type: its raw bits are carried under
# BF16 (a 2-byte structured dtype), widened exactly to float32 (or mapped straight to f16) by ``encode``.
BF16 = np.dtype([("bf16", "<u2")])
_SAFETENSORS_DTYPES = {"BF16": BF16, "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
BLOCK_BYTES = 1 << 20  # source bytes per streamed row block


@dataclass(frozen=True)
class _StoredTensor:
    file: Path
    dtype: str      # safetensors dtype name
    shape: tuple
    start: int      # absolute byte offset of the data in ``file``
    nbytes: int


def _read_header(file: Path) -> dict[str, _StoredTensor]:
    """A safetensors file's tensor table (8-byte little-endian header size, JSON header, data)."""
    fix = "save the model with save_pretrained(..., safe_serialization=True)"
    size = file.stat().st_size
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or n > size - 8:
                raise ValueError(f"a header of {n} bytes in a file of {size}")
            header = json.loads(fh.read(n))
        base = 8 + n
        table = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
            if not 0 <= begin <= end <= size - base:
                raise ValueError(f"{key}: data {begin}..{end} outside the file")
            table[key] = _StoredTensor(file, info["dtype"], shape, base + begin, end - begin)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SnaketuneError(file, f"is not a readable safetensors file ({err})", fix=fix) from err
    return table


class SafetensorsDir:
    """Every tensor of a (possibly sharded) safetensors checkpoint, read one at a time.

    Reads go through plain file reads (no memory map, no torch), whole or in row blocks, so a tensor's
    pages never stay in the process's memory once it has been written out.
    """

    def __init__(self, path, names_prefix: str = ""):
        self.path = Path(path)
        files = sorted(self.path.glob("*.safetensors")) if self.path.is_dir() else [self.path]
        if not files:
            raise SnaketuneError(self.path, "holds no *.safetensors weights",
                                 fix="save the model with save_pretrained(..., safe_serialization=True)")
        self._tensors: dict[str, _StoredTensor] = {}
        for file in files:
            self._tensors.update(_read_header(file))

    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name) -> bool:
        return name in self._tensors

    def shape(self, name) -> tuple[int, ...]:
        return self._tensors[name].shape

    def _stored(self, name) -> tuple[_StoredTensor, np.dtype]:
        t = self._tensors[name]
        dtype = _SAFETENSORS_DTYPES.get(t.dtype)
        if dtype is None:
            raise SnaketuneError(t.file, f"tensor {name!r} is stored as {t.dtype}; GGUF export reads "
                                 f"{', '.join(_SAFETENSORS_DTYPES)} weights", field=name,
                                 fix="save the merged model in bfloat16, float16 or float32")
        if t.nbytes != math.prod(t.shape) * dtype.itemsize:
            raise SnaketuneError(t.file, f"tensor {name!r}: {t.nbytes} bytes for shape {t.shape} {t.dtype}",
                                 field=name, fix="re-save the model (the file is damaged)")
        return t, dtype

    def raw_blocks(self, name, multiple: int = 1):
        """The tensor in its stored dtype (``BF16`` for bfloat16), as blocks of whole rows (a multiple of
        ``multiple`` rows, about ``BLOCK_BYTES`` each). Each block is a view of one reused buffer: use it
        before asking for the next."""
        t, dtype = self._stored(name)
        rows = t.shape[0] if t.shape else 1
        row_bytes = t.nbytes // rows if rows else 0
        step = max(1, BLOCK_BYTES // max(row_bytes * multiple, 1)) * multiple
        buf = np.empty(min(step, rows) * row_bytes, dtype=np.uint8)
        with open(t.file, "rb", buffering=0) as fh:
            for first in range(0, rows, step):
                n = min(step, rows - first)
                view = memoryview(buf)[: n * row_bytes]
                fh.seek(t.start + first * row_bytes)
                got = 0
                while got < len(view):
                    k = fh.readinto(view[got:])
                    if not k:
                        raise SnaketuneError(t.file, f"tensor {name!r} ends early", field=name,
                                             fix="re-save the model (the file is damaged)")
                    got += k
                yield buf[: n * row_bytes].view(dtype).reshape((n, *t.shape[1:]) if t.shape else ())

    def get(self, name) -> np.ndarray:
        """The tensor as float32 numpy (bf16 and f16 widen exactly), read whole into its own buffer."""
        t = self._tensors[name]
        blocks = list(self.raw_blocks(name, multiple=max(t.shape[0] if t.shape else 1, 1)))
        return widen(blocks[0]) if blocks else np.zeros(t.shape, dtype=np.float32)


def widen(data: np.ndarray) -> np.ndarray:
    """Stored values as float32: bf16 bits shifted into place (exact), f16 / f32 / f64 cast."""
    if data.dtype == BF16:
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return data.astype(np.float32, copy=False)


# --- the model's shape ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    model_type: str
    arch: str
    n_layers: int
    n_head: int
    n_kv_head: int
    hidden: int
    ff: int
    context: int
    head_dim: int
    rms_eps: float
    vocab_size: int
    tied: bool
    rope: dict = field(default_factory=dict)
    attention_bias: bool = False


def read_config(model_dir) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise SnaketuneError(path, "not found: the directory is not a transformers checkpoint",
                             fix="point at a directory written by save_pretrained")
    return json.loads(path.read_text(encoding="utf-8"))


def rope_parameters(cfg: dict) -> dict:
    """RoPE settings as transformers 5 writes them (``rope_parameters``), read from 4.x configs too."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    rope.setdefault("rope_type", "default")
    if rope.get("rope_theta") is None:
        rope["rope_theta"] = cfg.get("rope_theta", 10000.0)
    return rope


def model_spec(model_dir) -> ModelSpec:
    """What the GGUF header needs, from config.json; an unsupported family stops here."""
    path = Path(model_dir) / "config.json"
    cfg = read_config(model_dir)
    model_type = cfg.get("model_type")
    if model_type not in ARCHITECTURES:
        archs = ", ".join(cfg.get("architectures") or []) or "no architectures listed"
        raise SnaketuneError(path, f"architecture {model_type!r} ({archs}) cannot be exported to GGUF",
                             field="model_type", fix=EXPORT_FIX)
    rope = rope_parameters(cfg)
    if rope["rope_type"] not in ROPE_TYPES:
        raise SnaketuneError(path, f"RoPE type {rope['rope_type']!r} is not supported by the GGUF writer",
                             field="rope_parameters.rope_type", fix=f"use one of {', '.join(ROPE_TYPES)}")
    if model_type == "qwen2" and cfg.get("use_sliding_window"):
        raise SnaketuneError(path, "Qwen2 sliding-window attention has no GGUF equivalent here",
                             field="use_sliding_window", fix="set use_sliding_window: false")
    n_head = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    if model_type == "mistral" and cfg.get("sliding_window"):
        log.warning("mistral sliding_window=%s: llama.cpp's llama architecture attends to the full context",
                    cfg["sliding_window"])
    return ModelSpec(
        model_type=model_type, arch=ARCHITECTURES[model_type], n_layers=int(cfg["num_hidden_layers"]),
        n_head=n_head, n_kv_head=int(cfg.get("num_key_value_heads") or n_head), hidden=hidden,
        ff=int(cfg["intermediate_size"]), context=int(cfg.get("max_position_embeddings", 4096)),
        head_dim=head_dim, rms_eps=float(cfg.get("rms_norm_eps", 1e-6)), vocab_size=int(cfg["vocab_size"]),
        tied=bool(cfg.get("tie_word_embeddings", False)), rope=rope,
        attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
    )


def _arch_enum(arch: str):
    gguf = _gguf()
    return {name: enum for enum, name in gguf.MODEL_ARCH_NAMES.items()}[arch]


def add_hparams(writer, spec: ModelSpec) -> None:
    gguf = _gguf()
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.hidden)
    writer.add_block_count(spec.n_layers)
    writer.add_feed_forward_length(spec.ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_kv_head)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_rope_freq_base(float(spec.rope["rope_theta"]))
    writer.add_rope_dimension_count(spec.head_dim)
    if spec.head_dim != spec.hidden // spec.n_head:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    writer.add_vocab_size(spec.vocab_size)
    rope_type, factor = spec.rope["rope_type"], spec.rope.get("factor")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        writer.add_rope_scaling_orig_ctx_len(int(spec.rope["original_max_position_embeddings"]))


def llama3_rope_factors(spec: ModelSpec) -> np.ndarray:
    """Llama 3.1+ frequency scaling, which llama.cpp reads from a ``rope_freqs`` tensor."""
    rope = spec.rope
    base, dim = float(rope["rope_theta"]), spec.head_dim
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved RoPE layout (k with the KV head count)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def permuted_heads(hf_name: str, spec: ModelSpec) -> int | None:
    """The head count whose rows llama.cpp's layout reorders within each head (llama q/k), else None."""
    if spec.arch == "llama":
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return spec.n_head
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return spec.n_kv_head
    return None


def to_gguf_layout(hf_name: str, data: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Rows reordered the way llama.cpp's graph expects (llama family q/k only)."""
    heads = permuted_heads(hf_name, spec)
    return data if heads is None else llama_permute(data, heads)


@functools.lru_cache(maxsize=8)
def _tensor_name_map(arch: str, n_layers: int):
    """gguf's HF -> GGUF name table for one architecture and depth (costly to build: once per model)."""
    return _gguf().get_tensor_name_map(_arch_enum(arch), n_layers)


def gguf_tensor_name(hf_name: str, spec: ModelSpec, path=None) -> str:
    mapped = _tensor_name_map(spec.arch, spec.n_layers).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise SnaketuneError(path, f"tensor {hf_name!r} has no place in a GGUF {spec.arch} model",
                             field=hf_name, fix=EXPORT_FIX)
    return mapped


def tensor_type(shape, quant: str):
    """f32 for vectors; Q8_0 only where rows are whole 32-blocks (f16 otherwise), as llama.cpp's converter
    does."""
    q = _gguf().GGMLQuantizationType
    if len(shape) == 1 or quant == "f32":
        return q.F32
    if quant == "f16" or shape[-1] % 32:
        return q.F16
    return q.Q8_0


def nbytes(shape, qtype) -> int:
    gguf = _gguf()
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


@functools.lru_cache(maxsize=1)
def _bf16_to_f16() -> np.ndarray:
    """Every bf16 bit pattern's f16 encoding, as numpy's float32 -> float16 cast gives it (bf16 widens to
    float32 exactly, so a lookup equals widen-then-cast bit for bit, NaN and overflow included)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return widen(np.arange(1 << 16, dtype=np.uint16).view(BF16)).astype(np.float16)


def encode(data: np.ndarray, qtype) -> np.ndarray:
    """Values (float, or raw ``BF16`` bits) as the bytes of GGUF type ``qtype``; rows encode independently,
    so a tensor encoded in row blocks gives the same bytes as encoded whole."""
    gguf = _gguf()
    if data.dtype == BF16 and qtype == gguf.GGMLQuantizationType.F16:
        return np.take(_bf16_to_f16(), data.view(np.uint16))
    return gguf.quants.quantize(np.ascontiguousarray(widen(data), dtype=np.float32), qtype)


# --- tokenizer ----------------------------------------------------------------------------------

def _looks_special(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


def pre_tokenizer_name(tok_json: dict, path) -> str:
    """The ``tokenizer.ggml.pre`` under which llama.cpp splits text exactly as this tokenizer.json does."""
    pre = tok_json.get("pre_tokenizer") or {}
    ignore_merges = bool((tok_json.get("model") or {}).get("ignore_merges", False))

    def byte_level(node, use_regex: bool) -> bool:
        return (node.get("type") == "ByteLevel" and bool(node.get("use_regex", True)) == use_regex
                and not node.get("add_prefix_space", False))

    pattern = None
    if byte_level(pre, True):
        pattern = GPT2_REGEX
    parts = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Split" \
            and byte_level(parts[1], False) and not parts[0].get("invert", False) \
            and parts[0].get("behavior", "Isolated") == "Isolated":
        pattern = (parts[0].get("pattern") or {}).get("Regex")
    if (pattern, ignore_merges) in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[pattern, ignore_merges]
    described = json.dumps(pre, sort_keys=True)[:160] + f" with ignore_merges={ignore_merges}"
    raise SnaketuneError(path, f"pre-tokenizer {described} matches none that llama.cpp implements here",
                         field="pre_tokenizer",
                         fix="use a byte-level BPE tokenizer with the GPT-2, Qwen2 or Llama-3 split "
                             "(the supported bases' own tokenizers)")


def _merges(model: dict) -> list[str]:
    merges = model.get("merges") or []
    if merges and isinstance(merges[0], list):  # transformers >= 4.45 writes [a, b] pairs
        # a space inside a part is written as U+0120 + 256 the way llama.cpp reads it back
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]
    return list(merges)


def tokenizer_metadata(model_dir, vocab_size: int, chat_format=None) -> dict:
    """Tokens, types, merges, special ids, add-bos/eos and chat template for a byte-level BPE tokenizer.

    The chat template and the end-of-turn id come from ``chat_format`` (snaketune.chat_format), else from
    the directory's ``chat_format.json`` (adapter and merged directories), else its tokenizer's template.
    """
    from transformers import AutoTokenizer

    from .chat_format import FORMAT_FILE, load_format

    gguf = _gguf()
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise SnaketuneError(path, "not found: GGUF export needs the fast tokenizer's tokenizer.json",
                             fix="save the tokenizer with a fast tokenizer (tokenizer.save_pretrained)")
    tok_json = json.loads(path.read_text(encoding="utf-8"))
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else model.get("type")
        raise SnaketuneError(path, f"a {kind} tokenizer is not supported by the GGUF writer",
                             field="model.type",
                             fix="use a base with a byte-level BPE tokenizer (Qwen2.5, Llama 3.x)")
    normalizer = (tok_json.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        raise SnaketuneError(path, f"normalizer {normalizer!r} has no llama.cpp equivalent",
                             field="normalizer",
                             fix="use a byte-level BPE tokenizer without a normalizer (or NFC)")
    pre = pre_tokenizer_name(tok_json, path)

    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    added = tok_json.get("added_tokens") or []
    largest = max([*model["vocab"].values(), *(a["id"] for a in added)], default=-1)
    if largest >= vocab_size:
        raise SnaketuneError(path, f"token id {largest} does not fit the model's vocab_size {vocab_size}",
                             field="vocab_size", fix="resize the model's embeddings to the tokenizer")
    for token, idx in model["vocab"].items():
        tokens[idx], types[idx] = token, int(gguf.TokenType.NORMAL)
    for item in added:
        special = item.get("special") or _looks_special(item["content"])
        tokens[item["id"]] = item["content"]
        types[item["id"]] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    if chat_format is None and (model_dir / FORMAT_FILE).is_file():
        chat_format = load_format(model_dir)
    if chat_format is not None:  # a pad that is no stop token, as training had (modeling.set_pad_token)
        from .modeling import set_pad_token

        set_pad_token(hf, chat_format.stop_ids(hf))
    probe = "snaketune probe"
    plain = hf(probe, add_special_tokens=False)["input_ids"]
    full = hf(probe, add_special_tokens=True)["input_ids"]
    start = full.index(plain[0]) if plain and plain[0] in full else 0
    add_bos, add_eos = start > 0, len(full) > start + len(plain)
    if full[start:start + len(plain)] != plain or start > 1 or len(full) - start - len(plain) > 1:
        raise SnaketuneError(path, f"the tokenizer adds {full} around {plain}; only one BOS / EOS is "
                             "supported", field="post_processor",
                             fix="use a tokenizer that adds at most BOS and EOS")
    special_ids = {kind: getattr(hf, f"{kind}_token_id", None) for kind in ("bos", "eos", "pad", "unk")}
    if add_bos:
        special_ids["bos"] = full[0]
    template = hf.chat_template if isinstance(hf.chat_template, str) else None
    if chat_format is not None:
        template = chat_format.template
        special_ids["eot"] = hf.convert_tokens_to_ids(chat_format.end_of_turn)
    return {"pre": pre, "tokens": tokens, "types": types, "merges": _merges(model),
            "special_ids": {k: int(v) for k, v in special_ids.items() if v is not None},
            "add_bos": add_bos, "add_eos": add_eos, "chat_template": template}


def add_tokenizer(writer, meta: dict) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    for kind in ("bos", "eos", "unk", "pad", "eot"):
        if kind in meta["special_ids"]:
            getattr(writer, f"add_{kind}_token_id")(meta["special_ids"][kind])
    writer.add_add_bos_token(meta["add_bos"])
    writer.add_add_eos_token(meta["add_eos"])
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])


# --- writing ------------------------------------------------------------------------------------

@dataclass
class PlannedTensor:
    name: str             # GGUF name
    shape: tuple          # numpy (row-major) shape
    qtype: object         # GGMLQuantizationType
    load: object = None   # () -> float32 numpy array in GGUF layout (small or computed tensors)
    blocks: object = None  # () -> iterator of row blocks in GGUF layout (streamed from the checkpoint)

    def chunks(self):
        """The tensor's GGUF bytes, one encoded row block at a time."""
        if self.blocks is None:
            data = self.load()
            if tuple(data.shape) != tuple(self.shape):
                raise AssertionError(f"{self.name}: planned {self.shape}, loaded {data.shape}")
            yield encode(data, self.qtype)
            return
        rows = 0
        for block in self.blocks():
            if tuple(block.shape[1:]) != tuple(self.shape[1:]):
                raise AssertionError(f"{self.name}: planned {self.shape}, loaded rows of {block.shape[1:]}")
            rows += block.shape[0] if block.ndim else 1
            yield encode(block, self.qtype)
        if rows != (self.shape[0] if self.shape else 1):
            raise AssertionError(f"{self.name}: planned {self.shape}, loaded {rows} rows")


def checkpoint_tensor(name: str, weights: SafetensorsDir, hf_name: str, qtype,
                      spec: ModelSpec) -> PlannedTensor:
    """A checkpoint tensor streamed in blocks of whole rows (whole heads where llama's q/k permutation
    reorders rows within each head), so memory holds one block, never the tensor."""
    shape = weights.shape(hf_name)
    heads = permuted_heads(hf_name, spec)
    if heads is None:
        return PlannedTensor(name, shape, qtype, blocks=lambda: weights.raw_blocks(hf_name))
    per_head = shape[0] // heads

    def blocks():
        for block in weights.raw_blocks(hf_name, multiple=per_head):
            yield llama_permute(block, block.shape[0] // per_head)

    return PlannedTensor(name, shape, qtype, blocks=blocks)


def stream_gguf(out_path, arch: str, kv, tensors: list[PlannedTensor]) -> int:
    """Header, metadata and tensor infos first, then each tensor read, encoded and written block by block.

    ``kv(writer)`` adds the metadata. Peak memory is one row block (plus its encoded copy) beyond the
    metadata; the file appears at ``out_path`` only once complete. The tensor data is laid out exactly as
    ``GGUFWriter.write_tensor_data`` lays it out (each tensor aligned, then padded to the alignment).
    """
    gguf = _gguf()
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(None, arch)
        kv(writer)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes(t.shape, t.qtype),
                                   raw_dtype=t.qtype)
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # write_tensor_data takes a whole tensor; the same steps by hand (gguf 0.19's one output file and
        # its tensor-info table, consumed in order) take it in blocks
        (fout,) = writer.fout
        infos = writer.tensors[0]
        for t in tensors:
            info = infos.pop(t.name)
            writer.write_padding(fout, fout.tell())
            written = 0
            for chunk in t.chunks():
                fout.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                written += chunk.nbytes
            if written != info.nbytes:
                raise AssertionError(f"{t.name}: planned {info.nbytes} bytes, wrote {written}")
            writer.write_padding(fout, written)
        writer.close()
        size = tmp.stat().st_size
    return size


def _order(hf_name: str):
    m = re.search(r"\.layers\.(\d+)\.", hf_name)
    if hf_name.endswith("embed_tokens.weight"):
        return (0, 0, hf_name)
    return (1, int(m.group(1)), hf_name) if m else (2, 0, hf_name)


def write_model_gguf(source, out_path, quant: str, name: str | None = None, revision=None,
                     untie: bool = False, template: str = "model", chat_template: str | None = None, *,
                     config_path: str | None = None) -> dict:
    """Convert a transformers checkpoint (local dir or hub id) into one GGUF file of type ``quant``.

    ``untie`` writes ``output.weight`` even for tied embeddings: a base GGUF that LoRA adapters
    touching embed_tokens / lm_head are applied to needs the two apart. ``template``: ``model`` keeps
    the checkpoint's chat format (a merged model's), ``format`` writes the chat format the base resolves
    to under ``chat_template`` (base_model.chat_template: what the adapters were trained in).
    ``config_path``: the config file, where ``source`` and ``quant`` come from it (errors name it).
    """
    if quant not in QUANTS:
        raise SnaketuneError(config_path, f"unknown GGUF type {quant!r}", field="export.quants",
                             fix=f"use one of {', '.join(QUANTS)}")
    gguf = _gguf()
    model_dir = local_model_dir(source, revision, config_path=config_path)
    spec = model_spec(model_dir)
    weights = SafetensorsDir(model_dir)
    if template not in ("model", "format"):
        raise ValueError(f"template must be 'model' or 'format', not {template!r}")
    fmt = None
    if template == "format":
        from .chat_format import format_of
        from .modeling import load_tokenizer

        fmt = format_of(load_tokenizer(model_dir, chat_template=chat_template, config_path=config_path))
    meta = tokenizer_metadata(model_dir, spec.vocab_size, fmt)

    planned: list[PlannedTensor] = []
    skip = {"lm_head.weight"} if spec.tied else set()
    for hf_name in sorted(weights.names(), key=_order):
        if hf_name in skip or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        planned.append(checkpoint_tensor(gguf_tensor_name(hf_name, spec, model_dir), weights, hf_name,
                                         tensor_type(weights.shape(hf_name), quant), spec))
    if (spec.tied and untie) or (not spec.tied and "lm_head.weight" not in weights):
        if not spec.tied:
            log.warning("no lm_head.weight although tie_word_embeddings is false: "
                        "writing the embeddings as output")
        embed = "model.embed_tokens.weight"
        planned.append(checkpoint_tensor("output.weight", weights, embed,
                                         tensor_type(weights.shape(embed), quant), spec))
    if spec.rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(spec)
        planned.append(PlannedTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                                     factors.shape, gguf.GGMLQuantizationType.F32, load=lambda: factors))

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]

    def kv(writer):
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or Path(str(source)).name)
        add_hparams(writer, spec)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_tokenizer(writer, meta)

    size = stream_gguf(out_path, spec.arch, kv, planned)
    log.info("%s: %s %s GGUF, %d tensors, %.1f MiB, pre-tokenizer %s%s", out_path, spec.model_type, quant,
             len(planned), size / 2**20, meta["pre"], " (untied output)" if spec.tied and untie else "")
    return {"path": str(out_path), "arch": spec.arch, "quant": quant, "tensors": len(planned), "bytes": size,
            "pre_tokenizer": meta["pre"]}


# --- LoRA adapters ------------------------------------------------------------------------------

def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name or its dotted suffix."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _peft_module(key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> (module, 'lora_A');
    a module saved whole ('base_model.model.lm_head.weight') -> ('lm_head', 'full')."""
    key = key.removeprefix("base_model.model.")
    for part in (".lora_A.weight", ".lora_B.weight", ".lora_embedding_A", ".lora_embedding_B"):
        if key.endswith(part):
            return key[: -len(part)], part.strip(".").split(".")[0]
    return key.removesuffix(".weight"), "full"


def write_lora_gguf(adapter_dir, base, out_path, name: str | None = None, revision=None, *,
                    config_path: str) -> dict:
    """The adapter alone as a GGUF LoRA that llama.cpp applies on top of the base GGUF.

    PEFT's per-module scaling (alpha / r, rank / alpha patterns, rsLoRA) is folded into lora_b and the
    file's alpha is 0, which llama.cpp reads as scale 1. Modules saved whole (``modules_to_save``:
    embed_tokens, lm_head) become exact full-rank pairs of their difference from the base; the base
    GGUF must then hold ``output.weight`` apart (``write_model_gguf(untie=True)``). ``base`` comes from
    the config file ``config_path``.
    """
    from .modeling import read_adapter_config

    gguf = _gguf()
    adapter_dir = Path(adapter_dir)
    cfg_path, acfg = read_adapter_config(adapter_dir)
    if acfg.get("peft_type", "LORA") != "LORA" or acfg.get("use_dora"):
        kind = "DoRA" if acfg.get("use_dora") else acfg.get("peft_type")
        raise SnaketuneError(cfg_path, f"adapter type {kind} has no GGUF LoRA form", field="peft_type",
                             fix="train a plain LoRA adapter")
    base_dir = local_model_dir(base, revision, config_path=config_path)
    spec = model_spec(base_dir)
    adapter = SafetensorsDir(adapter_dir / "adapter_model.safetensors")
    base_weights = SafetensorsDir(base_dir)

    modules = _adapter_modules(adapter, adapter_dir)
    planned: list[PlannedTensor] = []
    summary = {"lora": 0, "full": 0}
    for module in sorted(modules, key=lambda m: _order(m + ".weight")):
        parts = modules[module]
        hf_name = module + ".weight"
        target = gguf_tensor_name(hf_name, spec, adapter_dir)
        if "full" in parts:
            summary["full"] += 1
            planned.extend(_full_delta_pair(target, hf_name, parts["full"], adapter, base_weights, spec))
        else:
            summary["lora"] += 1
            planned.extend(_lora_pair(module, parts, target, adapter, acfg, spec, adapter_dir))

    def kv(writer):
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name or adapter_dir.name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)

    size = stream_gguf(out_path, spec.arch, kv, planned)
    log.info("%s: LoRA GGUF for %s, %d LoRA pairs, %d whole modules, %.1f MiB", out_path, spec.arch,
             summary["lora"], summary["full"], size / 2**20)
    return {"path": str(out_path), "arch": spec.arch, "tensors": len(planned), "bytes": size, **summary}


def _adapter_modules(adapter: SafetensorsDir, adapter_dir: Path) -> dict[str, dict[str, str]]:
    """{module: {part: tensor name}} of a PEFT adapter's tensors (lora_A / lora_B / ... or full)."""
    modules: dict[str, dict[str, str]] = {}
    for key in adapter.names():
        module, part = _peft_module(key)
        if part == "full" and not key.endswith(".weight") or "lora_magnitude" in key:
            raise SnaketuneError(adapter_dir / "adapter_model.safetensors", f"unexpected tensor {key!r}",
                                 field=key,
                                 fix="export supports LoRA A/B pairs and whole embed / lm_head modules")
        modules.setdefault(module, {})[part] = key
    return modules


def _lora_pair(module: str, parts: dict, target: str, adapter: SafetensorsDir, acfg: dict, spec: ModelSpec,
               adapter_dir: Path) -> list[PlannedTensor]:
    """A module's LoRA A / B as GGUF tensors, PEFT's scaling folded into B."""
    f32 = _gguf().GGMLQuantizationType.F32
    hf_name = module + ".weight"
    a_key = parts.get("lora_A") or parts.get("lora_embedding_A")
    b_key = parts.get("lora_B") or parts.get("lora_embedding_B")
    if not a_key or not b_key:
        raise SnaketuneError(adapter_dir, f"{module} has only one of lora_A / lora_B", field=module,
                             fix="re-save the adapter")
    rank = adapter.shape(a_key)[0]
    r = _pattern_value(acfg.get("rank_pattern"), module, acfg.get("r", 8))
    alpha = _pattern_value(acfg.get("alpha_pattern"), module, acfg.get("lora_alpha", 8))
    scale = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
    if rank != r:
        log.warning("%s: rank %d in the weights, %d in the config; using the config's scaling",
                    module, rank, r)
    if "lora_embedding_A" in parts:
        # embeddings: llama.cpp gathers rows of A (vocab x r) and multiplies by B (hidden x r)
        return [PlannedTensor(target + ".lora_a", adapter.shape(a_key)[::-1], f32,
                              lambda: adapter.get(a_key).T),
                PlannedTensor(target + ".lora_b", adapter.shape(b_key), f32,
                              lambda: adapter.get(b_key) * scale)]
    # B's rows are the weight's rows, so they take the same q/k permutation as the weight
    return [PlannedTensor(target + ".lora_a", adapter.shape(a_key), f32, lambda: adapter.get(a_key)),
            PlannedTensor(target + ".lora_b", adapter.shape(b_key), f32,
                          lambda: to_gguf_layout(hf_name, adapter.get(b_key) * scale, spec))]


def _full_delta_pair(target: str, hf_name: str, key: str, adapter, base_weights, spec) -> list[PlannedTensor]:
    """A module saved whole as an exact LoRA pair: the difference from the base and an identity."""
    gguf = _gguf()
    base_name = hf_name
    if base_name not in base_weights and hf_name == "lm_head.weight" and spec.tied:
        base_name = "model.embed_tokens.weight"
    if base_name not in base_weights:
        raise SnaketuneError(base_weights.path,
                             f"the adapter replaces {hf_name} but the base has no such tensor",
                             field=hf_name, fix="export the adapter against the base it was trained on")
    rows, cols = adapter.shape(key)

    def delta():
        return adapter.get(key) - base_weights.get(base_name)

    f32 = gguf.GGMLQuantizationType.F32
    if target.startswith("token_embd"):
        # llama.cpp gathers rows of A per token and multiplies by B: A = delta (vocab x hidden), B = I
        return [PlannedTensor(target + ".lora_a", (rows, cols), f32, delta),
                PlannedTensor(target + ".lora_b", (cols, cols), f32, lambda: np.eye(cols, dtype=np.float32))]
    return [PlannedTensor(target + ".lora_a", (cols, cols), f32, lambda: np.eye(cols, dtype=np.float32)),
            PlannedTensor(target + ".lora_b", (rows, cols), f32,
                          lambda: to_gguf_layout(hf_name, delta(), spec))]
