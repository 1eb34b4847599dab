"""Merge the conda env files under envs/ into one pinned requirements lock, resolved by uv.

Each env file asks for packages (conda `python=`/`pip=` and PyPI names under `pip:`). This module
merges those requests per package, explains every disagreement between env files (and stops on one
that no version can satisfy), and has ``uv pip compile`` resolve the merged set into a lockfile in two
variants from the same env files: ``cpu`` (torch's ``+cpu`` build from pip's find-links, no CUDA
packages) and ``cuda`` (plain PyPI torch with its nvidia-* wheels). The lock text is deterministic:
fixed header, no timestamps, no absolute paths.

Re-locking keeps the committed pins: uv is given the committed lock as its output file, whose pins it
prefers, so the same env files give the same lock whatever the index lists today (an index can gain
files dated before ``exclude_newer``, which alone does not freeze a resolution). Only a changed env file,
``--upgrade`` or ``--upgrade-package NAME`` moves a pin. What a fresh resolution would pick instead is
reported as drift (``index_drift``), never a failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .errors import SnaketuneError
from .files import atomic_path, dumps_json
from .verify import parse_lock

__all__ = [
    "VARIANTS", "CATEGORIES", "read_env_file", "satisfying_version", "exact_pin", "merge_requests",
    "read_env_files", "package_category", "load_settings", "pip_find_links", "compile_inputs",
    "cuda_packages", "lock_environments", "categorise", "pin_changes", "index_drift", "drift_lines",
    "write_lock", "main"
]

VARIANTS = ("cpu", "cuda")
CATEGORIES = ("training", "data", "export", "tooling", "test")
# The env file a package is asked by decides its category. When several ask, the first category in
# this order wins: pyyaml/jsonschema (asked by nearly every env) are data-format libraries, torch and
# friends (train, eval, export) are training, and tooling/test only keep what nothing else claims.
CATEGORY_PRIORITY = ("data", "training", "export", "tooling", "test")
ENV_CATEGORY = {
    "data": "data",
    "train": "training",
    "eval": "training",
    "export": "export",
    "lock": "tooling",
    "verify": "tooling",
    "report": "tooling",
    "tooling": "tooling",
    "test": "test",
}
CONDA_ONLY = {"python", "pip"}  # conda packages that are not part of the pip lock
SETTINGS_DEFAULTS = {
    "index_url": "https://pypi.org/simple",
    "python_platform": "x86_64-manylinux_2_28",
    "exclude_newer": None,
    "cpu": {"local_version": "cpu", "packages": ["torch"]},
}
UV_ENV_KEEP = {"UV_CACHE_DIR", "UV_NATIVE_TLS", "UV_HTTP_TIMEOUT", "UV_CONCURRENT_DOWNLOADS"}
_INPUT_NAME = "requirements.in"
_PREFERENCES_NAME = "requirements.lock.txt"  # uv's -o file: its pins are kept unless asked to upgrade


@dataclass(frozen=True)
class Request:
    """One env file asking for one package."""

    env: str
    name: str  # canonical (PEP 503) name
    specifier: str  # PEP 440, "" for any version
    kind: str  # "pip" or "conda"
    line: int | None = None
    extras: tuple = ()
    marker: str | None = None


@dataclass
class Merged:
    """Every request for one package and what the lock asks uv for."""

    name: str
    kind: str
    requests: list
    specifier: str
    extras: tuple = ()
    marker: str | None = None
    conflict: dict | None = None

    @property
    def envs(self) -> list:
        return sorted({r.env for r in self.requests})

    def requirement_line(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        marker = f" ; {self.marker}" if self.marker else ""
        return f"{self.name}{extras}{self.specifier}{marker}"


@dataclass
class LockResult:
    variant: str
    text: str
    report: dict = field(default_factory=dict)


# ---------------------------------------------------------------- reading env files


def env_label(path) -> str:
    """The name an env file goes by in locks and reports: ``envs/<file>`` (never an absolute path)."""
    path = Path(path)
    return path.as_posix() if not path.is_absolute() and len(path.parts) > 1 else f"envs/{path.name}"


def env_category(env: str) -> str:
    return ENV_CATEGORY.get(Path(env).stem, "tooling")


def _conda_requirement(text: str) -> tuple[str, str]:
    """``python=3.11.7`` -> (python, ==3.11.7); conda's single '=' is an exact pin for our purposes."""
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", text.strip())
    if not m:
        raise ValueError("not a conda package spec")
    name, rest = m.group(1), m.group(2).strip()
    if rest.startswith("=") and not rest.startswith("=="):
        spec = "==" + rest[1:].split("=")[0]  # "=3.11.7=h955ad1f_0": drop the build string
    elif rest[:1].isdigit():
        spec = "==" + rest.split()[0]  # "python 3.11.7"
    else:
        spec = rest.replace(" ", "")
    SpecifierSet(spec)  # raises InvalidSpecifier
    return canonicalize_name(name), spec


