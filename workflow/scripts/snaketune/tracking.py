"""Experiment tracking while the train step runs: TensorBoard, MLflow and W&B, as ``train.report_to`` asks.

Each logging step of the trainer goes out at once: TensorBoard event files under
``results/tracking/tensorboard/{specialist}/{run}/`` (``tensorboard --logdir results/tracking/tensorboard``
shows a run while it trains), an MLflow run (params, metrics per step, the validation loss, the adapter's
provenance hash, and later the tuned eval's metrics) in ``sqlite:///results/tracking/mlflow.db`` or
``MLFLOW_TRACKING_URI``, a W&B run where wandb is installed (``WANDB_MODE=offline`` works).

Tracking observes a run and is no input of any result: it writes outside the adapter directory (event
files hold wall times; two runs never write the same bytes), ``report_to`` is left out of the train
step's fingerprint, its params and ``specialist_config.json``, so the adapter's bytes are the same
with tracking on or off and turning tracking on reruns nothing. ``results/tracking/`` is therefore a
side output of rules train and evaluate_tuned, not a declared one: Snakemake would delete a declared
output before each rerun (the history tracking keeps is the point), and every train job shares one
MLflow store.

A run's name is ``{specialist}-{fingerprint[:12]}``: the same inputs and settings (as when a killed run
resumes from its checkpoint) continue the same TensorBoard curve and the same unfinished MLflow run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

from .errors import SnaketuneError, config_error

__all__ = [
    "REPORTERS", "TRACKING_DIR", "TRACKING_KEYS", "report_targets", "tracking_settings", "without_tracking",
    "check_tracking", "run_name", "tensorboard_dir", "mlflow_uri", "mlflow_experiment", "Tracker",
    "log_metrics", "live_callbacks", "start_tracking", "find_mlflow_run", "eval_metrics", "log_eval"
]

log = logging.getLogger("snaketune.tracking")

REPORTERS = ("tensorboard", "mlflow", "wandb")
DEFAULT_REPORT_TO = ("tensorboard",)
TRACKING_DIR = "results/tracking"
# Train settings that observe a run and never change it: not part of what an adapter is made from.
TRACKING_KEYS = ("report_to",)
EXPERIMENT = "snaketune"
# The module each reporter imports, and how to get it.
_MODULES = {"tensorboard": ("tensorboard", "pip install tensorboard (envs/train.yaml pins it)"),
            "mlflow": ("mlflow", "pip install mlflow-skinny alembic (envs/train.yaml pins them)"),
            "wandb": ("wandb", "pip install wandb, then `wandb login` or export WANDB_MODE=offline")}
TAG = "snaketune."  # prefix of the MLflow tags snaketune sets


# --- settings -------------------------------------------------------------------------------------

def report_targets(value, *, config_path: str | None = None) -> list[str]:
    """``train.report_to`` (a name or a list of names) as a list of reporters; ``none`` is the empty list."""
    names = [value] if isinstance(value, str) else list(value or [])
    unknown = [n for n in names if n not in (*REPORTERS, "none")]
    if unknown:
        raise config_error("train.report_to", f"{unknown[0]!r} is not a reporter",
                           fix=f"use {', '.join(REPORTERS)} or none", config_path=config_path)
    if "none" in names and len(names) > 1:
        raise config_error("train.report_to", f"{names} names none beside reporters",
                           fix="use none alone, or leave it out", config_path=config_path)
    return list(dict.fromkeys(n for n in names if n != "none"))


def tracking_settings(config: dict, name: str, *, config_path: str | None = None) -> dict:
    """What the train and tuned-eval steps of specialist ``name`` report, and where (``{"report_to",
    "dir"}``). Read from the config by the entry scripts, never a rule param: changing it reruns nothing."""
    from .config import specialist_settings

    train = specialist_settings(config, name)["train"]
    return {"report_to": report_targets(train.get("report_to", list(DEFAULT_REPORT_TO)),
                                        config_path=config_path),
            "dir": TRACKING_DIR}


def without_tracking(settings: dict) -> dict:
    """A specialist's settings without the tracking keys (what its params, fingerprint and
    specialist_config.json hold)."""
    train = {k: v for k, v in settings.get("train", {}).items() if k not in TRACKING_KEYS}
    return {**settings, "train": train}


def check_tracking(tracking: dict | None, *, config_path: str | None) -> list[str]:
    """The reporters asked for, each importable; a clear error naming the one that is not installed."""
    report_to = report_targets((tracking or {}).get("report_to", []), config_path=config_path)
    for name in report_to:
        module, install = _MODULES[name]
        if importlib.util.find_spec(module) is None:
            raise config_error("train.report_to", f"asks for {name} but {module} is not installed",
                               fix=f"{install}; or drop {name} from report_to", config_path=config_path)
    return report_to


def run_name(specialist: str, fingerprint: str) -> str:
    return f"{specialist}-{fingerprint[:12]}"


def tensorboard_dir(tracking_dir, specialist: str, fingerprint: str) -> Path:
    return Path(tracking_dir) / "tensorboard" / specialist / fingerprint[:12]


def mlflow_uri(tracking_dir) -> str:
    """``MLFLOW_TRACKING_URI``, else the SQLite store in the tracking directory (an absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        "sqlite:///" + (Path(tracking_dir) / "mlflow.db").resolve().as_posix()


def _default_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


@contextlib.contextmanager
def _store_lock(tracking_dir):
    """One process at a time creates the SQLite store's tables and the experiment (parallel train jobs)."""
    if not _default_store():
        yield
        return
    import fcntl

    Path(tracking_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(tracking_dir) / ".mlflow.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mlflow_experiment(client, tracking_dir) -> str:
    """The id of ``MLFLOW_EXPERIMENT_NAME`` (default ``snaketune``), created if absent; with the default
    store its artifacts go beside it (MLflow's own default is ./mlruns in the working directory)."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (Path(tracking_dir) / "mlflow-artifacts").resolve().as_uri() if _default_store() else None
    return client.create_experiment(name, artifact_location=location)


def _mlflow_client(tracking_dir):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri(tracking_dir))


def _flat_params(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key in sorted(value):
            _flat_params(f"{prefix}.{key}" if prefix else str(key), value[key], out)
    else:
        out[prefix] = value if isinstance(value, str) else json.dumps(value)
    return out


def _numbers(logs: dict) -> dict:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# --- the callbacks ----------------------------------------------------------------------------------

def _tensorboard_callback(logging_dir: Path):
    """transformers' TensorBoard writer (it flushes after every log), writing into ``logging_dir``."""
    from transformers.integrations import TensorBoardCallback

    class LiveTensorBoard(TensorBoardCallback):
        def __init__(self):
            super().__init__()
            self.logging_dir = str(logging_dir)  # not the checkpoint directory's runs/<time>_<host>

        def close(self) -> None:
            if self.tb_writer is not None:  # the validation loss after training reopened it
                self.tb_writer.close()
                self.tb_writer = None

    return LiveTensorBoard()


def _mlflow_callback(client, run_id: str):
    """Every log of the trainer as MLflow metrics at its step, through one client and one run id.

    transformers' MLflowCallback works on MLflow's process-wide active run: it ends that run when training
    ends, so the validation loss evaluated afterwards would start a stray run, and the adapter's hash
    (known once it is saved) could not be tagged on the run.
    """
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def __init__(self):
            self.failed = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            try:
                log_metrics(client, run_id, _numbers(logs), state.global_step)
            except Exception as err:  # noqa: BLE001 - a tracking server's hiccup must not end the training
                if not self.failed:
                    log.warning("MLflow: could not log step %d (%s); training goes on",
                                state.global_step, err)
                self.failed = True

    return MlflowMetrics()


def log_metrics(client, run_id: str, values: dict, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key=k, value=v, timestamp=now, step=int(step)) for k, v in sorted(values.items())]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def live_callbacks(tracker: Tracker) -> list:
    """The trainer callbacks of a tracker's reporters (a function, so tests can add a probe)."""
    return list(tracker.callbacks)


# --- a train step's tracker ---------------------------------------------------------------------

class Tracker:
    """The reporters of one train step (rank 0): callbacks for the trainer, then ``finish`` / ``fail``."""

    def __init__(self, report_to, tracking_dir, name: str, fingerprint: str):
        self.report_to = list(report_to)
        self.dir = Path(tracking_dir) if tracking_dir is not None else Path(TRACKING_DIR)
        self.name = run_name(name, fingerprint)
        self.specialist = name
        self.fingerprint = fingerprint
        self.callbacks: list = []
        self.mlflow = None  # (client, run id)
        self.wandb = None
        self.tensorboard = None

    def start(self, params: dict, tags: dict, resumed: bool) -> None:
        if "tensorboard" in self.report_to:
            logdir = tensorboard_dir(self.dir, self.specialist, self.fingerprint)
            logdir.mkdir(parents=True, exist_ok=True)
            self.tensorboard = _tensorboard_callback(logdir)
            self.callbacks.append(self.tensorboard)
            log.info("TensorBoard: %s (tensorboard --logdir %s)", logdir, self.dir / "tensorboard")
        if "mlflow" in self.report_to:
            self._start_mlflow(params, tags, resumed)
        if "wandb" in self.report_to:
            self._start_wandb(params, tags)

    def _start_mlflow(self, params: dict, tags: dict, resumed: bool) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        try:
            with _store_lock(self.dir):
                client = _mlflow_client(self.dir)
                experiment = mlflow_experiment(client, self.dir)
        except Exception as err:  # noqa: BLE001 - any store failure: said before training starts
            why = " ".join(str(err).split())[:500]
            raise SnaketuneError(mlflow_uri(self.dir), f"the MLflow store cannot be opened ({why})",
                                 field="train.report_to",
                                 fix="start the tracking server, or unset MLFLOW_TRACKING_URI for the local "
                                     "store, or drop mlflow from report_to") from err
        run_id = self._unfinished_mlflow_run(client, experiment) if resumed else None
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(experiment, run_name=self.name,
                                    tags={**{TAG + k: str(v) for k, v in tags.items()}})
            run_id = run.info.run_id
            items = sorted(_flat_params("", params, {}).items())
            batch = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in items]
            for start in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run_id, params=batch[start:start + MAX_PARAMS_TAGS_PER_BATCH])
            client.log_batch(run_id, tags=[RunTag("mlflow.note.content",
                                                  f"snaketune train step of {self.specialist}")])
        self.mlflow = (client, run_id)
        self.callbacks.append(_mlflow_callback(client, run_id))
        log.info("MLflow: run %s (%s) in %s", self.name, run_id, mlflow_uri(self.dir))

    def _unfinished_mlflow_run(self, client, experiment: str) -> str | None:
        """A resumed step continues the run its killed predecessor left unfinished."""
        runs = client.search_runs([experiment], f"tags.`{TAG}fingerprint` = '{self.fingerprint}'",
                                  order_by=["attributes.start_time DESC"], max_results=5)
        for run in runs:
            if run.info.status != "FINISHED":
                return run.info.run_id
        return None

    def _start_wandb(self, params: dict, tags: dict) -> None:
        import wandb
        from transformers.integrations import WandbCallback

        self.dir.mkdir(parents=True, exist_ok=True)
        # WandbCallback finds this run and adds the trainer's arguments to its config
        wandb.init(project=os.environ.get("WANDB_PROJECT") or EXPERIMENT, name=self.name, dir=str(self.dir),
                   config=_flat_params("", params, {}), tags=[self.specialist], group=self.specialist)
        self.wandb = wandb
        self.callbacks.append(WandbCallback())
        log.info("W&B: run %s (project %s, mode %s)", self.name,
                 os.environ.get("WANDB_PROJECT") or EXPERIMENT, os.environ.get("WANDB_MODE", "online"))

    def finish(self, adapter_dir, metrics: dict) -> None:
        """The adapter is saved: its hash on the runs (eval finds the MLflow run by it), runs closed.

        A failure here is a warning: the adapter exists, and failing the step would make Snakemake delete it.
        """
        try:
            self._finish(adapter_dir, metrics)
        except Exception as err:  # noqa: BLE001
            log.warning("tracking could not record the end of the run (%s); the adapter %s is saved",
                        err, adapter_dir)

    def _finish(self, adapter_dir, metrics: dict) -> None:
        from .files import sha256_tree

        adapter_sha = sha256_tree(adapter_dir)
        summary = {k: metrics[k] for k in ("tokens_per_second", "wall_time_s", "cpu_time_s", "peak_memory_mb")
                   if isinstance(metrics.get(k), (int, float))}
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            client, run_id = self.mlflow
            log_metrics(client, run_id, summary, metrics.get("global_step", 0))
            client.set_tag(run_id, TAG + "adapter_sha256", adapter_sha)
            client.set_tag(run_id, TAG + "adapter_dir", Path(adapter_dir).as_posix())
            client.set_terminated(run_id, status="FINISHED")
        if self.wandb is not None and self.wandb.run is not None:
            self.wandb.run.summary.update({**summary, "adapter_sha256": adapter_sha})
            self.wandb.finish()

    def fail(self) -> None:
        """Training stopped with an error: the runs say so (a rerun resumes them)."""
        with contextlib.suppress(Exception):
            if self.tensorboard is not None:
                self.tensorboard.close()
            if self.mlflow is not None:
                self.mlflow[0].set_terminated(self.mlflow[1], status="FAILED")
            if self.wandb is not None and self.wandb.run is not None:
                self.wandb.finish(exit_code=1)


