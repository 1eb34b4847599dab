"""Train speed: our train step vs plain TRL SFTTrainer (as reference scripts use it) vs a bare PyTorch loop.

Three runs on the same tiny base, data, specialist and LoRA settings, one after the other in one process:

* ours: ``snaketune.training.train_adapter`` itself, with the specialist's settings from config/config.yaml
  (batch, accumulation, tools rendered, length grouping, assistant-only labels: whatever the config says);
* trl: ``trl.SFTTrainer`` the way the reference scripts call it: batch 1, gradient accumulation 4, every
  row's tools rendered, the conversational dataset handed to TRL as-is (TRL tokenizes it with the same
  chat template and, by default, trains on every token). TRL defaults for the rest except what must
  change on a CPU (``use_cpu``, no bf16) and gradient checkpointing, which is off: it trades speed for
  memory, so leaving it on would only slow the baseline down. lr, epochs, seed and the LoRA config are
  the specialist's, so the runs differ only in how they batch and what they render.
* bare: forward + backward + AdamW in a plain loop over exactly our batches (our tokenized examples, our
  sampler, our accumulation): the ceiling for our tokens/s.

Figures: tokens/s (real tokens, padding excluded, over training time; evaluation pauses the clock) and
time to quality: the training wall time until tool accuracy on the specialist's validation rows first
reaches the target (0.9), evaluated every ``--eval-every`` training examples with the eval stage's batched
greedy generation and metrics. A run stops once it reaches the target.

The three runs are interleaved: each runs in its own thread, and a baton lets one train at a time for
``--slice`` seconds of its training clock before the next takes over, so the load other jobs put on a
shared machine falls on every variant alike (run one after the other, the tokens/s ratios drifted by
0.1-0.2 between two runs). ``--slice 0`` runs them one after the other.

    python bench/train_speed.py                 # the default config, ~5-15 min on 2 cores
    python bench/train_speed.py --quick         # smoke run, ~1-2 min
    python bench/train_speed.py --set lora.modules_to_save='[embed_tokens, lm_head]' --set train.lr=2e-3
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# three interleaved trainers' progress bars would only garble the output
os.environ.setdefault("TQDM_DISABLE", "1")

GOALS = {"tokens_per_s_vs_trl": 1.0, "tokens_per_s_vs_bare": 0.9, "time_to_quality_speedup_vs_trl": 2.0}


# --- measuring a run ------------------------------------------------------------------------------

class QualityProbe:
    """Tool accuracy of the model being trained on the specialist's validation rows (eval stage code)."""

    def __init__(self, tokenizer, rows, settings: dict, eval_cfg: dict, quick: bool):
        from snaketune.evaluation import build_prompts

        self.tokenizer = tokenizer
        self.prompts = build_prompts(tokenizer, rows, settings)
        prompt_tokens = sum(len(p["ids"]) for p in self.prompts)
        self.mean_prompt_tokens = round(prompt_tokens / max(1, len(self.prompts)), 1)
        self.batch_size = int(eval_cfg["batch_size"])
        self.max_new_tokens = int(eval_cfg["max_new_tokens"]) if not quick else 48

    def __call__(self, model) -> dict:
        from snaketune import metrics
        from snaketune.generation import generate

        was_training = model.training
        model.eval()
        outputs, _ = generate(model, self.tokenizer, [p["ids"] for p in self.prompts],
                              batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, progress=False)
        if was_training:
            model.train()
        verdicts = []
        for prompt, ids in zip(self.prompts, outputs):
            calls, valid = metrics.parse_tool_calls(self.tokenizer.decode(ids, skip_special_tokens=True))
            names = sorted(t["function"]["name"] for t in prompt["tools"])
            verdicts.append(metrics.score_example(calls, valid, metrics.gold_calls(prompt["row"]), names))
        agg = metrics.aggregate(verdicts)
        return {k: round(agg[k], 4) for k in ("tool_accuracy", "exact_match", "json_valid_rate")}


