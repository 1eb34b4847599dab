"""Eval stage: batched greedy generation on a specialist's test subset, scored with snaketune.metrics.

The base model and the tuned model (base + adapter) go through the same code: same rows, system
prompt, template and decoding, so their scores are an A/B. Every generation is kept in a JSONL file
so any number in the eval JSON can be checked by hand (and recomputed: see ``rescore_generations``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jsonschema
import yaml

from . import metrics
from .chat_template import apply_template, attach_template, prompt_tools_rendered, specialist_chat, specialist_rows, split_prompt, stop_token_ids
from .devices import device_preference, resolve_device
from .errors import SnaketuneError
from .files import atomic_path, dumps_json, read_jsonl, sha256_file, sha256_tree, write_json, write_jsonl
from .generation import generate

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schemas" / "eval_result.schema.yaml"


def test_subset(test_path, settings: dict, max_examples: int | None = None) -> list[dict]:
    """The specialist's test rows (gold calls within its focus tools), in file order, capped."""
    rows = specialist_rows(read_jsonl(test_path), settings.get("focus_tools"))
    if not rows:
        raise SnaketuneError(test_path, f"no test rows for specialist {settings['name']!r}",
                             field=f"specialists.{settings['name']}.focus_tools",
                             fix="check its focus tools or raise data.split.test")
    return rows[:max_examples] if max_examples else rows


def build_prompts(tokenizer, rows, settings) -> list[dict]:
    """One prompt per row: the chat without its final assistant turn, plus the generation prompt.

    Every tool of the row is shown, as training showed them (``all`` or ``compact``); ``called`` would
    list only the gold answer's tools and so leak the answer into the prompt: eval shows all instead.
    """
    settings = {**settings, "train": {**settings.get("train", {}), "tools_rendered": prompt_tools_rendered(settings)}}
    prompts = []
    for row in rows:
        messages, tools = specialist_chat(row, settings)
        prompt_messages, _ = split_prompt(messages)
        text = apply_template(tokenizer, prompt_messages, tools, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts.append({"id": row["id"], "ids": ids, "row": row, "tools": tools})
    return prompts


def assistant_loss(model, tokenizer, rows, settings, batch_size: int = 8) -> float | None:
    """Mean cross-entropy over the assistant tokens of the full test chats (teacher forcing)."""
    import torch

    from .chat_template import encode_chat

    total, count = 0.0, 0
    encoded = []
    for row in rows:
        messages, tools = specialist_chat(row, settings)
        enc = encode_chat(tokenizer, messages, tools)
        encoded.append(enc)
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        attn = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[r, :n] = torch.tensor(e["input_ids"])
            attn[r, :n] = 1
            keep = torch.tensor(e["assistant_masks"], dtype=torch.bool)
            labels[r, :n] = torch.where(keep, ids[r, :n], torch.full_like(ids[r, :n], -100))
        device = model.get_input_embeddings().weight.device
        ids, attn, labels = ids.to(device), attn.to(device), labels.to(device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=attn).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                                 shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((shift_labels != -100).sum())
    return total / count if count else None


def score_generations(records: list[dict], targets: dict) -> dict:
    """Metrics of a generations file's records (used for the eval JSON and to recheck it by hand)."""
    tool_verdicts = [r["verdict"] for r in records if r["kind"] == "tool"]
    text_verdicts = [r["verdict"] for r in records if r["kind"] == "text"]
    out = {"tool": metrics.aggregate(tool_verdicts) if tool_verdicts else None,
           "text": metrics.aggregate_text(text_verdicts) if text_verdicts else None}
    headline = out["tool"] or out["text"]
    out["targets"] = metrics.targets_report(headline, {k: v for k, v in targets.items() if k in headline}) if headline else {}
    return out


def rescore_generations(path, targets: dict) -> dict:
    """Recompute the metrics from a generations JSONL (parsing the raw text again)."""
    records = []
    for rec in read_jsonl(path):
        if rec["kind"] == "tool":
            calls, valid = metrics.parse_tool_calls(rec["text"])
            rec["verdict"] = metrics.score_example(calls, valid, rec["gold_calls"], rec["tool_names"])
        else:
            rec["verdict"] = metrics.score_text(rec["text"], rec["gold_text"])
        records.append(rec)
    return score_generations(records, targets)


def model_fingerprint(base_cfg: dict) -> str:
    """The base as the eval JSON names it: its content hash (local dir) or hub id @ revision."""
    from .modeling import base_identity

    ident = base_identity(base_cfg["name_or_path"], base_cfg.get("revision"))
    return f"sha256:{ident['sha256']}" if ident["sha256"] else f"{ident['name_or_path']}@{ident['revision'] or 'unpinned'}"


def validate_result(result: dict) -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(result))
    if err is not None:  # our own bug, not the user's: fail loudly before anything is written
        raise RuntimeError(f"eval result breaks {SCHEMA_PATH.name}: {'/'.join(map(str, err.absolute_path))}: {err.message}")


def load_for_eval(base_cfg: dict, adapter_dir=None, threads: int | None = None, device: str = "cpu"):
    """(model, tokenizer) in eval mode on ``device`` (fp32): the base, or the base with the adapter merged
    in."""
    import torch

    from .modeling import load_base

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_base(base_cfg)
    attach_template(tokenizer)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if device != "cpu":
        model.to(device)
    model.eval()
    tokenizer.padding_side = "left"
    return model, tokenizer


