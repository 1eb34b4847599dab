"""GGUF parity: each exported GGUF, run in real llama.cpp (llama-cpp-python), against the merged HF model.

Checked on the specialist's test prompts, rendered in the adapter's chat format: identical token ids from
both tokenizers (and on probe texts that stress the pre-tokenizer), last-token logits with an F32 KV cache
within the thresholds below (relative to the logits' scale), base GGUF + LoRA GGUF against the merged
model, the same chat template, and the same greedy text.
A failed check raises after the report is logged; the JSON is written only when everything passed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from .errors import SnaketuneError
from .files import read_jsonl, sha256_file, write_json

__all__ = ["THRESHOLDS", "PROBE_TEXTS", "check_parity"]

log = logging.getLogger("snaketune.parity")

# Per GGUF type, on the scale of the logits (a 30-layer pretrained model's logits are 10-100x the tiny
# random base's, and so is what f16 rounding moves them by): last-token max |diff| / std of the HF logits
# at that position (``last_rel_diff``), cosine of the last-token logits, argmax at every position (a swap
# between tokens HF itself scores within the allowed difference counts as agreement), and greedy text.
# Seen (worst prompt): SmolLM2-135M (30 layers, logit std 3.3) f32 1.5e-5 (absolute 5e-5), f16 1.2e-2
# (absolute 0.039, cosine > 0.99999), LoRA on its f16 base 7.6e-3, q8_0 cosine 0.99997; the tiny random
# Qwen2 / Llama bases (logit std 0.16 / 0.22) f32 and LoRA 1.7e-6, f16 2.5e-3 (absolute 5e-4), q8_0 cosine
# 0.9998. The old absolute f16 limit (3e-2) failed SmolLM2's correct f16 export (0.034); a conversion that
# skips the Llama q/k permutation, or adds noise of a tenth of its spread to one tensor, still fails these
# (tests/test_export.py).
THRESHOLDS = {
    "f32": {"max_rel_diff": 1e-4, "same_argmax": True, "greedy": True},
    "f16": {"max_rel_diff": 5e-2, "min_cosine": 0.9999, "same_argmax": True, "greedy": True},
    "q8_0": {"min_cosine": 0.99, "same_argmax": False, "greedy": False},
}
# Texts that tell pre-tokenizers apart: contractions, digit runs, whitespace runs, newlines, non-ASCII.
PROBE_TEXTS = [
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL 3 33 333 3333 33333 3.3 3..3",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \nend  ",
    "0x7E0010 LDA #$01 ; STA $2100\r\n\tJSR $8000  // müde Straße — naïve café 🚀 我想在apple工作1314151天",
    "<tool_call>\n{\"name\": \"mesen2.run\", \"arguments\": {\"frames\": 60}}\n</tool_call><|im_end|>",
]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def build_prompts(tokenizer, test_path, settings: dict, n_prompts: int) -> list[dict]:
    """The first ``n_prompts`` test rows of the specialist (all rows when it has none), as inference sees
    them."""
    from .chat_template import apply_template, specialist_chat, specialist_rows, split_prompt

    rows = read_jsonl(test_path)
    chosen = specialist_rows(rows, settings.get("focus_tools")) or rows
    if not chosen:
        raise SnaketuneError(test_path, "the test split is empty: no prompts to check GGUF parity on",
                             fix="raise data.split.test, or set export.parity: false")
    prompts = []
    for row in chosen[:n_prompts]:
        messages, tools = specialist_chat(row, settings)
        prompt_messages, _ = split_prompt(messages)
        text = apply_template(tokenizer, prompt_messages, tools, add_generation_prompt=True)
        prompts.append({"id": row.get("id"), "text": text})
    return prompts


class HFReference:
    """The merged model in float32: full-sequence logits and greedy continuations."""

    def __init__(self, merged_dir, threads: int = 1):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # as many threads as the rule holds: llama.cpp's spinning workers stall on an oversubscribed CPU
        torch.set_num_threads(max(1, int(threads)))
        self.torch = torch
        from .chat_format import load_format

        self.tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
        self.format = load_format(merged_dir, self.tokenizer)  # what training rendered the chats in
        self.model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32,
                                                          use_safetensors=True).eval()

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.tensor([ids])).logits[0].float().numpy()

    def greedy(self, ids: list[int], n: int, stops: set[int]) -> tuple[list[int], list[np.ndarray]]:
        """Greedy continuation and the logits each token was chosen from."""
        torch = self.torch
        out: list[int] = []
        rows: list[np.ndarray] = []
        with torch.no_grad():
            result = self.model(torch.tensor([ids]), use_cache=True)
            for _ in range(n):
                rows.append(result.logits[0, -1].float().numpy())
                token = int(rows[-1].argmax())
                out.append(token)
                if token in stops:
                    break
                result = self.model(torch.tensor([[token]]), past_key_values=result.past_key_values,
                                    use_cache=True)
        return out, rows


class GGUFRunner:
    """One GGUF (optionally with a LoRA GGUF) in llama.cpp, F32 K/V cache, logits at every position."""

    def __init__(self, path, n_ctx: int, threads: int, lora=None):
        import llama_cpp

        self.llama_cpp = llama_cpp
        kwargs = {"lora_path": str(lora)} if lora else {}
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), logits_all=True,
                n_threads=threads,
                n_threads_batch=threads, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                seed=0, verbose=False, **kwargs)
        except (ValueError, RuntimeError) as err:
            with_lora = f" with {lora}" if lora else ""
            raise SnaketuneError(path, f"llama.cpp cannot load it{with_lora}: {err}",
                                 fix="rerun the gguf / lora_gguf rule; see its log") from err

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], n: int, stops: set[int]) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(n):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            if token in stops:
                break
            self.llm.eval([token])
        return out

    def text(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8", errors="replace")

    def metadata(self, key: str):
        return self.llm.metadata.get(key)

    def close(self) -> None:
        self.llm.close()


def near_tie(ref_row: np.ndarray, hf_token: int, gguf_token: int, tolerance: float) -> bool:
    """Whether HF itself ranks the GGUF's choice within ``2 * tolerance`` of its own: both logits may move
    by ``tolerance``, so such a swap is numerical noise, not a conversion error."""
    return bool(ref_row[hf_token] - ref_row[gguf_token] <= 2 * tolerance)


def logit_scale(ref: np.ndarray) -> np.ndarray:
    """The scale of the logits at each position: their standard deviation over the vocabulary."""
    return np.maximum(ref.std(-1), 1e-12)


def compare_logits(ref: np.ndarray, got: np.ndarray, limits: dict) -> dict:
    """Last-token max |diff| (absolute, and relative to ``logit_scale``) and cosine, argmax agreement at every
    position, and whether ``limits`` hold.

    Argmax agreement counts a swap between tokens that HF scores within twice the allowed (or, if
    smaller, the measured) difference as agreement: an untrained model has such near-ties, and no
    conversion can order them. The strict agreement is reported beside it.
    """
    per_position = np.abs(ref - got).max(-1)
    scale = logit_scale(ref)
    relative = per_position / scale
    last_diff, last_rel = float(per_position[-1]), float(relative[-1])
    cosine = _cosine(ref[-1], got[-1])
    hf_top, gguf_top = ref.argmax(-1), got.argmax(-1)
    strict = hf_top == gguf_top
    agree = strict.copy()
    for pos in np.flatnonzero(~strict):
        allowed = limits.get("max_rel_diff", 0.0) * float(scale[pos])
        agree[pos] = near_tie(ref[pos], hf_top[pos], gguf_top[pos], min(allowed, float(per_position[pos])))
    passed = True
    if "max_rel_diff" in limits:
        passed &= last_rel <= limits["max_rel_diff"]
    if "min_cosine" in limits:
        passed &= cosine >= limits["min_cosine"]
    if limits.get("same_argmax"):
        passed &= bool(agree.all())
    return {"last_max_abs_diff": last_diff, "last_rel_diff": last_rel, "logit_scale": float(scale[-1]),
            "all_max_abs_diff": float(per_position.max()), "all_rel_diff": float(relative.max()),
            "last_cosine": cosine, "argmax_agreement": float(agree.mean()),
            "argmax_agreement_strict": float(strict.mean()), "near_tie_swaps": int((agree & ~strict).sum()),
            "first_argmax_mismatch": None if agree.all() else int(np.argmin(agree)), "passed": bool(passed)}


def compare_greedy(hf_tokens: list[int], hf_logits: list[np.ndarray], gguf_tokens: list[int],
                   rel_tolerance: float) -> dict:
    """Same tokens, or a first divergence at a step where HF's two candidates are a near-tie (within
    ``rel_tolerance`` of that step's logit scale)."""
    if gguf_tokens == hf_tokens:
        return {"same_tokens": True, "diverged_at": None, "near_tie": False}
    step = next((i for i, (a, b) in enumerate(zip(hf_tokens, gguf_tokens)) if a != b),
                min(len(hf_tokens), len(gguf_tokens)))
    tie = False
    if step < len(hf_tokens) and step < len(gguf_tokens):
        row = hf_logits[step]
        tie = near_tie(row, hf_tokens[step], gguf_tokens[step], rel_tolerance * float(logit_scale(row)))
    return {"same_tokens": False, "diverged_at": step, "near_tie": tie}


