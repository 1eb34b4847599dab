"""Merge a specialist's LoRA adapter into its base: one checkpoint that plain transformers loads.

The merged directory holds the tokenizer, the adapter's chat format (its template and chat_format.json)
and a generation config that stops on the format's end-of-turn token. The merge runs in float32 and is
checked before it is kept: the saved model, loaded back with plain transformers, must give the logits
that base + adapter gave on a probe prompt.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .errors import SnaketuneError
from .files import atomic_path, dumps_json, sha256_tree

__all__ = ["merge_adapter"]

log = logging.getLogger("snaketune.merge")

PROBE = [{"role": "system", "content": "You are a careful assistant."},
         {"role": "user", "content": "Read 4 bytes at 0x7E0010, then run 60 frames."}]
REPORT = "snaketune_merge.json"
# Float32 merges must reproduce base + adapter to rounding; narrower saved dtypes round every weight once.
TOLERANCE = {"float32": 1e-4}
MIN_COSINE = 0.999


def _base_config(base_dir) -> dict:
    return json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))


def _probe_ids(tokenizer, vocab_size: int) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=False)
    except Exception:  # no template: any text does for a logits check
        text = "\n".join(m["content"] for m in PROBE)
    ids = [i for i in tokenizer(text, add_special_tokens=True)["input_ids"] if i < vocab_size]
    return ids or [0]


def _untie_if_diverged(model) -> bool:
    """A trained copy of embed_tokens or lm_head (modules_to_save) splits weights the config still ties."""
    import torch

    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if head is None or not getattr(cfg, "tie_word_embeddings", False):
        return False
    if head.weight is embed.weight or torch.equal(head.weight, embed.weight):
        return False
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    cfg.tie_word_embeddings = False
    model.config.tie_word_embeddings = False
    return True


def merge_adapter(base, adapter_dir, out_dir, revision=None, threads: int | None = None, gpus: int = 0, *,
                  config_path: str) -> dict:
    """Merge ``adapter_dir`` into ``base`` (local dir or hub id, from the config file ``config_path``) and
    save it in the base's dtype to ``out_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .chat_format import load_format, save_tokenizer
    from .gguf_export import local_model_dir
    from .modeling import read_adapter_config

    if threads:
        torch.set_num_threads(int(threads))
    adapter_dir = Path(adapter_dir)
    cfg_path, acfg = read_adapter_config(adapter_dir)
    if acfg.get("peft_type", "LORA") != "LORA":
        raise SnaketuneError(cfg_path, f"adapter type {acfg.get('peft_type')!r} cannot be merged here",
                             field="peft_type", fix="train a LoRA adapter")
    base_dir = local_model_dir(base, revision, config_path=config_path)
    base_cfg = _base_config(base_dir)
    dtype = str(base_cfg.get("dtype") or base_cfg.get("torch_dtype") or "float32")
    device = "cuda" if gpus and torch.cuda.is_available() else "cpu"

    tok_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_source))
    fmt = load_format(adapter_dir, tokenizer)  # the format the adapter was trained in
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, use_safetensors=True)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).to(device).eval()
    probe = torch.tensor([_probe_ids(tokenizer, model.get_input_embeddings().weight.shape[0])], device=device)
    with torch.no_grad():
        expected = model(probe).logits[0, -1].float().cpu().numpy()

    merged = model.merge_and_unload()
    _untie_if_diverged(merged)
    untied = bool(base_cfg.get("tie_word_embeddings")) and not merged.config.tie_word_embeddings
    merged.to(getattr(torch, dtype))
    stops = fmt.stop_ids(tokenizer)
    gen = merged.generation_config
    gen.eos_token_id = stops if len(stops) > 1 else stops[0]
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id

    with atomic_path(out_dir, directory=True) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        del merged, model
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, use_safetensors=True)
        with torch.no_grad():
            got = reloaded.to(device).eval()(probe).logits[0, -1].float().cpu().numpy()
        del reloaded
        diff = float(np.abs(got - expected).max())
        cosine = float(np.dot(got, expected) / (np.linalg.norm(got) * np.linalg.norm(expected) + 1e-30))
        tolerance = TOLERANCE.get(dtype)
        passed = diff <= tolerance if tolerance is not None else cosine >= MIN_COSINE
        report = {
            "adapter_sha256": sha256_tree(adapter_dir / "adapter_model.safetensors"),
            "base": str(base), "dtype": dtype, "untied_embeddings": untied,
            "probe_tokens": int(probe.shape[1]), "max_abs_logit_diff": diff, "cosine": cosine,
            "tolerance": tolerance if tolerance is not None else {"min_cosine": MIN_COSINE}, "passed": passed,
        }
        log.info("merge check: %s", json.dumps(report, sort_keys=True))
        if not passed:
            raise SnaketuneError(adapter_dir, f"the merged model's logits differ from base + adapter "
                                 f"(max |diff| {diff:.3g}, cosine {cosine:.6f})",
                                 fix="check that the adapter was trained on this base (adapter_config.json)")
        (tmp / REPORT).write_text(dumps_json(report), encoding="utf-8")
    log.info("merged %s into %s (%s%s): %s", adapter_dir, base, dtype,
             ", untied embeddings" if untied else "", out_dir)
    return report