class Baton:
    """One variant trains at a time; each hands over after its slice of training seconds."""

    def __init__(self, names, slice_s: float):
        self.cond = threading.Condition()
        self.queue = list(names)
        self.slice_s = slice_s

    def wait_turn(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.queue[0] == name)

    def hand_over(self, name: str, done: bool = False) -> None:
        with self.cond:
            self.queue.remove(name)
            if not done:
                self.queue.append(name)
            self.cond.notify_all()


class Run:
    """Clock, token count and the quality points of one variant."""

    def __init__(self, name: str, probe: QualityProbe, examples_per_step: int, eval_every_examples: int,
                 target: float, stop_at_target: bool, baton: Baton):
        self.name = name
        self.probe = probe
        self.examples_per_step = examples_per_step
        self.eval_every = max(1, round(eval_every_examples / examples_per_step))
        self.target = target
        self.stop_at_target = stop_at_target
        self.baton = baton
        self.clock = common.Clock()
        self.started = time.perf_counter()
        self.slice_from = 0.0
        self.turns: list[dict] = []  # tokens and training seconds of each turn with the baton
        self._turn_mark = (0.0, 0)
        self.setup_s = None
        self.tokens = 0
        self.padded_tokens = 0
        self.examples = 0
        self.steps = 0
        self.points: list[dict] = []
        self.reached: dict | None = None
        self.eval_s = 0.0

    def begin(self):
        self.setup_s = round(time.perf_counter() - self.started, 2)
        self.clock.start()

    def _close_turn(self) -> None:
        seconds, tokens = self.clock.seconds - self._turn_mark[0], self.tokens - self._turn_mark[1]
        if seconds > 0:
            self.turns.append({"seconds": round(seconds, 3), "tokens": tokens,
                               "tokens_per_s": round(tokens / seconds, 1)})
        self._turn_mark = (self.clock.seconds, self.tokens)

    def _maybe_hand_over(self) -> None:
        if self.baton.slice_s <= 0 or self.clock.seconds - self.slice_from < self.baton.slice_s:
            return
        self.clock.stop()
        self._close_turn()
        self.baton.hand_over(self.name)
        self.baton.wait_turn(self.name)
        self.slice_from = self.clock.seconds
        self.clock.start()

    def count(self, inputs):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())
        self.padded_tokens += int(ids.numel())
        self.examples += int(ids.shape[0])

    def step_done(self, step: int, model, last: bool = False) -> bool:
        """After optimizer step ``step``; evaluates every ``eval_every`` steps. True: stop training."""
        self.steps = step
        if step % self.eval_every and not last:
            self._maybe_hand_over()
            return False
        self.clock.stop()
        t0 = time.perf_counter()
        scores = self.probe(model)
        self.eval_s += time.perf_counter() - t0
        point = {"step": step, "examples": self.examples, "tokens": self.tokens,
                 "train_s": round(self.clock.seconds, 2), **scores}
        self.points.append(point)
        print(f"  [{self.name}] step {step:4d}  examples {self.examples:5d}  "
              f"train {point['train_s']:7.1f} s  "
              f"tool_acc {scores['tool_accuracy']:.3f}  exact {scores['exact_match']:.3f}", flush=True)
        if self.reached is None and scores["tool_accuracy"] >= self.target:
            self.reached = point
        self.clock.start()
        stop = self.reached is not None and self.stop_at_target
        if not stop and not last:
            self._maybe_hand_over()
        return stop

    def end(self):
        self.clock.stop()
        self._close_turn()

    def summary(self) -> dict:
        secs = self.clock.seconds
        best = max(self.points, key=lambda p: p["tool_accuracy"]) if self.points else None
        return {
            "setup_s": self.setup_s, "train_s": round(secs, 2), "eval_s": round(self.eval_s, 2),
            "steps": self.steps, "examples": self.examples, "tokens": self.tokens,
            "padding_share": round(1 - self.tokens / self.padded_tokens, 4) if self.padded_tokens else None,
            "tokens_per_s": round(self.tokens / secs, 1) if secs else None,
            "tokens_per_example": round(self.tokens / self.examples, 1) if self.examples else None,
            "eval_every_steps": self.eval_every, "turns": self.turns,
            "reached_target": self.reached is not None,
            "time_to_quality_s": self.reached["train_s"] if self.reached else None,
            "time_to_quality_with_setup_s":
                round(self.reached["train_s"] + self.setup_s, 2) if self.reached else None,
            "examples_to_quality": self.reached["examples"] if self.reached else None,
            "tokens_to_quality": self.reached["tokens"] if self.reached else None,
            "best_tool_accuracy": best["tool_accuracy"] if best else None,
            "validation_prompt_tokens": self.probe.mean_prompt_tokens,
            "points": self.points,
        }