def read_env_file(path) -> list:
    """All requests of one conda env file, with their line numbers; errors name file, line, field."""
    label = env_label(path)
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise SnaketuneError(path, f"is not valid YAML ({getattr(err, 'problem', err)})",
                             line=mark.line + 1 if mark else None, fix="fix the YAML syntax") from None
    deps = None
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "dependencies":
                deps = value
    if not isinstance(deps, yaml.SequenceNode):
        raise SnaketuneError(path, "has no 'dependencies:' list", field="dependencies",
                             fix="list the packages under 'dependencies:' (conda) and its 'pip:' entry")
    requests = []
    for i, item in enumerate(deps.value):
        if isinstance(item, yaml.ScalarNode):
            try:
                name, spec = _conda_requirement(str(item.value))
            except (ValueError, InvalidSpecifier):
                raise SnaketuneError(path, f"{item.value!r} is not a conda package spec",
                                     line=item.start_mark.line + 1, field=f"dependencies[{i}]",
                                     fix="write it as name=version, e.g. python=3.11.7") from None
            requests.append(Request(label, name, spec, "conda", item.start_mark.line + 1))
        elif isinstance(item, yaml.MappingNode):
            for key, value in item.value:
                if key.value != "pip" or not isinstance(value, yaml.SequenceNode):
                    raise SnaketuneError(path, f"unexpected entry {key.value!r}",
                                         line=key.start_mark.line + 1,
                                         field=f"dependencies[{i}]", fix="only a 'pip:' list may nest here")
                for j, node in enumerate(value.value):
                    where = dict(line=node.start_mark.line + 1, field=f"dependencies[{i}].pip[{j}]")
                    try:
                        req = Requirement(str(node.value))
                    except InvalidRequirement as err:
                        raise SnaketuneError(path, f"{node.value!r} is not a pip requirement ({err})",
                                             fix="write it as name==version", **where) from None
                    if req.url:
                        raise SnaketuneError(path, f"{node.value!r} is a URL requirement, which cannot be "
                                             "locked", fix="name a PyPI release: name==version", **where)
                    requests.append(Request(label, canonicalize_name(req.name), str(req.specifier), "pip",
                                            where["line"], tuple(sorted(req.extras)),
                                            str(req.marker) if req.marker else None))
    return requests


# ---------------------------------------------------------------- merging and conflicts


def _candidates(specs) -> list:
    """Versions at and just above every bound the specifiers name.

    The smallest version inside an intersection of ranges sits at (or just above) its lower bound, so
    testing these candidates decides whether the intersection is empty without knowing PyPI's releases.
    """
    out = {Version("0")}
    for spec_set in specs:
        for spec in spec_set:
            text = spec.version.rstrip(".*").rstrip(".")
            try:
                v = Version(text)
            except InvalidVersion:
                continue
            out.add(v)
            out.add(Version(v.public))
            release = ".".join(str(p) for p in v.release)
            out.add(Version(f"{release}.0.0.0.1"))
            if v.epoch:
                out.add(Version(f"{v.epoch}!{release}.0.0.0.1"))
    return sorted(out)


