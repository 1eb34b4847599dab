"""Provenance of every rule output: what went in, what came out, which code, params, environment and machine.

Every entry script wraps its work in ``with rule_step(snakemake):``. That sends the step's output to the
rule's log file, holds the GPU slot the rule asks for (``resources: gpu=``), and once the block has
succeeded writes ``{records}/{rule}/{wildcards}.json`` atomically, where the rule's ``provenance``
param (``{"records": ..., "locks": ...}``) says where records go and where the committed locks are.
``snaketune.audit`` reads these records back and checks each result against them months later.

Paths in a record are relative to the working directory (as Snakemake gives them) or to the checkout,
so records from two checkouts compare; times, host and device are recorded but never compared.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from .files import sha256_file, sha256_tree, write_json
from .gpu_slots import gpu_slot
from .logs import to_log_file

__all__ = [
    "record_name", "record_path", "jsonable", "normalised", "find_seeds", "file_hash", "checkout_root",
    "package_files", "script_path", "git_record", "lock_variant", "lock_file", "rule_step", "read_records"
]

FORMAT = 1
PACKAGE_DIR = Path(__file__).resolve().parent
# Files of the package that count as code (not caches); non-Python files are read by every step.
CODE_SUFFIXES = (".py", ".jinja", ".json", ".yaml")


# ---------------------------------------------------------------- naming and plain values


def record_name(wildcards: dict) -> str:
    """``veran-tools.f16`` for {specialist, quant}; ``all`` for a rule without wildcards."""
    values = [quote(str(v), safe="") for v in wildcards.values()]
    return ".".join(values) if values else "all"


def record_path(rule: str, wildcards: dict, root) -> Path:
    """Where the record of ``rule`` for ``wildcards`` goes under the records directory ``root``."""
    return Path(root) / rule / f"{record_name(wildcards)}.json"


def jsonable(obj):
    """A JSON value for params: mappings with string keys, lists, numbers, strings; anything else as str."""
    if hasattr(obj, "_names"):  # a Snakemake Namedlist (params, wildcards): its named items, else its items
        if obj._names or not len(obj):
            return {str(k): jsonable(v) for k, v in obj.items()}
        return [jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in obj]
        return sorted(items, key=json.dumps) if isinstance(obj, (set, frozenset)) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def normalised(value):
    """The value as it reads back from a record's JSON (so fresh and recorded values compare equal)."""
    return json.loads(json.dumps(jsonable(value), sort_keys=True))


def find_seeds(params, prefix: str = "params") -> dict:
    """Every ``seed`` / ``*_seed`` value in the params, by its dotted path."""
    seeds = {}
    if isinstance(params, dict):
        for key, value in params.items():
            path = f"{prefix}.{key}"
            is_seed = key == "seed" or key.endswith("_seed")
            if is_seed and isinstance(value, int) and not isinstance(value, bool):
                seeds[path] = value
            else:
                seeds.update(find_seeds(value, path))
    elif isinstance(params, list):
        for i, value in enumerate(params):
            seeds.update(find_seeds(value, f"{prefix}[{i}]"))
    return seeds


def file_hash(path) -> str | None:
    """sha256 of a file, or the stable tree hash of a directory; None where nothing is there."""
    path = Path(path)
    if path.is_dir():
        return sha256_tree(path)
    if path.is_file():
        return sha256_file(path)
    return None


def _files(named) -> list[dict]:
    """[{path, name?, sha256}] for a Snakemake input / output list (names where the rule gave them)."""
    names = {}
    with contextlib.suppress(AttributeError):
        for name, (start, end) in named._names.items():
            for i in range(start, start + 1 if end is None else end):
                names[i] = name
    out = []
    for i, path in enumerate(named):
        entry = {"path": str(path), "sha256": file_hash(path), "directory": Path(path).is_dir()}
        if i in names:
            entry["name"] = names[i]
        out.append(entry)
    return out


# ---------------------------------------------------------------- code


def checkout_root(script=None) -> Path:
    """The checkout the step's code comes from (entry scripts live in <root>/workflow/scripts)."""
    if script is not None:
        return Path(script).resolve().parents[2]
    return PACKAGE_DIR.parents[2]


def package_files(package_dir=PACKAGE_DIR) -> dict:
    """{relative file: sha256} of the snaketune package's code (no caches)."""
    package_dir = Path(package_dir)
    return {p.relative_to(package_dir).as_posix(): sha256_file(p)
            for p in sorted(package_dir.rglob("*"))
            if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts}


def combined_hash(files: dict) -> str:
    h = hashlib.sha256()
    for name, sha in sorted(files.items()):
        h.update(f"{name}\0{sha}\n".encode())
    return h.hexdigest()


def imported_package_files() -> list[str]:
    """Package files this process has imported (relative to the package), plus its non-Python files."""
    used = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not (getattr(module, "__name__", "") or "").startswith("snaketune"):
            continue
        with contextlib.suppress(ValueError):
            used.add(Path(path).resolve().relative_to(PACKAGE_DIR).as_posix())
    return sorted(used)


