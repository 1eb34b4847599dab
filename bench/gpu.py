"""GPU training: LoRA bf16 and QLoRA 4-bit on a random-init Qwen2.5-7B-shaped model, through our trainer.

Runs only where CUDA is available (otherwise it says so and exits 0; ``--plan`` prints the variants and
the FLOP count without a GPU). Each variant runs in its own process (clean peak-VRAM figures), on the
demo's tool-use rows with every tool rendered (~600-770 tokens each), for ``--warmup`` + ``--steps``
optimizer steps; only the last ``--steps`` are timed.

Variants: ``reference`` is plain TRL as the reference scripts use it (batch 1, gradient accumulation 4,
TRL defaults: bf16, gradient checkpointing on, no packing). Ours use ``snaketune.training``'s SFTConfig
mapping and trainer class with the reference LoRA (r 16, alpha 32, dropout 0.05, all linear layers) at
batch 8, toggling gradient checkpointing, packing (padding-free BFD, flash attention; skipped without
flash_attn) and Liger kernels (``train.kernels: liger``; skipped without liger_kernel, which the lock
leaves out: ``pip install liger-kernel==0.8.5``). Every variant loads the base through
``snaketune.modeling.load_base_model`` (bf16; 4-bit nf4 + double quant for ``qlora*``).

Liger, as snaketune uses it: TRL applies Liger's layer kernels (RMSNorm, RoPE, SwiGLU) when training starts
and never its fused linear cross-entropy (TRL and our trainer compute the LM head themselves; ours only at
assistant positions). Each ``*-liger`` variant is compared with its twin without Liger (same quantization,
checkpointing, packing and batch): tokens/s ratio and peak VRAM (allocated) difference, under ``liger`` in
the JSON.

MFU = model FLOPs per second / peak, with model FLOPs per trained token
    4·N  +  6·N_lora  +  12·L·d·T_ctx
N: parameters of the frozen matrices a token passes through (all linear layers and the LM head, not the
embedding lookup): forward 2·N, backward 2·N for activation gradients only (frozen weights get none);
N_lora: LoRA parameters (forward 2, backward 4, as full training); attention: per layer QK^T and AV are
2·d·T_ctx each forward, backward twice that, so 12·L·d·T_ctx, with T_ctx the mean causal context (for a
sequence of s tokens, (s+1)/2), from the real sequence lengths. Recomputation under gradient
checkpointing is not counted (MFU, not HFU). Peak: dense bf16 tensor-core TFLOP/s of the device (H100
SXM / H200: 989; H100 PCIe: 756; A100: 312), or ``--peak-tflops``.

    python bench/gpu.py                 # all variants, ~8-15 min on one H100 (first run saves the model)
    python bench/gpu.py --quick         # reference, lora, lora-liger; few steps
    python bench/gpu.py --plan          # no GPU needed: variants, formula, FLOPs per token
    python bench/gpu.py --cpu-smoke     # no GPU needed: the variants' code on the demo's tiny base, 2 steps
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
                 rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False,
                 hidden_act="silu")
REFERENCE_LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear",
                  "modules_to_save": []}
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0)]
# name: (quantization, gradient checkpointing, packing, liger, batch, grad accum, plain TRL reference)
VARIANTS = {
    "reference": ("none", True, False, False, 1, 4, True),
    "lora": ("none", True, False, False, 8, 1, False),
    "lora-no-gc": ("none", False, False, False, 8, 1, False),
    "lora-packing": ("none", True, True, False, 8, 1, False),
    "lora-liger": ("none", True, False, True, 8, 1, False),
    "lora-packing-liger": ("none", True, True, True, 8, 1, False),
    "lora-packing-liger-no-gc": ("none", False, True, True, 8, 1, False),
    "qlora": ("4bit", True, False, False, 8, 1, False),
    "qlora-packing-liger": ("4bit", True, True, True, 8, 1, False),
}
QUICK_VARIANTS = ("reference", "lora", "lora-liger")


# --- FLOPs ----------------------------------------------------------------------------------------

def shape_counts(shape: dict, lora: dict = REFERENCE_LORA) -> dict:
    """Matrix parameters per token (N), LoRA parameters (all-linear), layers and attention width."""
    d, f, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads, kv, vocab = shape["num_attention_heads"], shape["num_key_value_heads"], shape["vocab_size"]
    head_dim = d // heads
    q, kvd = heads * head_dim, kv * head_dim
    linears = [(d, q), (d, kvd), (d, kvd), (q, d), (d, f), (d, f), (f, d)]  # (in, out): q k v o gate up down
    per_layer = sum(i * o for i, o in linears)
    r = int(lora["r"])
    lora_per_layer = sum(r * (i + o) for i, o in linears)
    return {"N_matmul": L * per_layer + d * vocab, "N_lora": L * lora_per_layer, "layers": L, "attn_width": q,
            "embedding": d * vocab}


def flops_per_token(counts: dict, mean_context: float) -> float:
    """Model FLOPs per trained token (see the module docstring)."""
    attention = 12 * counts["layers"] * counts["attn_width"] * mean_context
    return 4 * counts["N_matmul"] + 6 * counts["N_lora"] + attention


def mean_causal_context(lengths) -> float:
    """Mean number of positions a token attends to over sequences of these lengths: sum s(s+1)/2 / sum s."""
    total = sum(lengths)
    return sum(s * (s + 1) / 2 for s in lengths) / total if total else 0.0


def peak_tflops(device_name: str, given: float | None) -> tuple[float, str]:
    if given:
        return given, "--peak-tflops"
    for key, value in PEAK_TFLOPS:
        if key in device_name:
            return value, f"dense bf16 peak of {key}"
    raise SystemExit(f"no known bf16 peak for {device_name!r}: pass --peak-tflops")


# --- one variant (its own process) ----------------------------------------------------------------

def build_model_dir(path: Path) -> Path:
    """Random-init Qwen2.5-7B shape, bf16 safetensors (built on the GPU, saved once; ~15 GB)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    if (path / "config.json").is_file():
        return path
    tmp = path.with_name(path.name + ".tmp")
    config = Qwen2Config(**QWEN25_7B, dtype="bfloat16")
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    tmp.rename(path)
    return path


