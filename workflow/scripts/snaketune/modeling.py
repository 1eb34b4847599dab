"""Base models: load a hub id or a local directory the same way, and build the embedded tiny base."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from .chat_template import (
    CHAT_TEMPLATE,
    END_OF_TURN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TEMPLATE_TOKENS,
    apply_template,
    build_messages,
)
from .errors import SnaketuneError
from .files import atomic_path, read_jsonl, sha256_tree

__all__ = [
    "looks_local", "check_local_dir", "hub_error", "load_tokenizer", "set_pad_token", "quantization_config",
    "load_base_model", "load_base", "read_adapter_config", "base_width",
    "base_identity", "readable_tree", "corpus_texts",
    "train_tokenizer", "tiny_model_config", "build_tiny_base"
]

log = logging.getLogger("snaketune.modeling")

# Qwen2's pre-tokenizer: digits one by one, words with one leading non-letter, newlines apart.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
HUB_FIX = ("download the model once (hf download <id>) and set base_model.name_or_path to that local "
           "directory, or run with HF_HUB_OFFLINE=1 when it is in the Hugging Face cache, "
           "or set HF_TOKEN if the repository is gated or private")


# --- loading ------------------------------------------------------------------------------------

def looks_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``): exists, is absolute or relative-dotted, or deeper."""
    return (Path(name).exists() or name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
            or name.startswith("results/"))


def check_local_dir(path, *, config_path: str | None = None) -> Path:
    """A loadable local model directory holding safetensors weights, or a SnaketuneError saying why not.

    ``config_path``: the config file that names the directory (errors about the key point there).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SnaketuneError(config_path, f"base model directory {str(path)!r} does not exist",
                             field="base_model.name_or_path",
                             fix="point it at a local model directory (with config.json and *.safetensors), "
                                 "a hub id, or results/base/tiny")
    if not (path / "config.json").is_file():
        raise SnaketuneError(path, "is not a model directory (no config.json)",
                             field="base_model.name_or_path",
                             fix="point it at a directory written by save_pretrained")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        problem = (f"holds only pickled weights ({', '.join(pickles[:3])}); snaketune loads safetensors only"
                   if pickles else "holds no *.safetensors weights")
        raise SnaketuneError(path, problem, field="base_model.name_or_path",
                             fix="convert the weights once with save_pretrained(..., "
                                 "safe_serialization=True) in a trusted environment, or use a hub revision "
                                 "that ships safetensors")
    return path


def hub_error(name: str, revision, err: Exception, *, config_path: str | None = None) -> SnaketuneError:
    """The one-line error for a base the Hugging Face Hub could not give (offline, gated, missing)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    where = f"{name}@{revision}" if revision else name
    problem = (f"cannot load {where!r} from the Hugging Face Hub"
               f"{' (HF_HUB_OFFLINE is set and it is not cached)' if offline else ''}: {detail}")
    return SnaketuneError(config_path, problem, field="base_model.name_or_path", fix=HUB_FIX)


def _source(name_or_path: str, config_path: str | None) -> tuple[str, bool]:
    name = str(name_or_path)
    if looks_local(name):
        return str(check_local_dir(name, config_path=config_path)), True
    return name, False


def load_tokenizer(name_or_path, revision=None, trust_remote_code: bool = False, *,
                   config_path: str | None = None, chat_template: str | None = None):
    """The base's tokenizer with its chat format attached (snaketune.chat_format) and a pad token set.

    ``chat_template`` is ``base_model.chat_template`` (a family name or a file; None: the base's own).
    ``config_path``: the config file naming the base, for errors about ``base_model``.
    """
    from transformers import AutoTokenizer

    from .chat_format import attach_format, resolve_chat_format

    source, local = _source(name_or_path, config_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=None if local else revision,
                                                  trust_remote_code=trust_remote_code)
    except SnaketuneError:
        raise
    except (OSError, ValueError) as err:
        if local:
            raise SnaketuneError(source, f"cannot load the tokenizer: {err}", field="base_model.name_or_path",
                                 fix="save the tokenizer into the model directory "
                                     "(tokenizer.save_pretrained)")
        raise hub_error(source, revision, err, config_path=config_path) from err
    fmt = resolve_chat_format(tokenizer, {"chat_template": chat_template}, config_path=config_path,
                              base_name=str(name_or_path))
    attach_format(tokenizer, fmt)
    set_pad_token(tokenizer, fmt.stop_ids(tokenizer))
    return tokenizer