def _worst(per_prompt: list[dict]) -> dict:
    return {"last_max_abs_diff": max(p["last_max_abs_diff"] for p in per_prompt),
            "last_rel_diff": max(p["last_rel_diff"] for p in per_prompt),
            "last_cosine_min": min(p["last_cosine"] for p in per_prompt),
            "argmax_agreement_min": min(p["argmax_agreement"] for p in per_prompt),
            "argmax_agreement_strict_min": min(p["argmax_agreement_strict"] for p in per_prompt)}


def check_gguf(runner: GGUFRunner, ref: HFReference, prompts: list[dict], limits: dict, stops: set[int],
               new_tokens: int, template: str | None) -> dict:
    """Every check for one GGUF (or GGUF + LoRA) against the HF model; ``passed`` says whether all held."""
    failures = []
    tokenizer_ok = True
    for text in PROBE_TEXTS + [p["text"] for p in prompts]:
        for add_special in (False, True):
            hf_ids = ref.tokenizer(text, add_special_tokens=add_special)["input_ids"]
            if runner.tokenize(text, add_special) != hf_ids:
                tokenizer_ok = False
                failures.append(f"token ids differ (add_special={add_special}) on {text[:40]!r}")
    per_prompt, greedy = [], []
    for prompt in prompts:
        ids = prompt["ids"]
        result = compare_logits(prompt["logits"], runner.logits(ids), limits)
        result["id"] = prompt["id"]
        per_prompt.append(result)
        if not result["passed"]:
            failures.append(f"logits on prompt {prompt['id']}: last max|diff| "
                            f"{result['last_max_abs_diff']:.3g} ({result['last_rel_diff']:.3g} of the "
                            f"logits' std {result['logit_scale']:.3g}), cosine {result['last_cosine']:.6f}, "
                            f"argmax agreement {result['argmax_agreement']:.3f}")
        got = runner.greedy(ids, new_tokens, stops)
        text = runner.text(got)
        outcome = compare_greedy(prompt["greedy"], prompt["greedy_logits"], got,
                                 limits.get("max_rel_diff", 0.0))
        outcome.update({"id": prompt["id"],
                        "same_text": outcome["same_tokens"] and text == prompt["greedy_text"],
                        "hf_text": prompt["greedy_text"], "gguf_text": text})
        greedy.append(outcome)
        if limits.get("greedy") and not outcome["same_text"] and not outcome["near_tie"]:
            failures.append(f"greedy text differs on prompt {prompt['id']}: {text!r} "
                            f"vs HF {prompt['greedy_text']!r}")
    gguf_template = runner.metadata("tokenizer.chat_template")
    if template is not None and gguf_template != template:
        failures.append("the GGUF's chat template differs from the merged model's")
    return {"thresholds": limits, "tokenizer_match": tokenizer_ok,
            "chat_template_match": gguf_template == template,
            "worst": _worst(per_prompt), "prompts": per_prompt, "greedy": greedy,
            "greedy_required": bool(limits.get("greedy")), "failures": failures, "passed": not failures}


