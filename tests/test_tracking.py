"""Tracking while training (snaketune.tracking) and fused kernels (snaketune.kernels): TensorBoard events
written during the run, the MLflow run read back, clear errors for what is not installed or not possible on
this machine, and adapters whose bytes tracking never changes."""

from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path

import pytest

from snaketune.config import fill_stage_defaults, load_schema, specialist_settings
from snaketune.demo import generate_demo_rows
from snaketune.errors import SnaketuneError
from snaketune.files import sha256_tree, write_jsonl

from pipeline import DEMO_SPECIALISTS, TINY_BASE_SHAPE, make_workdir, planned_jobs, snakemake, tiny_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(REPO / "config" / "schemas" / "config.schema.yaml")
CONFIG_PATH = "config/config.yaml"
SPECIALIST = "veran-tools"
FAST_TRAIN = {"max_steps": 6, "batch_size": 2, "grad_accum": 1, "lr": 5.0e-3, "save_steps": 3,
              "logging_steps": 1, "tools_rendered": "called", "max_seq_len": 1024}
FAST_LORA = {"r": 4, "alpha": 8, "modules_to_save": ["embed_tokens", "lm_head"]}


def settings_for(train=None) -> dict:
    config = {"specialists": {SPECIALIST: copy.deepcopy(DEMO_SPECIALISTS[SPECIALIST])},
              "defaults": {"train": {**FAST_TRAIN, **(train or {})}, "lora": dict(FAST_LORA)}}
    fill_stage_defaults(config, SCHEMA)
    return specialist_settings(config, SPECIALIST)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Demo splits and a tiny base built from the training split."""
    from snaketune.modeling import build_tiny_base

    root = tmp_path_factory.mktemp("tiny")
    rows = generate_demo_rows(96, seed=3)
    for i, row in enumerate(rows):
        row["id"], row["kind"], row["source"] = f"{i:04x}", "tool", "demo"
    write_jsonl(root / "train.jsonl", rows[:72])
    write_jsonl(root / "val.jsonl", rows[72:84])
    build_tiny_base(root / "train.jsonl", root / "base", TINY_BASE_SHAPE, config_path=CONFIG_PATH)
    return root


def _train(tiny, out, ckpt, tracking=None, train=None):
    from snaketune.training import train_adapter

    return train_adapter(tiny / "base", tiny / "train.jsonl", tiny / "val.jsonl", out, settings_for(train),
                         ckpt, base_cfg={"name_or_path": "results/base/tiny"}, threads=1,
                         config_path=CONFIG_PATH, tracking=tracking)


def _scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


@pytest.fixture(scope="module")
def tracked(tiny, tmp_path_factory):
    """The same training twice: with report_to none, then with tensorboard + mlflow, while a probe reads
    the TensorBoard event files at the start of step 5 (what `tensorboard --logdir` would show then)."""
    from transformers import TrainerCallback

    import snaketune.tracking as tracking

    root = tmp_path_factory.mktemp("tracked")
    seen = {}

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4 and "mid_run" not in seen:
                (run_dir,) = (root / "tracking/tensorboard" / SPECIALIST).iterdir()
                seen["mid_run"] = _scalars(run_dir, "train/loss")

    original = tracking.live_callbacks
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(name, raising=False)
        off = _train(tiny, root / "off", root / "ck_off",
                     {"report_to": ["none"], "dir": str(root / "untracked")})
        mp.setattr(tracking, "live_callbacks", lambda tracker: [*original(tracker), Probe()])
        on = _train(tiny, root / "on", root / "ck_on",
                    {"report_to": ["tensorboard", "mlflow"], "dir": str(root / "tracking")},
                    train={"report_to": ["tensorboard", "mlflow"]})  # in the settings too: ignored there
    return {"root": root, "off": off, "on": on, "seen": seen}


def test_tracking_never_changes_the_adapter_and_writes_outside_it(tracked):
    root = tracked["root"]
    assert sha256_tree(root / "off") == sha256_tree(root / "on")
    assert sorted(p.name for p in (root / "on").iterdir()) == sorted(p.name for p in (root / "off").iterdir())
    assert not (root / "on" / "runs").exists()  # no event file in the adapter any more
    spec = json.loads((root / "on" / "specialist_config.json").read_text())
    assert "report_to" not in spec["train"] and spec["resolved"]["use_liger_kernel"] is False
    assert not (root / "untracked").exists()  # report_to none writes nothing
    assert {p.name for p in (root / "tracking").iterdir()} >= {"tensorboard", "mlflow.db"}


def test_tensorboard_events_are_written_while_training_and_equal_the_log_history(tracked):
    root, metrics = tracked["root"], tracked["on"]
    spec = json.loads((root / "on" / "specialist_config.json").read_text())
    run_dir = root / "tracking/tensorboard" / SPECIALIST / spec["fingerprint"][:12]
    assert run_dir.is_dir()
    # at the start of step 5 the first four steps' losses were already on disk
    assert [step for step, _ in tracked["seen"]["mid_run"]] == [1, 2, 3, 4]
    losses = _scalars(run_dir, "train/loss")
    assert [s for s, _ in losses] == [e["step"] for e in metrics["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in losses] == pytest.approx([e["loss"] for e in metrics["loss"]], rel=1e-6)
    assert _scalars(run_dir, "eval/loss") == [(6, pytest.approx(metrics["eval_loss"], rel=1e-6))]
    assert len(_scalars(run_dir, "train/learning_rate")) == 6


def test_mlflow_run_holds_params_losses_the_adapter_hash_and_the_eval_metrics(tracked, tmp_path, caplog):
    from mlflow import MlflowClient

    from snaketune.tracking import log_eval

    root, metrics = tracked["root"], tracked["on"]
    client = MlflowClient(tracking_uri=f"sqlite:///{(root / 'tracking/mlflow.db').as_posix()}")
    experiment = client.get_experiment_by_name("snaketune")
    (run,) = client.search_runs([experiment.experiment_id])
    spec = json.loads((root / "on" / "specialist_config.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == f"{SPECIALIST}-{spec['fingerprint'][:12]}"
    tags = run.data.tags
    assert tags["snaketune.adapter_sha256"] == sha256_tree(root / "on")  # the train step's provenance hash
    assert tags["snaketune.fingerprint"] == spec["fingerprint"] and tags["snaketune.specialist"] == SPECIALIST
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(e["step"], e["loss"]) for e in metrics["loss"]]
    assert run.data.metrics["eval_loss"] == metrics["eval_loss"]
    params = run.data.params
    assert params["lora.r"] == "4" and params["train.lr"] == "0.005" and params["resolved.device"] == "cpu"
    assert params["data.train_sha256"] == spec["data"]["train"]["sha256"]
    assert params["resolved.liger"] == "false"
    assert not any(key.startswith("train.report_to") for key in params)
    assert experiment.artifact_location == (root / "tracking/mlflow-artifacts").resolve().as_uri()

    # the tuned eval logs its scores to the run that trained its adapter (found by the adapter's hash)
    result = {"metrics": {"tool_accuracy": 0.75, "exact_match": 0.5, "param_f1": 0.6, "n": 8,
                          "per_tool": {"x": {"tool_accuracy": 1.0}}},
              "text_metrics": None, "test_loss": 1.25, "perplexity": 3.49, "targets_met": False}
    (tmp_path / "eval.json").write_text(json.dumps(result))
    tracking = {"report_to": ["mlflow"], "dir": str(root / "tracking")}
    assert log_eval(tracking, root / "on", tmp_path / "eval.json") == run.info.run_id
    logged = client.get_run(run.info.run_id).data.metrics
    expected = {"test/tool_accuracy": 0.75, "test/exact_match": 0.5, "test/loss": 1.25,
                "test/targets_met": 0.0}
    assert {k: logged[k] for k in expected} == expected
    assert client.get_metric_history(run.info.run_id, "test/param_f1")[0].step == metrics["global_step"]
    # an adapter no run trained: said in the log, nothing logged
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train_metrics.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="snaketune.tracking"):
        assert log_eval(tracking, tmp_path / "other", tmp_path / "eval.json") is None
    assert "no run trained the adapter" in caplog.text
    assert log_eval({"report_to": ["tensorboard"], "dir": str(root / "tracking")}, root / "on",
                    tmp_path / "eval.json") is None


def test_wandb_asked_for_but_not_installed_is_a_clear_error(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed (it is not in the lock)
    with pytest.raises(SnaketuneError) as err:
        _train(tiny, tmp_path / "out", tmp_path / "ck", {"report_to": ["tensorboard", "wandb"],
                                                          "dir": str(tmp_path / "tracking")})
    assert err.value.field == "train.report_to" and err.value.path == CONFIG_PATH
    assert "asks for wandb but wandb is not installed" in str(err.value)
    assert "pip install wandb" in err.value.fix and "WANDB_MODE=offline" in err.value.fix
    assert not any((tmp_path / name).exists() for name in ("ck", "out", "tracking"))


def test_report_to_settings(tmp_path):
    from snaketune.tracking import report_targets, tracking_settings, without_tracking

    assert report_targets("none") == []
    assert report_targets(["mlflow", "tensorboard"]) == ["mlflow", "tensorboard"]
    assert report_targets("wandb") == ["wandb"]
    with pytest.raises(SnaketuneError, match="none beside reporters"):
        report_targets(["none", "mlflow"], config_path=CONFIG_PATH)
    config = {"specialists": {"a": {"train": {"report_to": "mlflow"}}, "b": {}}, "defaults": {}}
    fill_stage_defaults(config, SCHEMA)
    assert tracking_settings(config, "a") == {"report_to": ["mlflow"], "dir": "results/tracking"}
    assert tracking_settings(config, "b")["report_to"] == ["tensorboard"]  # the schema's default
    settings = specialist_settings(config, "a")
    assert "report_to" not in without_tracking(settings)["train"]
    assert settings["train"]["report_to"] == "mlflow"  # the caller's settings are left alone


# ------------------------------------------------------------------ kernels

def test_liger_without_cuda_is_a_clear_error_before_any_work(tiny, tmp_path):
    with pytest.raises(SnaketuneError) as err:
        _train(tiny, tmp_path / "out", tmp_path / "ck", train={"kernels": "liger"})
    assert err.value.field == "train.kernels" and "CUDA" in str(err.value)
    assert "kernels: auto" in err.value.fix
    assert not (tmp_path / "ck").exists() and not (tmp_path / "out").exists()


def test_kernels_auto_is_off_on_cpu_with_the_reason_and_on_with_cuda_and_liger(monkeypatch, caplog):
    import snaketune.kernels as kernels

    with caplog.at_level(logging.INFO, logger="snaketune.kernels"):
        assert kernels.resolve_kernels({"kernels": "auto"}, "cpu", config_path=CONFIG_PATH) is False
    assert "kernels: auto -> none: Liger's kernels need CUDA and this step trains on cpu" in caplog.text
    assert kernels.resolve_kernels({"kernels": "none"}, "cuda", config_path=CONFIG_PATH) is False
    monkeypatch.setattr(kernels, "liger_available", lambda: False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="snaketune.kernels"):
        assert kernels.resolve_kernels({}, "cuda", config_path=CONFIG_PATH) is False  # auto is the default
    assert "liger-kernel is not installed" in caplog.text
    with pytest.raises(SnaketuneError, match="liger-kernel is not installed") as err:
        kernels.resolve_kernels({"kernels": "liger"}, "cuda", config_path=CONFIG_PATH)
    assert kernels.LIGER_PIN in err.value.fix
    monkeypatch.setattr(kernels, "liger_available", lambda: True)
    assert kernels.resolve_kernels({"kernels": "auto"}, "cuda", config_path=CONFIG_PATH) is True
    assert kernels.resolve_kernels({"kernels": "liger"}, "cuda:1", config_path=CONFIG_PATH) is True


def test_liger_reaches_trl_through_the_training_arguments():
    from trl import SFTConfig

    from snaketune.training import training_arguments

    options = {"device": "cpu", "dtype": "fp32", "gradient_checkpointing": False, "packing": False,
               "quantization": "none"}
    assert training_arguments(settings_for(), options, "ck")["use_liger_kernel"] is False
    args = training_arguments(settings_for(), {**options, "liger": True}, "ck")
    assert args["use_liger_kernel"] is True and SFTConfig(**args).use_liger_kernel is True


# ------------------------------------------------------------------ end to end (Snakemake)

@pytest.mark.e2e
def test_pipeline_reports_to_tensorboard_and_mlflow_and_toggling_it_reruns_nothing(tmp_path):
    from mlflow import MlflowClient

    config = tiny_config({SPECIALIST: DEMO_SPECIALISTS[SPECIALIST]},
                         train={"report_to": ["tensorboard", "mlflow"]})
    work = make_workdir(tmp_path / "run", config)
    target = f"results/eval/tuned/{SPECIALIST}.json"
    snakemake(work, target, env={"MLFLOW_TRACKING_URI": "", "MLFLOW_EXPERIMENT_NAME": ""})

    adapter = work / "results/adapters" / SPECIALIST
    metrics = json.loads((adapter / "train_metrics.json").read_text())
    record = json.loads((work / f"results/provenance/train/{SPECIALIST}.json").read_text())
    (adapter_hash,) = [out["sha256"] for out in record["outputs"]
                       if out["path"] == f"results/adapters/{SPECIALIST}"]
    assert "report_to" not in record["params"]["settings"]["train"]

    (run_dir,) = (work / "results/tracking/tensorboard" / SPECIALIST).iterdir()
    assert [s for s, _ in _scalars(run_dir, "train/loss")] == [e["step"] for e in metrics["loss"]]

    client = MlflowClient(tracking_uri=f"sqlite:///{(work / 'results/tracking/mlflow.db').as_posix()}")
    experiment = client.get_experiment_by_name("snaketune").experiment_id
    (run,) = client.search_runs([experiment], f"tags.`snaketune.adapter_sha256` = '{adapter_hash}'")
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(e["step"], e["loss"]) for e in metrics["loss"]]
    result = json.loads((work / target).read_text())
    assert run.data.metrics["test/tool_accuracy"] == result["metrics"]["tool_accuracy"]
    assert run.data.metrics["test/loss"] == result["test_loss"]
    log = (work / f"logs/train/{SPECIALIST}.log").read_text()
    assert "kernels: auto -> none: Liger's kernels need CUDA" in log and "MLflow: run" in log
    assert "eval metrics of" in (work / f"logs/eval/tuned/{SPECIALIST}.log").read_text()

    # tracking changes no result: switching it off (or on) reruns nothing
    off = copy.deepcopy(config)
    off["defaults"]["train"]["report_to"] = "none"
    make_workdir(work, off)
    assert planned_jobs(work, target) == {}


def test_gpu_bench_pairs_liger_variants_with_their_twins_and_exits_cleanly_without_cuda():
    import importlib.util
    import subprocess

    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    results = [{"variant": "lora", "tokens_per_s": 1000.0, "peak_vram_gib": 30.0},
               {"variant": "lora-liger", "tokens_per_s": 1250.0, "peak_vram_gib": 26.5},
               {"variant": "lora-packing-liger", "skipped": "liger_kernel is not installed"},
               {"variant": "qlora-packing-liger", "tokens_per_s": 500.0, "peak_vram_gib": 9.0}]  # no twin run
    assert gpu.liger_pairs(results) == [{"variant": "lora-liger", "without": "lora",
                                         "tokens_per_s_ratio": 1.25, "peak_vram_gib": 26.5,
                                         "peak_vram_gib_without": 30.0, "peak_vram_gib_delta": -3.5}]
    assert "lora-liger" in gpu.QUICK_VARIANTS
    import torch

    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py")], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and "no CUDA device here; nothing to measure" in proc.stdout


def test_an_mlflow_store_that_cannot_be_opened_stops_the_step_before_it_trains(tiny, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path.as_posix()}/a-file/mlflow.db")
    with pytest.raises(SnaketuneError) as err:
        _train(tiny, tmp_path / "out", tmp_path / "ck", {"report_to": ["mlflow"], "dir": str(tmp_path / "t")})
    assert err.value.field == "train.report_to" and "the MLflow store cannot be opened" in str(err.value)
    assert err.value.path.endswith("a-file/mlflow.db") and "MLFLOW_TRACKING_URI" in err.value.fix
    assert not (tmp_path / "out").exists() and not list((tmp_path / "ck").glob("checkpoint-*"))