def satisfying_version(specifiers) -> Version | None:
    """A version every specifier accepts (pre-releases allowed), or None when they cannot agree."""
    specs = [SpecifierSet(s) for s in specifiers]
    for candidate in _candidates(specs):
        if all(s.contains(candidate, prereleases=True) for s in specs):
            return candidate
    return None


def exact_pin(specifier: str) -> str | None:
    """The version a ``==`` / ``===`` specifier pins exactly; None for a range or a wildcard."""
    m = re.fullmatch(r"===?([^,*<>=!~\s]+)", specifier.replace(" ", ""))
    return m.group(1) if m else None


def merge_requests(requests) -> dict:
    """Merge requests per package: the combined specifier, and for each disagreement how it was resolved.

    Raises SnaketuneError naming both env files and both specifiers when no version satisfies them.
    """
    by_name: dict = {}
    for req in requests:
        by_name.setdefault((req.kind, req.name), []).append(req)
    merged = {}
    for (kind, name), reqs in sorted(by_name.items(), key=lambda item: (item[0][1], item[0][0])):
        reqs = sorted(reqs, key=lambda r: (r.env, r.line or 0))
        specs = sorted({r.specifier for r in reqs})
        extras = tuple(sorted({e for r in reqs for e in r.extras}))
        markers = sorted({r.marker or "" for r in reqs})
        if len(markers) > 1:
            a, b = _first_with(reqs, markers[0]), _first_with(reqs, markers[1])
            raise SnaketuneError(b.env, f"{name}: {a.env} asks it with marker {a.marker!r} but {b.env} with "
                                        f"{b.marker!r}; one lock line cannot carry both", line=b.line,
                                        field=name,
                                 fix="use the same environment marker (or none) in every env file")
        item = Merged(name, kind, reqs, specs[0], extras, markers[0] or None)
        if len(specs) > 1:
            item.specifier, item.conflict = _resolve_disagreement(name, reqs)
        if len({r.extras for r in reqs}) > 1:
            if item.conflict is None:
                item.conflict = _extras_note(name, reqs, extras)
            else:
                item.conflict["extras"] = list(extras)
        merged[name if kind == "pip" else f"conda:{name}"] = item
    return merged


def _first_with(reqs, marker):
    return next(r for r in reqs if (r.marker or "") == marker)


def _requests_by_env(reqs) -> dict:
    out: dict = {}
    for r in reqs:
        shown = r.specifier or "(any version)"
        out[r.env] = shown if r.env not in out or out[r.env] == shown else f"{out[r.env]},{shown}"
    return out


def _resolve_disagreement(name: str, reqs) -> tuple[str, dict]:
    """Two or more env files ask different specifiers: intersect them, or stop if they cannot meet."""
    for i, a in enumerate(reqs):
        for b in reqs[i + 1:]:
            if a.specifier != b.specifier and satisfying_version([a.specifier, b.specifier]) is None:
                raise SnaketuneError(
                    b.env, f"{name}: {a.env} asks {name}{a.specifier or ' (any)'} but {b.env} asks "
                           f"{name}{b.specifier or ' (any)'}; no version satisfies both",
                    line=b.line, field=name,
                    fix=f"pin the same {name} version in {a.env} and {b.env} (or ranges that overlap)")
    specs = sorted({r.specifier for r in reqs})
    witness = satisfying_version(specs)
    if witness is None:  # each pair overlaps but all together do not (possible with '!=')
        raise SnaketuneError(reqs[-1].env,
                             f"{name}: {', '.join(f'{r.env} asks {name}{r.specifier}' for r in reqs)}; "
                                           "no version satisfies all of them", field=name,
                             fix=f"pin the same {name} version in every env file that asks for it")
    combined = str(SpecifierSet(",".join(s for s in specs if s)))
    pins = sorted({p for p in (exact_pin(s) for s in specs) if p})
    asked = "; ".join(f"{r.env} asks {name}{r.specifier or ' (any version)'}" for r in reqs)
    if pins and all(SpecifierSet(s).contains(pins[0], prereleases=True) for s in specs if s):
        resolved = f"=={pins[0]}"
        pinned_by = sorted({r.env for r in reqs if exact_pin(r.specifier) == pins[0]})
        why = (f"{asked}. {name}=={pins[0]} (pinned by {', '.join(pinned_by)}) satisfies every other "
               f"specifier, so the intersection is that one version: every env keeps a version it accepts "
               f"and the lock stays exact")
    else:
        resolved = combined
        why = (f"{asked}. The ranges overlap (e.g. {witness} satisfies all of them), so the lock asks for "
               f"their intersection {name}{combined or ' (any version)'} and uv picks the newest release in "
               f"it, which every env accepts")
    return resolved, {
        "package": name,
        "requests": _requests_by_env(reqs),
        "resolution": "intersection",
        "resolved_to": f"{name}{resolved}",
        "why": why,
    }


