"""Run the real Snakemake workflow in a scratch directory (end-to-end tests share this)."""

from __future__ import annotations

import os
import re
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
