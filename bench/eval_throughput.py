"""Eval throughput: the eval stage's batched greedy generation vs one example at a time, same prompts and model.

Both sides call ``snaketune.evaluation.generate`` (left padding, KV cache, longest prompts first) on the
specialist's test prompts built by ``build_prompts``, with the config's ``max_new_tokens``; only the
batch size differs (the config's ``eval.batch_size`` vs 1), plus a sweep of other sizes. Tokens/s counts
generated tokens up to and including the stop token, over the whole call (prompt forward passes
included: both sides pay them). Two models, as the eval stage scores both: the tuned one (the tiny base
with the adapter train_speed.py trained; its outputs stop where a trained specialist stops, so a batch
waits for its longest output) and the random-init base (every output runs to max_new_tokens, so no batch
waits for a straggler). Also reported: the share of batched decode slots that produced a kept token,
and the time of the prompts' forward passes alone.

    python bench/eval_throughput.py            # ~1-2 min on 2 cores
    python bench/eval_throughput.py --quick
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
GOAL = 8.0


def timed_generate(model, tokenizer, prompts, batch_size: int, max_new_tokens: int) -> dict:
    from snaketune.evaluation import generate

    started = time.perf_counter()
    outputs, n = generate(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          progress=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "generated_tokens": n, "outputs": outputs}


def decode_slots(prompts, outputs, batch_size: int, max_new: int) -> dict:
    """How much of the batched decode work was useful: a batch decodes until its longest output ends."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))  # generate()'s batching
    useful = slots = 0
    for start in range(0, len(order), batch_size):
        lengths = [min(len(outputs[i]) + 1, max_new) for i in order[start:start + batch_size]]
        useful += sum(lengths)
        slots += len(lengths) * max(lengths)
    return {"useful_tokens": useful, "decode_slots": slots, "slot_utilisation": round(useful / slots, 3)}


def prefill_seconds(model, prompts) -> float:
    """One forward pass over every prompt, one at a time: the prompt cost both sides pay alike."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            model(input_ids=torch.tensor([ids]))
    return time.perf_counter() - started


def measure(model, tokenizer, prompts, sizes, batch_size, max_new, repeats) -> dict:
    timed_generate(model, tokenizer, prompts[:2], 2, 8)  # warm-up: first-call costs go to neither side
    runs: dict[int, list[dict]] = {b: [] for b in sizes}
    prefill = []
    for _ in range(repeats):  # interleaved, so load from other jobs hits every side alike
        for b in sizes:
            runs[b].append(timed_generate(model, tokenizer, prompts, b, max_new))
        prefill.append(prefill_seconds(model, prompts))
    single_outputs = runs[1][0]["outputs"]
    results = {}
    for b, reps in runs.items():
        seconds = statistics.median(r["seconds"] for r in reps)
        n = reps[0]["generated_tokens"]
        same = sum(a == s for a, s in zip(reps[0]["outputs"], single_outputs))
        results[b] = {"batch_size": b, "seconds": round(seconds, 3), "all_seconds": [round(r["seconds"], 3) for r in reps],
                      "generated_tokens": n, "tokens_per_s": round(n / seconds, 1),
                      "outputs_equal_to_single": f"{same}/{len(prompts)}",
                      **decode_slots(prompts, reps[0]["outputs"], b, max_new)}
    base = results[1]["tokens_per_s"]
    for r in results.values():
        r["speedup_vs_single"] = common.ratio(r["tokens_per_s"], base)
    lengths = sorted(len(o) for o in single_outputs)
    return {"sizes": results, "batched": results[batch_size], "single": results[1],
            "ratio_batched_vs_single": results[batch_size]["speedup_vs_single"],
            "prefill_s": round(statistics.median(prefill), 3),
            "prefill_share_of_single": round(statistics.median(prefill) / results[1]["seconds"], 3),
            "output_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--specialist", default="veran-tools")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="adapter directory (default: train_speed.py's, when it exists)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each side (the median is reported)")
    parser.add_argument("--sweep", default="4,8,32", help="extra batch sizes to time (comma-separated; '' for none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the eval rule's threads: 1)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.sweep = 1, ""

    import torch

    from snaketune.evaluation import build_prompts, load_for_eval, test_subset

    torch.set_num_threads(args.threads)
    config = common.default_config()
    settings = common.settings_for(config, args.specialist)
    ws = common.demo_workspace(config, args.workdir)
    adapter = args.adapter
    if adapter is None:
        trained = args.workdir / "train_speed" / "ours" / "adapter"
        adapter = trained if (trained / "adapter_config.json").is_file() else None
    batch_size, max_new = int(config["eval"]["batch_size"]), int(config["eval"]["max_new_tokens"])
    sizes = [1, batch_size] + [int(b) for b in args.sweep.split(",") if b.strip() and int(b) not in (1, batch_size)]
    # The eval stage scores the tuned model (evaluate_tuned) and the base (evaluate_base); both are measured.
    models = ([("tuned", adapter)] if adapter else []) + [("base", None)]
    measured, prompts = {}, []
    for label, adapter_dir in models:
        model, tokenizer = load_for_eval({"name_or_path": str(ws / "base")}, adapter_dir, threads=args.threads)
        rows = test_subset(ws / "data/test.jsonl", settings)[: 8 if args.quick else None]
        prompts = [p["ids"] for p in build_prompts(tokenizer, rows, settings)]
        print(f"\n== {label}: tiny base" + (f" + adapter {adapter_dir}" if adapter_dir else " (random init)")
              + f"; {args.specialist}, {len(prompts)} test prompts ({statistics.mean(map(len, prompts)):.0f} tokens "
              f"on average), max_new_tokens {max_new}, batch {batch_size} vs 1, {args.threads} thread(s)", flush=True)
        m = measure(model, tokenizer, prompts, sizes, batch_size, max_new, args.repeats)
        measured[label] = m
        print(common.table([[r["batch_size"], r["generated_tokens"], r["seconds"], r["tokens_per_s"],
                             r["speedup_vs_single"], r["slot_utilisation"], r["outputs_equal_to_single"]]
                            for r in m["sizes"].values()],
                           ["batch", "generated tokens", "seconds (median)", "tokens/s", "x single",
                            "decode slots used", "outputs = single"]))
        print(f"outputs {m['output_tokens']['min']}-{m['output_tokens']['max']} tokens (median "
              f"{m['output_tokens']['median']}); prompt forward passes alone: {m['prefill_s']} s = "
              f"{m['prefill_share_of_single']:.0%} of the one-at-a-time time")
        del model

    print()
    goals = {}
    for label, m in measured.items():
        value = m["ratio_batched_vs_single"]
        goals[label] = {"goal": f">= {GOAL}", "value": value, "met": value >= GOAL}
        print(f"{label}: batched (batch {batch_size}) vs one at a time: {value}x   goal >= {GOAL}x: "
              f"{'met' if value >= GOAL else 'MISSED'}")
    for m in measured.values():
        m["sizes"] = [m["sizes"][b] for b in sorted(m["sizes"])]
    common.write_result(common.result_path(__file__, args), {
        "benchmark": "eval_throughput", "machine": common.machine(), "quick": args.quick,
        "specialist": args.specialist, "prompts": len(prompts), "max_new_tokens": max_new, "batch_size": batch_size,
        "threads": args.threads, "adapter": str(adapter) if adapter else None, "repeats": args.repeats,
        "models": measured, "goals": goals,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