def _extras_note(name: str, reqs, extras) -> dict:
    asked = {r.env: f"{name}[{','.join(r.extras)}]{r.specifier}" if r.extras else f"{name}{r.specifier}"
             for r in reqs}
    return {
        "package": name,
        "requests": dict(sorted(asked.items())),
        "resolution": "union of extras",
        "resolved_to": f"{name}[{','.join(extras)}]{reqs[0].specifier}",
        "why": "extras only add dependencies, so installing their union serves every env that asks",
        "extras": list(extras),
    }


def read_env_files(env_files) -> dict:
    requests = [r for path in sorted(env_files, key=lambda p: Path(p).name) for r in read_env_file(path)]
    if not requests:
        raise SnaketuneError("envs/", "no env file asks for any package", fix="add envs/<kind>.yaml files")
    return merge_requests(requests)


def package_category(merged: Merged) -> str:
    cats = {env_category(env) for env in merged.envs}
    return next(c for c in CATEGORY_PRIORITY if c in cats)


# ---------------------------------------------------------------- settings and the machine


def load_settings(path=None) -> dict:
    settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SETTINGS_DEFAULTS.items()}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        unknown = sorted(set(data) - set(SETTINGS_DEFAULTS))
        if unknown:
            raise SnaketuneError(path, f"unknown key {unknown[0]!r}", field=unknown[0],
                                 fix=f"use only {', '.join(SETTINGS_DEFAULTS)}")
        for key, value in data.items():
            settings[key] = {**settings[key], **value} if isinstance(settings[key], dict) else value
    if settings["exclude_newer"] is not None:
        settings["exclude_newer"] = str(settings["exclude_newer"])
    return settings


def machine_variant() -> str:
    """cuda when an NVIDIA driver answers, else cpu; SNAKETUNE_LOCK_VARIANT overrides."""
    forced = os.environ.get("SNAKETUNE_LOCK_VARIANT")
    if forced:
        if forced not in VARIANTS:
            raise SnaketuneError("SNAKETUNE_LOCK_VARIANT", f"is {forced!r}", fix="set it to cpu or cuda")
        return forced
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
            if proc.returncode == 0 and "GPU" in proc.stdout:
                return "cuda"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "cpu"


def pip_find_links() -> list:
    """pip's find-links (PIP_FIND_LINKS or `pip config`), which uv does not read by itself."""
    links: list = []
    env = os.environ.get("PIP_FIND_LINKS", "")
    links += env.split()
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                              text=True, timeout=60)
        out = proc.stdout if proc.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        m = re.match(r"^[^=]*\.find-links='(.*)'$", line.strip())
        if m:
            links += m.group(1).split()
    return list(dict.fromkeys(links))


def uv_command() -> list:
    if importlib.util.find_spec("uv") is not None:
        try:
            from uv import find_uv_bin

            return [find_uv_bin()]
        except Exception:  # noqa: BLE001 - fall back to the module runner / PATH
            return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    if found:
        return [found]
    raise SnaketuneError("envs/lock.yaml", "uv is not installed",
                         fix="pip install uv==0.13.8 (see envs/lock.yaml)")


# ---------------------------------------------------------------- resolving


