"""Cluster and GPUs: the local GPU slot allocator, and the pipeline on a real single-node SLURM."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from snaketune.errors import SnaketuneError
from snaketune.gpu_slots import VISIBLE, gpu_slot

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ GPU slots on one machine


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    """A machine with 2 fake GPUs whose slot locks live in tmp_path (and not under SLURM)."""
    monkeypatch.setenv("SNAKETUNE_GPU_COUNT", "2")
    monkeypatch.setenv("SNAKETUNE_GPU_SLOTS_DIR", str(tmp_path / "slots"))
    for var in ("SLURM_JOB_ID", VISIBLE):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "slots"


HOLDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from snaketune.gpu_slots import gpu_slot
    out, release = Path(sys.argv[1]), Path(sys.argv[2])
    with gpu_slot(1, poll_seconds=0.05):
        out.write_text(os.environ["CUDA_VISIBLE_DEVICES"])
        while not release.exists():
            time.sleep(0.02)
""")


def _holder(tmp_path, name):
    """A process that takes one GPU slot, reports its device id in tmp_path/name, holds until told."""
    out, release = tmp_path / f"{name}.id", tmp_path / f"{name}.release"
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow" / "scripts"))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(release)], env=env)
    return proc, out, release


def _wait_for(path, proc=None, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert proc is None or proc.poll() is None, f"holder exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)
    return path.read_text()


def test_concurrent_jobs_get_different_devices_and_a_third_waits(fake_gpus, tmp_path):
    a, a_id, a_release = _holder(tmp_path, "a")
    b, b_id, b_release = _holder(tmp_path, "b")
    try:
        ids = {_wait_for(a_id, a), _wait_for(b_id, b)}
        assert ids == {"0", "1"}
        c, c_id, c_release = _holder(tmp_path, "c")
        time.sleep(1.0)
        assert not c_id.exists(), "a third job got a GPU while both were held"
        a_release.touch()
        assert a.wait(timeout=30) == 0
        assert _wait_for(c_id, c) == a_id.read_text()  # the freed card, and only that one
        c_release.touch()
        assert c.wait(timeout=30) == 0
    finally:
        for path in (a_release, b_release):
            path.touch()
        b.wait(timeout=30)


def test_sigkilled_holder_frees_its_slot(fake_gpus, tmp_path, monkeypatch):
    monkeypatch.setenv("SNAKETUNE_GPU_COUNT", "1")
    a, a_id, a_release = _holder(tmp_path, "a")
    _wait_for(a_id, a)
    b, b_id, b_release = _holder(tmp_path, "b")
    time.sleep(0.5)
    assert not b_id.exists()
    a.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel lets go of the lock
    a.wait(timeout=30)
    assert _wait_for(b_id, b) == "0"
    b_release.touch()
    assert b.wait(timeout=30) == 0


def test_failing_job_releases_its_slot_and_restores_the_environment(fake_gpus):
    with pytest.raises(RuntimeError):
        with gpu_slot(2) as held:
            assert sorted(held) == ["0", "1"] and os.environ[VISIBLE] in ("0,1", "1,0")
            raise RuntimeError("training blew up")
    assert VISIBLE not in os.environ
    with gpu_slot(2, timeout=1) as held:  # both slots free again
        assert sorted(held) == ["0", "1"]


def test_zero_gpus_sets_nothing(fake_gpus):
    with gpu_slot(0) as held:
        assert held == []
        assert VISIBLE not in os.environ
    assert not fake_gpus.exists()  # not even a lock directory


def test_under_slurm_the_allocator_keeps_hands_off(fake_gpus, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv(VISIBLE, "3")
    with gpu_slot(1) as held:
        assert held == ["3"]
        assert os.environ[VISIBLE] == "3"
    assert os.environ[VISIBLE] == "3"
    assert not fake_gpus.exists()


def test_more_gpus_than_the_machine_has_is_a_user_error(fake_gpus, monkeypatch):
    with pytest.raises(SnaketuneError, match="asks for 3 GPUs but this machine has 2"):
        with gpu_slot(3):
            pass
    monkeypatch.setenv("SNAKETUNE_GPU_COUNT", "0")
    with gpu_slot(1) as held:  # a CPU-only machine: the job runs without a GPU
        assert held == [] and VISIBLE not in os.environ


def test_a_user_restricted_device_list_is_the_pool(fake_gpus, tmp_path, monkeypatch):
    monkeypatch.delenv("SNAKETUNE_GPU_COUNT")
    monkeypatch.setenv(VISIBLE, "2,5")
    a, a_id, a_release = _holder(tmp_path, "a")
    try:
        first = _wait_for(a_id, a)
        with gpu_slot(1, timeout=10) as second:
            assert sorted([first, *second]) == ["2", "5"]
    finally:
        a_release.touch()
        a.wait(timeout=30)
    assert os.environ[VISIBLE] == "2,5"


SLOT_SNAKEFILE = """
rule all:
    input: expand("out/{i}.txt", i=range(2))

rule gpu_job:
    output: "out/{i}.txt"
    resources: gpu=1
    script: "probe.py"
"""

SLOT_PROBE = """
import time
from pathlib import Path
from snaketune.gpu_slots import gpu_slot

with gpu_slot(snakemake.resources.get("gpu", 0)) as held:
    Path(snakemake.output[0] + ".started").touch()
    # stay until the other job has started too, so the two really overlap
    deadline = time.monotonic() + 60
    while len(list(Path("out").glob("*.started"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(snakemake.output[0]).write_text(",".join(held))
"""


@pytest.mark.e2e
def test_two_concurrent_snakemake_gpu_jobs_get_different_devices(fake_gpus, tmp_path):
    work = tmp_path / "wf"
    work.mkdir()
    (work / "Snakefile").write_text(SLOT_SNAKEFILE)
    (work / "probe.py").write_text(SLOT_PROBE)
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow" / "scripts"))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = [(work / f"out/{i}.txt").read_text() for i in range(2)]
    assert sorted(ids) == ["0", "1"]


# ------------------------------------------------------------------ a real single-node SLURM

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
SLURM_ETC = Path("/etc/slurm")  # the jobstep plugin drops SLURM_CONF, so srun in a job reads /etc/slurm
MARK = "# written by tests/test_cluster.py for a throwaway single-node cluster"


def _which(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need_slurm():
    """Skip where a real cluster can't be started; on CI a missing SLURM is a failure."""
    missing = [b for b in SLURM_BINARIES if not _which(b)]
    reason = None
    if os.geteuid() != 0:
        reason = "starting slurmctld/slurmd/munged needs root"
    elif missing:
        reason = (f"SLURM binaries missing: {', '.join(missing)} "
                  "(tests/setup_system.sh installs slurm-wlm, munge)")
    if reason and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the SLURM test: {reason}")
    if reason:
        pytest.skip(reason)


class Cluster:
    """munged + slurmctld + slurmd on localhost, one node with one GPU GRES; every daemon by PID."""

    def __init__(self, base: Path):
        self.base = base
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []
        self.saved_etc: dict[Path, bytes | None] = {}

    def _daemon(self, name, argv):
        log = open(self.base / f"{name}.out", "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def _write_etc(self, name, text):
        path = SLURM_ETC / name
        if path not in self.saved_etc:  # put back what was there, unless a killed run of ours left it
            old = path.read_bytes() if path.exists() else None
            self.saved_etc[path] = None if old and MARK.encode() in old else old
        SLURM_ETC.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def start(self):
        base = self.base
        os.chmod(base, 0o755)
        # munged: key dir 700, socket dir 755 (munged refuses a 700 socket dir: clients must reach it)
        keydir, sockdir = base / "munge-key", base / "munge"
        keydir.mkdir(mode=0o700)
        sockdir.mkdir(mode=0o755)
        os.chmod(sockdir, 0o755)
        key = keydir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.socket = sockdir / "munge.socket"
        self._daemon("munged", [_which("munged"), "--foreground", f"--key-file={key}",
                                f"--socket={self.socket}", f"--pid-file={sockdir / 'munged.pid'}",
                                f"--log-file={base / 'munged.log'}", f"--seed-file={keydir / 'seed'}"])
        self._wait(lambda: self.socket.exists(), "munged socket")

        # a GPU GRES needs a character device behind File=, or slurmd drops it and drains the node
        gpu = base / "fake-gpu0"
        os.mknod(gpu, 0o666 | 0o020000, os.makedev(1, 3))
        for d in ("ctld", "d"):
            (base / "spool" / d).mkdir(parents=True)
        self.ctld_port, self.d_port = _free_port(), _free_port()
        self._write_etc("slurm.conf", textwrap.dedent(f"""\
            {MARK}
            ClusterName=snaketune-test
            SlurmctldHost={self.node}(127.0.0.1)
            SlurmctldPort={self.ctld_port}
            SlurmdPort={self.d_port}
            SlurmUser=root
            SlurmdUser=root
            AuthType=auth/munge
            AuthInfo=socket={self.socket}
            CredType=cred/munge
            StateSaveLocation={base}/spool/ctld
            SlurmdSpoolDir={base}/spool/d
            SlurmctldPidFile={base}/slurmctld.pid
            SlurmdPidFile={base}/slurmd.pid
            SlurmctldLogFile={base}/slurmctld.log
            SlurmdLogFile={base}/slurmd.log
            ProctrackType=proctrack/linuxproc
            TaskPlugin=task/none
            MpiDefault=none
            SelectType=select/cons_tres
            SelectTypeParameters=CR_Core
            AccountingStorageType=accounting_storage/none
            JobAcctGatherType=jobacct_gather/none
            JobCompType=jobcomp/none
            # finished jobs stay visible to squeue/scontrol for the test's assertions
            MinJobAge=3600
            ReturnToService=2
            SchedulerParameters=sched_interval=1
            GresTypes=gpu
            # the profile asks for real-cluster sizes; believe the node config, not the hardware
            SlurmdParameters=config_overrides
            NodeName={self.node} NodeAddr=127.0.0.1 CPUs=32 RealMemory=262144 Gres=gpu:1 State=UNKNOWN
            PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
            """))
        self._write_etc("gres.conf", f"{MARK}\nNodeName={self.node} Name=gpu File={gpu}\n")
        self._daemon("slurmctld", [_which("slurmctld"), "-D", "-c", "-i"])
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld")
        self._daemon("slurmd", [_which("slurmd"), "-D", "-N", self.node])
        self._wait(self._node_idle, "an idle node")

    def _node_idle(self):
        return self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.strip() == "idle"

    def _wait(self, ready, what, seconds=60):
        deadline = time.monotonic() + seconds
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"exited: {', '.join(dead)}" if dead else "timeout"
                nodes = (self.run("sinfo", "-N", "-R", "-o", "%N %t %E", check=False).stdout
                         if self.procs[1:] else "")
                raise AssertionError(f"SLURM test cluster: no {what} ({why})\n{nodes}\n{self.logs()}")
            time.sleep(0.2)

    def run(self, *argv, check=True, timeout=60):
        proc = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(argv)} failed: {proc.stderr}")
        return proc

    def logs(self, tail=40):
        parts = []
        for name in ("munged.out", "munged.log", "slurmctld.log", "slurmd.log",
                     "slurmctld.out", "slurmd.out"):
            path = self.base / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld knows (finished ones too, for MinJobAge): id -> scontrol's fields."""
        out = self.run("scontrol", "-o", "-d", "show", "job", check=False).stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w[\w:/]*)=(\S*)", line))
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields
        return jobs

    def stop(self):
        if len(self.procs) > 1 and self.procs[1].poll() is None:  # slurmctld up: end leftover jobs first
            with contextlib.suppress(subprocess.SubprocessError):
                self.run("scancel", "--full", "--user", "root", check=False, timeout=10)
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        for path, old in self.saved_etc.items():
            if old is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(old)


@pytest.fixture(scope="module")
def slurm_cluster():
    _need_slurm()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="snaketune-slurm-")))  # short: munge socket path
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.base, ignore_errors=True)