def script_path() -> Path | None:
    """The entry script that is running (Snakemake points __main__.__file__ at the original file)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return Path(path).resolve() if path else None


def script_label(script) -> str:
    """``workflow/scripts/<name>.py``: where the entry script sits in any checkout."""
    script = Path(script).resolve()
    try:
        return script.relative_to(checkout_root(script)).as_posix()
    except ValueError:
        return script.name


def code_record(script=None) -> dict:
    """Entry script + the whole package: hashes per file, which package files the step imported."""
    script = Path(script).resolve() if script else script_path()
    files = package_files()
    record = {"package": {"path": "workflow/scripts/snaketune", "sha256": combined_hash(files),
                          "files": files, "imported": imported_package_files()}}
    if script is not None and script.is_file():
        record["script"] = {"path": script_label(script), "sha256": sha256_file(script)}
    both = {"script": record.get("script", {}).get("sha256", ""), "package": record["package"]["sha256"]}
    record["sha256"] = hashlib.sha256(json.dumps(both, sort_keys=True).encode()).hexdigest()
    return record


def git_record(root=None) -> dict | None:
    """Commit and dirty flag of the checkout the code comes from; None outside a git checkout."""
    root = Path(root or checkout_root())
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


# ---------------------------------------------------------------- environment and device


def lock_variant(installed: dict) -> str:
    """The lock variant of this environment: ``cuda`` for a CUDA torch build, else ``cpu``."""
    torch = installed.get("torch", "")
    if "+cpu" in torch:
        return "cpu"
    if "+cu" in torch or any(name.startswith("nvidia-") for name in installed):
        return "cuda"
    return "cpu"


def lock_file(variant: str, lock_dir) -> Path:
    """The committed lock of a variant in the directory of committed locks ``lock_dir``."""
    return Path(lock_dir) / f"requirements.{variant}.txt"


def canonical_name(name: str) -> str:
    """PEP 503 name (what packaging.utils.canonicalize_name gives; not every rule's env has packaging)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict:
    """{canonical name: version} of the installed distributions; the first on sys.path wins, as for
    imports."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out.setdefault(canonical_name(name), dist.version)
    return out


def loaded_distributions() -> set[str]:
    """Canonical names of the installed distributions whose modules this process has imported."""
    top = {name.split(".", 1)[0] for name in list(sys.modules)} - set(sys.stdlib_module_names)
    providers = importlib.metadata.packages_distributions()
    return {canonical_name(dist) for name in top for dist in providers.get(name, ())}


def environment_record(lock_dir) -> dict:
    """Python, Snakemake, the packages this step loaded, and the committed lock (in ``lock_dir``) they
    match."""
    installed = installed_versions()
    variant = lock_variant(installed)
    lock = lock_file(variant, lock_dir)
    loaded = loaded_distributions() | {"snakemake"}
    return {
        "python": platform.python_version(),
        "snakemake": installed.get("snakemake"),
        "lock": {"variant": variant, "path": lock.as_posix(),
                 "sha256": sha256_file(lock) if lock.is_file() else None},
        "packages": {name: installed[name] for name in sorted(loaded) if name in installed},
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_record() -> dict:
    """CPU model, and the GPUs / CUDA version where the step had torch loaded (never imports torch itself)."""
    record = {"cpu": _cpu_model(), "cpus": os.cpu_count(),
              "platform": f"{platform.system()} {platform.machine()}",
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "cuda": None, "gpus": []}
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            record["torch"] = torch.__version__
            record["cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                record["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return record


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the record


def build_record(smk, started: str, seconds: float, script=None) -> dict:
    """The provenance record of a finished step (``smk``: the script's ``snakemake`` object)."""
    settings = provenance_settings(smk)
    params = jsonable(smk.params)
    wildcards = {str(k): str(v) for k, v in smk.wildcards.items()}
    script = Path(script).resolve() if script else script_path()
    return {
        "format": FORMAT,
        "rule": smk.rule,
        "wildcards": wildcards,
        "inputs": _files(smk.input),
        "outputs": _files(smk.output),
        "params": params,
        "seeds": find_seeds(params),
        "code": code_record(script),
        "environment": environment_record(settings["locks"]),
        "device": device_record(),
        "threads": smk.threads,
        "gpus": int(smk.resources.get("gpu", 0) or 0),
        "git": git_record(checkout_root(script) if script else None),  # the checkout the entry script is in
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": platform.node(),
        "started": started,
        "finished": _now(),
        "seconds": round(seconds, 3),
    }


def provenance_settings(smk) -> dict:
    """The rule's ``provenance`` param: ``{"records": records directory, "locks": committed locks
    directory}``."""
    settings = smk.params.get("provenance")
    if not isinstance(settings, dict) or not {"records", "locks"} <= settings.keys():
        raise RuntimeError(f"rule {smk.rule} gives no provenance param with records and locks directories "
                           "(every rule that runs rule_step needs one)")
    return settings


@contextlib.contextmanager
def rule_step(smk):
    """Run one rule's work: log file, GPU slot, then its provenance record (only if the block succeeds).

    Yields the GPU device ids the step holds (``[]`` for CPU steps). The rule's params give where the
    record goes (``provenance``) and the config file that errors about its GPU count name (``config_path``).
    """
    settings = provenance_settings(smk)
    with to_log_file(smk.log[0]):
        started, clock = _now(), time.perf_counter()
        with gpu_slot(smk.resources.get("gpu", 0), config_path=smk.params.get("config_path")) as devices:
            yield devices
        seconds = time.perf_counter() - clock
        record = build_record(smk, started, seconds)
        path = record_path(record["rule"], record["wildcards"], settings["records"])
        write_json(path, record)
        print(f"provenance: {path}")


def read_records(root) -> list[tuple[Path, dict]]:
    """Every provenance record under ``root``, sorted by path."""
    out = []
    for path in sorted(Path(root).glob("*/*.json")):
        try:
            out.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            out.append((path, {}))
    return out
