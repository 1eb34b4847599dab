"""The `snaketune` command: `run` plans and runs what Snakemake would, `status` reports each specialist's
outputs, what is stale with Snakemake's own reasons, the eval metrics and the GGUF paths, and touches
nothing (not even beside a running pipeline).

One tiny pipeline run (two specialists, export on) is shared by the module; tests that change
something do it in a copy of that run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

from snaketune import cli
from snaketune.errors import SnaketuneError

from pipeline import REPO, copy_workdir, make_workdir, planned_jobs, snakemake, tiny_config

CONFIG = tiny_config(export=True)
CONFIG["export"] = {"enabled": True, "quants": ["f16", "q8_0"], "lora_gguf": True, "parity": True,
                    "parity_prompts": 2}
SCHEMA = yaml.safe_load((REPO / "config" / "schemas" / "status.schema.yaml").read_text(encoding="utf-8"))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "workflow" / "scripts"),
                                                                 os.environ.get("PYTHONPATH", "")) if p)}
STALE_AFTER_ADAPTER = ("eval_tuned", "merged", "lora_gguf", "parity", "modelfile")


def snaketune(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    """The command as a user runs it (the console script is `snaketune.cli:main`)."""
    proc = subprocess.run([sys.executable, "-m", "snaketune.cli", *args], cwd=cwd or REPO, env=ENV,
                          capture_output=True, text=True, timeout=1800, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"snaketune {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def status_json(workdir, *args) -> dict:
    status = json.loads(snaketune("status", "--json", "--directory", str(workdir), *args).stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(status)
    return status


# What any `snakemake --dry-run` leaves: its IO cache (for a later --trust-io-cache run) and the lock
# directory, empty, that Snakemake's persistence creates on start.
DRY_RUN_TRACES = {".snakemake", ".snakemake/iocache", ".snakemake/iocache/latest.pkl", ".snakemake/locks"}


def tree_state(root: Path) -> dict:
    """Every file and directory under root (links not followed) with its size and mtime, but for the
    traces every dry run leaves; and no lock file."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            state[path.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    assert not [key for key in state if key.startswith(".snakemake/locks/")], "a lock was left behind"
    return {key: value for key, value in state.items() if key not in DRY_RUN_TRACES}


def outputs(spec: dict) -> dict:
    """name -> output entry, the GGUF types as gguf.<type>."""
    out = {k: v for k, v in spec["outputs"].items() if k != "gguf"}
    out.update({f"gguf.{quant}": entry for quant, entry in spec["outputs"]["gguf"].items()})
    return out


# ------------------------------------------------------------------ pure parts

def test_pyproject_declares_the_console_script():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"] == {"snaketune": "snaketune.cli:main"}
    assert callable(cli.main)
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0


def test_run_command_puts_targets_first_and_offers_the_gpus(tmp_path, monkeypatch):
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    (checkout / "workflow").mkdir(parents=True)
    (checkout / "Snakefile").write_text("")
    (checkout / "mine.yaml").write_text("{}")
    elsewhere.mkdir()
    (elsewhere / "other.yaml").write_text("{}")
    assert cli.find_workdir(cwd=checkout / "workflow") == checkout  # the checkout holding the current dir
    assert cli.find_workdir(str(checkout)) == checkout
    with pytest.raises(SnaketuneError, match="holds no Snakefile"):
        cli.find_workdir(str(elsewhere))
    # config files are given relative to where the user is, and Snakemake runs in the checkout
    assert cli.config_paths(["../checkout/mine.yaml", "other.yaml"], checkout, cwd=elsewhere) == \
        ["mine.yaml", str(elsewhere / "other.yaml")]
    with pytest.raises(SnaketuneError, match="config file not found"):
        cli.config_paths(["nope.yaml"], checkout, cwd=checkout)
    cmd = cli.snakemake_command(["results/adapters/a", "train"], ["mine.yaml"], cores="3", gpus=2,
                                dry_run=True, extra=["--keep-going"], python="py")
    assert cmd == ["py", "-m", "snakemake", "results/adapters/a", "train", "--configfile", "mine.yaml",
                   "--cores", "3", "--resources", "gpu=2", "--dry-run", "--keep-going"]
    monkeypatch.setattr("snaketune.devices.gpu_count", lambda: 0)
    assert cli.gpu_resource() == 1  # no GPU: jobs still get scheduled (rules ask gpu=0, or run on the CPU)
    monkeypatch.setattr("snaketune.devices.gpu_count", lambda: 4)
    assert cli.gpu_resource() == 4 and cli.gpu_resource(2) == 2


