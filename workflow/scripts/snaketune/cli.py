"""The ``snaketune`` command: run the workflow with the project's defaults, and say where a run stands.

    snaketune run [TARGET ...] [--configfile F] [--cores N] [-n] [--gpus N] [--directory D] [-- ARGS]
    snaketune status [--json] [--configfile F] [--directory D]

``run`` starts Snakemake in the checkout (the one holding the current directory, else the one this
package was installed from, or ``--directory``) with the GPUs it counts here as ``--resources gpu=N``.
``status`` asks Snakemake two dry runs (every job of the default target, then the jobs it would run
with its own reasons) and reads each specialist's outputs and eval JSONs; it locks and writes nothing,
so it is safe beside a running pipeline. ``--json`` prints the structure of
config/schemas/status.schema.yaml.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from .errors import SnaketuneError

PACKAGE_CHECKOUT = Path(__file__).resolve().parents[3]  # <checkout>/workflow/scripts/snaketune/cli.py
STATUS_VERSION = 1
# Per-specialist outputs: rule -> the name status gives its (first) output.
SPECIALIST_RULES = {"train": "adapter", "evaluate_tuned": "eval_tuned", "evaluate_base": "eval_base",
                    "merge": "merged", "gguf": "gguf", "lora_gguf": "lora_gguf", "gguf_parity": "parity",
                    "modelfile": "modelfile"}
SINGLE_OUTPUTS = ("adapter", "eval_tuned", "eval_base", "merged", "lora_gguf", "parity", "modelfile")
# Snakemake's reason texts (snakemake.jobs.Reason.__str__, 9.x), each with the short kind status reports.
REASON_KINDS = (("Forced execution", "forced"), ("Missing output files", "missing_output"),
                ("Incomplete output files", "incomplete_output"), ("Updated input files", "updated_input"),
                ("Input files updated by another job", "upstream"),
                ("Set of input files has changed", "input_changed"), ("Code has changed", "code_changed"),
                ("Params have changed", "params_changed"),
                ("Software environment definition has changed", "software_env_changed"))
SHORT_REASON = {"forced": "forced", "missing_output": "missing",
                "incomplete_output": "incomplete (interrupted)", "updated_input": "newer input",
                "upstream": "an input is rebuilt first", "input_changed": "input files changed",
                "code_changed": "code changed", "params_changed": "params changed",
                "software_env_changed": "software env changed"}
METRICS = ("exact_match", "tool_accuracy", "param_f1")


# --- where and how Snakemake runs -----------------------------------------------------------------

def find_workdir(directory=None, cwd=None) -> Path:
    """The checkout to run in: ``directory``; else the current directory or the nearest parent holding a
    Snakefile; else the checkout this package comes from."""
    if directory is not None:
        path = Path(directory).expanduser().resolve()
        if not (path / "Snakefile").is_file():
            raise SnaketuneError(path, "holds no Snakefile", field="--directory",
                                 fix="point --directory at a snaketune checkout (or a copy of one)")
        return path
    here = Path(cwd or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Snakefile").is_file() and (candidate / "workflow").is_dir():
            return candidate
    if (PACKAGE_CHECKOUT / "Snakefile").is_file():
        return PACKAGE_CHECKOUT
    raise SnaketuneError(here, "is not inside a snaketune checkout (no Snakefile here or above)",
                         field="--directory", fix="cd into the checkout, or pass --directory CHECKOUT")


def config_paths(configfiles, workdir: Path, cwd=None) -> list[str]:
    """Config files as Snakemake in ``workdir`` must see them (given relative to where the user is)."""
    here = Path(cwd or os.getcwd())
    out = []
    for name in configfiles or []:
        path = (here / Path(name).expanduser()).resolve()
        if not path.is_file():
            raise SnaketuneError(name, "config file not found", field="--configfile",
                                 fix="give the path of a YAML file (relative to the current directory)")
        out.append(path.relative_to(workdir).as_posix() if path.is_relative_to(workdir) else str(path))
    return out


def gpu_resource(gpus=None) -> int:
    """``--resources gpu=N``: the GPUs counted here (MPS is one), at least 1.

    At least 1: a job asks for gpu=resources.gpus, which is 0 on CPU configs, and a config asking for a
    GPU on a machine without one should run on the CPU with a warning rather than never be scheduled.
    """
    if gpus is not None:
        return max(0, int(gpus))
    from .devices import gpu_count

    return max(1, gpu_count())


def snakemake_command(targets=(), configfiles=(), *, cores="all", gpus: int = 1, dry_run: bool = False,
                      extra=(), python: str = sys.executable) -> list[str]:
    """The Snakemake command line. Targets go first: ``--configfile`` and ``--resources`` take several
    values and would swallow targets that follow them."""
    cmd = [python, "-m", "snakemake", *targets]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    cmd += ["--cores", str(cores), "--resources", f"gpu={int(gpus)}"]
    if dry_run:
        cmd.append("--dry-run")
    return cmd + list(extra)


# --- reading Snakemake's dry run ------------------------------------------------------------------

_RULE = re.compile(r"^(?:local)?rule (?P<rule>[A-Za-z_]\w*):\s*$")
_FIELD = re.compile(r"^ {4}(?P<key>[a-z_]+): ?(?P<value>.*)$")
_STATS_ROW = re.compile(r"^\s*(?P<rule>[A-Za-z_]\w*)\s+(?P<count>\d+)\s*$")


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(", ") if part.strip()]


def parse_dry_run(text: str) -> list[dict]:
    """Jobs of a ``snakemake --dry-run`` printout: {rule, wildcards, output, reason}, in printed order.

    Checked against Snakemake's own job-stats table: a printout whose job blocks do not add up (a
    profile with ``quiet``, another Snakemake's format) raises instead of reporting a wrong status.
    """
    jobs, current, last_key = [], None, None
    for line in text.splitlines():
        m = _RULE.match(line)
        if m:
            current = {"rule": m.group("rule"), "wildcards": {}, "output": [], "reason": ""}
            jobs.append(current)
            last_key = None
            continue
        if current is None:
            continue
        f = _FIELD.match(line)
        if f:
            key, value = f.group("key"), f.group("value")
            last_key = key
            if key == "output":
                current["output"] = _split_list(value)
            elif key == "wildcards":
                current["wildcards"] = dict(part.split("=", 1) for part in _split_list(value) if "=" in part)
            elif key == "reason":
                current["reason"] = value.strip()
        elif line.startswith("    ") and last_key == "reason":  # a reason that went on over lines
            current["reason"] += " " + line.strip()
        else:
            current, last_key = None, None
    expected = planned_counts(text)
    found: dict[str, int] = {}
    for job in jobs:
        found[job["rule"]] = found.get(job["rule"], 0) + 1
    if found != expected:
        raise SnaketuneError("snakemake --dry-run", f"its printout lists {sum(found.values())} job(s) but "
                             f"its job stats count {sum(expected.values())}; snaketune cannot read this "
                             "Snakemake's dry run",
                             fix="run snakemake -n yourself, and check that no profile sets quiet")
    return jobs


def planned_counts(text: str) -> dict[str, int]:
    """Rule -> job count from the dry run's 'Job stats' table (empty when nothing is to be done)."""
    counts: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        if line.strip().startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            m = _STATS_ROW.match(line)
            if m:
                if m.group("rule") != "total":
                    counts[m.group("rule")] = int(m.group("count"))
            elif line.strip() and not line.strip().startswith("-"):
                in_table = False
    return counts


