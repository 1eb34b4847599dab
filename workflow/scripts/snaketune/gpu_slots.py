"""GPU slots on one machine: each GPU-tagged local job claims its own device ids.

Snakemake counts ``--resources gpu=N`` but never says *which* card a job gets, so two local GPU jobs
can land on device 0. A job wraps its work in ``gpu_slot(n)``: it takes an exclusive ``flock`` on
one lock file per device id, sets ``CUDA_VISIBLE_DEVICES`` to the ids it holds, and lets go when the
block ends. The kernel drops an flock when its holder dies, so a failed or SIGKILLed job frees its
slot without any cleanup. Under SLURM the GRES plugin has already chosen the devices: hands off.

Environment:
  SNAKETUNE_GPU_SLOTS_DIR  where the lock files live (default: <tmpdir>/snaketune-gpu-slots, one
                           per machine, so two checkouts on one workstation share it)
  SNAKETUNE_GPU_COUNT      device count to share out, instead of asking nvidia-smi (tests; or to
                           keep the last cards free for something else)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import SnaketuneError, config_error

__all__ = ["DIR_ENV", "COUNT_ENV", "VISIBLE", "gpu_slot"]

log = logging.getLogger(__name__)

DIR_ENV = "SNAKETUNE_GPU_SLOTS_DIR"
COUNT_ENV = "SNAKETUNE_GPU_COUNT"
VISIBLE = "CUDA_VISIBLE_DEVICES"


def slots_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / "snaketune-gpu-slots")


def device_count() -> int:
    """GPUs on this machine: $SNAKETUNE_GPU_COUNT, else nvidia-smi, else /dev/nvidiaN files.

    Not torch.cuda.device_count(): torch caches that answer, so asking before
    CUDA_VISIBLE_DEVICES is set would leave the job's own torch seeing every card.
    """
    override = os.environ.get(COUNT_ENV, "").strip()
    if override:
        if not override.isdigit():
            raise SnaketuneError("environment", f"{COUNT_ENV}={override!r} is not a device count",
                                 fix="set it to a whole number such as 2, or unset it")
        return int(override)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            return sum(1 for line in out.splitlines() if line.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return sum(1 for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name))


def _device_pool() -> list[str]:
    """Device ids this machine shares out: the ids the user already allowed, or 0..count-1."""
    if VISIBLE in os.environ and not os.environ.get(COUNT_ENV):  # "" hides every card
        return [d.strip() for d in os.environ[VISIBLE].split(",") if d.strip()]
    return [str(i) for i in range(device_count())]


def _open_lock(directory: Path, device: str) -> int:
    path = directory / f"gpu{device}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: flock works on a read-only descriptor too
        return os.open(path, os.O_RDONLY)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)
    return fd


def _try_claim(directory: Path, pool: list[str], n: int) -> dict[str, int] | None:
    """Lock n free devices of pool (all or nothing): {device id: lock fd}, or None."""
    held: dict[str, int] = {}
    for device in pool:
        fd = _open_lock(directory, device)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            continue
        held[device] = fd
        if len(held) == n:
            return held
    for fd in held.values():
        os.close(fd)
    return None


def _note_holder(fd: int, device: str) -> None:
    """Who holds the slot, for a person looking at the lock directory (best effort)."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} device {device} since {time.ctime()}\n".encode(), 0)


def _warn_if_cuda_started() -> None:
    """CUDA reads CUDA_VISIBLE_DEVICES once, when it starts: a slot taken later changes nothing."""
    torch = sys.modules.get("torch")
    with contextlib.suppress(Exception):
        if torch is not None and torch.cuda.is_initialized():
            log.warning("GPU slot: CUDA was started before the slot was taken; this job still sees "
                        "every card (enter gpu_slot before the first CUDA call)")


@contextlib.contextmanager
def gpu_slot(n, *, directory=None, poll_seconds: float = 0.5, timeout: float | None = None,
             config_path: str | None = None):
    """Hold ``n`` GPUs of this machine for the block; yields their ids (a list of strings).

    n <= 0: nothing is claimed and nothing set. Under SLURM (SLURM_JOB_ID set): the ids SLURM gave
    the job are yielded untouched. No GPU on the machine: a warning, and the job runs without one.
    All cards busy: waits (``timeout`` seconds at most, forever by default) until enough are free.
    More GPUs than the machine has: an error about ``resources.gpus`` in the config file ``config_path``.
    """
    n = int(n or 0)
    if n <= 0:
        yield []
        return
    if os.environ.get("SLURM_JOB_ID"):
        given = [d for d in os.environ.get(VISIBLE, "").split(",") if d.strip()]
        if given:
            log.info("GPU slot: SLURM job %s, %s=%s (set by SLURM's GRES)",
                     os.environ["SLURM_JOB_ID"], VISIBLE, ",".join(given))
        else:
            log.warning("GPU slot: SLURM job %s asks for %d GPU(s) but SLURM set no %s; "
                        "request them with the gpu resource (profiles/slurm)", os.environ["SLURM_JOB_ID"], n,
                        VISIBLE)
        yield given
        return

    pool = _device_pool()
    if not pool:
        log.warning("GPU slot: the job asks for %d GPU(s) but this machine has none; running without", n)
        yield []
        return
    if n > len(pool):
        raise config_error("resources.gpus", f"the job asks for {n} GPUs but this machine has {len(pool)} "
                           f"({','.join(pool)})", fix=f"set resources.gpus to at most {len(pool)}",
                           config_path=config_path)

    shared = directory is None and not os.environ.get(DIR_ENV)
    directory = Path(directory) if directory else slots_dir()
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        if shared:  # the machine-wide default: every user's jobs take slots there
            with contextlib.suppress(OSError):
                directory.chmod(0o1777)
    # Start at a random device so jobs that start together try different cards first.
    start = random.randrange(len(pool))
    order = pool[start:] + pool[:start]
    deadline = None if timeout is None else time.monotonic() + timeout
    waited = False
    while (held := _try_claim(directory, order, n)) is None:
        if deadline is not None and time.monotonic() > deadline:
            raise SnaketuneError(directory, f"no {n} free GPU slot(s) of {len(pool)} after {timeout:.0f} s",
                                 fix="lower --resources gpu=N to the number of cards, or wait for other jobs")
        if not waited:
            log.info("GPU slot: all %d device(s) busy; waiting for %d to come free", len(pool), n)
            waited = True
        time.sleep(poll_seconds * (0.5 + random.random()))

    devices = sorted(held, key=pool.index)
    _warn_if_cuda_started()
    previous = os.environ.get(VISIBLE)
    os.environ[VISIBLE] = ",".join(devices)
    for device, fd in held.items():
        _note_holder(fd, device)
    log.info("GPU slot: %s=%s (locks under %s)", VISIBLE, os.environ[VISIBLE], directory)
    try:
        yield devices
    finally:
        if previous is None:
            os.environ.pop(VISIBLE, None)
        else:
            os.environ[VISIBLE] = previous
        for fd in held.values():
            os.close(fd)  # closing the last descriptor drops the flock
