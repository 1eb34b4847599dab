"""Interruptions and concurrency: Ctrl-C during eval, a killed GGUF write, a second invocation on the same
directory, and GPU jobs queued by Snakemake's ``--resources gpu=1``.

The module builds one tiny run (demo data, tiny base, veran-tools' adapter) and each test works in a copy
of it, so the tests do not depend on their order. SIGKILL during training and the resume after it are
tested in test_train.py (test_pipeline_trains_reruns_nothing_retrains_one_and_resumes_after_sigkill).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline import REPO, copy_workdir, make_workdir, planned_jobs, snakemake, start_snakemake, tiny_config

pytestmark = pytest.mark.e2e

# Greedy decoding of 512 tokens, one example at a time: a couple of seconds of eval to interrupt.
EVAL = {"batch_size": 1, "max_new_tokens": 512}
ADAPTERS = ["results/adapters/mesen-runner", "results/adapters/veran-tools"]
TUNED = "results/eval/tuned/veran-tools.json"
TUNED_LOG = "logs/eval/tuned/veran-tools.log"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.M)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Demo data, the tiny base, veran-tools' adapter and its uninterrupted eval (built once; tests work
    in copies)."""
    work = make_workdir(tmp_path_factory.mktemp("reliability") / "trained",
                        tiny_config(eval_cfg=EVAL, train={"tools_rendered": "compact"}))
    snakemake(work, TUNED, "results/data/test.jsonl")
    # The eval rule renders the prompts' tools as training did (the rule's params once dropped the setting).
    assert json.loads((work / TUNED).read_text())["generation"]["tools_rendered"] == "compact"
    return work


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    """Poll until ``condition()`` holds while ``proc`` runs; fail saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.02)


def text_of(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def locks(work: Path) -> list:
    return sorted((work / ".snakemake" / "locks").glob("*"))


# ------------------------------------------------------------------ interruptions


@pytest.mark.parametrize("who", ["ctrl-c", "snakemake-only"])
def test_sigint_during_eval_then_rerun_gives_the_uninterrupted_bytes(trained, tmp_path, who):
    """SIGINT while the eval job generates: the run stops non-zero and unlocked, Snakemake trusts nothing
    the job left, and a plain rerun writes the same eval JSON (and generations) as a run never interrupted.

    ``ctrl-c`` signals Snakemake's process group, as a terminal does (the job itself is interrupted);
    ``snakemake-only`` signals the Snakemake process alone (it stops scheduling and lets the job end).
    """
    work = copy_workdir(trained, tmp_path / "w")
    clean = {name: (work / name).read_bytes() for name in (TUNED,
                                                           TUNED.replace(".json", ".generations.jsonl"))}

    log = work / TUNED_LOG
    log.unlink()
    proc = start_snakemake(work, TUNED, "--forcerun", "evaluate_tuned", output=tmp_path / "interrupted.out")
    wait_for(lambda: "generate:" in text_of(log), proc, "generation in the eval log")
    if who == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) != 0
    output = text_of(tmp_path / "interrupted.out")
    assert "Terminating processes on user request" in output, output[-3000:]
    if who == "ctrl-c":  # the job died mid-run and Snakemake removed what it had written
        assert "KeyboardInterrupt" in output and "Error in rule evaluate_tuned" in output, output[-3000:]
        assert not (work / TUNED).exists(), "the interrupted job left its eval JSON"
    assert not locks(work), "the interrupted run left its lock"
    assert planned_jobs(work, TUNED) == {"evaluate_tuned": 1}, "what the interrupted job left is trusted"

    snakemake(work, TUNED)
    for name, data in clean.items():
        assert (work / name).read_bytes() == data, f"{name} differs from the uninterrupted run's"


def test_a_killed_gguf_write_leaves_no_gguf(trained, tmp_path):
    """SIGKILL in the middle of writing a GGUF (no handler can run): no file at the output path nor any
    other *.gguf beside it, and the next write of that file leaves exactly that one file.

    test_export.py checks the same for an exception (KeyboardInterrupt) inside the writer.
    """
    base = trained / "results/base/tiny"
    out = tmp_path / "gguf" / "tiny.f16.gguf"
    dies_midway = textwrap.dedent("""
        import os, signal, sys
        from snaketune import gguf_export

        real, calls = gguf_export.encode, []

        def encode(data, qtype):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(data, qtype)

        gguf_export.encode = encode
        gguf_export.write_model_gguf(sys.argv[1], sys.argv[2], "f16")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "workflow" / "scripts"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", dies_midway, str(base), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not out.exists()
    assert not list(out.parent.glob("*.gguf")), sorted(p.name for p in out.parent.iterdir())

    from snaketune.gguf_export import write_model_gguf

    write_model_gguf(base, out, "f16")
    assert out.read_bytes()[:4] == b"GGUF"
    left = sorted(p.relative_to(out.parent).as_posix() for p in out.parent.rglob("*"))
    assert left == [out.name], f"the killed write left {left}"


