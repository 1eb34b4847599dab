"""The audit: check every result against the provenance record written when it was made.

For each provenance record (``snaketune.provenance``) it recomputes the hash of every output (and input), and
compares the rule's params as the config gives them now, the code (entry script and the package files
the step imported) and the committed lock with what the record holds. It also compares the installed
environment with the committed lock. Every difference is one ``Drift`` naming the outputs it affects;
``run_audit`` (the `audit` rule) prints them as a table, writes its JSON report and, when strict,
fails with one line per kind of drift.
"""

from __future__ import annotations

import datetime
import json
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SnaketuneError
from .files import sha256_file, write_json
from .provenance import (
    checkout_root,
    file_hash,
    git_record,
    lock_file,
    lock_variant,
    normalised,
    package_files,
    read_records,
    script_path,
)
from .verify import installed_packages, lock_drift, read_lock, same_version

__all__ = ["Drift", "param_changes", "index_drift_notes", "audit", "format_table", "run_audit"]

KINDS = ("output", "input", "provenance", "params", "code", "lock", "environment")
# Drifts that Snakemake's own rerun triggers miss (edited outputs, package code, the environment).
FORCED_KINDS = ("output", "code", "lock", "environment")


@dataclass
class Drift:
    kind: str  # one of KINDS
    detail: str
    outputs: list = field(default_factory=list)  # the outputs it affects ([] = the environment only)
    rule: str | None = None
    fix: str = ""


def _short(sha) -> str:
    return sha[:12] if sha else "nothing"


def _rerun(rule) -> str:
    return f"rerun it: snakemake --forcerun {rule}" if rule else "rerun the pipeline"