DRY_RUN = """\
Building DAG of jobs...
Job stats:
job               count
--------------  -------
train                 1
gguf                  2
all                   1
total                 4


[Wed Dec  2 07:17:17 2026]
rule train:
    input: results/base/tiny, results/data/train.jsonl
    output: results/adapters/veran-tools, results/adapters/veran-tools.timing.json
    log: logs/train/veran-tools.log
    jobid: 7
    reason: Params have changed since last execution: before: {'lr': 0.005} now: {'lr': 0.001}
    wildcards: specialist=veran-tools
    resources: tmpdir=/tmp, gpu=0
Shell command: None

[Wed Dec  2 07:17:17 2026]
rule gguf:
    input: results/merged/veran-tools
    output: results/gguf/veran-tools.f16.gguf
    jobid: 9
    reason: Missing output files: results/gguf/veran-tools.f16.gguf; Input files updated by another job: \
results/merged/veran-tools, results/adapters/veran-tools
    wildcards: specialist=veran-tools, quant=f16
Shell command: None

rule gguf:
    output: results/gguf/veran-tools.q8_0.gguf
    reason: Code has changed since last execution
    wildcards: specialist=veran-tools, quant=q8_0

localrule all:
    input: results/adapters/veran-tools
    jobid: 0
    reason: Input files updated by another job: results/adapters/veran-tools
    resources: tmpdir=/tmp
Job stats:
job      count
-----  -------
train        1
gguf         2
all          1
total        4
This was a dry-run (flag -n). The order of jobs does not reflect the order of execution.
"""


def test_dry_run_printout_is_read_into_jobs_with_their_reasons():
    jobs = cli.parse_dry_run(DRY_RUN)
    assert [(j["rule"], j["wildcards"]) for j in jobs] == [
        ("train", {"specialist": "veran-tools"}), ("gguf", {"specialist": "veran-tools", "quant": "f16"}),
        ("gguf", {"specialist": "veran-tools", "quant": "q8_0"}), ("all", {})]
    train, f16, q8, _ = jobs
    assert train["output"] == ["results/adapters/veran-tools", "results/adapters/veran-tools.timing.json"]
    assert cli.reason_kinds(train["reason"]) == ["params_changed"]
    assert cli.reason_kinds(f16["reason"]) == ["missing_output", "upstream"]
    assert cli.upstream_files(f16["reason"]) == ["results/merged/veran-tools", "results/adapters/veran-tools"]
    assert cli.reason_kinds(q8["reason"]) == ["code_changed"]
    assert cli.parse_dry_run("Building DAG of jobs...\nNothing to be done (all requested files are present "
                             "and up to date).\n") == []
    # a printout whose job blocks do not add up to Snakemake's own count is refused, not half-read
    with pytest.raises(SnaketuneError, match="lists 3 job.*count 4"):
        cli.parse_dry_run(DRY_RUN.replace("localrule all:", "something else:"))


# ------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run (two specialists, export on)."""
    work = make_workdir(tmp_path_factory.mktemp("cli") / "run", CONFIG)
    snakemake(work)
    return work


@pytest.mark.e2e
@pytest.mark.slow
def test_status_after_a_run_has_everything_and_the_eval_numbers(run):
    before = tree_state(run)
    status = status_json(run)
    assert tree_state(run) == before  # status wrote no result, metadata, log or lock
    assert status["up_to_date"] is True and status["jobs_pending"] == 0 and status["other_stale"] == []
    assert status["locked"] is False and status["directory"] == str(run.resolve())
    assert sorted(status["specialists"]) == ["mesen-runner", "veran-tools"]
    for name, spec in status["specialists"].items():
        entries = outputs(spec)
        assert sorted(entries) == ["adapter", "eval_base", "eval_tuned", "gguf.f16", "gguf.q8_0", "lora_gguf",
                                   "merged", "modelfile", "parity"]
        for key, entry in entries.items():
            assert entry["exists"] and (run / entry["path"]).exists(), key
            assert entry["stale"] is False and entry["reason"] == "" and entry["reason_kinds"] == [], key
        assert entries["adapter"]["path"] == f"results/adapters/{name}"
        assert entries["gguf.q8_0"]["path"] == f"results/gguf/{name}.q8_0.gguf"
        assert spec["gguf_files"] == [f"results/gguf/{name}.f16.gguf", f"results/gguf/{name}.q8_0.gguf",
                                      f"results/gguf/{name}.lora.gguf"]
        for model in ("tuned", "base"):
            result = json.loads((run / f"results/eval/{model}/{name}.json").read_text())
            got = spec["metrics"][model]
            assert got == {"path": f"results/eval/{model}/{name}.json",
                           **{k: result["metrics"][k] for k in ("exact_match", "tool_accuracy", "param_f1")},
                           "targets_met": result["targets_met"], "n_examples": result["n_examples"],
                           "device": "cpu"}
            assert result["device"] == "cpu"  # the eval JSON names the device it ran on
    text = snaketune("status", "--directory", str(run)).stdout
    assert "everything is up to date" in text and "to build" not in text
    tuned = status["specialists"]["veran-tools"]["metrics"]["tuned"]
    row = next(line for line in text.splitlines() if line.startswith("veran-tools") and " / " in line)
    assert f"{tuned['tool_accuracy']:.3f} / " in row
    assert "results/gguf/veran-tools.q8_0.gguf" in text