# ------------------------------------------------------------------ concurrency


def test_second_invocation_on_the_same_directory_is_refused_while_the_first_runs(trained, tmp_path):
    """Two runs of the same command in one directory: the second stops on Snakemake's lock with a
    message saying so, the first is untouched and finishes, and its lock is gone afterwards."""
    work = copy_workdir(trained, tmp_path / "w")
    first = start_snakemake(work, ADAPTERS[0], output=tmp_path / "first.out")
    wait_for(lambda: locks(work) and (work / "logs/train/mesen-runner.log").exists(), first,
             "lock and running train job")

    second = snakemake(work, ADAPTERS[0], check=False, timeout=300)
    output = second.stdout + second.stderr
    assert first.poll() is None, "the first run ended before the second was refused: the test proves nothing"
    assert second.returncode != 0
    assert "Directory cannot be locked" in output and "--unlock" in output, output[-3000:]

    assert first.wait(timeout=600) == 0, text_of(tmp_path / "first.out")[-3000:]
    assert (work / ADAPTERS[0] / "adapter_model.safetensors").is_file()
    assert not locks(work)


def job_interval(log: Path) -> tuple[datetime.datetime, datetime.datetime]:
    """First and last timestamped line a job wrote to its log (the log starts empty for each job)."""
    stamps = [datetime.datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in LOG_TIME.findall(text_of(log))]
    assert len(stamps) >= 2, f"{log} has fewer than two timestamped lines:\n{text_of(log)[-2000:]}"
    return min(stamps), max(stamps)


def test_two_gpu_specialists_under_gpu_1_train_one_after_the_other(trained, tmp_path):
    """Both specialists ask for one GPU each (resources.gpus: 1) and the run allows --resources gpu=1 on
    2 cores: Snakemake must run the two train jobs one after the other, though cores would allow both.

    This machine has no GPU: the jobs train on the CPU (with a warning), and SNAKETUNE_GPU_COUNT=0 keeps
    snaketune's own GPU slots out of it, so only Snakemake's scheduling is tested, not a GPU.
    """
    work = copy_workdir(trained, tmp_path / "w")
    make_workdir(work, tiny_config(resources={"gpus": 1}, eval_cfg=EVAL))
    for adapter in ADAPTERS:
        (work / f"logs/train/{Path(adapter).name}.log").unlink(missing_ok=True)
    proc = snakemake(work, *ADAPTERS, env={"SNAKETUNE_GPU_COUNT": "0"})

    # Snakemake's own record: each train job finishes before the next one starts
    events = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip() in ("rule train:", "localrule train:"):
            events.append("start")
        elif re.search(r"Finished jobid: \d+ \(Rule: train\)", line):
            events.append("finish")
    assert events == ["start", "finish", "start", "finish"], events

    # the jobs' own logs (millisecond stamps): the intervals do not overlap
    intervals = []
    for adapter in ADAPTERS:
        name = Path(adapter).name
        log = work / f"logs/train/{name}.log"
        assert "asks for 1 GPU(s) but this machine has none; running without" in text_of(log)
        assert (work / adapter / "adapter_model.safetensors").is_file()
        assert json.loads((work / f"results/provenance/train/{name}.json").read_text())["gpus"] == 1
        intervals.append(job_interval(log))
    (a_start, a_end), (b_start, b_end) = sorted(intervals)
    assert a_end < b_start, f"train jobs overlap: {a_start}..{a_end} and {b_start}..{b_end}"