def param_changes(recorded, current, prefix: str = "params") -> list[str]:
    """``params.eval_cfg.max_new_tokens: 96 when made, 64 now`` for every leaf that differs."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(recorded) | set(current)):
            if key not in current:
                out.append(f"{prefix}.{key}: {recorded[key]!r} when made, gone now")
            elif key not in recorded:
                out.append(f"{prefix}.{key}: absent when made, {current[key]!r} now")
            else:
                out.extend(param_changes(recorded[key], current[key], f"{prefix}.{key}"))
        return out
    if recorded != current:
        return [f"{prefix}: {recorded!r} when made, {current!r} now"]
    return []


def _outputs(record) -> list[str]:
    return [o["path"] for o in record.get("outputs", [])]


def check_files(record) -> list[Drift]:
    """Outputs that changed or vanished since the step, and inputs that changed since it read them."""
    rule, outs, drifts = record.get("rule"), _outputs(record), []
    for out in record.get("outputs", []):
        now = file_hash(out["path"])
        if now is None:
            drifts.append(Drift("output", f"{out['path']} is missing (rule {rule} made it)", [out["path"]],
                                rule, _rerun(rule)))
        elif now != out["sha256"]:
            drifts.append(Drift("output", f"{out['path']} changed: sha256 {_short(now)} now, "
                                f"{_short(out['sha256'])} when rule {rule} made it", [out["path"]], rule,
                                _rerun(rule)))
    for inp in record.get("inputs", []):
        now = file_hash(inp["path"])
        if now != inp["sha256"]:
            what = ("is missing since rule {rule} read it" if now is None else
                    f"changed since rule {rule} read it (sha256 {_short(now)} now, "
                    f"{_short(inp['sha256'])} then)")
            drifts.append(Drift("input", f"input {inp['path']} {what.format(rule=rule)}", outs, rule,
                                f"snakemake (reruns {rule})"))
    return drifts


def check_params(record, expected: dict | None) -> list[Drift]:
    rule, outs = record.get("rule"), _outputs(record)
    if expected is None or "error" in expected:
        return []  # not part of the workflow as configured now: a note, not a drift (see stale_notes)
    changes = param_changes(normalised(record.get("params", {})), normalised(expected["params"]))
    return [Drift("params", f"{change} (rule {rule})", outs, rule,
                  f"snakemake (the params trigger reruns {rule})")
            for change in changes]


def check_code(record, root: Path, package_now: dict) -> list[Drift]:
    """The entry script, and the package files the step imported (plus its non-Python files)."""
    rule, outs, code, drifts = record.get("rule"), _outputs(record), record.get("code", {}), []
    script = code.get("script")
    if script:
        path = root / script["path"]
        now = sha256_file(path) if path.is_file() else None
        if now != script["sha256"]:
            what = ("is gone" if now is None
                    else f"changed (sha256 {_short(now)} now, {_short(script['sha256'])} ran)")
            drifts.append(Drift("code", f"entry script {script['path']} {what} since rule {rule} ran it",
                                outs, rule, _rerun(rule)))
    package = code.get("package", {})
    recorded = package.get("files", {})
    used = set(package.get("imported", [])) | {name for name in recorded if not name.endswith(".py")}
    for name in sorted(used):
        was, now = recorded.get(name), package_now.get(name)
        if was != now:
            what = "is gone" if now is None else "was added" if was is None else "changed"
            drifts.append(Drift("code", f"{package.get('path', 'snaketune')}/{name} {what} since rule {rule} "
                                "ran it (the step imported it)", outs, rule, _rerun(rule)))
    return drifts


def check_lock(record) -> list[Drift]:
    rule, outs = record.get("rule"), _outputs(record)
    lock = record.get("environment", {}).get("lock") or {}
    if not lock.get("path"):
        return []
    now = sha256_file(lock["path"]) if Path(lock["path"]).is_file() else None
    if now != lock.get("sha256"):
        return [Drift("lock", f"{lock['path']} changed since rule {rule} ran (sha256 {_short(now)} now, "
                      f"{_short(lock.get('sha256'))} then)", outs, rule,
                      f"pip install -r {lock['path']}, then {_rerun(rule)}")]
    return []


def check_recorded_versions(record, pins: dict, lock_path: str) -> list[Drift]:
    """Packages the step loaded at a version other than the lock's."""
    rule, outs, drifts = record.get("rule"), _outputs(record), []
    for name, version in sorted(record.get("environment", {}).get("packages", {}).items()):
        if name in pins and not same_version(version, pins[name]):
            drifts.append(Drift("environment", f"rule {rule} ran with {name} {version}; {lock_path} pins "
                                f"{pins[name]}", outs, rule,
                                f"pip install -r {lock_path}, then {_rerun(rule)}"))
    return drifts


def check_environment(records, installed: dict, lock: dict, lock_path: str) -> list[Drift]:
    """Installed versions against the lock; each drift names the outputs whose steps loaded that package."""
    drift, missing = lock_drift(lock["pins"], installed)
    loaded_by: dict[str, list] = {}
    for _, record in records:
        for name in record.get("environment", {}).get("packages", {}):
            loaded_by.setdefault(name, []).extend(_outputs(record))
    out = []
    for item in drift:
        name = item["package"]
        out.append(Drift("environment",
                         f"{name} {item['installed']} is installed; {lock_path} pins {item['locked']}",
                         sorted(set(loaded_by.get(name, []))), None, f"pip install -r {lock_path}"))
    for name in missing:
        out.append(Drift("environment", f"{name} is not installed; {lock_path} pins {lock['pins'][name]}",
                         sorted(set(loaded_by.get(name, []))), None, f"pip install -r {lock_path}"))
    return out


def unrecorded(records, targets) -> list[Drift]:
    """Results that exist but no record names as an output: pipeline targets, and inputs under results/."""
    made = {out for _, record in records for out in _outputs(record)}
    wanted = {str(t) for t in targets}
    for _, record in records:
        wanted.update(i["path"] for i in record.get("inputs", []) if i["path"].startswith("results/"))
    return [Drift("provenance", f"{path} has no provenance record (made before provenance was recorded, "
                  "or by a step that records none)", [path], None,
                  "rerun the rule that makes it: snakemake --forcerun <rule>")
            for path in sorted(wanted - made) if Path(path).exists()]


