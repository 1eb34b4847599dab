"""What the benchmarks share: the package on sys.path, the default config, the demo splits + tiny base
built by the pipeline's own functions, the machine description, and the result JSON beside each script.

Figures on a shared 2-core machine drift run to run, so every benchmark measures its baseline in the
same run and reports ratios; the absolute figures are there to read the ratios by.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

import yaml  # noqa: E402

from snaketune.config import fill_stage_defaults, load_schema, specialist_settings  # noqa: E402

CONFIG_PATH = REPO / "config" / "config.yaml"
SCHEMA_PATH = REPO / "config" / "schemas" / "config.schema.yaml"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "snaketune-bench"


# --- config ------------------------------------------------------------------------------------

def default_config(path=CONFIG_PATH) -> dict:
    """config/config.yaml as the pipeline sees it (schema defaults filled in)."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return fill_stage_defaults(config, load_schema(SCHEMA_PATH))


def parse_overrides(items) -> dict:
    """``["train.lr=1e-3", "lora.modules_to_save=[embed_tokens, lm_head]"]`` -> nested dict (YAML values)."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE (e.g. train.lr=1e-3), got {item!r}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def deep_update(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_update(out.get(key) or {}, value) if isinstance(value, dict) else copy.deepcopy(value)
    return out


def settings_for(config: dict, name: str, overrides: dict | None = None) -> dict:
    """The specialist's merged settings (as the train rule gets them), with benchmark overrides on top."""
    if name not in config["specialists"]:
        have = ", ".join(sorted(config["specialists"]))
        raise SystemExit(f"no specialist {name!r} in the config (have: {have})")
    return deep_update(specialist_settings(config, name), overrides or {})


# --- data and base ------------------------------------------------------------------------------

def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def demo_workspace(config: dict, root=DEFAULT_WORKDIR) -> Path:
    """``root/<key>/`` with data/{train,val,test}.jsonl and base/ as the default pipeline builds them.

    Uses the pipeline's own functions (demo dataset, prepare_data, build_tiny_base); cached under a
    key of the settings that shape them, so a rerun skips the ~10 s build.
    """
    from snaketune.data import prepare_data
    from snaketune.demo import write_demo_dataset
    from snaketune.modeling import build_tiny_base

    shape = {"demo": config["data"]["demo"], "split": config["data"]["split"], "tiny": config["tiny_base"],
             "focus": {n: (s or {}).get("focus_tools", []) for n, s in config["specialists"].items()}}
    work = Path(root) / f"demo-{_key(shape)}"
    data, base = work / "data", work / "base"
    if (base / "config.json").is_file() and (data / "test.jsonl").is_file():
        return work
    demo = config["data"]["demo"]
    write_demo_dataset(data / "raw.jsonl", int(demo["rows"]), int(demo["seed"]), config_path=str(CONFIG_PATH))
    split = config["data"]["split"]
    prepare_data({str(data / "raw.jsonl"): "chat"},
                 {name: str(data / f"{name}.jsonl") for name in ("train", "val", "test")}
                 | {"stats": str(data / "split_stats.json"), "rejected": str(data / "rejected.jsonl")},
                 ratios={k: split[k] for k in ("train", "val", "test")}, seed=int(split["seed"]),
                 specialists=shape["focus"], config_files={"specialists": str(CONFIG_PATH)})
    print()
    build_tiny_base(data / "train.jsonl", base, dict(config["tiny_base"]), config_path=str(CONFIG_PATH))
    return work


# --- measuring ----------------------------------------------------------------------------------

class Clock:
    """A stopwatch that can be paused (evaluation inside a training run is not training time)."""

    def __init__(self):
        self.total = 0.0
        self._since = None

    def start(self):
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self):
        if self._since is not None:
            self.total += time.perf_counter() - self._since
            self._since = None

    @property
    def seconds(self) -> float:
        return self.total + (time.perf_counter() - self._since if self._since is not None else 0.0)


def ratio(num, den, digits: int = 2):
    if num is None or den in (None, 0):
        return None
    return round(num / den, digits)


# Forks the command from a small process: Linux carries the RSS high-water mark of the process that
# forks (its pages count in the child until exec) into the child's ru_maxrss, so a child forked from this
# (large) benchmark process would report at least the benchmark's own RSS.
_LAUNCHER = """
import json, os, sys, time
cmd, out = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(cmd[0], cmd)
_, status, ru = os.wait4(pid, 0)
json.dump({"seconds": time.perf_counter() - t0, "maxrss_kib": ru.ru_maxrss, "user_s": ru.ru_utime,
           "sys_s": ru.ru_stime, "returncode": os.waitstatus_to_exitcode(status)}, open(out, "w"))
"""


def time_child(cmd, *, env=None, cwd=None) -> dict:
    """Run ``cmd`` as its own process: wall seconds, peak RSS (MiB, wait4's ru_maxrss) and exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER,
                               json.dumps([str(c) for c in cmd]), str(report)],
                              env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if not report.is_file():
            output = proc.stdout.decode(errors="replace")[-2000:]
            raise RuntimeError(f"launcher failed ({proc.returncode}): {output}")
        usage = json.loads(report.read_text())
    return {"seconds": round(usage["seconds"], 2), "peak_rss_mib": round(usage["maxrss_kib"] / 1024, 1),
            "user_s": round(usage["user_s"], 2), "sys_s": round(usage["sys_s"], 2),
            "returncode": usage["returncode"], "output_tail": proc.stdout.decode(errors="replace")[-3000:]}


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.date.today().isoformat(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


# --- results ------------------------------------------------------------------------------------

def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 1-2 minutes)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"scratch directory (default {DEFAULT_WORKDIR})")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default: bench/<name>.json; "
                             "with --quick: <workdir>/<name>.quick.json)")
    return parser


def result_path(script: str, args) -> Path:
    if args.out:
        return Path(args.out)
    stem = Path(script).stem
    if getattr(args, "quick", False):  # a smoke run never replaces the recorded figures
        return Path(args.workdir) / f"{stem}.quick.json"
    return BENCH / f"{stem}.json"


def write_result(path, payload: dict) -> None:
    from snaketune.files import write_json

    write_json(path, payload)
    print(f"\nwrote {Path(path).relative_to(REPO) if Path(path).is_relative_to(REPO) else path}")


def table(rows, headers) -> str:
    """A plain-text table (what the scripts print)."""
    cells = [[str(h) for h in headers]] + [["–" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
