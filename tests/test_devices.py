"""Device choice (CUDA, Apple MPS, CPU) and what training does on each.

This machine has neither CUDA nor MPS: every test here plays a machine by patching the probes in
snaketune.devices (cuda_available, mps_available, ...). What runs for real is the CPU path
(tests/test_train.py, tests/test_eval.py and the end-to-end runs); CUDA and MPS are tested only as
this choice logic, mocked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from trl import SFTConfig

from snaketune import devices
from snaketune.errors import SnaketuneError
from snaketune.training import resolve_options, training_arguments

TRAIN = {"epochs": 1, "max_steps": 2, "lr": 1e-3, "batch_size": 2, "grad_accum": 1, "max_seq_len": 64,
         "seed": 1, "quantization": "none", "gradient_checkpointing": "auto", "packing": "auto",
         "dtype": "auto"}


@pytest.fixture
def machine(monkeypatch):
    """machine(cuda=..., mps=..., ...) makes devices' probes answer as that machine would."""

    def play(cuda=False, mps=False, cuda_bf16=True, mps_bf16=False, flash=False, torch_gpus=0, smi_gpus=0,
             cpu_bf16=False):
        monkeypatch.setattr(devices, "cuda_available", lambda: cuda)
        monkeypatch.setattr(devices, "cpu_bf16_native", lambda: cpu_bf16)
        monkeypatch.setattr(devices, "mps_available", lambda: mps)
        monkeypatch.setattr(devices, "cuda_bf16_supported", lambda: cuda_bf16)
        monkeypatch.setattr(devices, "mps_bf16_supported", lambda: mps_bf16)
        monkeypatch.setattr(devices, "flash_attention_available", lambda: flash)
        monkeypatch.setattr(devices, "cuda_device_count", lambda: torch_gpus)
        monkeypatch.setattr(devices, "nvidia_smi_count", lambda: smi_gpus)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.delenv("SNAKETUNE_GPU_COUNT", raising=False)

    return play


# ------------------------------------------------------------------ resolve_device

@pytest.mark.parametrize("cuda, mps, gpus, want", [
    (True, True, 1, "cuda"),    # CUDA first
    (False, True, 1, "mps"),    # then MPS
    (False, False, 1, "cpu"),   # then the CPU (with a warning)
    (True, True, 0, "cpu"),     # a job holding no GPU runs on the CPU, whatever the machine has
    (False, True, 0, "cpu"),
])
def test_auto_takes_cuda_then_mps_then_cpu(machine, cuda, mps, gpus, want):
    machine(cuda=cuda, mps=mps)
    assert devices.resolve_device(gpus, "auto") == want
    assert devices.resolve_device(gpus) == want  # auto is the default


def test_auto_warns_when_a_gpu_job_finds_no_gpu(machine, caplog):
    machine()
    with caplog.at_level(logging.WARNING, logger="snaketune.devices"):
        assert devices.resolve_device(2, "auto") == "cpu"
    assert "resources.gpus is 2 but no CUDA or MPS device is visible" in caplog.text


def test_explicit_devices_insist(machine):
    machine(cuda=True, mps=False)
    assert devices.resolve_device(1, "cpu") == "cpu"
    assert devices.resolve_device(1, "cuda") == "cuda"
    with pytest.raises(SnaketuneError, match=r"^my\.yaml: resources\.device: resources\.device is mps but "
                                             r"Apple MPS is not available.*fix: set resources\.device: auto"):
        devices.resolve_device(1, "mps", config_path="my.yaml")
    with pytest.raises(SnaketuneError, match=r"resources\.gpus: .*gpus is 0.*fix: set resources\.gpus: 1"):
        devices.resolve_device(0, "cuda")
    machine(cuda=False, mps=True)
    assert devices.resolve_device(1, "mps") == "mps"
    with pytest.raises(SnaketuneError, match="no CUDA device is visible"):
        devices.resolve_device(1, "cuda")
    with pytest.raises(SnaketuneError, match="unknown device 'tpu'"):
        devices.resolve_device(1, "tpu")


def test_the_preference_comes_from_resources_device():
    assert devices.device_preference({"resources": {"gpus": 1, "device": "mps"}}) == "mps"
    assert devices.device_preference({"resources": {"gpus": 1}}) == "auto"
    assert devices.device_preference({}) == "auto"


def test_this_machine_really_has_neither_cuda_nor_mps():
    """The tests above are the only CUDA / MPS coverage: say so if that ever changes."""
    assert not devices.cuda_available() and not devices.mps_available()
    assert devices.resolve_device(1, "auto") == "cpu"
    assert devices.best_device() == "cpu"


# ------------------------------------------------------------------ device_options