SLURM_TARGET = "results/adapters/runner"
SLURM_CONFIG = {
    "data": {"demo": {"enabled": True, "rows": 120, "seed": 7},
             "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 1}},
    "defaults": {"train": {"max_steps": 2, "batch_size": 2, "grad_accum": 1, "tools_rendered": "called"}},
    # one GPU-tagged job: train asks SLURM for a GPU (torch here is a CPU build: it trains on the CPU)
    "specialists": {"runner": {"focus_tools": ["mesen2.run"], "resources": {"gpus": 1}}},
    "export": {"enabled": False},
}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


@pytest.mark.e2e
@pytest.mark.slow
def test_pipeline_runs_through_slurm_and_gpu_jobs_get_the_gres(slurm_cluster, tmp_path):
    from pipeline import make_workdir, planned_jobs

    work = make_workdir(tmp_path / "w", SLURM_CONFIG)
    planned = planned_jobs(work, SLURM_TARGET)
    assert planned.get("train") == 1, planned

    started = time.monotonic()
    cmd = [sys.executable, "-m", "snakemake", SLURM_TARGET,
           "--executor", "slurm", "--workflow-profile", "profiles/slurm",
           # no slurmdbd here: sacct would never report the jobs
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
           "--slurm-no-account", "--slurm-keep-successful-logs"]
    env = dict(os.environ, SNAKETUNE_GPU_SLOTS_DIR=str(tmp_path / "slots"))
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=600)  # a hard limit: a lost job must not hang CI
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"snakemake on SLURM timed out after 600 s:\n{output[-6000:]}\n{slurm_cluster.logs()}")
    elapsed = time.monotonic() - started
    print(f"pipeline on SLURM: {sum(planned.values())} jobs in {elapsed:.0f} s")
    assert proc.returncode == 0, f"{output[-8000:]}\n{slurm_cluster.logs()}"
    assert (work / SLURM_TARGET / "adapter_config.json").is_file()

    # every job Snakemake ran was a SLURM job, and SLURM ran each to completion
    submitted = {slurm_id for _, slurm_id in SUBMITTED.findall(output)}
    assert len(submitted) == sum(planned.values()), output[-4000:]
    jobs = slurm_cluster.jobs()
    by_rule: dict[str, list[dict]] = {}
    for slurm_id in submitted:
        job = jobs[slurm_id]
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
        rule = re.match(r"rule_([a-z_]+?)(?:_wildcards_.*)?$", job["Comment"]).group(1)
        by_rule.setdefault(rule, []).append(job)
    assert {rule: len(js) for rule, js in by_rule.items()} == planned

    # the GPU-tagged job got the GRES and saw it: SLURM's record, and the job's own log
    (train,) = by_rule["train"]
    assert "gpu:1" in train.get("TresPerJob", "") + train.get("TresPerNode", ""), train
    # and profiles/slurm's set-resources reached sbatch: runtime 720 min, 8 CPUs per GPU, config's mem_mb
    assert (train["TimeLimit"], train["NumCPUs"], train["MinMemoryNode"]) == ("12:00:00", "8", "4000M"), train
    assert by_rule["demo_dataset"][0]["TimeLimit"] == "00:10:00"
    assert re.search(rf"GPU slot: SLURM job {train['JobId']}, CUDA_VISIBLE_DEVICES=0\b",
                     (work / "logs/train/runner.log").read_text()), "train did not see SLURM's GPU"
    for rule, js in by_rule.items():
        if rule != "train":
            assert all("gpu" not in j.get("TresPerJob", "") + j.get("TresPerNode", "") for j in js), rule


# ------------------------------------------------------------------ per-rule conda envs
# `--sdm conda` builds one env per env file named by a rule (on a login node with
# `--conda-create-envs-only` for offline compute nodes); conda itself is not installable here, so
# this checks what it would be given: every rule that runs code names an env file that exists.


def test_every_rule_names_a_conda_env_file_from_envs(tmp_path):
    import yaml
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, Quietness, ResourceSettings

    from pipeline import make_workdir

    work = make_workdir(tmp_path / "w", yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=work / "Snakefile",
                                workdir=work)._workflow
        rules = {rule.name: rule for rule in workflow.rules if not rule.norun}
        assert {"prepare_data", "train", "evaluate_tuned", "merge"} <= set(rules)
        envs_dir = (REPO / "envs").resolve()
        for name, rule in rules.items():
            assert rule.conda_env, f"rule {name} names no conda env (add conda: \"../../envs/<kind>.yaml\")"
            env_file = (Path(rule.snakefile).parent / str(rule.conda_env)).resolve()
            assert env_file.parent == envs_dir and env_file.is_file(), f"rule {name}: {rule.conda_env}"
            assert yaml.safe_load(env_file.read_text())["dependencies"], env_file

