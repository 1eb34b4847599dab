"""The train step's launcher: ``train_adapter`` in this process, or as n torchrun processes, one per GPU.

``launch_training`` is what rule train calls. One process (the usual case) runs ``train_adapter`` in
the rule's own process. With ``resources.gpus: n > 1`` (or ``train.processes: n``,
which also forces n CPU processes for testing), or with a DeepSpeed config, it runs

    python -m torch.distributed.run --standalone --nproc-per-node n -m snaketune.launch ARGS.json

Each child (``main`` below) joins the process group (nccl on CUDA, gloo on CPU) and calls
``train_adapter`` with the same arguments; rank 0 alone resets the checkpoint directory and writes the
adapter and the timing JSON. The children's output goes to the rule's log, each line tagged with its
rank; a user error in a child ends the rule with that child's one-line message. accelerate's own CPU
multi-process launcher needs mpirun, which is why torchrun launches the children here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .devices import device_preference, resolve_device
from .errors import SnaketuneError, config_error
from .ranks import backend, barrier
from .training import train_adapter

__all__ = [
    "PACKAGE_PARENT", "process_count", "needs_launcher", "torchrun_command", "child_env",
    "per_process_threads", "launch_training", "main"
]

log = logging.getLogger("snaketune.launch")

# workflow/scripts: the children import snaketune from here
PACKAGE_PARENT = Path(__file__).resolve().parents[1]
ERROR_FILE = "error.rank{rank}.json"
MODULES_FILE = "modules.rank0.json"
LOG_FORMAT = "%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"


# --- how many processes ---------------------------------------------------------------------------

def process_count(settings: dict, devices, cuda: bool = True, *, config_path: str) -> int:
    """Processes for the train step: ``train.processes``, or (auto) one per GPU the job holds.

    ``devices``: the GPU ids the job holds (``rule_step`` yields them); ``cuda``: whether torch can use
    them. auto means one process on a CPU job, and where the cards are not usable (training falls
    back to the CPU then, with a warning).
    """
    devices = list(devices or []) if cuda else []
    wanted = settings["train"].get("processes", "auto")
    if wanted in (None, "auto"):
        return max(1, len(devices))
    n = int(wanted)
    if n < 1:
        raise config_error("train.processes", f"is {n}", fix="use auto or a whole number >= 1",
                           config_path=config_path)
    if devices and n > len(devices):
        raise config_error("train.processes", f"is {n} but the job holds {len(devices)} GPU(s) "
                           f"({','.join(map(str, devices))}); two processes cannot share a card",
                           fix=f"set processes to auto, or resources.gpus to {n}", config_path=config_path)
    return n


def needs_launcher(n: int, settings: dict) -> bool:
    """torchrun for more than one process, and for DeepSpeed (which needs its distributed env even alone)."""
    return n > 1 or bool(settings["train"].get("deepspeed"))


# --- the parent: launch the children --------------------------------------------------------------

def torchrun_command(n: int, args_path, python: str = sys.executable) -> list[str]:
    """The torchrun command line for n local processes running this module on ``args_path``."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(int(n)),
            "--max-restarts", "0", "-m", "snaketune.launch", str(args_path)]


def child_env(n: int, threads: int, environ=None) -> dict:
    """The children's environment: snaketune importable, the job's threads shared out among them."""
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = str(per_process_threads(threads, n))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are written, not when a child exits
    return env


