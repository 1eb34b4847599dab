"""Check that this machine can run the pipeline: Python, torch and its device, the lock, disk, RAM, data.

``gather_facts()`` looks at the machine; ``run_checks()`` turns facts into pass / warn / fail checks
(pure, so tests feed it constructed facts); ``verify_environment()`` is the `verify` rule: it prints a
table to the log and writes the JSON report, or raises SnaketuneError on a fail and writes nothing.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import SnaketuneError
from .files import atomic_path, dumps_json

__all__ = [
    "Check", "read_lock", "parse_lock", "lock_for_torch", "same_version", "lock_drift",
    "installed_packages", "gather_facts", "run_checks", "overall", "verify_environment", "torch_facts",
]

GB = 1024**3
MIN_PYTHON = (3, 10)
STATUSES = ("pass", "warn", "fail")
DEFAULT_SETTINGS = {"min_free_disk_gb": 2, "min_ram_gb": 2, "require_gpu": False}


@dataclass
class Check:
    name: str
    status: str  # pass | warn | fail
    detail: str
    fix: str = ""
    path: str | None = None  # the file at fault, when there is one

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")


# ---------------------------------------------------------------- the lock


def read_lock(path) -> dict:
    """``{"pins": {name: version}, "python": "3.11.7" | None, "variant": "cpu" | ...}`` of a lock file."""
    return parse_lock(Path(path).read_text(encoding="utf-8"))


def parse_lock(text: str) -> dict:
    """``read_lock`` of a lock's text."""
    pins, meta = {}, {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# snaketune-lock:"):
            meta = dict(part.split("=", 1) for part in line.split(":", 1)[1].split() if "=" in part)
            continue
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return {"pins": pins, "python": meta.get("python"), "variant": meta.get("variant")}


def lock_for_torch(locks: dict, torch_cuda: str | None) -> str | None:
    """Pick the lock that matches the installed torch build: the CUDA lock for a CUDA build, else CPU."""
    want = "cuda" if torch_cuda else "cpu"
    return locks.get(want) or next(iter(locks.values()), None)


def same_version(a: str, b: str) -> bool:
    """Equal as versions (``1.0`` is ``1.0.0``); equal as strings where either is not a version."""
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def lock_drift(pins: dict, installed: dict) -> tuple[list, list]:
    """(drifted, missing): each locked package installed at another version, and those not installed."""
    drift, missing = [], []
    for name, version in sorted(pins.items()):
        have = installed.get(name)
        if have is None:
            missing.append(name)
        elif not same_version(have, version):
            drift.append({"package": name, "locked": version, "installed": have})
    return drift, missing


# ---------------------------------------------------------------- facts about the machine


def installed_packages() -> dict:
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out.setdefault(canonicalize_name(name), dist.version)
    return out


def torch_facts() -> dict:
    try:
        import torch
    except ImportError as err:
        return {"installed": False, "error": str(err)}
    facts = {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
             "cuda": bool(torch.cuda.is_available()), "gpus": [], "bf16": None}
    mps = getattr(torch.backends, "mps", None)
    facts["mps"] = bool(mps and mps.is_available())
    # The device a GPU job's `auto` takes here (snaketune.devices.resolve_device): CUDA, then MPS, then CPU.
    facts["device"] = "cuda" if facts["cuda"] else "mps" if facts["mps"] else "cpu"
    if facts["cuda"]:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            facts["gpus"].append({"name": props.name, "memory_gb": round(props.total_memory / GB, 1),
                                  "capability": f"{props.major}.{props.minor}"})
        facts["bf16"] = bool(torch.cuda.is_bf16_supported())
    elif facts["mps"]:  # as torch and accelerate decide it
        facts["bf16"] = bool(torch.backends.mps.is_macos_or_newer(14, 0))
    else:
        try:  # CPU bf16: can a bf16 matmul run here at all?
            a = torch.ones(4, 4, dtype=torch.bfloat16)
            facts["bf16"] = bool(torch.equal(a @ a, torch.full((4, 4), 4.0, dtype=torch.bfloat16)))
        except (RuntimeError, TypeError):
            facts["bf16"] = False
    return facts


def memory_facts() -> dict:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return {"total_gb": vm.total / GB, "available_gb": vm.available / GB}
    except ImportError:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        available = total
        meminfo = Path("/proc/meminfo")
        if meminfo.exists():
            m = re.search(r"MemAvailable:\s+(\d+) kB", meminfo.read_text())
            if m:
                available = int(m.group(1)) * 1024
        return {"total_gb": total / GB, "available_gb": available / GB}


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def gather_facts(data_paths=(), workdir=".") -> dict:
    """Everything run_checks() judges, read from this machine."""
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch_facts(),
        "installed": installed_packages(),
        "disk_free_gb": shutil.disk_usage(_existing_parent(Path(workdir))).free / GB,
        "disk_path": str(workdir),
        "memory": memory_facts(),
        "data": {str(p): (Path(p).stat().st_size if Path(p).is_file() else None) for p in data_paths},
    }