def evaluate(*, base_cfg: dict, test_path, settings: dict, eval_cfg: dict, out_json, out_generations,
             out_timing, adapter_dir=None, threads: int | None = None, progress: bool = True,
             gpus: int = 0) -> dict:
    """Score one model (base, or base + adapter) on one specialist's test subset and write the files.

    ``gpus``: the GPUs the job holds; with ``resources.device`` they choose the device (snaketune.devices).
    """
    rows = test_subset(test_path, settings, eval_cfg.get("max_examples"))
    device = resolve_device(gpus, device_preference(settings))
    model, tokenizer = load_for_eval(base_cfg, adapter_dir, threads, device=device)
    prompts = build_prompts(tokenizer, rows, settings)
    started = time.perf_counter()
    outputs, n_generated = generate(model, tokenizer, [p["ids"] for p in prompts],
                                    batch_size=eval_cfg["batch_size"], max_new_tokens=eval_cfg["max_new_tokens"],
                                    progress=progress)
    seconds = time.perf_counter() - started
    records = []
    for prompt, out_ids in zip(prompts, outputs):
        text = tokenizer.decode(out_ids, skip_special_tokens=True)
        row = prompt["row"]
        tool_names = sorted(t["function"]["name"] for t in prompt["tools"])
        if row["kind"] == "tool":
            calls, valid = metrics.parse_tool_calls(text)
            gold = metrics.gold_calls(row)
            verdict = metrics.score_example(calls, valid, gold, tool_names)
            rec = {"id": row["id"], "kind": "tool", "text": text, "calls": calls, "gold_calls": gold,
                   "tool_names": tool_names, "verdict": verdict}
        else:
            gold_text = row["messages"][-1].get("content") or ""
            rec = {"id": row["id"], "kind": "text", "text": text, "gold_text": gold_text,
                   "verdict": metrics.score_text(text, gold_text)}
        records.append(rec)
    scores = score_generations(records, eval_cfg["targets"])
    loss = assistant_loss(model, tokenizer, rows, settings)
    result = {
        "specialist": settings["name"],
        "model": "tuned" if adapter_dir is not None else "base",
        "device": device,
        "n_examples": len(records),
        "metrics": scores["tool"],
        "text_metrics": scores["text"],
        "test_loss": loss,
        "perplexity": math.exp(loss) if loss is not None and loss < 50 else None,
        "targets": scores["targets"],
        "targets_met": all(t["passed"] for t in scores["targets"].values()) if scores["targets"] else False,
        "generation": {"batch_size": eval_cfg["batch_size"], "max_new_tokens": eval_cfg["max_new_tokens"],
                       "decoding": "greedy", "stop_tokens": tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer)),
                       "generated_tokens": n_generated, "system_prompt": settings.get("system_prompt", ""),
                       "tools_rendered": prompt_tools_rendered(settings)},
        "hashes": {"base_model": model_fingerprint(base_cfg),
                   "adapter": ("sha256:" + sha256_tree(adapter_dir)) if adapter_dir is not None else None,
                   "test_file": "sha256:" + sha256_file(test_path)},
    }
    validate_result(result)
    # Timing varies run to run; it lives beside the result so the result's bytes are reproducible.
    timing = {"seconds": round(seconds, 3), "generated_tokens": n_generated,
              "tokens_per_second": round(n_generated / seconds, 2) if seconds > 0 else None,
              "examples": len(records)}
    write_jsonl(out_generations, records)
    write_json(out_timing, timing)
    write_json(out_json, result)
    print(f"{settings['name']} ({result['model']}): " + ", ".join(
        f"{k}={v['value']:.3f}" for k, v in result["targets"].items() if v["value"] is not None)
        + f"; {timing['tokens_per_second']} tok/s")
    return result


# ---------------------------------------------------------------- summary

SUMMARY_METRICS = ("exact_match", "tool_accuracy", "param_precision", "param_recall", "param_f1", "json_valid_rate")


def summarise(base_paths: dict, tuned_paths: dict, out_json, out_md) -> dict:
    """One row per specialist: base vs tuned for every metric with the delta, targets met."""
    rows = []
    for name in sorted(tuned_paths):
        base = json.loads(Path(base_paths[name]).read_text())
        tuned = json.loads(Path(tuned_paths[name]).read_text())
        row = {"specialist": name, "n_examples": tuned["n_examples"], "metrics": {},
               "targets_met": tuned["targets_met"],
               "targets": {k: v["passed"] for k, v in tuned["targets"].items()}}
        for metric in SUMMARY_METRICS:
            b = (base["metrics"] or {}).get(metric)
            t = (tuned["metrics"] or {}).get(metric)
            row["metrics"][metric] = {"base": b, "tuned": t,
                                      "delta": (t - b) if b is not None and t is not None else None}
        rows.append(row)
    summary = {"specialists": rows}
    lines = ["# Evaluation summary: base vs tuned", "",
             "| specialist | n | " + " | ".join(SUMMARY_METRICS) + " | targets met |",
             "|---|---|" + "---|" * len(SUMMARY_METRICS) + "---|"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for row in rows:
        cells = [f"{fmt(m['base'])} → {fmt(m['tuned'])} ({'+' if (m['delta'] or 0) >= 0 else ''}{fmt(m['delta'])})"
                 for m in row["metrics"].values()]
        lines.append(f"| {row['specialist']} | {row['n_examples']} | " + " | ".join(cells)
                     + f" | {'yes' if row['targets_met'] else 'no'} |")
    write_json(out_json, summary)
    with atomic_path(out_md) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary


__all__ = ["evaluate", "summarise", "rescore_generations", "generate", "build_prompts", "test_subset", "dumps_json"]