def set_pad_token(tokenizer, stops) -> None:
    """A pad token that is no stop token: padding must never look like the end of a turn (SmolLM2 pads
    with its eos, <|im_end|>, which is also its end-of-turn)."""
    from .chat_format import token_id

    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in stops:
        return
    for candidate in (PAD_TOKEN, tokenizer.unk_token, "<pad>"):
        if candidate and token_id(tokenizer, candidate) not in (None, *stops):
            tokenizer.pad_token = candidate
            return
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.warning("no pad token apart from the stop tokens: padding with %r", tokenizer.pad_token)


def torch_dtype(dtype: str):
    import torch

    return getattr(torch, DTYPES.get(dtype, dtype))


def quantization_config(quantization: str, compute_dtype: str = "fp32", *, config_path: str | None = None):
    """A BitsAndBytesConfig for ``4bit`` (nf4 + double quant, QLoRA) or ``8bit``; None for ``none``.

    Raises a SnaketuneError (about ``train.quantization`` in ``config_path``) where bitsandbytes is
    missing or cannot quantize on this machine.
    """
    if quantization in (None, "none"):
        return None
    field = "train.quantization"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library
        raise SnaketuneError(config_path, f"quantization {quantization} needs bitsandbytes, which cannot be "
                             f"imported here ({type(err).__name__}: {err})", field=field,
                             fix="pip install bitsandbytes (envs/train.yaml), "
                                 "or set quantization: none") from err
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch_dtype(compute_dtype))
    if quantization == "8bit":
        if not torch.cuda.is_available():
            raise SnaketuneError(config_path,
                                 "8-bit (LLM.int8) training needs a CUDA GPU; this machine has none",
                                 field=field, fix="use quantization: 4bit or none on CPU")
        return BitsAndBytesConfig(load_in_8bit=True)
    raise SnaketuneError(config_path, f"unknown quantization {quantization!r}", field=field,
                         fix="use none, 4bit or 8bit")


def load_base_model(name_or_path, revision=None, trust_remote_code: bool = False, dtype: str = "fp32",
                    quantization: str = "none", device: str | None = None,
                    attn_implementation: str | None = None, *, config_path: str | None = None):
    """The base as AutoModelForCausalLM from safetensors (hub id or local directory, the same code).

    ``config_path``: the config file naming the base and its quantization, for errors about them.
    """
    from transformers import AutoModelForCausalLM

    source, local = _source(name_or_path, config_path)
    kwargs = {"dtype": torch_dtype(dtype), "use_safetensors": True, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if not local and revision:
        kwargs["revision"] = revision
    qconfig = quantization_config(quantization, dtype, config_path=config_path)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": device or ("cuda:0" if _cuda() else "cpu")}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except SnaketuneError:
        raise
    except (OSError, ValueError, RuntimeError) as err:
        if qconfig is not None and not isinstance(err, OSError):
            raise SnaketuneError(config_path,
                                 f"bitsandbytes cannot load the base in {quantization} here: {err}",
                                 field="train.quantization",
                                 fix="use quantization: none on this machine") from err
        if local:
            raise SnaketuneError(source, f"cannot load the model: {err}", field="base_model.name_or_path",
                                 fix="check that the directory was written by save_pretrained "
                                     "with safetensors")
        raise hub_error(source, revision, err, config_path=config_path) from err
    if device and qconfig is None:
        model.to(device)
    if qconfig is not None:
        _keep_cpu_4bit_layout(model)
    return model


def _keep_cpu_4bit_layout(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel on a no-grad forward.

    The repack happens on the first eval-mode forward (e.g. the validation loss), fails for small
    layers, and leaves weights that training can no longer use; the training layout computes fine.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_base(base_cfg: dict, *, config_path: str | None = None, **kwargs):
    """(model, tokenizer) for ``config["base_model"]`` (from the config file ``config_path``)."""
    name, revision = base_cfg["name_or_path"], base_cfg.get("revision")
    trust = bool(base_cfg.get("trust_remote_code", False))
    tokenizer = load_tokenizer(name, revision, trust, config_path=config_path,
                               chat_template=base_cfg.get("chat_template"))
    model = load_base_model(name, revision, trust, config_path=config_path, **kwargs)
    return model, tokenizer


def read_adapter_config(adapter_dir) -> tuple[Path, dict]:
    """(path, contents) of a PEFT adapter directory's adapter_config.json; a clear error when it is
    missing."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.is_file():
        raise SnaketuneError(cfg_path, "not found: not a PEFT adapter directory",
                             fix="point at results/adapters/<specialist> written by the train rule")
    try:
        return cfg_path, json.loads(cfg_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise SnaketuneError(cfg_path, f"is not valid JSON ({err})",
                             fix="retrain the adapter (snakemake --forcerun train)") from err


def base_width(name_or_path, revision=None, trust_remote_code: bool = False) -> int | None:
    """The base's hidden size from its config (None where the config names none or cannot be read).

    What the device's ``auto`` training choices depend on (snaketune.devices.device_options); the load
    itself reports a base that cannot be read, with the file and the fix.
    """
    from transformers import AutoConfig

    name = str(name_or_path)
    kwargs = {"revision": revision} if revision and not looks_local(name) else {}
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError):
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = getattr(text, "hidden_size", None)
    return int(width) if isinstance(width, int) else None


def base_identity(name_or_path, revision=None) -> dict:
    """What names the base: the configured id, the pinned revision, and a content hash for local dirs."""
    name = str(name_or_path)
    sha = sha256_tree(name) if Path(name).is_dir() else None
    return {"name_or_path": name, "revision": revision, "sha256": sha}


def readable_tree(path) -> None:
    """Give a directory written through a private temp dir the modes the umask allows (like any output)."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [Path(path), *Path(path).rglob("*")]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


# --- the embedded tiny base ----------------------------------------------------------------------

_TOKEN_RE = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS + TEMPLATE_TOKENS, key=len,
                                                                        reverse=True)))