def start_tracking(tracking: dict | None, run, trainer) -> Tracker:
    """The tracker of a train step (``run``: training.TrainingRun), its callbacks added to ``trainer``.

    Only rank 0 reports; other ranks (and ``report_to: none``) get a tracker with no reporter.
    """
    report_to = check_tracking(tracking, config_path=run.config_path) if run.rank == 0 else []
    tracker = Tracker(report_to, (tracking or {}).get("dir"), run.name, run.fingerprint)
    if not report_to:
        return tracker
    settings = run.settings
    params = {"lora": settings["lora"], "train": settings["train"], "resolved": run.options,
              "system_prompt": settings.get("system_prompt", ""),
              "focus_tools": settings.get("focus_tools", []),
              "base_model": run.identity.get("name_or_path", run.base_name),
              "data": {"train_sha256": run.data_hashes.get("train"), "val_sha256": run.data_hashes.get("val"),
                       "train_examples": len(run.train_examples), "val_examples": len(run.val_examples)}}
    tags = {"specialist": run.name, "fingerprint": run.fingerprint,
            "base_model": str(run.identity.get("name_or_path", run.base_name))}
    tracker.start(params, tags, resumed=run.resume is not None)
    for callback in live_callbacks(tracker):
        trainer.add_callback(callback)
    return tracker