def stale_notes(records, expected: dict, targets) -> list[str]:
    notes = []
    for path, record in records:
        entry = expected.get(str(path))
        if entry is None or "error" in entry:
            why = entry["error"] if entry else "no params were computed for it"
            notes.append(f"{path}: rule {record.get('rule')} {record.get('wildcards') or ''} is not part of "
                         f"the workflow as configured now ({why}); its params were not compared")
    for target in targets:
        if not Path(target).exists():
            notes.append(f"{target} is not built yet")
    return notes


def index_drift_notes(lock_report) -> tuple[dict | None, list[str]]:
    """What the lock rule found a fresh resolution would move (its report's ``index_drift``), as notes:
    the lock keeps its pins, so this is news for whoever maintains the locks, not drift of any result."""
    path = Path(lock_report) if lock_report else None
    if path is None or not path.is_file():
        return None, []
    try:
        drift = json.loads(path.read_text(encoding="utf-8")).get("index_drift")
    except ValueError:
        return None, [f"{path} is not readable JSON; index drift not reported"]
    if not drift:
        return None, []
    if not drift.get("checked"):
        return drift, [f"index drift was not checked when the lock was made ({drift.get('error')})"]
    notes = [f"the index would move {d['package']} {d['locked'] or '(not locked)'} -> "
             f"{d['resolvable'] or '(dropped)'} in a fresh resolution (the lock keeps {d['locked']}; "
             f"`python -m snaketune.envlock write --upgrade-package {d['package']}` moves it)"
             for d in drift.get("packages", [])]
    return drift, notes