# ---------------------------------------------------------------- checks


def run_checks(facts: dict, lock: dict | None, settings: dict | None = None,
               lock_path: str = "the lock") -> list:
    """Judge the facts: one Check per question (``CHECKS``), each pass / warn / fail with its reason and
    fix."""
    settings = {**DEFAULT_SETTINGS, **(settings or {})}
    return [check(facts, lock, settings, lock_path) for check in CHECKS]


def _install(lock_path: str) -> str:
    return f"pip install -r {lock_path}"


def check_python(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    py = facts["python"]
    py_tuple = tuple(int(x) for x in re.findall(r"\d+", py)[:2])
    locked_py = (lock or {}).get("python")
    if py_tuple < MIN_PYTHON:
        return Check("python", "fail", f"Python {py}; snaketune needs {'.'.join(map(str, MIN_PYTHON))}+",
                     "create the virtual environment with python3.11 (the lock's version)")
    if locked_py and ".".join(py.split(".")[:2]) != ".".join(locked_py.split(".")[:2]):
        return Check("python", "warn", f"Python {py}; the lock was resolved for {locked_py}",
                     f"use Python {'.'.join(locked_py.split('.')[:2])} so the locked wheels apply")
    return Check("python", "pass", f"Python {py}")


def check_torch(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    torch = facts["torch"]
    if not torch.get("installed"):
        return Check("torch", "fail", f"torch is not importable ({torch.get('error', 'not installed')})",
                     f"pip install torch==2.13.0 && {_install(lock_path)}")
    build = f"CUDA {torch['cuda_build']}" if torch.get("cuda_build") else "CPU-only build"
    return Check("torch", "pass", f"torch {torch['version']} ({build})")


def check_device(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    torch = facts["torch"]
    if torch.get("cuda"):
        return Check("device", "pass", f"CUDA with {len(torch.get('gpus') or [])} GPU(s)")
    if settings["require_gpu"]:
        why = ("torch is a CPU-only build" if torch.get("installed") and not torch.get("cuda_build")
               else "no CUDA GPU is visible")
        return Check("device", "fail", f"verify.require_gpu is set but {why}",
                     "run on a GPU node (--profile profiles/slurm) with a CUDA torch "
                     "(envs/lock/requirements.cuda.txt), or set verify.require_gpu: false")
    if torch.get("mps"):
        return Check("device", "pass", "Apple MPS")
    if torch.get("installed"):
        return Check("device", "warn", "no GPU: every step runs on the CPU (fine for the tiny demo, "
                                       "slow for real base models)",
                     "use a CUDA machine for real models (the slurm profile asks for one)")
    return Check("device", "fail", "unknown: torch is missing", _install(lock_path))


def check_gpus(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    torch = facts["torch"]
    gpus = torch.get("gpus") or []
    if not gpus:
        return Check("gpus", "pass", "none (CPU)" if not torch.get("mps") else "Apple GPU (MPS)")
    small = [g for g in gpus if g["memory_gb"] < 8]
    listing = ", ".join(f"{g['name']} {g['memory_gb']:.1f} GB" for g in gpus)
    if not small:
        return Check("gpus", "pass", listing)
    return Check("gpus", "warn", listing,
                 "a 1.5B model needs about 8 GB: set train.quantization: 4bit or a smaller base")


def check_bf16(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    torch = facts["torch"]
    if not torch.get("installed"):
        return Check("bf16", "fail", "unknown: torch is missing", _install(lock_path))
    if torch.get("bf16"):
        where = "the GPU" if torch.get("cuda") else "MPS" if torch.get("mps") else "the CPU"
        return Check("bf16", "pass", f"bf16 supported on {where}")
    return Check("bf16", "warn", "no bf16 here: training falls back to fp16/fp32 (more memory)",
                 "use an Ampere or newer GPU for bf16")


def check_lock(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    if lock is None:
        return Check("lock", "warn", "no lock to compare installed versions with",
                     "commit envs/lock/requirements.{cpu,cuda}.txt (python -m snaketune.envlock write)")
    drift, missing = lock_drift(lock["pins"], facts["installed"])
    if not drift and not missing:
        return Check("lock", "pass", f"all {len(lock['pins'])} packages match {lock_path}")
    total = len(lock["pins"])
    detail = f"{len(drift)} of {total} drift from {lock_path}"
    if drift:
        detail += ": " + ", ".join(f"{d['package']} {d['installed']} (lock {d['locked']})" for d in drift)
    if missing:
        detail += f"; {len(missing)} of {total} not installed: " + ", ".join(missing)
    return Check("lock", "warn", detail, _install(lock_path))


def check_disk(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    free = facts["disk_free_gb"]
    need = float(settings["min_free_disk_gb"])
    where = facts.get("disk_path", ".")
    if free < need:
        return Check("disk", "fail", f"{free:.1f} GB free under {where}, need {need:g} GB",
                     "free disk space, or lower verify.min_free_disk_gb in the config")
    if free < 2 * need:
        return Check("disk", "warn", f"{free:.1f} GB free under {where} (need {need:g} GB, little headroom)",
                     "free disk space before training real models")
    return Check("disk", "pass", f"{free:.1f} GB free under {where}")


def check_ram(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    mem = facts["memory"]
    need = float(settings["min_ram_gb"])
    if mem["total_gb"] < need:
        return Check("ram", "fail", f"{mem['total_gb']:.1f} GB RAM, need {need:g} GB",
                     "run on a larger machine, or lower verify.min_ram_gb in the config")
    if mem["available_gb"] < need:
        return Check("ram", "warn", f"{mem['available_gb']:.1f} of {mem['total_gb']:.1f} GB RAM available, "
                                    f"need {need:g} GB", "stop other memory-hungry processes")
    return Check("ram", "pass", f"{mem['available_gb']:.1f} of {mem['total_gb']:.1f} GB RAM available")


def check_data(facts: dict, lock: dict | None, settings: dict, lock_path: str) -> Check:
    data = facts["data"]
    absent = [p for p, size in data.items() if size is None]
    empty = [p for p, size in data.items() if size == 0]
    if absent:
        return Check("data", "fail", f"configured data missing: {', '.join(absent)}",
                     "fix data.sources[].path in the config (paths are relative to the working directory)",
                     path=absent[0])
    if empty:
        return Check("data", "warn", f"configured data empty: {', '.join(empty)}",
                     "fill the file or remove it from data.sources")
    if data:
        return Check("data", "pass", f"{len(data)} configured source(s) present")
    return Check("data", "pass", "no user data configured (the demo dataset is generated)")


# The checks in the order the table and the report list them.
CHECKS = (check_python, check_torch, check_device, check_gpus, check_bf16, check_lock, check_disk, check_ram,
          check_data)


def overall(checks) -> str:
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


def format_table(checks) -> str:
    """A fixed-width table for the log: check, status, detail, fix."""
    rows = [("check", "status", "detail", "fix")]
    rows += [(c.name, c.status.upper(), c.detail, c.fix) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = []
    for i, (name, status, detail, fix) in enumerate(rows):
        arrow = f"  -> {fix}" if fix and i else ""
        lines.append(f"{name:<{widths[0]}}  {status:<{widths[1]}}  {detail}{arrow}")
        if i == 0:
            lines.append("-" * (widths[0] + widths[1] + 4 + 40))
    return "\n".join(lines)


def verify_report(checks, facts, lock_path) -> dict:
    return {
        "status": overall(checks),
        "checks": [asdict(c) for c in checks],
        "lock": lock_path,
        "python": facts["python"],
        "platform": facts.get("platform"),
        "torch": {k: v for k, v in facts["torch"].items() if k != "error"},
        "disk_free_gb": round(facts["disk_free_gb"], 1),
        "memory_gb": {k: round(v, 1) for k, v in facts["memory"].items()},
        "data": facts["data"],
    }


def fail_error(checks) -> SnaketuneError:
    fails = [c for c in checks if c.status == "fail"]
    first = fails[0]
    problem = "; ".join(f"{c.name}: {c.detail}" for c in fails)
    fix = "; ".join(f"{c.name}: {c.fix}" for c in fails if c.fix)
    return SnaketuneError(first.path or "environment", f"{len(fails)} check(s) failed: {problem}",
                          field="verify", fix=fix)


def verify_environment(locks: dict, data_paths, out_json, settings=None, *, facts=None) -> dict:
    """The `verify` rule: check, print the table, write the JSON report; a fail raises and writes nothing.

    ``locks`` maps variant ("cpu", "cuda") to a committed lock file; the one matching the installed
    torch build is compared with what is installed.
    """
    out_json = Path(out_json)
    facts = facts or gather_facts(data_paths, workdir=out_json.parent)
    lock_path = lock_for_torch({k: str(v) for k, v in locks.items() if v}, facts["torch"].get("cuda_build"))
    lock = read_lock(lock_path) if lock_path and Path(lock_path).is_file() else None
    checks = run_checks(facts, lock, settings, lock_path=lock_path or "envs/lock/requirements.cpu.txt")
    print(format_table(checks))
    if overall(checks) == "fail":
        raise fail_error(checks)
    report = verify_report(checks, facts, lock_path)
    with atomic_path(out_json) as tmp:
        tmp.write_text(dumps_json(report), encoding="utf-8")
    print(f"verify: {report['status']} ({sum(c.status == 'warn' for c in checks)} warning(s)) -> {out_json}")
    return report