def _uv_env() -> dict:
    """The caller's environment without uv settings that would change the resolution."""
    return {k: v for k, v in os.environ.items() if not k.startswith("UV_") or k in UV_ENV_KEEP}


def python_version(merged: dict) -> str:
    item = merged.get("conda:python")
    pin = exact_pin(item.specifier) if item else None
    if not pin:
        where = item.envs[0] if item else "envs/"
        raise SnaketuneError(where, "no exact python pin to resolve the lock for", field="python",
                             fix="add 'python=3.11.7' to the dependencies of every env file")
    return pin


def compile_inputs(merged: dict, variant: str, settings: dict) -> list:
    """The requirement lines uv resolves for a variant (the CPU variant asks for torch's +cpu build)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown lock variant {variant!r}")
    local = settings["cpu"]["local_version"]
    lines = []
    for name, item in merged.items():
        if item.kind != "pip":
            continue
        if variant == "cpu" and name in {canonicalize_name(p) for p in settings["cpu"]["packages"]}:
            pin = exact_pin(item.specifier)
            if not pin:
                raise SnaketuneError(item.envs[0],
                                     f"{name}{item.specifier} is not an exact pin; the CPU lock "
                                                   f"needs one to ask for its +{local} build",
                                     field=name, fix=f"pin {name}==<version> in {', '.join(item.envs)}")
            base = Version(pin).public
            item = Merged(item.name, item.kind, item.requests, f"=={base}+{local}", item.extras, item.marker)
        lines.append(item.requirement_line())
    return sorted(lines)


def run_uv_compile(lines, *, python: str, settings: dict, find_links=(), uv=None,
                   preferences: str | None = None, upgrade: bool = False, upgrade_packages=()) -> str:
    """``uv pip compile`` of the lines; returns its output (one ``pin  # via ...`` per line).

    ``preferences`` (the text of an existing lock) is handed to uv as its output file, so uv keeps those
    pins wherever they still satisfy the requirements; ``upgrade`` / ``upgrade_packages`` let it move them.
    """
    uv = uv or uv_command()
    with tempfile.TemporaryDirectory(prefix="snaketune-lock-") as tmp:
        Path(tmp, _INPUT_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
        args = [*uv, "pip", "compile", _INPUT_NAME, "--no-config", "--no-header", "--annotation-style",
                "line", "--python-version", python, "--python-platform", settings["python_platform"],
                "--default-index", settings["index_url"], "--color", "never"]
        if settings["exclude_newer"]:
            args += ["--exclude-newer", settings["exclude_newer"]]
        for link in find_links:
            args += ["--find-links", link]
        if preferences is not None:
            Path(tmp, _PREFERENCES_NAME).write_text(preferences, encoding="utf-8")
            args += ["--output-file", _PREFERENCES_NAME]
        if upgrade:
            args.append("--upgrade")
        for name in upgrade_packages:
            args += ["--upgrade-package", name]
        proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True, env=_uv_env())
        if proc.returncode != 0 and "No solution found" not in proc.stderr:
            # PyPI unreachable? uv's cache may hold everything this resolution needs.
            if preferences is not None:
                Path(tmp, _PREFERENCES_NAME).write_text(preferences, encoding="utf-8")
            offline = subprocess.run([*args, "--offline"], cwd=tmp, capture_output=True, text=True,
                                     env=_uv_env())
            if offline.returncode == 0:
                print("warning: PyPI unreachable; resolved from uv's cache (--offline)", file=sys.stderr)
                proc = offline
    if proc.returncode != 0:
        detail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-12:] if line.strip())
        raise SnaketuneError("envs/", f"uv could not resolve the merged requirements: {detail}",
                             fix="relax or align the pins uv names above in envs/*.yaml "
                                 "(and check that PyPI is reachable)")
    return proc.stdout


def parse_uv_output(text: str) -> dict:
    """name -> (pinned line, [via ...]) from ``uv pip compile --annotation-style line`` output."""
    pins = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("-"):
            continue
        req_part, _, via = line.partition("# via")
        req_part = req_part.strip()
        name = canonicalize_name(re.split(r"[=<>!~;\[ ]", req_part, maxsplit=1)[0])
        parents = [v.strip() for v in via.split(",") if v.strip()]
        pins[name] = (req_part, parents)
    return pins


def cuda_packages(names) -> list:
    """The CUDA-only packages among locked names (nvidia-* and cuda-* wheels, triton)."""
    return sorted(n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton")


def _header(variant: str, python: str, settings: dict) -> list:
    what = {"cpu": "CPU: torch's +cpu build (from pip's find-links), no CUDA packages",
            "cuda": "CUDA: torch from PyPI with its nvidia-* CUDA wheels"}[variant]
    return [
        f"# snaketune requirements lock, {what}.",
        "# Generated from envs/*.yaml by the `lock` rule (snaketune.envlock); do not edit by hand:",
        "# change an env file, then run `python -m snaketune.envlock write`.",
        f"# snaketune-lock: variant={variant} python={python} platform={settings['python_platform']} "
        f"exclude-newer={settings['exclude_newer'] or 'none'}",
    ]


def lock_environments(env_files, settings=None, variant: str = "cpu", *, find_links=None, uv=None,
                      preferences: str | None = None, upgrade: bool = False,
                      upgrade_packages=()) -> LockResult:
    """Merge the env files and resolve one lock variant; returns its text and report (nothing written).

    ``preferences``: an existing lock's text whose pins are kept (see ``run_uv_compile``).
    """
    settings = settings if isinstance(settings, dict) else load_settings(settings)
    merged = read_env_files(env_files)
    python = python_version(merged)
    if variant == "cpu":
        find_links = pip_find_links() if find_links is None else list(find_links)
        if not find_links:
            raise SnaketuneError("pip config",
                                 "no find-links configured; the CPU lock needs the torch +cpu wheel",
                                 field="find-links",
                                 fix="point pip at a folder holding it: export PIP_FIND_LINKS=/opt/wheels "
                                     "(or pip config set global.find-links /opt/wheels)")
    else:
        find_links = []
    lines = compile_inputs(merged, variant, settings)
    pins = parse_uv_output(run_uv_compile(lines, python=python, settings=settings, find_links=find_links,
                                          uv=uv, preferences=preferences, upgrade=upgrade,
                                          upgrade_packages=upgrade_packages))
    cuda = cuda_packages(pins)
    if variant == "cpu" and cuda:
        raise SnaketuneError("envs/", f"the CPU lock pulls CUDA packages ({', '.join(cuda[:3])}, ...)",
                             fix="make pip's find-links hold the torch +cpu wheel the lock asks for")

    body = []
    for name in sorted(pins):
        req, parents = pins[name]
        via = [p for p in parents if not p.startswith("-r")]
        if any(p.startswith("-r") for p in parents):
            via = merged[name].envs + via
        body.append(f"{req}  # via {', '.join(via)}" if via else req)
    text = "\n".join(_header(variant, python, settings) + body) + "\n"
    report = build_report(merged, pins, variant=variant, python=python, settings=settings,
                          find_links=find_links, env_files=env_files)
    return LockResult(variant, text, report)


def categorise(merged: dict, pins: dict) -> dict:
    """Category of every locked package: its env files' for direct ones, its dependents' for the rest."""
    cats = {name: package_category(item) for name, item in merged.items() if item.kind == "pip"}
    rank = {c: i for i, c in enumerate(CATEGORY_PRIORITY)}
    parents = {name: [canonicalize_name(p) for p in via if not p.startswith("-r")]
               for name, (_, via) in pins.items()}
    changed = True
    while changed:  # propagate down the dependency graph until nothing changes (graphs may have cycles)
        changed = False
        for name in sorted(pins):
            if name in merged:
                continue
            options = [cats[p] for p in parents[name] if p in cats]
            if options:
                best = min(options, key=rank.__getitem__)
                if cats.get(name) != best and (name not in cats or rank[best] < rank[cats[name]]):
                    cats[name] = best
                    changed = True
    return {name: cats.get(name, "tooling") for name in pins}


def build_report(merged, pins, *, variant, python, settings, find_links, env_files) -> dict:
    categories = categorise(merged, pins)
    packages = {}
    for name in sorted(pins):
        req, parents = pins[name]
        entry = {
            "locked": req.split("==", 1)[1] if "==" in req else req,
            "category": categories[name],
            "direct": name in merged,
            "via": sorted(canonicalize_name(p) for p in parents if not p.startswith("-r")),
        }
        if name in merged:
            item = merged[name]
            entry["requested_by"] = _requests_by_env(item.requests)
            entry["pinned_exactly"] = all(exact_pin(r.specifier) for r in item.requests)
        packages[name] = entry
    conda = {item.name: {"requested_by": _requests_by_env(item.requests), "specifier": item.specifier}
             for item in merged.values() if item.kind == "conda"}
    by_category = {c: sorted(n for n, cat in categories.items() if cat == c) for c in CATEGORIES}
    return {
        "variant": variant,
        "env_files": sorted(env_label(p) for p in env_files),
        "python_version": python,
        "python_platform": settings["python_platform"],
        "exclude_newer": settings["exclude_newer"],
        "index_url": settings["index_url"],
        "find_links": list(find_links),
        "package_count": len(pins),
        "cuda_packages": cuda_packages(pins),
        "packages": packages,
        "conda_packages": conda,
        "conflicts": [item.conflict for item in merged.values() if item.conflict],
        "categories": by_category,
    }


# ---------------------------------------------------------------- writing


def committed_lock_path(committed_dir, variant: str) -> Path:
    return Path(committed_dir) / f"requirements.{variant}.txt"


def pin_changes(old_text: str, new_text: str) -> list[dict]:
    """``[{"package", "locked", "resolvable"}]`` for every pin that differs between two lock texts
    (``None`` where a lock has no such package)."""
    old, new = parse_lock(old_text)["pins"], parse_lock(new_text)["pins"]
    return [{"package": name, "locked": old.get(name), "resolvable": new.get(name)}
            for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def index_drift(env_files, settings, variant: str, locked_text: str, **kwargs) -> dict:
    """What a fresh resolution (no pins kept) would pick today that the lock does not: reported, never fatal.

    ``{"checked": true, "packages": [...pin_changes...]}``, or ``{"checked": false, "error": ...}`` when the
    index cannot be asked (the lock itself was still made from the committed pins).
    """
    try:
        fresh = lock_environments(env_files, settings, variant, **kwargs)
    except SnaketuneError as err:
        return {"checked": False, "error": str(err), "packages": []}
    return {"checked": True, "packages": pin_changes(locked_text, fresh.text)}


def drift_lines(drift: dict, variant: str) -> list[str]:
    """Human lines for ``index_drift``'s result (lock rule log, envlock check)."""
    if not drift["checked"]:
        return [f"drift: not checked ({drift['error']})"]
    if not drift["packages"]:
        return [f"drift: none; a fresh resolution of the {variant} variant picks every pin the lock holds"]
    lines = [f"drift: {len(drift['packages'])} package(s) could move in a fresh resolution of the {variant} "
             "variant (the lock keeps its pins; move one with `python -m snaketune.envlock write "
             "--upgrade-package NAME`):"]
    lines += [f"  {d['package']}: {d['locked'] or '(not locked)'} -> {d['resolvable'] or '(dropped)'}"
              for d in drift["packages"]]
    return lines


def write_lock(env_files, settings_path, lock_out, report_out, *, variant=None, committed=(),
               check_drift: bool = True) -> LockResult:
    """The `lock` rule: resolve the variant for this machine keeping the committed pins, compare with the
    committed lock, report what a fresh resolution would move (drift), write the lock and its report.

    ``committed`` lists the committed lock files (requirements.<variant>.txt); the one of this variant
    gives the pins to keep and is compared.
    """
    variant = variant or machine_variant()
    env_files = list(env_files)
    settings = load_settings(settings_path)
    mine = [Path(p) for p in committed if Path(p).name == f"requirements.{variant}.txt"]
    preferences = mine[0].read_text(encoding="utf-8") if mine and mine[0].is_file() else None
    print(f"lock: resolving the {variant} variant of {len(env_files)} env files with uv"
          + (f", keeping the pins of {mine[0]}" if preferences else ""))
    result = lock_environments(env_files, settings, variant, preferences=preferences)
    report = dict(result.report)
    if mine:
        same = preferences == result.text
        report["committed_lock"] = {"path": f"envs/lock/{mine[0].name}", "matches": same}
        if not same:
            changed = ", ".join(f"{d['package']} {d['locked']} -> {d['resolvable']}"
                                for d in pin_changes(preferences or "", result.text)) or "header"
            print(f"warning: {mine[0]} differs from the lock the env files give now ({changed}); run "
                  "`python -m snaketune.envlock write` and commit it")
    if check_drift:
        report["index_drift"] = index_drift(env_files, settings, variant, result.text)
        for line in drift_lines(report["index_drift"], variant):
            print(line)
    for conflict in report["conflicts"]:
        print(f"conflict {conflict['package']}: {conflict['resolution']} -> {conflict['resolved_to']}: "
              f"{conflict['why']}")
    print(f"lock: {report['package_count']} packages, {len(report['conflicts'])} conflicts resolved, "
          f"{len(report['cuda_packages'])} CUDA packages")
    with atomic_path(lock_out) as lock_tmp, atomic_path(report_out) as report_tmp:
        lock_tmp.write_text(result.text, encoding="utf-8")
        report_tmp.write_text(dumps_json(report), encoding="utf-8")
    return result


def main(argv=None) -> int:
    """``python -m snaketune.envlock write|check|drift``: regenerate, check or compare with the index the
    committed locks in envs/lock/. Committed pins are kept unless ``--upgrade`` / ``--upgrade-package``."""
    parser = argparse.ArgumentParser(prog="python -m snaketune.envlock", description=main.__doc__)
    parser.add_argument("action", choices=["write", "check", "drift"],
                        help="write: re-lock (keeping pins) and write; check: fail if re-locking would "
                             "change the committed lock; drift: list what a fresh resolution would move")
    parser.add_argument("--envs", default="envs", help="folder of the env files (default: envs)")
    parser.add_argument("--variant", choices=VARIANTS, action="append", help="default: both")
    parser.add_argument("--upgrade", action="store_true",
                        help="write: let every pin move to the newest allowed")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME",
                        help="write: let this package's pin move (repeatable)")
    args = parser.parse_args(argv)
    envs = Path(args.envs)
    env_files = sorted(envs.glob("*.yaml"))
    settings = load_settings(envs / "lock" / "resolve.yaml")
    status = 0
    for variant in args.variant or VARIANTS:
        target = committed_lock_path(envs / "lock", variant)
        current = target.read_text(encoding="utf-8") if target.is_file() else None
        try:
            if args.action == "drift":
                for line in drift_lines(index_drift(env_files, settings, variant, current or ""), variant):
                    print(line)
                continue
            result = lock_environments(env_files, settings, variant, preferences=current,
                                       upgrade=args.upgrade, upgrade_packages=args.upgrade_package)
        except SnaketuneError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        changes = pin_changes(current or "", result.text)
        if args.action == "write":
            with atomic_path(target) as tmp:
                tmp.write_text(result.text, encoding="utf-8")
            moved = "; ".join(f"{d['package']} {d['locked']} -> {d['resolvable']}" for d in changes) \
                or "no pin moved"
            print(f"wrote {target} ({result.report['package_count']} packages; {moved})")
        elif current != result.text:
            print(f"{target} is out of date: run `python -m snaketune.envlock write`"
                  + (f" ({', '.join(d['package'] for d in changes)})" if changes else ""), file=sys.stderr)
            status = 1
        else:
            print(f"{target} is up to date")
    return status


if __name__ == "__main__":
    sys.exit(main())