def test_cpu_options_are_unchanged(machine):
    machine(cuda=True, flash=True)  # what the machine has does not matter once the device is chosen
    assert devices.device_options("cpu", TRAIN) == {"device": "cpu", "dtype": "fp32",
                                                    "gradient_checkpointing": False, "packing": False,
                                                    "row_by_row": False, "trim_heap": False,
                                                    "quantization": "none"}
    with pytest.raises(SnaketuneError, match=r"train\.dtype: fp16 training needs a GPU"):
        devices.device_options("cpu", {**TRAIN, "dtype": "fp16"})
    # training's name for it
    assert resolve_options(TRAIN, "cpu", config_path="my.yaml") == devices.device_options("cpu", TRAIN)


@pytest.mark.parametrize("width, cpu_bf16, want_dtype, want_rows", [
    (576, True, "bf16", True),     # SmolLM2 on a CPU with AMX / AVX512-BF16
    (576, False, "fp32", True),    # SmolLM2 on a CPU without native bf16
    (128, True, "fp32", False),    # the tiny demo base: fp32, padded batches, whatever the CPU
    (None, True, "fp32", False),   # width unknown: taken as narrow
])
def test_cpu_options_for_a_wide_base(machine, width, cpu_bf16, want_dtype, want_rows):
    machine(cpu_bf16=cpu_bf16)
    options = devices.device_options("cpu", TRAIN, base_width=width)
    assert (options["dtype"], options["row_by_row"], options["gradient_checkpointing"]) == (
        want_dtype, want_rows, False)
    assert options["trim_heap"] is want_rows  # only a wide base's heap is worth trimming
    # what the config says wins over auto
    forced = devices.device_options("cpu", {**TRAIN, "dtype": "fp32", "row_by_row": False}, base_width=width)
    assert (forced["dtype"], forced["row_by_row"]) == ("fp32", False)
    assert devices.device_options("cpu", {**TRAIN, "row_by_row": True}, base_width=128)["row_by_row"]
    # packed batches have no padding to drop: never row by row
    assert not devices.device_options("cpu", {**TRAIN, "packing": True}, base_width=width)["row_by_row"]


def test_row_by_row_is_for_the_cpu_only(machine):
    machine(cuda=True, mps=True, cpu_bf16=True)
    for device in ("cuda", "mps"):
        options = devices.device_options(device, TRAIN, base_width=576)
        assert options["row_by_row"] is False and options["trim_heap"] is False


def test_this_machine_reads_its_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert devices.cpu_bf16_native() == any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def test_base_width_reads_the_hidden_size(tmp_path):
    import json as _json

    from snaketune.modeling import base_width

    (tmp_path / "config.json").write_text(_json.dumps({"model_type": "llama", "hidden_size": 576,
                                                       "num_hidden_layers": 2, "num_attention_heads": 9,
                                                       "intermediate_size": 1536, "vocab_size": 100}))
    assert base_width(tmp_path) == 576
    assert base_width(tmp_path / "missing") is None


@pytest.mark.parametrize("bf16, flash, want_dtype, want_packing", [
    (True, True, "bf16", True), (False, False, "fp16", False)])
def test_cuda_options(machine, bf16, flash, want_dtype, want_packing):
    machine(cuda=True, cuda_bf16=bf16, flash=flash)
    options = devices.device_options("cuda", {**TRAIN, "quantization": "4bit"})
    assert options == {"device": "cuda", "dtype": want_dtype, "gradient_checkpointing": True,
                       "packing": want_packing, "row_by_row": False, "trim_heap": False,
                       "quantization": "4bit"}


def test_mps_options_fp32_by_default_no_packing_no_bitsandbytes(machine):
    machine(mps=True)
    options = devices.device_options("mps", TRAIN)
    assert options == {"device": "mps", "dtype": "fp32", "gradient_checkpointing": True, "packing": False,
                       "row_by_row": False, "trim_heap": False, "quantization": "none"}
    assert devices.device_options("mps", {**TRAIN, "dtype": "fp16"})["dtype"] == "fp16"
    no_gc = devices.device_options("mps", {**TRAIN, "gradient_checkpointing": False})
    assert no_gc["gradient_checkpointing"] is False
    for quant in ("4bit", "8bit"):
        with pytest.raises(SnaketuneError) as err:
            devices.device_options("mps", {**TRAIN, "quantization": quant}, config_path="my.yaml")
        assert str(err.value) == (f"my.yaml: train.quantization: quantization {quant} (bitsandbytes, QLoRA) "
                                  "does not run on Apple MPS (fix: set train.quantization: none on MPS "
                                  "(plain LoRA), or resources.device: cpu)")
    with pytest.raises(SnaketuneError, match=r"train\.packing: .*flash attention.*fix: set train\.packing"):
        devices.device_options("mps", {**TRAIN, "packing": True})