def run_variant(name: str, model_dir: Path, ws: Path, args) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from snaketune.chat_template import build_messages
    from snaketune.files import read_jsonl
    from snaketune.modeling import load_base_model, load_tokenizer
    from snaketune.training import lora_config, tokenize_rows, trainer_class, training_arguments

    quant, gc, packing, liger, batch, accum, reference = VARIANTS[name]
    cuda = torch.cuda.is_available()  # False only under --cpu-smoke
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    config = common.default_config()
    settings = common.settings_for(config, next(iter(config["specialists"])), {
        "lora": REFERENCE_LORA, "train": {"tools_rendered": "all", "batch_size": batch, "grad_accum": accum,
                                          "max_steps": args.warmup + args.steps, "lr": 2.0e-4,
                                          "warmup_ratio": 0.0, "quantization": quant, "max_seq_len": 2048}})
    settings["focus_tools"] = []  # every demo row
    tokenizer = load_tokenizer(str(ws / "base"))
    rows = read_jsonl(ws / "data/train.jsonl")
    out_dir = args.workdir / "gpu" / name
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    elif quant != "none":
        return {"variant": name, "skipped": "4-bit is measured on CUDA only"}

    if packing:
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return {"variant": name,
                    "skipped": "flash_attn is not installed (packing needs varlen flash attention)"}
    if liger:
        from snaketune.kernels import LIGER_PIN, liger_available

        if not cuda:
            return {"variant": name, "skipped": "Liger's kernels are Triton kernels for CUDA"}
        if not liger_available():
            return {"variant": name, "skipped": f"liger_kernel is not installed (pip install {LIGER_PIN})"}

    attn = "flash_attention_2" if packing else "sdpa"
    model = load_base_model(str(model_dir), dtype="bf16" if cuda else "fp32", quantization=quant,
                            device="cuda" if cuda else None, attn_implementation=attn)
    if quant == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)

    if reference:  # plain TRL: the conversational rows as they are, TRL's own tokenization and defaults
        records = []
        for row in rows:
            messages, tools = build_messages(row, settings["system_prompt"], "all")
            records.append({"messages": messages, "tools": json.dumps(tools)})
        train_dataset = datasets.Dataset.from_list(records)
        sft = SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=batch,
                        gradient_accumulation_steps=accum, max_steps=args.warmup + args.steps,
                        learning_rate=2.0e-4, report_to="none", save_strategy="no", logging_steps=5,
                        disable_tqdm=True, **({} if cuda else {"use_cpu": True, "bf16": False}))
        trainer_cls = SFTTrainer
    else:
        examples, _ = tokenize_rows(rows, tokenizer, settings)
        train_dataset = datasets.Dataset.from_list(examples)
        options = {"device": "cuda" if cuda else "cpu", "dtype": "bf16" if cuda else "fp32",
                   "gradient_checkpointing": gc, "packing": packing, "quantization": quant, "liger": liger}
        kwargs = training_arguments(settings, options, out_dir)  # liger -> use_liger_kernel, as in training
        kwargs.update(save_strategy="no", logging_steps=5, disable_tqdm=True)
        sft = SFTConfig(**kwargs)
        trainer_cls = trainer_class()

    counts = shape_counts(QWEN25_7B if cuda else tiny_shape(model_dir))
    state = {"tokens": 0, "seq_lengths": [], "t0": None, "timing": False}

    class Timing(TrainerCallback):
        def on_step_begin(self, a, s, control, **kw):
            if s.global_step == args.warmup and state["t0"] is None:
                sync()
                state["t0"], state["timing"] = time.perf_counter(), True

        def on_train_end(self, a, s, control, **kw):
            sync()
            state["t1"] = time.perf_counter()

    class Counted(trainer_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if state["timing"]:
                if "cu_seq_lens_q" in inputs:  # padding-free: one row, sequence boundaries given
                    lengths = inputs["cu_seq_lens_q"].diff().tolist()
                elif "attention_mask" in inputs:
                    lengths = inputs["attention_mask"].sum(dim=1).tolist()
                else:
                    lengths = [inputs["input_ids"].shape[1]] * inputs["input_ids"].shape[0]
                state["tokens"] += int(sum(lengths))
                state["seq_lengths"].extend(int(x) for x in lengths)
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Counted(model=model, args=sft, train_dataset=train_dataset, processing_class=tokenizer,
                      peft_config=lora_config(settings), callbacks=[Timing()])
    trainer.train()
    seconds = state["t1"] - state["t0"]
    context = mean_causal_context(state["seq_lengths"])
    fpt = flops_per_token(counts, context)
    peak, peak_source = (peak_tflops(torch.cuda.get_device_name(0), args.peak_tflops) if cuda
                         else (None, "cpu smoke"))
    tokens_per_s = state["tokens"] / seconds
    return {
        "variant": name, "quantization": quant, "gradient_checkpointing": gc,
        "packing": packing, "liger": liger, "batch_size": batch, "grad_accum": accum,
        "plain_trl_reference": reference, "attention": attn, "timed_steps": args.steps,
        "tokens": state["tokens"], "seconds": round(seconds, 3), "tokens_per_s": round(tokens_per_s, 1),
        "mean_sequence_tokens": round(sum(state["seq_lengths"]) / max(1, len(state["seq_lengths"])), 1),
        "mean_causal_context": round(context, 1), "flops_per_token": fpt,
        "mfu": round(tokens_per_s * fpt / (peak * 1e12), 4) if peak else None, "peak_tflops": peak,
        "peak_source": peak_source,
        "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_vram_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
    }


def tiny_shape(model_dir: Path) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "vocab_size")}