def reason_kinds(reason: str) -> list[str]:
    """The kinds of a Snakemake reason text (its parts are joined by '; '), in Snakemake's order."""
    parts = [part.strip() for part in reason.split("; ")]
    return [kind for prefix, kind in REASON_KINDS if any(part.startswith(prefix) for part in parts)]


def upstream_files(reason: str) -> list[str]:
    prefix = "Input files updated by another job: "
    for part in reason.split("; "):
        if part.strip().startswith(prefix):
            return _split_list(part.strip()[len(prefix):])
    return []


def dry_run_command(configfiles=(), *, forceall: bool = False) -> list[str]:
    """``--nolock``, and a dry run writes no Snakemake log or metadata: safe beside a running pipeline."""
    return snakemake_command((), configfiles, cores=1, gpus=1, dry_run=True,
                             extra=["--nolock", "--nocolor", *(["--forceall"] if forceall else [])])


def dry_runs(workdir: Path, configfiles=()) -> tuple[list[dict], list[dict]]:
    """(every job of the default target, the jobs Snakemake would run), from two dry runs side by side."""
    procs = [subprocess.Popen(dry_run_command(configfiles, forceall=forceall), cwd=workdir, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for forceall in (True, False)]
    texts = [proc.communicate()[0] for proc in procs]
    for proc, text in zip(procs, texts):
        if proc.returncode != 0:
            lines = [line for line in text.splitlines() if line.strip()]
            raise SnaketuneError(workdir, "snakemake --dry-run failed:\n" + "\n".join(lines[-15:]),
                                 fix="fix what Snakemake says above; `snakemake -n` shows the same")
    return parse_dry_run(texts[0]), parse_dry_run(texts[1])


# --- status ---------------------------------------------------------------------------------------

def _job_key(job: dict) -> tuple:
    return (job["rule"], tuple(job["output"]))


def _entry(job: dict, pending: dict, workdir: Path) -> dict:
    path = job["output"][0]
    stale_job = pending.get(_job_key(job))
    reason = stale_job["reason"] if stale_job else ""
    return {"path": path, "rule": job["rule"], "exists": (workdir / path).exists(),
            "stale": stale_job is not None, "reason": reason, "reason_kinds": reason_kinds(reason),
            "rebuilt_inputs": upstream_files(reason)}


def _eval_metrics(path: Path) -> dict | None:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    metrics = result.get("metrics") or {}
    return {"path": None, **{k: metrics.get(k) for k in METRICS},
            "targets_met": bool(result.get("targets_met")), "n_examples": result.get("n_examples"),
            "device": result.get("device")}


def workflow_status(workdir: Path, configfiles=()) -> dict:
    """Where the run in ``workdir`` stands, per specialist (see config/schemas/status.schema.yaml)."""
    locks = workdir / ".snakemake" / "locks"
    locked = locks.is_dir() and any(locks.iterdir())  # before the dry runs: a run may end meanwhile
    every, stale = dry_runs(workdir, configfiles)
    pending = {_job_key(job): job for job in stale}
    specialists: dict[str, dict] = {}
    other = []
    for job in every:
        name = job["wildcards"].get("specialist")
        kind = SPECIALIST_RULES.get(job["rule"])
        if name is None or kind is None:
            if _job_key(job) in pending and job["rule"] != "all":
                other.append(_entry(job, pending, workdir))
            continue
        spec = specialists.setdefault(name, {"outputs": {**{k: None for k in SINGLE_OUTPUTS}, "gguf": {}}})
        entry = _entry(job, pending, workdir)
        if kind == "gguf":
            spec["outputs"]["gguf"][job["wildcards"].get("quant", entry["path"])] = entry
        else:
            spec["outputs"][kind] = entry
    for name, spec in specialists.items():
        out = spec["outputs"]
        out["gguf"] = dict(sorted(out["gguf"].items()))
        spec["metrics"] = {}
        for model in ("tuned", "base"):
            entry = out[f"eval_{model}"]
            found = _eval_metrics(workdir / entry["path"]) if entry else None
            if found is not None:
                found["path"] = entry["path"]
            spec["metrics"][model] = found
        ggufs = list(out["gguf"].values()) + ([out["lora_gguf"]] if out["lora_gguf"] else [])
        spec["gguf_files"] = [e["path"] for e in ggufs if e["exists"]]
    return {
        "version": STATUS_VERSION,
        "directory": str(workdir),
        "configfiles": list(configfiles),
        "snakemake": importlib.metadata.version("snakemake"),
        "locked": locked,
        "up_to_date": not any(job["rule"] != "all" for job in pending.values()),
        "jobs_pending": sum(1 for job in pending.values() if job["rule"] != "all"),
        "specialists": dict(sorted(specialists.items())),
        "other_stale": other,
    }


def _state(entry: dict | None) -> str:
    if entry is None:
        return "-"
    if not entry["exists"]:
        return "missing"
    return "stale" if entry["stale"] else "ok"


def _worst(entries) -> str:
    states = [_state(e) for e in entries]
    for state in ("missing", "stale", "ok"):
        if state in states:
            return state
    return "-"


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _why(entry: dict) -> str:
    kinds = entry["reason_kinds"]
    words = [SHORT_REASON[k] for k in kinds if k != "upstream"]
    if "upstream" in kinds:
        inputs = sorted(entry["rebuilt_inputs"])
        more = f" (+{len(inputs) - 2} more)" if len(inputs) > 2 else ""
        words.append("after " + ", ".join(inputs[:2]) + more)
    return "; ".join(words) or entry["reason"]


def format_status(status: dict) -> str:
    """The compact human table: outputs per specialist, eval metrics (tuned / base), what is stale and why."""
    lines = [f"snaketune status: {status['directory']} (Snakemake {status['snakemake']})"]
    if status["locked"]:
        lines.append("a Snakemake run holds this directory's lock: what it writes shows as stale or missing")
    rows = [["specialist", "adapter", "eval tuned", "eval base", "merged", "gguf", "lora gguf", "parity",
             "modelfile"]]
    for name, spec in status["specialists"].items():
        out = spec["outputs"]
        rows.append([name, _state(out["adapter"]), _state(out["eval_tuned"]), _state(out["eval_base"]),
                     _state(out["merged"]), _worst(out["gguf"].values()), _state(out["lora_gguf"]),
                     _state(out["parity"]), _state(out["modelfile"])])
    lines += ["", *_table(rows), ""]
    rows = [["metrics (tuned / base)", *METRICS, "targets met", "n"]]
    for name, spec in status["specialists"].items():
        tuned, base = spec["metrics"]["tuned"] or {}, spec["metrics"]["base"] or {}
        met = {True: "yes", False: "no", None: "–"}
        rows.append([name, *(f"{_fmt(tuned.get(k))} / {_fmt(base.get(k))}" for k in METRICS),
                     f"{met[tuned.get('targets_met')]} / {met[base.get('targets_met')]}",
                     _fmt(tuned.get("n_examples") or base.get("n_examples"))])
    lines += _table(rows)
    stale = []
    for name, spec in status["specialists"].items():
        out = spec["outputs"]
        entries = [out[k] for k in ("adapter", "eval_tuned", "eval_base", "merged")] \
            + list(out["gguf"].values()) + [out[k] for k in ("lora_gguf", "parity", "modelfile")]
        stale += [[name, e["rule"], e["path"], _why(e)] for e in entries
                  if e and (e["stale"] or not e["exists"])]
    stale += [["(shared)", e["rule"], e["path"], _why(e)] for e in status["other_stale"]]
    if stale:
        lines += ["", "to build (Snakemake's reasons; `snaketune status --json` has them in full):"]
        lines += ["  " + line for line in _table(stale)]
    ggufs = [[name, " ".join(spec["gguf_files"])] for name, spec in status["specialists"].items()
             if spec["gguf_files"]]
    if ggufs:
        lines += ["", "GGUF files:"] + ["  " + line for line in _table(ggufs)]
    lines.append("")
    lines.append("everything is up to date" if status["up_to_date"] else
                 f"{status['jobs_pending']} job(s) to run: snaketune run")
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snaketune", description="Run the snaketune workflow and see where it stands. Every run goes "
        "through Snakemake with the project's profile.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--configfile", action="append", default=[], metavar="FILE",
                        help="a config file over the checkout's own (repeat for several)")
    common.add_argument("--directory", "-d", metavar="DIR",
                        help="the checkout to run in (default: the one holding the current directory)")
    run = sub.add_parser(
        "run", parents=[common], help="run the workflow (Snakemake with the GPUs counted here)",
        description="Run Snakemake in the checkout. Arguments after -- go to Snakemake as they are, "
        "e.g. snaketune run -- --keep-going.")
    run.add_argument("targets", nargs="*", help="files or rules to build (default: everything)")
    run.add_argument("--cores", "-c", default="all", help="CPU cores Snakemake may use (default: all)")
    run.add_argument("--dry-run", "-n", action="store_true", help="show what would run, run nothing")
    run.add_argument("--gpus", type=int, metavar="N",
                     help="GPUs to offer (--resources gpu=N); default: counted here, MPS as 1, at least 1")
    status = sub.add_parser(
        "status", parents=[common],
        help="each specialist's outputs, what is stale and why, the eval metrics and the GGUF paths")
    status.add_argument("--json", action="store_true", help="print JSON (config/schemas/status.schema.yaml)")
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if extra and args.command != "run":
        build_parser().error("arguments after -- go to Snakemake, with `snaketune run` only")
    try:
        workdir = find_workdir(args.directory)
        configfiles = config_paths(args.configfile, workdir)
        if args.command == "status":
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `snaketune status | head` ends quietly
            status = workflow_status(workdir, configfiles)
            print(json.dumps(status, indent=1) if args.json else format_status(status))
            return 0
        cmd = snakemake_command(args.targets, configfiles, cores=args.cores, gpus=gpu_resource(args.gpus),
                                dry_run=args.dry_run, extra=extra)
    except SnaketuneError as err:
        print(f"snaketune: {err}", file=sys.stderr)
        return 2
    print(f"snaketune: in {workdir}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    # Snakemake takes this process over: Ctrl-C and SIGTERM reach it directly, its exit status is ours.
    os.chdir(workdir)
    os.execv(cmd[0], cmd)
    return 0  # not reached


__all__ = ["STATUS_VERSION", "SPECIALIST_RULES", "REASON_KINDS", "find_workdir", "config_paths",
           "gpu_resource", "snakemake_command", "parse_dry_run", "planned_counts", "reason_kinds",
           "upstream_files", "dry_run_command", "dry_runs", "workflow_status", "format_status",
           "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