def test_mps_bf16_only_where_torch_supports_it(machine):
    machine(mps=True, mps_bf16=False)
    with pytest.raises(SnaketuneError, match=r"train\.dtype: bf16 on Apple MPS needs macOS 14"):
        devices.device_options("mps", {**TRAIN, "dtype": "bf16"})
    machine(mps=True, mps_bf16=True)
    assert devices.device_options("mps", {**TRAIN, "dtype": "bf16"})["dtype"] == "bf16"
    assert devices.device_options("mps", TRAIN)["dtype"] == "fp32"  # auto stays fp32 even then


def test_mps_options_make_trainer_arguments_that_leave_the_cpu(machine, tmp_path):
    machine(mps=True)
    settings = {"train": TRAIN, "lora": {}}
    args = training_arguments(settings, devices.device_options("mps", TRAIN), tmp_path)
    assert args["use_cpu"] is False and args["bf16"] is False and args["fp16"] is False
    assert args["packing"] is False and args["activation_checkpointing"] is True
    fp16 = training_arguments(settings, devices.device_options("mps", {**TRAIN, "dtype": "fp16"}), tmp_path)
    assert fp16["fp16"] is True and fp16["bf16"] is False
    assert SFTConfig(**args).use_cpu is False


# ------------------------------------------------------------------ counting GPUs for Snakemake

def test_gpu_count(machine, monkeypatch):
    machine(torch_gpus=4, smi_gpus=4)
    assert devices.gpu_count() == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert devices.gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,3")  # CUDA ignores ids after an invalid one
    assert devices.gpu_count() == 1
    monkeypatch.setenv("SNAKETUNE_GPU_COUNT", "3")  # what snaketune.gpu_slots shares out wins
    assert devices.gpu_count() == 3
    machine(torch_gpus=0, smi_gpus=2)  # a CPU build of torch on a machine with cards: nvidia-smi counts
    assert devices.gpu_count() == 2
    machine(mps=True)
    assert devices.gpu_count() == 1  # Apple MPS counts as one
    machine()
    assert devices.gpu_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.gpu_count() == 0


# ------------------------------------------------------------------ eval and verify name the device

def test_verify_reports_the_device_auto_takes():
    from snaketune.verify import torch_facts

    facts = torch_facts()
    assert facts["device"] == "cpu" and facts["mps"] is False and facts["cuda"] is False


def test_verify_checks_on_an_mps_machine():
    from snaketune.verify import run_checks

    torch = {"installed": True, "version": "2.13.0", "cuda_build": None, "cuda": False, "mps": True,
             "gpus": [], "bf16": True, "device": "mps"}
    facts = {"python": "3.11.7", "platform": "macOS arm64", "torch": torch, "installed": {"torch": "2.13.0"},
             "disk_free_gb": 50.0, "disk_path": "results", "memory": {"total_gb": 32.0, "available_gb": 20.0},
             "data": {}}
    checks = {c.name: c for c in run_checks(facts, None)}
    assert checks["device"].status == "pass" and checks["device"].detail == "Apple MPS"
    assert checks["gpus"].detail == "Apple GPU (MPS)" and checks["bf16"].detail == "bf16 supported on MPS"


class _Loaded(Exception):
    """Raised by the stand-in loader: the device eval chose is all these tests want."""


@pytest.mark.parametrize("gpus, preference, cuda, mps, want", [
    (1, "auto", False, True, "mps"), (1, "auto", True, True, "cuda"), (0, "auto", True, True, "cpu"),
    (1, "cpu", True, False, "cpu")])
def test_eval_loads_the_model_on_the_chosen_device(machine, monkeypatch, tmp_path, gpus, preference, cuda,
                                                   mps, want):
    from snaketune import evaluation
    from snaketune.data import normalise_row
    from snaketune.demo import generate_demo_rows
    from snaketune.files import write_jsonl

    machine(cuda=cuda, mps=mps)
    write_jsonl(tmp_path / "test.jsonl", [normalise_row(r) for r in generate_demo_rows(10, seed=3)])
    seen = {}

    def load(base_cfg, adapter_dir=None, threads=None, config_path=None, device="cpu"):
        seen["device"] = device
        raise _Loaded

    monkeypatch.setattr(evaluation, "load_for_eval", load)
    settings = {"name": "runner", "system_prompt": "", "focus_tools": [], "resources": {"device": preference}}
    with pytest.raises(_Loaded):
        evaluation.evaluate(base_cfg={"name_or_path": "unused"}, test_path=tmp_path / "test.jsonl",
                            settings=settings, eval_cfg={"batch_size": 2, "max_new_tokens": 4, "targets": {}},
                            out_json=tmp_path / "r.json", out_generations=tmp_path / "g.jsonl",
                            out_timing=tmp_path / "t.json", gpus=gpus, config_path="my.yaml")
    assert seen["device"] == want
    assert not (tmp_path / "r.json").exists()


def test_the_eval_json_schema_names_the_device():
    import yaml

    from snaketune.evaluation import SCHEMA_PATH

    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["properties"]["device"]["enum"] == ["cuda", "mps", "cpu"]
