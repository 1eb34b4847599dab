"""Eval throughput: the eval stage's generation vs plain ``model.generate`` one prompt at a time.

Same model, same prompts (the specialist's test prompts built by ``build_prompts``), same greedy decoding,
``max_new_tokens`` and stop ids (the template's end of turn) on every side:

* **baseline**: ``model.generate`` on one prompt at a time, as a hand-written eval script does it.
* **ours**: ``snaketune.generation.generate`` at the config's ``eval.batch_size``: the prompts' shared prefix
  (system prompt + tool list) prefilled once, our own greedy loop over the model's forward, prompt-lookup
  drafts verified several tokens per pass, finished rows replaced by waiting prompts.
* in the same run, to show where the ratio comes from: **hf batched** (``model.generate`` on left-padded
  batches of the config's size: what ``generate`` did before, and still its fallback), **ours, no drafts**
  (``generate`` with the prompt-lookup drafts off) and ours at other batch sizes (``--sweep``).

Tokens/s counts generated tokens up to and including the stop token over the whole call (prompt forward
passes included). Every side's outputs are compared token by token with the baseline's. The sides run
interleaved, ``--repeats`` times, and the median is reported; CPU seconds of the process are recorded
beside wall seconds (the machine is shared: CPU time moves less with the other jobs' load). Two models, as
the eval stage scores both: the tuned one (the tiny base with train_speed.py's adapter; its outputs stop
after ~20-40 tokens) and the random-init base (every output runs to ``max_new_tokens``).

    python bench/eval_throughput.py            # ~1-2 min on 2 cores
    python bench/eval_throughput.py --quick
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
GOAL = 8.0


def plain_one_at_a_time(model, tokenizer, prompts, max_new: int):
    """The baseline: ``model.generate`` per prompt, greedy, stopping at the template's end-of-turn ids."""
    from snaketune.generation import generate_one_at_a_time

    return generate_one_at_a_time(model, tokenizer, prompts, max_new)


def hf_batched(model, tokenizer, prompts, batch_size: int, max_new: int):
    """``model.generate`` on left-padded batches, longest prompts first (generate's fallback)."""
    from snaketune import generation
    from snaketune.chat_template import stop_token_ids

    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    outputs, generated = [None] * len(prompts), 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        for i, new in zip(
            batch, generation.generate_left_padded(model, [prompts[i] for i in batch], stops, pad, max_new)
        ):
            cut = next((k for k, tok in enumerate(new) if tok in stops), len(new))
            outputs[i] = new[:cut]
            generated += min(cut + 1, len(new))
    return outputs, generated


@contextmanager
def decoder_stats(sink: dict, draft_tokens: int | None = None):
    """Run ``generate`` with its decoder's counters copied into ``sink`` (and, if given, a draft limit)."""
    from snaketune import generation

    original_for_model, original_drafts = generation.SharedPrefixDecoder.for_model, generation.DRAFT_TOKENS
    decoders = []

    def for_model(*args, **kwargs):
        decoder = original_for_model(*args, **kwargs)
        decoders.append(decoder)
        return decoder

    generation.SharedPrefixDecoder.for_model = for_model
    if draft_tokens is not None:
        generation.DRAFT_TOKENS = draft_tokens
    try:
        yield
    finally:
        generation.SharedPrefixDecoder.for_model = original_for_model
        generation.DRAFT_TOKENS = original_drafts
        sink.clear()
        sink["fast_path"] = bool(decoders) and decoders[-1] is not None
        if sink["fast_path"]:
            sink.update(decoders[-1].stats)


def ours(model, tokenizer, prompts, batch_size: int, max_new: int, stats: dict,
         draft_tokens: int | None = None):
    from snaketune.generation import generate

    with decoder_stats(stats, draft_tokens):
        return generate(model, tokenizer, prompts, batch_size=batch_size,
                        max_new_tokens=max_new, progress=False)