def per_process_threads(threads: int, n: int) -> int:
    return max(1, int(threads) // max(1, int(n)))


def _jsonable_kwargs(kwargs: dict) -> dict:
    return json.loads(json.dumps(kwargs, default=str))  # Paths as strings; settings are plain JSON already


def _child_error(work: Path, n: int) -> SnaketuneError | None:
    """The lowest rank's user error, re-raised as the same one-line message."""
    for rank in range(n):
        path = work / ERROR_FILE.format(rank=rank)
        if path.is_file():
            fields = json.loads(path.read_text(encoding="utf-8"))
            return SnaketuneError(fields.get("path"), fields.get("problem", ""), line=fields.get("line"),
                                  field=fields.get("field"), fix=fields.get("fix"))
    return None


def loaded_modules() -> list[str]:
    """What this process imported that provenance looks at: snaketune modules and third-party packages."""
    return sorted(name for name in list(sys.modules)
                  if name.startswith("snaketune.") or ("." not in name and not name.startswith("_")
                                                       and name not in sys.stdlib_module_names))


def mirror_imports(names) -> None:
    """Import what rank 0 imported, so this process's provenance record names the same code and packages."""
    import importlib

    for name in names:
        if name not in sys.modules and name != "snaketune.launch":
            with contextlib.suppress(Exception):
                importlib.import_module(name)


def run_torchrun(n: int, kwargs: dict, *, python: str = sys.executable) -> dict:
    """Run ``train_adapter(**kwargs)`` as n torchrun processes; returns rank 0's train metrics.

    The children's output is copied line by line to this process's stdout (the rule's log).
    """
    threads = int(kwargs.get("threads", 1))
    with tempfile.TemporaryDirectory(prefix="snaketune-torchrun-") as tmp:
        work = Path(tmp)
        args_path = work / "train_adapter.json"
        args = {**_jsonable_kwargs(kwargs), "threads": per_process_threads(threads, n)}
        args_path.write_text(json.dumps({"kwargs": args, "work_dir": str(work)}, indent=1), encoding="utf-8")
        command = torchrun_command(n, args_path, python)
        log.info("training with %d processes (%d thread%s each): %s", n, args["threads"],
                 "" if args["threads"] == 1 else "s", " ".join(command))
        sys.stdout.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=child_env(n, threads), bufsize=1)
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
        except BaseException:
            proc.terminate()  # torchrun passes it on to the children
            raise
        finally:
            returncode = proc.wait()
        sys.stdout.flush()
        if returncode != 0:
            err = _child_error(work, n)
            if err is not None:
                raise err
            raise SnaketuneError("torchrun", f"training with {n} processes failed (exit code {returncode})",
                                 field="train.processes",
                                 fix="read the failing rank's traceback above in this log")
        modules = work / MODULES_FILE
        mirror_imports(json.loads(modules.read_text(encoding="utf-8")) if modules.is_file() else [])
    out_dir = Path(kwargs["out_dir"])
    metrics = json.loads((out_dir / "train_metrics.json").read_text(encoding="utf-8"))
    if kwargs.get("timing_path") and Path(kwargs["timing_path"]).is_file():
        metrics.update(json.loads(Path(kwargs["timing_path"]).read_text(encoding="utf-8")))
    return metrics


def _cuda_usable() -> bool:
    import torch  # after gpu_slot has set CUDA_VISIBLE_DEVICES: torch sees only the job's cards

    return torch.cuda.is_available()


def launch_training(devices=(), **kwargs) -> dict:
    """Rule train's step: ``train_adapter(**kwargs)`` here, or as n torchrun processes (module doc)."""
    n = process_count(kwargs["settings"], devices, cuda=bool(devices) and _cuda_usable(),
                      config_path=kwargs["config_path"])
    if not needs_launcher(n, kwargs["settings"]):
        return train_adapter(**kwargs)
    return run_torchrun(n, kwargs)


# --- the children ---------------------------------------------------------------------------------

def _init_process_group(kwargs: dict) -> tuple[int, int, str]:
    """Join torchrun's group on the device train_adapter will pick (CPU processes on a GPU box use gloo)."""
    import torch
    import torch.distributed as dist

    gpus = kwargs.get("gpus")
    device = resolve_device(kwargs["settings"].get("resources", {}).get("gpus", 0) if gpus is None else gpus,
                            device_preference(kwargs["settings"]), config_path=kwargs.get("config_path"))
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    name = backend(device)
    dist.init_process_group(backend=name)
    return dist.get_rank(), dist.get_world_size(), name


def main(argv=None) -> int:
    """A torchrun child: join the process group, then ``train_adapter`` with the parent's arguments."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT.format(rank=rank), stream=sys.stderr,
                        force=True)
    try:
        rank, world, name = _init_process_group(spec["kwargs"])
        log.info("distributed: world size %d, rank %d, backend %s, %d thread(s) per process",
                 world, rank, name, spec["kwargs"].get("threads", 1))
        if rank != 0:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story; others only warn
        train_adapter(**spec["kwargs"])
        barrier()
        if rank == 0:
            (Path(spec["work_dir"]) / MODULES_FILE).write_text(json.dumps(loaded_modules()), encoding="utf-8")
    except SnaketuneError as err:
        (Path(spec["work_dir"]) / ERROR_FILE.format(rank=rank)).write_text(json.dumps(
            {"path": err.path, "line": err.line, "field": err.field, "problem": err.problem, "fix": err.fix}))
        sys.stderr.write(f"ERROR: {err}\n")
        return 1
    finally:
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