def audit(records, expected: dict, targets=(), *, lock_dir, installed=None, root=None, package_now=None,
          lock_report=None) -> dict:
    """Every drift of the results described by ``records`` ([(path, record)]); a JSON-able report.

    ``lock_dir``: the directory of the committed locks the environment is compared with.
    """
    installed = installed_packages() if installed is None else installed
    variant = lock_variant(installed)
    lock_path = lock_file(variant, lock_dir)
    if not lock_path.is_file():
        raise SnaketuneError(lock_path, "the committed lock is missing",
                             fix=f"git checkout {lock_dir}, or run "
                             "`python -m snaketune.envlock write` and commit it")
    lock = read_lock(lock_path)
    root = Path(root) if root else checkout_root()
    package_now = package_files() if package_now is None else package_now
    drifts: list[Drift] = []
    for path, record in records:
        if not record.get("rule"):
            drifts.append(Drift("provenance", f"{path} is not a readable provenance record", [], None,
                                f"delete {path} and rerun the rule that made it"))
            continue
        drifts += check_files(record)
        drifts += check_params(record, expected.get(str(path)))
        drifts += check_code(record, root, package_now)
        drifts += check_lock(record)
        drifts += check_recorded_versions(record, lock["pins"], lock_path.as_posix())
    drifts += check_environment(records, installed, lock, lock_path.as_posix())
    drifts += unrecorded(records, targets)
    affected = sorted({o for d in drifts for o in d.outputs})
    index_drift, drift_notes = index_drift_notes(lock_report)
    return {
        "status": "drift" if drifts else "pass",
        "drifts": [asdict(d) for d in drifts],
        "affected_outputs": affected,
        "records": len(records),
        "outputs_checked": sum(len(_outputs(r)) for _, r in records),
        "notes": stale_notes(records, expected, targets) + drift_notes,
        "lock": {"path": lock_path.as_posix(), "variant": variant, "sha256": sha256_file(lock_path),
                 "index_drift": index_drift},
        "git": git_record(root),
        "audited_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def fix_commands(drifts) -> list[str]:
    """The drifts' fixes as a few commands: reinstall, force the rules Snakemake would not rerun, rerun."""
    pip = sorted({d["fix"].split(", then")[0] for d in drifts if d["fix"].startswith("pip install")})
    forced = sorted({d["rule"] for d in drifts if d["rule"] and d["kind"] in FORCED_KINDS})
    rerun = sorted({d["rule"] for d in drifts if d["rule"] and d["kind"] not in FORCED_KINDS} - set(forced))
    other = sorted({d["fix"] for d in drifts if not d["rule"] and not d["fix"].startswith("pip install")})
    commands = list(pip)
    if forced:
        commands.append(f"snakemake --forcerun {' '.join(forced)}   "
                        "(Snakemake does not rerun these by itself)")
    if rerun:
        commands.append(f"snakemake   (reruns {', '.join(rerun)}: changed inputs or params)")
    return commands + other


def format_table(report: dict, wrap: int = 84) -> str:
    """One row per drift and output it affects (grouped by output), then the fixes; a header line first."""
    drifts = report["drifts"]
    head = (f"audit: {report['records']} provenance records, {report['outputs_checked']} outputs, "
            f"environment against {report['lock']['path']}: ")
    if not drifts:
        lines = [head + "no drift"]
    else:
        lines = [head + f"{len(drifts)} drift(s) affecting {len(report['affected_outputs'])} output(s)"]
        by_output: dict[str, list] = {}
        for d in drifts:
            for out in d["outputs"] or ["(environment)"]:
                by_output.setdefault(out, []).append(d)
        width = max(len("OUTPUT"), *(len(o) for o in by_output))
        lines += ["", f"{'OUTPUT':<{width}}  {'KIND':<11}  DRIFT", "-" * (width + 15 + wrap)]
        for out in sorted(by_output, key=lambda o: (o == "(environment)", o)):
            for n, d in enumerate(by_output[out]):
                detail = textwrap.wrap(d["detail"], wrap, break_on_hyphens=False) or [""]
                lines.append(f"{out if n == 0 else '':<{width}}  {d['kind']:<11}  {detail[0]}")
                lines.extend(f"{'':<{width}}  {'':<11}  {more}" for more in detail[1:])
        lines += ["", "to fix:"] + [f"  {fix}" for fix in fix_commands(drifts)]
    lines.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(lines)


def drift_error(report: dict, out_json) -> SnaketuneError:
    """One line: the count per kind and the first drift of each kind."""
    first = {}
    for d in report["drifts"]:
        first.setdefault(d["kind"], (d, sum(x["kind"] == d["kind"] for x in report["drifts"])))
    parts = [f"{kind}: {d['detail']}" + (f" (+{n - 1} more)" if n > 1 else "")
             for kind, (d, n) in first.items()]
    return SnaketuneError(out_json, f"audit found {len(report['drifts'])} drift(s): " + "; ".join(parts),
                          fix=f"see the table above or {out_json}; to record drift without failing, "
                              "run with --config audit_strict=false")


def run_audit(out_json, expected: dict, targets=(), *, records_root, lock_dir, strict: bool = True,
              lock_report=None, echo=None) -> dict:
    """The `audit` rule: audit, print the table (to the log and ``echo``), write ``out_json``; raise on drift.

    ``records_root``: the directory of the provenance records; ``lock_dir``: that of the committed locks.
    """
    records = read_records(records_root)
    script = script_path()  # entry scripts are looked up beside the audit's own (this checkout's)
    report = audit(records, expected, targets, lock_dir=lock_dir,
                   root=checkout_root(script) if script else None, lock_report=lock_report)
    report["strict"] = bool(strict)
    table = format_table(report)
    print(table)
    if echo is not None:
        echo.write(table + "\n")
        echo.flush()
    write_json(out_json, report)
    if report["drifts"] and strict:
        raise drift_error(report, out_json)
    return report