def prefill_seconds(model, prompts) -> float:
    """One forward pass over every prompt, one at a time: the prompt cost of the baseline."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            model(input_ids=torch.tensor([ids]), logits_to_keep=1)
    return time.perf_counter() - started


def measure(model, tokenizer, prompts, sides: dict, repeats: int) -> dict:
    """Time every side ``repeats`` times, interleaved; compare its outputs with the baseline's."""
    for run in sides.values():  # warm-up, one whole run each: first-call costs go to no side
        run(prompts, None)
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    stats: dict[str, dict] = {}
    prefill = []
    for _ in range(repeats):  # interleaved, so load from other jobs hits every side alike
        for name, run in sides.items():
            wall, cpu = time.perf_counter(), time.process_time()
            outputs, generated = run(prompts, None)
            runs[name].append({"seconds": time.perf_counter() - wall,
                               "cpu_seconds": time.process_time() - cpu, "outputs": outputs,
                               "generated_tokens": generated})
            stats[name] = dict(getattr(run, "stats", {}))
        prefill.append(prefill_seconds(model, prompts))
    base_outputs = runs["baseline"][0]["outputs"]
    results = {}
    for name, reps in runs.items():
        seconds = statistics.median(r["seconds"] for r in reps)
        cpu = statistics.median(r["cpu_seconds"] for r in reps)
        n = reps[0]["generated_tokens"]
        same = sum(a == b for a, b in zip(reps[0]["outputs"], base_outputs))
        deterministic = all(r["outputs"] == reps[0]["outputs"] for r in reps)
        results[name] = {"seconds": round(seconds, 4), "all_seconds": [round(r["seconds"], 4) for r in reps],
                         "cpu_seconds": round(cpu, 4), "generated_tokens": n,
                         "tokens_per_s": round(n / seconds, 1),
                         "outputs_equal_to_baseline": f"{same}/{len(prompts)}",
                         "deterministic": deterministic,
                         **({"decoder": stats[name]} if stats.get(name) else {})}
    base = results["baseline"]
    for r in results.values():
        r["speedup_vs_baseline"] = common.ratio(r["tokens_per_s"], base["tokens_per_s"])
        r["cpu_speedup_vs_baseline"] = common.ratio(base["cpu_seconds"] * r["generated_tokens"],
                                                    r["cpu_seconds"] * base["generated_tokens"])
    lengths = sorted(len(o) for o in base_outputs)
    return {"sides": results, "prefill_s": round(statistics.median(prefill), 3),
            "prefill_share_of_baseline": round(statistics.median(prefill) / base["seconds"], 3),
            "output_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--specialist", default="veran-tools")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="adapter directory (default: train_speed.py's, when it exists)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed repeats of each side (the median is reported)")
    parser.add_argument("--sweep", default="1,4,8,32", help="other batch sizes to time ours at ('' for none)")
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
    sweep = [int(b) for b in args.sweep.split(",") if b.strip() and int(b) != batch_size]
    machine = common.machine()
    # The eval stage scores the tuned model (evaluate_tuned) and the base (evaluate_base); both are measured.
    models = ([("tuned", adapter)] if adapter else []) + [("base", None)]
    measured, prompts = {}, []
    for label, adapter_dir in models:
        model, tokenizer = load_for_eval({"name_or_path": str(ws / "base")}, adapter_dir,
                                         threads=args.threads)
        rows = test_subset(ws / "data/test.jsonl", settings)[: 8 if args.quick else None]
        prompts = [p["ids"] for p in build_prompts(tokenizer, rows, settings)]
        shared = len(os.path.commonprefix(prompts))
        print(f"\n== {label}: tiny base" + (f" + adapter {adapter_dir}" if adapter_dir else " (random init)")
              + f"; {args.specialist}, {len(prompts)} test prompts "
              f"({statistics.mean(map(len, prompts)):.0f} tokens on average, {shared} shared by all), "
              f"max_new_tokens {max_new}, {args.threads} thread(s)", flush=True)

        def side(fn, model=model, tokenizer=tokenizer, **kw):
            def run(ps, new):
                return fn(model, tokenizer, ps, max_new=new or max_new, **kw)
            return run

        sides = {"baseline": side(plain_one_at_a_time),
                 "hf batched": side(hf_batched, batch_size=batch_size)}
        for name, bs, drafts in ([(f"ours (batch {batch_size})", batch_size, None),
                                  (f"ours, no drafts (batch {batch_size})", batch_size, 0)]
                                 + [(f"ours (batch {b})", b, None) for b in sweep]):
            stats: dict = {}
            run = side(ours, batch_size=bs, stats=stats, draft_tokens=drafts)
            run.stats = stats
            sides[name] = run
        m = measure(model, tokenizer, prompts, sides, args.repeats)
        m["ours"] = f"ours (batch {batch_size})"
        measured[label] = m
        print(common.table([[name, r["generated_tokens"], r["seconds"], r["tokens_per_s"],
                             r["speedup_vs_baseline"], r["cpu_speedup_vs_baseline"],
                             r.get("decoder", {}).get("forward_passes"),
                             r["outputs_equal_to_baseline"]] for name, r in m["sides"].items()],
                           ["side", "generated tokens", "seconds (median)", "tokens/s", "x baseline",
                            "x baseline (CPU s)", "decode passes", "outputs = baseline"]))
        ours_side = m["sides"][m["ours"]]
        dec = ours_side.get("decoder", {})
        print(f"outputs {m['output_tokens']['min']}-{m['output_tokens']['max']} tokens (median "
              f"{m['output_tokens']['median']}); the baseline's prompt forward passes alone: "
              f"{m['prefill_s']} s = {m['prefill_share_of_baseline']:.0%} of its time"
              + (f"; ours: {dec['forward_passes']} decode passes, {dec['slots']} token slots, "
                 f"{dec['accepted']}/{dec['drafted']} drafted tokens accepted" if dec.get("fast_path") else
                 "; ours: FELL BACK to model.generate"), flush=True)
        del model

    print()
    goals = {}
    for label, m in measured.items():
        value = m["sides"][m["ours"]]["speedup_vs_baseline"]
        goals[label] = {"goal": f">= {GOAL}", "value": value, "met": value >= GOAL}
        print(f"{label}: ours (batch {batch_size}) vs plain model.generate one at a time: {value}x   "
              f"goal >= {GOAL}x: {'met' if value >= GOAL else 'MISSED'}")
    machine["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    common.write_result(common.result_path(__file__, args), {
        "benchmark": "eval_throughput", "machine": machine, "quick": args.quick,
        "specialist": args.specialist, "prompts": len(prompts), "max_new_tokens": max_new,
        "batch_size": batch_size, "threads": args.threads, "adapter": str(adapter) if adapter else None,
        "repeats": args.repeats, "models": measured, "goals": goals,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
