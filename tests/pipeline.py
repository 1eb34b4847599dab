"""Run the real Snakemake workflow in a scratch directory (end-to-end tests share this)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def make_workdir(workdir: Path, config: dict) -> Path:
    """A directory that looks like a checkout (links to the code) with its own config."""
    workdir = Path(workdir)
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "envs", "profiles"):
        link = workdir / name
        if not link.exists() and (REPO / name).exists():
            link.symlink_to(REPO / name)
    schemas = workdir / "config" / "schemas"
    if not schemas.exists():
        schemas.symlink_to(REPO / "config" / "schemas")
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1800,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Invoke the Snakemake CLI in ``workdir``; returns the completed process (text output)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [*SNAKEMAKE, *args, "--cores", "2", "--resources", "gpu=1"],
        cwd=workdir, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, *targets: str) -> dict[str, int]:
    """Rule name -> job count that a dry run would schedule."""
    proc = snakemake(workdir, "-n", *targets)
    counts: dict[str, int] = {}
    in_table = False
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip().startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            m = re.match(r"^\s*([A-Za-z_][\w]*)\s+(\d+)\s*$", line)
            if m:
                if m.group(1) != "total":
                    counts[m.group(1)] = int(m.group(2))
            elif line.strip() and not line.strip().startswith("-"):
                in_table = False
    return counts


def run_pipeline(workdir: Path, config: dict, targets=(), **kw) -> Path:
    make_workdir(workdir, config)
    snakemake(workdir, *targets, **kw)
    return Path(workdir)


# ---- the tiny whole config (seconds per step), for end-to-end tests that need the real rules

TINY_CONFIG = REPO / ".test" / "config" / "config.yaml"


def load_tiny_config() -> dict:
    """.test/config/config.yaml: demo data, the tiny base, a few training steps, a short eval, export on."""
    return yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))


TINY_BASE_SHAPE = load_tiny_config()["tiny_base"]
DEMO_SPECIALISTS = load_tiny_config()["specialists"]  # two, on the demo's yaze_debugger and mesen2 tools


def tiny_config(specialists=None, *, train=None, resources=None, eval_cfg=None, export=False) -> dict:
    """The tiny config with a test's changes: ``train``, ``resources`` and ``eval_cfg`` update its
    defaults.train, defaults.resources and eval; ``specialists`` replaces its specialists; export is off
    unless ``export``."""
    config = load_tiny_config()
    config["defaults"]["train"].update(train or {})
    config["defaults"]["resources"].update(resources or {})
    config["eval"].update(eval_cfg or {})
    config["export"]["enabled"] = bool(export)
    if specialists is not None:
        config["specialists"] = copy.deepcopy(specialists)
    return config


# A one-layer base for unit tests of eval and benchmarks (seconds to build; it scores 0, fine there).
SMALL_BASE_SHAPE = {"architecture": "qwen2", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
                    "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "seed": 1}


def small_base(root: Path, rows: int = 40, **shape) -> dict:
    """Build a one-layer tiny base on ``rows`` demo rows under ``root``; returns its base_model config."""
    from snaketune.data import normalise_row
    from snaketune.demo import generate_demo_rows
    from snaketune.files import write_jsonl
    from snaketune.modeling import build_tiny_base

    root = Path(root)
    write_jsonl(root / "train.jsonl", [normalise_row(r) for r in generate_demo_rows(rows, seed=3)])
    build_tiny_base(root / "train.jsonl", root / "base", {**SMALL_BASE_SHAPE, **shape},
                    config_path="config/config.yaml")
    return {"name_or_path": str(root / "base")}


def copy_workdir(src: Path, dest: Path) -> Path:
    """A copy of a run's directory (results, logs, .snakemake metadata; code still linked to the checkout)."""
    shutil.copytree(src, dest, symlinks=True)
    return Path(dest)


def start_snakemake(workdir: Path, *args: str, output: Path, env: dict | None = None) -> subprocess.Popen:
    """Start the Snakemake CLI in ``workdir`` like snakemake() but without waiting; stdout and stderr go to
    ``output``. It leads a process group of its own, so a test can signal it with its jobs as Ctrl-C does."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(output, "w") as fh:
        return subprocess.Popen([*SNAKEMAKE, *args, "--cores", "2", "--resources", "gpu=1"], cwd=workdir,
                                stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