# --- the tuned eval ---------------------------------------------------------------------------------

def find_mlflow_run(client, experiment: str, adapter_sha: str):
    """The newest MLflow run that trained the adapter with this hash (None if no run did)."""
    runs = client.search_runs([experiment], f"tags.`{TAG}adapter_sha256` = '{adapter_sha}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def eval_metrics(result: dict) -> dict:
    """The eval JSON's scores as flat metric names: ``test/<tool metric>``, ``test/text/<metric>``,
    ``test/loss``, ``test/perplexity``, ``test/targets_met``."""
    out = {f"test/{k}": v for k, v in (result.get("metrics") or {}).items()}
    out.update({f"test/text/{k}": v for k, v in (result.get("text_metrics") or {}).items()})
    out.update({"test/loss": result.get("test_loss"), "test/perplexity": result.get("perplexity"),
                "test/targets_met": float(bool(result.get("targets_met")))})
    return _numbers({k: v for k, v in out.items() if v is not None})


def log_eval(tracking: dict | None, adapter_dir, result_path) -> str | None:
    """Log a tuned eval's metrics to the MLflow run that trained its adapter (found by the adapter's hash);
    returns that run's id, or None (MLflow not asked for, or no run trained this adapter)."""
    report_to = report_targets((tracking or {}).get("report_to", []))
    if "mlflow" not in report_to:
        return None
    if importlib.util.find_spec("mlflow") is None:
        log.warning("MLflow: not installed here; the eval metrics of %s are not logged", adapter_dir)
        return None
    from .files import sha256_tree

    tracking_dir = tracking.get("dir") or TRACKING_DIR
    adapter_sha = sha256_tree(adapter_dir)
    with _store_lock(tracking_dir):
        client = _mlflow_client(tracking_dir)
        experiment = mlflow_experiment(client, tracking_dir)
    run = find_mlflow_run(client, experiment, adapter_sha)
    if run is None:
        log.warning("MLflow: no run trained the adapter %s (sha256 %s; was mlflow in train.report_to when it "
                    "was trained?): its eval metrics are not logged", adapter_dir, adapter_sha[:12])
        return None
    result = json.loads(Path(result_path).read_text(encoding="utf-8"))
    step = int(json.loads((Path(adapter_dir) / "train_metrics.json").read_text(encoding="utf-8"))
               .get("global_step", 0))
    log_metrics(client, run.info.run_id, eval_metrics(result), step)
    client.set_tag(run.info.run_id, TAG + "eval", Path(result_path).as_posix())
    log.info("MLflow: eval metrics of %s logged to run %s (%s)", adapter_dir, run.info.run_name,
             run.info.run_id)
    return run.info.run_id
