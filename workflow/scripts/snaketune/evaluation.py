"""Eval stage: batched greedy generation on a specialist's test subset, scored with snaketune.metrics.

The base model and the tuned model (base + adapter) go through the same code: same rows, system
prompt, template and decoding, so their scores are an A/B. Every generation is kept in a JSONL file
so any number in the eval JSON can be checked by hand (and recomputed: see ``rescore_generations``).
``eval.scoring`` picks ``strict`` (one gold answer per row) or ``bfcl`` (BFCL's AST checker: acceptable
values from the row's ``possible_answer``); records keep what both need, so either can be recomputed.
``generate_records`` is the one generation path: the benchmark stage (snaketune.benchmarks) uses it too.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jsonschema
import yaml

from . import bfcl, metrics
from .chat_format import format_of
from .chat_template import (
    apply_template,
    prompt_tools_rendered,
    specialist_chat,
    specialist_rows,
    split_prompt,
    stop_token_ids,
)
from .devices import device_preference, resolve_device
from .errors import SnaketuneError
from .files import read_jsonl, sha256_file, sha256_tree, write_json, write_jsonl
from .generation import generate

__all__ = [
    "test_subset", "build_prompts", "score_generations", "rescore_generations", "validate_result",
    "load_for_eval", "evaluate", "generate_records", "unscored_record", "score_record",
    "check_scoring_targets", "SCHEMA_PATH", "model_fingerprint",
]

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
    train = {**settings.get("train", {}), "tools_rendered": prompt_tools_rendered(settings)}
    settings = {**settings, "train": train}
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


def score_generations(records: list[dict], targets: dict, *, config_path: str | None = None) -> dict:
    """Metrics of a generations file's records (used for the eval JSON and to recheck it by hand);
    ``targets`` are ``eval.targets`` of the config file ``config_path``."""
    tool_verdicts = [r["verdict"] for r in records if r["kind"] == "tool"]
    text_verdicts = [r["verdict"] for r in records if r["kind"] == "text"]
    out = {"tool": metrics.aggregate(tool_verdicts) if tool_verdicts else None,
           "text": metrics.aggregate_text(text_verdicts) if text_verdicts else None}
    headline = out["tool"] or out["text"]
    out["targets"] = metrics.targets_report(headline, {k: v for k, v in targets.items() if k in headline},
                                            config_path=config_path) if headline else {}
    return out


def unscored_record(row: dict, text: str, tool_names: list[str]) -> dict:
    """A generations-file record: the generated text and what scoring it needs (either scoring)."""
    if row["kind"] == "tool":
        gold = metrics.gold_calls(row)
        return {"id": row["id"], "kind": "tool", "text": text, "gold_calls": gold, "tool_names": tool_names,
                "bfcl_case": bfcl.case_from_row(row, gold)}
    return {"id": row["id"], "kind": "text", "text": text,
            "gold_text": row["messages"][-1].get("content") or ""}


def score_record(rec: dict, scoring: str = "strict", path=None) -> dict:
    """``rec`` with ``calls`` and ``verdict`` (re)computed from its raw text."""
    if rec["kind"] != "tool":
        rec["verdict"] = metrics.score_text(rec["text"], rec["gold_text"])
        return rec
    case = None
    if scoring == "bfcl":
        case = rec.get("bfcl_case")
        if case is None:
            raise SnaketuneError(path, f"record {rec['id']!r} has no bfcl_case: it predates bfcl scoring",
                                 field="eval.scoring", fix="regenerate it, or rescore with scoring strict")
    calls, valid = metrics.parse_tool_calls(rec["text"])
    rec["calls"] = calls
    rec["verdict"] = metrics.score_example(calls, valid, rec["gold_calls"], rec["tool_names"], case)
    return rec


def rescore_generations(
    path, targets: dict, scoring: str = "strict", *, config_path: str | None = None
) -> dict:
    """Recompute the metrics from a generations JSONL (parsing the raw text again), in either scoring."""
    if scoring not in metrics.SCORINGS:
        raise ValueError(f"scoring must be one of {metrics.SCORINGS}, got {scoring!r}")
    return score_generations([score_record(rec, scoring, path) for rec in read_jsonl(path)], targets,
                             config_path=config_path)


def check_scoring_targets(eval_cfg: dict, config_path: str | None = None) -> str:
    """The configured scoring; a target only bfcl scoring computes is refused under strict."""
    scoring = eval_cfg.get("scoring", "strict")
    if scoring != "bfcl" and "ast_accuracy" in (eval_cfg.get("targets") or {}):
        raise SnaketuneError(config_path, "ast_accuracy is computed only by bfcl scoring",
                             field="eval.targets.ast_accuracy",
                             fix="set eval.scoring: bfcl or drop the target")
    return scoring


def generate_records(model, tokenizer, rows: list[dict], settings: dict, eval_cfg: dict, *,
                     scoring: str = "strict", progress: bool = True) -> tuple[list[dict], int, float]:
    """Generate an answer for every row and score it: (records, generated tokens, seconds generating)."""
    prompts = build_prompts(tokenizer, rows, settings)
    started = time.perf_counter()
    outputs, n_generated = generate(model, tokenizer, [p["ids"] for p in prompts],
                                    batch_size=eval_cfg["batch_size"],
                                    max_new_tokens=eval_cfg["max_new_tokens"], progress=progress)
    seconds = time.perf_counter() - started
    records = []
    for prompt, out_ids in zip(prompts, outputs):
        text = tokenizer.decode(out_ids, skip_special_tokens=True)
        tool_names = sorted(t["function"]["name"] for t in prompt["tools"])
        records.append(score_record(unscored_record(prompt["row"], text, tool_names), scoring))
    return records, n_generated, seconds


def model_fingerprint(base_cfg: dict) -> str:
    """The base as the eval JSON names it: its content hash (local dir) or hub id @ revision."""
    from .modeling import base_identity

    ident = base_identity(base_cfg["name_or_path"], base_cfg.get("revision"))
    if ident["sha256"]:
        return f"sha256:{ident['sha256']}"
    return f"{ident['name_or_path']}@{ident['revision'] or 'unpinned'}"


def validate_result(result: dict) -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(result))
    if err is not None:  # our own bug, not the user's: fail loudly before anything is written
        where = "/".join(map(str, err.absolute_path))
        raise RuntimeError(f"eval result breaks {SCHEMA_PATH.name}: {where}: {err.message}")


def load_for_eval(base_cfg: dict, adapter_dir=None, threads: int | None = None, *,
                  config_path: str | None = None, device: str = "cpu"):
    """(model, tokenizer) in eval mode on ``device`` (fp32): the base (``base_model`` of the config file
    ``config_path``), or the base with the adapter merged in."""
    import torch

    from .modeling import load_base

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = load_base(base_cfg, config_path=config_path)  # with the base's chat format
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if device != "cpu":
        model.to(device)
    model.eval()
    tokenizer.padding_side = "left"
    return model, tokenizer


def evaluate(*, base_cfg: dict, test_path, settings: dict, eval_cfg: dict, out_json, out_generations,
             out_timing, config_path: str, adapter_dir=None, threads: int | None = None,
             progress: bool = True, gpus: int = 0) -> dict:
    """Score one model (base, or base + adapter) on one specialist's test subset and write the files.

    ``base_cfg``, ``settings`` and ``eval_cfg`` come from the config file ``config_path`` (errors name it).
    ``gpus``: the GPUs the job holds; with ``resources.device`` they choose the device (snaketune.devices).
    """
    scoring = check_scoring_targets(eval_cfg, config_path)
    rows = test_subset(test_path, settings, eval_cfg.get("max_examples"))
    device = resolve_device(gpus, device_preference(settings), config_path=config_path)
    model, tokenizer = load_for_eval(base_cfg, adapter_dir, threads, config_path=config_path, device=device)
    records, n_generated, seconds = generate_records(model, tokenizer, rows, settings, eval_cfg,
                                                     scoring=scoring, progress=progress)
    scores = score_generations(records, eval_cfg["targets"], config_path=config_path)
    loss = assistant_loss(model, tokenizer, rows, settings)
    result = {
        "specialist": settings["name"],
        "model": "tuned" if adapter_dir is not None else "base",
        "scoring": scoring,
        "device": device,
        "n_examples": len(records),
        "metrics": scores["tool"],
        "text_metrics": scores["text"],
        "test_loss": loss,
        "perplexity": math.exp(loss) if loss is not None and loss < 50 else None,
        "targets": scores["targets"],
        "targets_met": all(t["passed"] for t in scores["targets"].values()) if scores["targets"] else False,
        "generation": {"batch_size": eval_cfg["batch_size"], "max_new_tokens": eval_cfg["max_new_tokens"],
                       "decoding": "greedy",
                       "stop_tokens": tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer)),
                       "chat_format": format_of(tokenizer).record(),
                       "generated_tokens": n_generated, "system_prompt": settings.get("system_prompt", ""),
                       "system_prompt_mode": settings.get("system_prompt_mode", "prepend"),
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