def check_parity(merged_dir, ggufs: dict, test_path, out_json, settings: dict, lora=None, base_gguf=None,
                 base_quant: str | None = None, n_prompts: int = 4, threads: int = 1,
                 new_tokens: int = 16) -> dict:
    """Run every check for the specialist's GGUFs (``{quant: path}``) and write ``out_json`` if all pass."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .chat_template import stop_token_ids

    ref = HFReference(merged_dir, threads)
    prompts = build_prompts(ref.tokenizer, test_path, settings, n_prompts)
    stops = set(stop_token_ids(ref.tokenizer))
    for prompt in prompts:
        prompt["ids"] = ref.tokenizer(prompt["text"], add_special_tokens=False)["input_ids"]
        prompt["logits"] = ref.logits(prompt["ids"])
        prompt["greedy"], prompt["greedy_logits"] = ref.greedy(prompt["ids"], new_tokens, stops)
        prompt["greedy_text"] = ref.tokenizer.decode(prompt["greedy"], skip_special_tokens=False)
    longest = max(len(p["ids"]) for p in prompts) + new_tokens + 8
    n_ctx = max(64, -(-longest // 64) * 64)
    template = ref.tokenizer.chat_template if isinstance(ref.tokenizer.chat_template, str) else None

    results = {}
    runs = [(quant, Path(path), None, quant) for quant, path in sorted(ggufs.items())]
    if lora is not None:
        if base_gguf is None or base_quant is None:
            raise ValueError("a LoRA parity check needs the base GGUF and its type")
        runs.append(("lora", Path(base_gguf), Path(lora), base_quant))
    for key, path, lora_path, quant in runs:
        runner = GGUFRunner(path, n_ctx, threads, lora=lora_path)
        try:
            result = check_gguf(runner, ref, prompts, THRESHOLDS[quant], stops, new_tokens, template)
        finally:
            runner.close()
        result["file"] = path.name
        result["sha256"] = sha256_file(path)
        if lora_path is not None:
            result.update({"lora_file": lora_path.name, "lora_sha256": sha256_file(lora_path),
                           "base_quant": quant})
        results[key] = result
        log.info("%s: %s; worst %s", key, "passed" if result["passed"] else "FAILED",
                 json.dumps(result["worst"]))

    report = {
        "specialist": settings.get("name"),
        "merged": str(merged_dir),
        "prompts": [{"id": p["id"], "tokens": len(p["ids"])} for p in prompts],
        "probe_texts": len(PROBE_TEXTS),
        "new_tokens": new_tokens,
        "kv_cache": "f32",
        "results": results,
        "passed": all(r["passed"] for r in results.values()),
    }
    if not report["passed"]:
        log.error("parity report:\n%s", json.dumps(report, indent=2, sort_keys=True))
        failed = [f"{key}: {r['failures'][0]}" for key, r in results.items() if not r["passed"]]
        raise SnaketuneError(next(iter(ggufs.values())) if ggufs else lora,
                             f"GGUF parity failed for {len(failed)} file(s): " + "; ".join(failed),
                             fix="the conversion is wrong for this model; "
                                 "the rule's log holds the full report")
    write_json(out_json, report)
    return report