# --- orchestration --------------------------------------------------------------------------------

def plan(args, names) -> dict:
    counts = shape_counts(QWEN25_7B)
    example = {s: flops_per_token(counts, mean_causal_context([s])) for s in (512, 700, 2048)}
    print("Qwen2.5-7B shape:", json.dumps(QWEN25_7B))
    print(f"N (matrices per token) = {counts['N_matmul'] / 1e9:.3f} B, LoRA (r 16, all-linear) = "
          f"{counts['N_lora'] / 1e6:.1f} M, "
          f"embedding lookup (not counted) = {counts['embedding'] / 1e6:.0f} M")
    print("model FLOPs / token = 4·N + 6·N_lora + 12·L·d·T_ctx  (T_ctx = mean causal context)")
    for s, f in example.items():
        print(f"  one {s}-token sequence: {f / 1e9:.2f} GFLOP/token")
    print("variants:", ", ".join(names))
    return {"counts": counts,
            "gflops_per_token_by_length": {s: round(f / 1e9, 3) for s, f in example.items()}}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=15, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the 7B-shaped model is (built if absent)")
    parser.add_argument("--plan", action="store_true", help="print variants and FLOP formula; needs no GPU")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the variants' code on the CPU with the demo's tiny base "
                             "(2 steps; checks, no figures)")
    parser.add_argument("--variant", default=None, help=argparse_hidden())
    parser.add_argument("--variant-json", type=Path, default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 4, 1
        args.variants = ",".join(QUICK_VARIANTS)
    if args.cpu_smoke:
        args.steps, args.warmup = 2, 1
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.plan:
        plan(args, names)
        return 0

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench/gpu.py: no CUDA device here; nothing to measure (--plan shows what it would run, "
              "--cpu-smoke runs its code paths on the CPU).")
        return 0
    config = common.default_config()
    ws = common.demo_workspace(config, args.workdir)
    shaped = args.model_dir or args.workdir / "gpu" / "qwen2.5-7b-shape-bf16"
    model_dir = ws / "base" if args.cpu_smoke else shaped
    if args.variant:  # the child process: one variant, result as JSON
        result = run_variant(args.variant, model_dir, ws, args)
        args.variant_json.write_text(json.dumps(result))
        return 0

    info = plan(args, names)
    if not args.cpu_smoke:
        build_model_dir(model_dir)
    results = []
    for name in names:
        out = args.workdir / "gpu" / f"{name}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, *(["--cpu-smoke"] if args.cpu_smoke else []), "--variant", name,
               "--variant-json", str(out), "--model-dir", str(model_dir), "--workdir", str(args.workdir),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
        if args.peak_tflops:
            cmd += ["--peak-tflops", str(args.peak_tflops)]
        print(f"\n== {name}", flush=True)
        proc = subprocess.run(cmd, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        results.append(json.loads(out.read_text()) if proc.returncode == 0 and out.is_file()
                       else {"variant": name, "failed": f"exit {proc.returncode}"})
        r = results[-1]
        if "tokens_per_s" in r:
            print(f"   {r.get('tokens_per_s')} tokens/s, MFU {r.get('mfu')}, "
                  f"peak VRAM {r.get('peak_vram_gib')} GiB", flush=True)
        else:
            print(f"   {r.get('skipped') or r.get('failed')}", flush=True)

    ref = next((r for r in results if r["variant"] == "reference" and "tokens_per_s" in r), None)
    for r in results:
        if ref and "tokens_per_s" in r:
            r["tokens_per_s_vs_reference"] = common.ratio(r["tokens_per_s"], ref["tokens_per_s"])
    measured = [r for r in results if "tokens_per_s" in r]
    liger = liger_pairs(results)
    if liger:
        print("\nLiger kernels vs the same variant without them:")
        print(common.table([[p["variant"], p["without"], p["tokens_per_s_ratio"], p["peak_vram_gib_delta"]]
                            for p in liger], ["variant", "without Liger", "x tokens/s", "peak VRAM GiB +/-"]))
    print("\n" + common.table([[r["variant"], r.get("tokens_per_s"),
                                r.get("tokens_per_s_vs_reference"), r.get("mfu"), r.get("peak_vram_gib"),
                                r.get("skipped") or r.get("failed")] for r in results],
                               ["variant", "tokens/s", "x reference", "MFU", "peak VRAM GiB", "note"]))
    best = max((r for r in measured if r["variant"] != "reference"),
               key=lambda r: r["tokens_per_s"], default=None)
    goal = None
    if best and ref:
        value = best["tokens_per_s_vs_reference"]
        goal = {"goal": ">= 2.0 x reference tokens/s", "best_variant": best["variant"], "value": value,
                "met": value >= 2.0}
        print(f"\nbest ({best['variant']}) vs plain TRL reference: {value}x tokens/s   goal >= 2.0: "
              f"{'met' if value >= 2.0 else 'MISSED'}")
    if measured:
        print(f"MFU peak used: {measured[0]['peak_tflops']} TFLOP/s ({measured[0]['peak_source']})")
    out = common.result_path(__file__, args)
    if args.cpu_smoke:  # code-path check only: never the recorded figures
        out = args.out or args.workdir / "gpu.cpu-smoke.json"
    common.write_result(out, {
        "benchmark": "gpu", "machine": common.machine(), "quick": args.quick, "cpu_smoke": args.cpu_smoke,
        "model_shape": tiny_shape(model_dir) if args.cpu_smoke else QWEN25_7B,
        "flops": {"formula": "4*N + 6*N_lora + 12*L*d*T_ctx per trained token (no recomputation)", **info},
        "steps": args.steps, "warmup": args.warmup, "variants": results, "goal": goal, "liger": liger,
    })
    return 0


def liger_pairs(results) -> list[dict]:
    """Each measured Liger variant beside its measured twin without Liger (every other setting the same)."""
    by_name = {r["variant"]: r for r in results if "tokens_per_s" in r}
    pairs = []
    for name, (quant, gc, packing, liger, batch, accum, reference) in VARIANTS.items():
        if not liger or name not in by_name:
            continue
        without = (quant, gc, packing, False, batch, accum, reference)
        twin = next((other for other, spec in VARIANTS.items() if spec == without and other in by_name), None)
        if twin is None:
            continue
        on, off = by_name[name], by_name[twin]
        vram = (round(on["peak_vram_gib"] - off["peak_vram_gib"], 2)
                if on.get("peak_vram_gib") is not None and off.get("peak_vram_gib") is not None else None)
        pairs.append({"variant": name, "without": twin,
                      "tokens_per_s_ratio": common.ratio(on["tokens_per_s"], off["tokens_per_s"]),
                      "peak_vram_gib": on.get("peak_vram_gib"),
                      "peak_vram_gib_without": off.get("peak_vram_gib"),
                      "peak_vram_gib_delta": vram})
    return pairs


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