@pytest.mark.e2e
@pytest.mark.slow
def test_status_names_the_one_stale_specialist_with_snakemakes_reason(run, tmp_path):
    work = copy_workdir(run, tmp_path / "lr")
    config = yaml.safe_load((work / "config/config.yaml").read_text())
    config["specialists"]["veran-tools"]["train"] = {"lr": 1.0e-3}
    (work / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    status = status_json(work)
    veran, mesen = status["specialists"]["veran-tools"], status["specialists"]["mesen-runner"]
    adapter = veran["outputs"]["adapter"]
    assert adapter["stale"] and adapter["exists"] and adapter["reason_kinds"] == ["params_changed"]
    assert adapter["reason"].startswith("Params have changed since last execution")
    assert "'lr': 0.001" in adapter["reason"] and "'lr': 0.005" in adapter["reason"]
    entries = outputs(veran)
    for key in (*STALE_AFTER_ADAPTER, "gguf.f16", "gguf.q8_0"):
        assert entries[key]["stale"] and "upstream" in entries[key]["reason_kinds"], key
        assert "params_changed" not in entries[key]["reason_kinds"], key
    assert entries["eval_tuned"]["rebuilt_inputs"] == ["results/adapters/veran-tools"]
    assert entries["eval_base"]["stale"] is False  # a training setting does not touch the base's eval
    assert not any(e["stale"] for e in outputs(mesen).values())
    assert {e["rule"] for e in status["other_stale"]} == {"eval_summary", "report_tables", "parity_table"}
    text = snaketune("status", "--directory", str(work)).stdout
    assert any(line.split()[:3] == ["veran-tools", "train", "results/adapters/veran-tools"]
               and line.endswith("params changed") for line in text.splitlines())
    assert not any(line.split()[:1] == ["mesen-runner"] and "after" in line for line in text.splitlines())

    # status beside a running pipeline: it reads while the run holds the lock, and the run still succeeds
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "snaketune.cli", "run", "results/adapters/veran-tools",
                             "--cores", "2", "--directory", str(work)], env=ENV, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        locks = work / ".snakemake" / "locks"
        deadline = time.monotonic() + 300
        while not (locks.is_dir() and any(locks.iterdir())) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run took no lock in 5 minutes"
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert status_json(work)["locked"] is True
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "--resources gpu=1" in log.read_text()  # no GPU here: one offered, jobs run on the CPU
    after = status_json(work)
    entries = outputs(after["specialists"]["veran-tools"])
    assert after["locked"] is False
    assert entries["adapter"]["stale"] is False and entries["eval_tuned"]["stale"] is True
    assert entries["eval_tuned"]["reason_kinds"] == ["updated_input"]  # the adapter is newer than its eval
    trained = json.loads((work / "results/adapters/veran-tools/specialist_config.json").read_text())
    assert trained["train"]["lr"] == 1.0e-3


@pytest.mark.e2e
@pytest.mark.slow
def test_run_dry_run_plans_what_snakemake_plans(run, tmp_path):
    override = tmp_path / "lr.yaml"
    override.write_text(yaml.safe_dump({"defaults": {"train": {"lr": 2.0e-3}}}))  # merges; retrains all
    before = tree_state(run)
    ours = snaketune("run", "-n", "--configfile", override.name, "--directory", str(run), cwd=tmp_path)
    theirs = planned_jobs(run, "--configfile", str(override))
    assert cli.planned_counts(ours.stdout + ours.stderr) == theirs
    n = len(yaml.safe_load((run / "config/config.yaml").read_text())["specialists"])
    assert theirs["train"] == n and theirs["evaluate_tuned"] == n and "evaluate_base" not in theirs
    assert f"--configfile {override}" in ours.stderr  # relative to where the user was, absolute for Snakemake
    unchanged = snaketune("run", "-n", "--directory", str(run))
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr
    assert tree_state(run) == before


@pytest.mark.e2e
def test_status_before_any_run_says_everything_is_missing(tmp_path):
    work = make_workdir(tmp_path / "fresh", tiny_config())  # export off
    status = status_json(work)
    assert not (work / "results").exists() and not (work / "logs").exists()
    written = [p.relative_to(work).as_posix() for p in (work / ".snakemake").rglob("*") if p.is_file()]
    assert written == [".snakemake/iocache/latest.pkl"]  # Snakemake's empty directories, its dry-run cache
    assert status["up_to_date"] is False and status["jobs_pending"] > 0
    for spec in status["specialists"].values():
        out = spec["outputs"]
        assert out["merged"] is None and out["gguf"] == {} and out["modelfile"] is None  # export is off
        for key in ("adapter", "eval_tuned", "eval_base"):
            assert out[key]["exists"] is False and out[key]["stale"] is True, key
            assert out[key]["reason_kinds"][0] == "missing_output", key
        assert spec["metrics"] == {"tuned": None, "base": None} and spec["gguf_files"] == []
    assert {e["rule"] for e in status["other_stale"]} >= {"prepare_data", "tiny_base", "lock", "verify"}
    text = snaketune("status", "--directory", str(work)).stdout
    assert "veran-tools   missing  missing     missing    -       -" in text