def bench_callback(run: Run):
    from transformers import TrainerCallback

    class BenchCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            run.begin()

        def on_step_end(self, args, state, control, model=None, **kw):
            last = state.max_steps > 0 and state.global_step >= state.max_steps
            if run.step_done(state.global_step, model, last=last):
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kw):
            run.end()

    return BenchCallback()


def counting(trainer_cls, run: Run):
    """``trainer_cls`` with its micro-batches counted and the benchmark callback attached."""

    class Counted(trainer_cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(bench_callback(run))

        def training_step(self, model, inputs, num_items_in_batch=None):
            run.count(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    Counted.__name__ = f"Counted{trainer_cls.__name__}"
    return Counted


# --- the three variants ---------------------------------------------------------------------------

def reference_settings(settings: dict) -> dict:
    """What the reference scripts train with: the specialist's settings, batch 1 x 4, every tool rendered."""
    return dict(settings, train=dict(settings["train"], tools_rendered="all", batch_size=1, grad_accum=4))


def run_ours(run: Run, ws: Path, settings: dict, base_cfg: dict, threads: int, args) -> dict:
    """train_adapter itself; only its trainer class is wrapped to count tokens and evaluate."""
    from snaketune import training

    train = settings["train"]
    out = args.run_dir / "ours"
    shutil.rmtree(out, ignore_errors=True)  # no checkpoint to resume from
    original = training.trainer_class
    training.trainer_class = lambda: counting(original(), run)
    try:
        metrics = training.train_adapter(
            ws / "base",
            ws / "data/train.jsonl",
            ws / "data/val.jsonl",
            out / "adapter",
            settings,
            out / "checkpoints",
            base_cfg=base_cfg,
            threads=threads,
            gpus=0,
            config_path="config/config.yaml",
        )
    finally:
        training.trainer_class = original
    result = run.summary()
    result["settings"] = {k: train.get(k) for k in ("batch_size", "grad_accum", "lr",
                                                    "warmup_ratio", "epochs", "max_steps")} | {
        "tools_rendered": train.get("tools_rendered", "all"),
        "group_by_length": train.get("group_by_length", True), "labels": "assistant tokens only"}
    result["reported_by_train_adapter"] = {k: metrics.get(k) for k in ("tokens_per_second", "wall_time_s",
                                                                        "final_train_loss", "global_step")}
    return result


def run_trl(run: Run, ws: Path, settings: dict, threads: int, args) -> dict:
    """Plain TRL as the reference scripts use it (see the module docstring for what differs and why)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from snaketune.chat_template import build_messages, specialist_rows
    from snaketune.files import read_jsonl
    from snaketune.training import lora_config, set_threads

    set_threads(threads)
    datasets.disable_caching()
    datasets.disable_progress_bars()
    train = settings["train"]
    rows = specialist_rows(read_jsonl(ws / "data/train.jsonl"), settings["focus_tools"])
    records = []
    for row in rows:
        messages, tools = build_messages(row, settings["system_prompt"], "all")
        # a JSON string: no Arrow schema merge
        records.append({"messages": messages, "tools": json.dumps(tools)})
    tokenizer = AutoTokenizer.from_pretrained(str(ws / "base"))
    model = AutoModelForCausalLM.from_pretrained(str(ws / "base"), dtype=torch.float32)
    out = args.run_dir / "trl"
    shutil.rmtree(out, ignore_errors=True)
    # The same budget in examples as ours: max_steps counts optimizer steps, and a step here is 4 examples.
    ours_per_step = int(train["batch_size"]) * int(train["grad_accum"])
    max_steps = int(train.get("max_steps", -1))
    max_steps = args.max_steps_for(4) or (math.ceil(max_steps * ours_per_step / 4) if max_steps > 0 else -1)
    config = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=1, gradient_accumulation_steps=4,
        learning_rate=float(train["lr"]), num_train_epochs=float(train["epochs"]), max_steps=max_steps,
        lr_scheduler_type=train.get("lr_scheduler", "linear"),
        warmup_steps=min(float(train.get("warmup_ratio", 0)), 0.999),
        weight_decay=float(train.get("weight_decay", 0.0)), seed=int(train["seed"]), use_cpu=True, bf16=False,
        gradient_checkpointing=False, report_to="none",
    )
    trainer = counting(SFTTrainer, run)(model=model, args=config,
                                        train_dataset=datasets.Dataset.from_list(records),
                                        processing_class=tokenizer, peft_config=lora_config(settings))
    trainer.train()
    result = run.summary()
    result["settings"] = {"batch_size": 1, "grad_accum": 4, "lr": config.learning_rate,
                          "warmup": config.warmup_steps, "epochs": config.num_train_epochs,
                          "max_steps": config.max_steps, "tools_rendered": "all", "group_by_length": False,
                          "labels": "every token (TRL default)", "gradient_checkpointing": False}
    del trainer, model
    return result


def run_bare(run: Run, ws: Path, settings: dict, threads: int, args) -> dict:
    """forward + backward + AdamW over our examples in our batch order: no Trainer, no callbacks, no
    clipping."""
    import torch
    from peft import get_peft_model

    from snaketune.chat_template import specialist_rows
    from snaketune.files import read_jsonl
    from snaketune.modeling import load_base_model, load_tokenizer
    from snaketune.training import length_grouped_sampler, lora_config, set_threads, tokenize_rows

    set_threads(threads)
    train = settings["train"]
    bs, accum = int(train["batch_size"]), int(train["grad_accum"])
    tokenizer = load_tokenizer(str(ws / "base"))
    rows = specialist_rows(read_jsonl(ws / "data/train.jsonl"), settings["focus_tools"])
    examples, _ = tokenize_rows(rows, tokenizer, settings)
    if args.bare_labels == "all":  # an experiment: every token in the loss, as plain TRL trains by default
        examples = [dict(e, labels=list(e["input_ids"])) for e in examples]
    torch.manual_seed(int(train["seed"]))
    model = get_peft_model(load_base_model(str(ws / "base")), lora_config(settings))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(train["lr"]),
                                  weight_decay=float(train.get("weight_decay", 0.0)), fused=True)
    lengths = [len(e["input_ids"]) for e in examples]
    sampler = (
        length_grouped_sampler(lengths, bs, int(train["seed"]))
        if train.get("group_by_length", True)
        else None
    )
    per_epoch = math.ceil(math.ceil(len(examples) / bs) / accum)
    total = args.max_steps_for(bs * accum) or int(train.get("max_steps", -1))
    if total <= 0:
        total = math.ceil(float(train["epochs"]) * per_epoch)
    # linear warmup then decay, as the Trainer's
    warmup = math.ceil(float(train.get("warmup_ratio", 0.0)) * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    pad = tokenizer.pad_token_id

    def collate(batch):
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[r, :n] = torch.tensor(e["input_ids"])
            labels[r, :n] = torch.tensor(e["labels"])
            mask[r, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    step, epoch, done = 0, 0, False
    run.begin()
    while not done:
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = list(sampler)
        else:
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(epoch)).tolist()
        micro = [collate([examples[i] for i in order[b:b + bs]]) for b in range(0, len(order), bs)]
        for g in range(0, len(micro), accum):
            group = micro[g:g + accum]
            n_items = sum(int((m["labels"][:, 1:] != -100).sum()) for m in group)
            for m in group:
                run.count(m)
                model(**m, num_items_in_batch=n_items).loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if run.step_done(step, model, last=step >= total) or step >= total:
                done = True
                break
        epoch += 1
    run.end()
    result = run.summary()
    result["settings"] = {"batch_size": bs, "grad_accum": accum, "lr": float(train["lr"]),
                          "total_steps": total, "tools_rendered": train.get("tools_rendered", "all"),
                          "optimizer": "torch AdamW (fused)",
                          "labels": "assistant tokens only (our examples)" if args.bare_labels == "assistant"
                          else "every token (experiment)"}
    del model, optimizer
    return result


def paired_ratio(a: dict, b: dict):
    """Median over the rounds both variants trained in of their tokens/s ratio (turn i of a vs turn i of b).

    Adjacent turns see the same machine load; one-after-the-other totals do not. The first turn (warm-up)
    is left out when there are more. Without interleaving: the ratio of the whole runs.
    """
    pairs = list(zip(a["turns"], b["turns"]))
    if len(pairs) > 2:
        pairs = pairs[1:]
    if len(pairs) < 2:
        return common.ratio(a["tokens_per_s"], b["tokens_per_s"])
    return round(statistics.median(x["tokens_per_s"] / y["tokens_per_s"] for x, y in pairs), 2)


# --- main -----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--specialist", default="veran-tools")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the specialist's lora./train. settings for every variant (YAML value)")
    parser.add_argument("--variants", default="ours,trl,bare", help="comma-separated subset of ours,trl,bare")
    parser.add_argument("--eval-every", type=int, default=64, help="evaluate every N training examples")
    parser.add_argument("--target", type=float, default=0.9, help="tool accuracy that counts as quality")
    parser.add_argument("--no-stop", action="store_true",
                        help="train the full schedule even after the target")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the specialist's)")
    parser.add_argument("--bare-labels", choices=["assistant", "all"], default="assistant",
                        help="experiment: train the bare loop on every token instead of the assistant's")
    parser.add_argument("--slice", type=float, default=5.0,
                        help="training seconds a variant runs before handing over "
                             "(0: one variant after the other)")
    args = parser.parse_args(argv)
    quick_examples = 64 if args.quick else None
    if args.quick:
        args.eval_every = min(args.eval_every, 32)
    # eval_throughput reads ours
    args.run_dir = args.workdir / ("train_speed.quick" if args.quick else "train_speed")
    args.max_steps_for = lambda per_step: max(1, quick_examples // per_step) if quick_examples else None

    config = common.default_config()
    overrides = common.parse_overrides(args.set)
    unknown = set(overrides) - {"lora", "train"}
    if unknown:
        raise SystemExit(f"--set takes lora.* and train.* keys, not {sorted(unknown)}")
    settings = common.settings_for(config, args.specialist, overrides)
    if args.quick:
        per_step = int(settings["train"]["batch_size"]) * int(settings["train"]["grad_accum"])
        settings["train"]["max_steps"] = args.max_steps_for(per_step)
    threads = args.threads or int(settings["resources"]["threads"])
    ws = common.demo_workspace(config, args.workdir)

    import datasets  # noqa: F401  - imported here, not in whichever variant's setup comes first
    import peft  # noqa: F401
    import trl as _trl  # noqa: F401  (the name trl is the TRL variant's result below)

    from snaketune.chat_template import specialist_rows
    from snaketune.files import read_jsonl
    from snaketune.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(ws / "base"))
    val_rows = specialist_rows(read_jsonl(ws / "data/val.jsonl"), settings["focus_tools"])
    probe_for = lambda s: QualityProbe(tokenizer, val_rows, s, config["eval"], args.quick)  # noqa: E731
    print(f"train speed: {args.specialist}, {len(val_rows)} validation rows, {threads} thread(s), "
          f"target tool accuracy {args.target}, eval every {args.eval_every} examples"
          + (f", overrides {overrides}" if overrides else "") + (" [quick]" if args.quick else ""),
          flush=True)

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(names) - {"ours", "trl", "bare"}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}: choose from ours, trl, bare")
    per_step = int(settings["train"]["batch_size"]) * int(settings["train"]["grad_accum"])
    baton = Baton(names, args.slice)
    make_run = lambda name, s, n: Run(name, probe_for(s), n, args.eval_every, args.target,  # noqa: E731
                                      not args.no_stop, baton)
    runners = {
        "ours": lambda: run_ours(make_run("ours", settings, per_step), ws, settings,
                                 {"name_or_path": str(ws / "base")}, threads, args),
        "trl": lambda: run_trl(make_run("trl", reference_settings(settings), 4), ws, settings, threads, args),
        "bare": lambda: run_bare(make_run("bare", settings, per_step), ws, settings, threads, args),
    }
    results, errors = {}, {}

    def worker(name):
        baton.wait_turn(name)
        print(f"\n== {name} (setup)", flush=True)
        try:
            results[name] = runners[name]()
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            errors[name] = err
        finally:
            baton.hand_over(name, done=True)

    threads_ = [threading.Thread(target=worker, args=(n,), name=f"bench-{n}") for n in names]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    if errors:
        name, err = next(iter(errors.items()))
        raise RuntimeError(f"variant {name} failed") from err
    results = {n: results[n] for n in names}

    ours, trl, bare = results.get("ours"), results.get("trl"), results.get("bare")
    ratios = {}
    if ours and trl:
        ratios["tokens_per_s_vs_trl"] = paired_ratio(ours, trl)
        ratios["tokens_per_s_vs_trl_whole_runs"] = common.ratio(ours["tokens_per_s"], trl["tokens_per_s"])
        if ours["reached_target"] and trl["reached_target"]:
            ratios["time_to_quality_speedup_vs_trl"] = common.ratio(trl["time_to_quality_s"],
                                                                    ours["time_to_quality_s"])
        elif ours["reached_target"]:  # trl never got there: its whole run is a lower bound
            ratios["time_to_quality_speedup_vs_trl_at_least"] = common.ratio(trl["train_s"],
                                                                             ours["time_to_quality_s"])
        elif trl["reached_target"]:  # ours never got there: its whole run bounds the speedup from above
            ratios["time_to_quality_speedup_vs_trl_at_most"] = common.ratio(trl["time_to_quality_s"],
                                                                            ours["train_s"])
        ratios["tokens_per_example_vs_trl"] = common.ratio(ours["tokens_per_example"],
                                                           trl["tokens_per_example"])
    if ours and bare:
        ratios["tokens_per_s_vs_bare"] = paired_ratio(ours, bare)
        ratios["tokens_per_s_vs_bare_whole_runs"] = common.ratio(ours["tokens_per_s"], bare["tokens_per_s"])
    goals = {}
    for key, goal in GOALS.items():
        value = ratios.get(key, ratios.get(f"{key}_at_least"))
        bound = ratios.get(f"{key}_at_most")
        if value is None and bound is not None and bound < goal:  # an upper bound below the goal: missed
            goals[key] = {"goal": f">= {goal}", "value": f"<= {bound}", "met": False}
            continue
        goals[key] = {"goal": f">= {goal}", "value": value, "met": None if value is None else value >= goal}

    rows = [[name, r["tokens_per_s"], r["tokens_per_example"], r["padding_share"], r["steps"], r["examples"],
             r["train_s"], r["time_to_quality_s"], r["examples_to_quality"], r["best_tool_accuracy"]]
            for name, r in results.items()]
    print("\n" + common.table(rows, ["variant", "tokens/s", "tok/example", "padding", "steps", "examples",
                                     "train s", f"s to acc>={args.target}", "examples to acc", "best acc"]))
    print("\nratios (ours / baseline; tokens/s: median over interleaved rounds; "
          "time to quality: baseline / ours):")
    for key, value in ratios.items():
        goal = goals.get(key.removesuffix("_at_least").removesuffix("_at_most"))
        print(f"  {key:42s} {value}" + (f"   goal {goal['goal']}: {'met' if goal['met'] else 'MISSED'}"
                                        if goal and goal["met"] is not None else ""))
    common.write_result(common.result_path(__file__, args), {
        "benchmark": "train_speed", "machine": common.machine(), "quick": args.quick,
        "specialist": args.specialist, "threads": threads, "target_tool_accuracy": args.target,
        "eval_every_examples": args.eval_every, "slice_s": args.slice, "overrides": overrides,
        "config": {"lora": settings["lora"], "train": settings["train"]},
        "variants": results, "ratios": ratios, "goals": goals,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