def corpus_texts(rows) -> list[str]:
    """The texts the tiny tokenizer learns from: every row rendered with the template, template tokens cut
    out."""
    texts = []
    for row in rows:
        messages, tools = build_messages(row, "", "all")
        texts.extend(piece for piece in _TOKEN_RE.split(apply_template(None, messages, tools)) if piece)
    return texts


def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE (Qwen2 pre-tokenizer) with the template's tokens, wrapped for transformers."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one thread: merges are then the same every run
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TEMPLATE_TOKENS), min_frequency=2, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEMPLATE_TOKENS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END_OF_TURN, pad_token=PAD_TOKEN,
                                        bos_token=None, unk_token=None, model_max_length=1 << 20,
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model_config(tiny_cfg: dict, tokenizer, *, config_path: str):
    """A Qwen2 (or Llama) config with the configured dimensions (``tiny_base`` in ``config_path``) and the
    tokenizer's special ids."""
    from transformers import LlamaConfig, Qwen2Config

    # vocab_size bounds the BPE; a small corpus stops merging earlier, and embedding rows no token uses
    # would only cost compute, so the model's vocabulary is the tokenizer's, rounded up to a multiple of 32.
    vocab = min(int(tiny_cfg.get("vocab_size", 2048)), -(-len(tokenizer) // 32) * 32)
    heads, kv = int(tiny_cfg.get("num_heads", 4)), int(tiny_cfg.get("num_kv_heads", 2))
    hidden = int(tiny_cfg.get("hidden_size", 128))
    if hidden % heads or heads % kv:
        raise SnaketuneError(config_path,
                             f"hidden_size {hidden}, num_heads {heads} and num_kv_heads {kv} do not "
                             "divide", field="tiny_base", fix="make hidden_size a multiple of num_heads and "
                                                             "num_heads a multiple of num_kv_heads")
    common = dict(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(tiny_cfg.get("intermediate_size", 352)),
        num_hidden_layers=int(tiny_cfg.get("num_layers", 2)), num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=int(tiny_cfg.get("max_position_embeddings", 2048)), tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN), initializer_range=0.02, rms_norm_eps=1e-6,
    )
    if tiny_cfg.get("architecture", "qwen2") == "llama":
        return LlamaConfig(**common)
    return Qwen2Config(**common, use_sliding_window=False)


def build_tiny_base(train_path, out_dir, tiny_cfg: dict, *, config_path: str) -> None:
    """Train the tokenizer on the training split, random-init the model (seeded), save both atomically.

    ``tiny_cfg`` is the ``tiny_base`` block of the config file ``config_path``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    rows = read_jsonl(train_path)
    if not rows:
        raise SnaketuneError(train_path, "the training split is empty",
                             fix="add data or lower the split ratios")
    tokenizer = train_tokenizer(corpus_texts(rows), int(tiny_cfg.get("vocab_size", 2048)))
    config = tiny_model_config(tiny_cfg, tokenizer, config_path=config_path)
    torch.manual_seed(int(tiny_cfg.get("seed", 42)))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id, do_sample=False)
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "tiny_base.json").write_text(json.dumps({
            "architecture": tiny_cfg.get("architecture", "qwen2"), "parameters": model.num_parameters(),
            "tokenizer_size": len(tokenizer), "train_rows": len(rows),
            **{k: tiny_cfg[k] for k in sorted(tiny_cfg)},
        }, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        readable_tree(tmp)
    log.info("tiny base: %s, %d parameters, %d tokens, written to %s", config.model_type,
             model.num_parameters(), len(tokenizer), out_dir)
