"""GGUF export: our streaming writer vs llama.cpp's convert_hf_to_gguf.py on the same merged model.

The model is a random-init Qwen2 with Qwen2.5-0.5B's shape (24 layers, hidden 896, vocab 151936, tied
embeddings, bf16 safetensors, ~1 GB on disk) saved locally with the demo's tiny tokenizer (both converters
pad the vocabulary to the model's 151936 rows). Each conversion runs in its own process; wall time and
peak RSS (wait4's ru_maxrss) are measured from outside, for every type the default config exports (f16,
q8_0), alternating the two tools, after a warm-up read so both find the weights in the page cache.

The baseline is the ``convert_hf_to_gguf.py`` vendored in the llama-cpp-python source distribution (the
version in the lock), with its own gguf-py. Run as-is except for one patch: it identifies a BPE
pre-tokenizer by hashing a probe string's token ids against a list of known models, and the demo's own
tokenizer is on no list, so the benchmark answers "qwen2" (the split our writer detects from
tokenizer.json). It runs in this venv (torch and transformers newer than its requirements pin) plus
sentencepiece, which its Qwen2 path imports first and the project does not need: the script installs it
with ``pip install --target`` into a side directory put on the baseline's PYTHONPATH only. The sdist
(unpacked here if needed):

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/llsrc

    python bench/gguf_export.py [--llama-cpp DIR]     # ~3-6 min on 2 cores
    python bench/gguf_export.py --quick               # 4 layers, f16 only
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GOALS = {"time_vs_convert_hf_to_gguf": 1.0, "peak_rss_vs_model_size": 1.2}
LLAMA_CPP_VERSION = "0.3.36"
DEFAULT_SDIST = Path("/tmp/llsrc")
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                  sliding_window=32768, max_window_layers=21, hidden_act="silu", bos_token_id=151643,
                  eos_token_id=151645)

OURS = """
import sys
sys.path.insert(0, {scripts!r})
from snaketune.gguf_export import write_model_gguf
write_model_gguf({model!r}, {out!r}, {quant!r}, name="bench")
"""
# convert_hf_to_gguf.py as its CLI runs it, with its gguf-py first on the path and the pre-tokenizer answered.
BASELINE = """
import runpy, sys
sys.path.insert(0, {llama!r} + "/gguf-py")
sys.path.insert(0, {llama!r})
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = ["convert_hf_to_gguf.py", {model!r}, "--outfile", {out!r}, "--outtype", {quant!r}]
runpy.run_path({llama!r} + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def find_llama_cpp(given) -> Path:
    """The vendored llama.cpp directory of the llama-cpp-python sdist (unpacked here if needed)."""
    candidates = [Path(given)] if given else []
    candidates += [DEFAULT_SDIST / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp"]
    for path in candidates:
        if (path / "convert_hf_to_gguf.py").is_file():
            return path
        if (path / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
            return path / "vendor" / "llama.cpp"
    sdist = DEFAULT_SDIST / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    if sdist.is_file():
        with tarfile.open(sdist) as tar:
            tar.extractall(DEFAULT_SDIST, filter="data")
        return find_llama_cpp(None)
    raise SystemExit("convert_hf_to_gguf.py not found: run\n  pip download --no-deps --no-binary :all: "
                     f"llama-cpp-python=={LLAMA_CPP_VERSION} -d {DEFAULT_SDIST}\nor pass --llama-cpp DIR")


def convert_deps(path: Path) -> Path:
    """convert_hf_to_gguf.py's one missing requirement, installed beside (not into) the venv."""
    if not (path / "sentencepiece").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(path),
                        "sentencepiece>=0.1.98,<0.3.0"], check=True)
    return path


def build_model(out_dir: Path, tokenizer_dir: Path, layers: int) -> Path:
    """A random-init Qwen2 of Qwen2.5-0.5B's shape in bf16 safetensors (as merge writes it), with a
    tokenizer."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    if (out_dir / "model.safetensors").is_file():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = Qwen2Config(**{**QWEN25_05B, "num_hidden_layers": layers}, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in shapes.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # save_pretrained leaves the tied head out too
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensors[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    config.architectures = ["Qwen2ForCausalLM"]
    config.save_pretrained(tmp)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def compare_tensors(a: Path, b: Path) -> dict:
    """Tensor names, types and bytes of two GGUF files (metadata aside)."""
    import numpy as np

    sys.path.insert(0, str(common.REPO / "workflow" / "scripts"))
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in GGUFReader(str(b)).tensors}
    common_names = sorted(set(ta) & set(tb))
    def data(tensor):
        return np.asarray(tensor.data).view(np.uint8)

    differ = [n for n in common_names
              if ta[n].tensor_type != tb[n].tensor_type or not np.array_equal(data(ta[n]), data(tb[n]))]
    return {"tensors_ours": len(ta), "tensors_baseline": len(tb), "only_ours": sorted(set(ta) - set(tb)),
            "only_baseline": sorted(set(tb) - set(ta)), "differing": differ[:20], "n_differing": len(differ)}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", default=None, help="llama.cpp directory holding convert_hf_to_gguf.py")
    parser.add_argument("--convert-deps", type=Path, default=DEFAULT_SDIST / "convert-deps",
                        help="side directory for the baseline's sentencepiece")
    parser.add_argument("--quants", default="f16,q8_0")
    parser.add_argument("--repeats", type=int, default=1, help="timed conversions per tool and type")
    parser.add_argument("--layers", type=int, default=QWEN25_05B["num_hidden_layers"])
    args = parser.parse_args(argv)
    # common.machine() reads it when the JSON is written
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if args.quick:
        args.quants, args.layers, args.repeats = "f16", 4, 1
    llama = find_llama_cpp(args.llama_cpp)
    config = common.default_config()
    ws = common.demo_workspace(config, args.workdir)
    root = args.workdir / "gguf_export"
    model = build_model(root / f"qwen2.5-0.5b-shape-{args.layers}l-bf16", ws / "base", args.layers)
    size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    for p in model.glob("*.safetensors"):  # page cache warm for both tools alike
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass
    print(f"gguf export: {model.name}, {size / 2**20:.0f} MiB of safetensors; "
          f"baseline {llama}/convert_hf_to_gguf.py", flush=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    envs = {"ours": env, "convert_hf_to_gguf": dict(env, PYTHONPATH=str(convert_deps(args.convert_deps)))}
    results: dict[str, dict] = {}
    for quant in [q.strip() for q in args.quants.split(",") if q.strip()]:
        runs = {"ours": [], "convert_hf_to_gguf": []}
        outs = {"ours": root / f"ours.{quant}.gguf", "convert_hf_to_gguf": root / f"baseline.{quant}.gguf"}
        for _ in range(args.repeats):
            for tool, template in (("ours", OURS), ("convert_hf_to_gguf", BASELINE)):
                outs[tool].unlink(missing_ok=True)
                os.sync()  # neither tool inherits the other's dirty pages (write-back would slow its writes)
                code = template.format(scripts=str(common.REPO / "workflow" / "scripts"), llama=str(llama),
                                       model=str(model), out=str(outs[tool]), quant=quant)
                run = common.time_child([sys.executable, "-c", code], env=envs[tool], cwd=str(root))
                if run["returncode"] != 0:
                    raise SystemExit(f"{tool} {quant} failed:\n{run['output_tail']}")
                run["gguf_bytes"] = outs[tool].stat().st_size
                runs[tool].append(run)
                print(f"  {quant:5s} {tool:20s} {run['seconds']:7.2f} s  "
                      f"peak RSS {run['peak_rss_mib']:8.1f} MiB  -> {run['gguf_bytes'] / 2**20:.0f} MiB",
                      flush=True)
        best = {tool: min(r, key=lambda x: x["seconds"]) for tool, r in runs.items()}
        same = compare_tensors(outs["ours"], outs["convert_hf_to_gguf"])
        for p in outs.values():
            p.unlink(missing_ok=True)
        results[quant] = {
            tool: {k: v for k, v in best[tool].items() if k != "output_tail"} | {
                "all_seconds": [r["seconds"] for r in runs[tool]],
                "peak_rss_vs_model_size": common.ratio(best[tool]["peak_rss_mib"] * 2**20, size)}
            for tool in runs
        } | {"time_ours_vs_baseline": common.ratio(best["ours"]["seconds"],
                                                   best["convert_hf_to_gguf"]["seconds"]),
             "rss_ours_vs_baseline": common.ratio(best["ours"]["peak_rss_mib"],
                                                  best["convert_hf_to_gguf"]["peak_rss_mib"]),
             "tensor_data": same}

    rows = []
    for quant, r in results.items():
        for tool in ("ours", "convert_hf_to_gguf"):
            rows.append([quant, tool, r[tool]["seconds"], r[tool]["peak_rss_mib"],
                         r[tool]["peak_rss_vs_model_size"], round(r[tool]["gguf_bytes"] / 2**20)])
    print("\n" + common.table(rows,
                              ["type", "tool", "seconds", "peak RSS MiB", "RSS / model size", "GGUF MiB"]))
    goals = {}
    for quant, r in results.items():
        t, m = r["time_ours_vs_baseline"], r["ours"]["peak_rss_vs_model_size"]
        goals[quant] = {"time_vs_convert_hf_to_gguf": {"goal": "<= 1.0", "value": t, "met": t <= 1.0},
                        "peak_rss_vs_model_size": {"goal": "<= 1.2", "value": m, "met": m <= 1.2}}
        d = r["tensor_data"]
        identical = d["tensors_ours"] - d["n_differing"] - len(d["only_ours"])
        print(f"\n{quant}: time ours / convert_hf_to_gguf = {t}x "
              f"(goal <= 1.0: {'met' if t <= 1.0 else 'MISSED'}); "
              f"peak RSS ours / model size = {m}x (goal <= 1.2: {'met' if m <= 1.2 else 'MISSED'}); "
              f"baseline RSS / model size = {r['convert_hf_to_gguf']['peak_rss_vs_model_size']}x; "
              f"tensors identical: {identical}/{d['tensors_ours']}"
              + (f" (differ: {d['differing'][:4]})" if d["n_differing"] else ""))
    common.write_result(common.result_path(__file__, args), {
        "benchmark": "gguf_export", "machine": common.machine() | {"load_avg_at_bench_start": load_at_start},
        "quick": args.quick,
        "model": {"shape": {**QWEN25_05B, "num_hidden_layers": args.layers}, "dtype": "bfloat16",
                  "safetensors_bytes": size, "init": "random (seed 0)",
                  "tokenizer": "demo tiny BPE (qwen2 split)"},
        "baseline": {"script": "convert_hf_to_gguf.py",
                     "source": f"llama-cpp-python {LLAMA_CPP_VERSION} sdist",
                     "patch": "TextModel.get_vocab_base_pre -> 'qwen2' "
                              "(the demo tokenizer is in no hash list)"},
        "repeats": args.repeats, "results": results, "goals": goals,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
