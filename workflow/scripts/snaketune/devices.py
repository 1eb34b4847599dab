"""Which device a step runs on (CUDA, Apple MPS or the CPU) and what training can do there.

Train and eval ask the same two questions: ``resolve_device(gpus, preference)`` picks the device from
the job's GPU count and ``resources.device`` (``auto``: CUDA, then MPS, then the CPU), and
``device_options(device, train)`` makes the ``auto`` training choices concrete for it (dtype, gradient
checkpointing, packing) and refuses what the device cannot run. The probes (``cuda_available`` and
friends) are the only places that ask torch, so tests patch them to play any machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from .errors import SnaketuneError

log = logging.getLogger("snaketune.devices")

PREFERENCES = ("auto", "cuda", "mps", "cpu")
DEVICES = ("cuda", "mps", "cpu")


# --- probes (patched in tests) ------------------------------------------------------------------

def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cuda_bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def cuda_device_count() -> int:
    """What torch counts; 0 where torch is missing or a CPU build."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def mps_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def mps_bf16_supported() -> bool:
    """bf16 on MPS as torch and accelerate decide it: macOS 14 or newer."""
    import torch

    return mps_available() and bool(torch.backends.mps.is_macos_or_newer(14, 0))


def cpu_bf16_native() -> bool:
    """The CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): bf16 autocast is then faster than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def flash_attention_available() -> bool:
    try:
        import flash_attn  # noqa: F401
        return True
    except Exception:
        return False


def nvidia_smi_count() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.strip())


# --- the choice ---------------------------------------------------------------------------------

def device_preference(settings: dict) -> str:
    """``resources.device`` of a specialist's settings (``auto`` when the key is absent)."""
    return (settings.get("resources") or {}).get("device") or "auto"


def resolve_device(gpus: int, preference: str = "auto", *, config_path: str | None = None) -> str:
    """``cuda``, ``mps`` or ``cpu`` for a job holding ``gpus`` GPUs (``resources.gpus``).

    ``auto``: a GPU job takes CUDA, else MPS, else the CPU (with a warning); a job with gpus 0 runs on
    the CPU. ``cuda`` / ``mps`` insist: a SnaketuneError (naming ``config_path``, the config file) where
    the device is missing or the job holds no GPU (Snakemake would schedule it beside the GPU jobs).
    ``cpu`` always runs on the CPU.
    """
    gpus = int(gpus or 0)
    if preference not in PREFERENCES:
        raise SnaketuneError(config_path, f"unknown device {preference!r}", field="resources.device",
                             fix=f"use one of {', '.join(PREFERENCES)}")
    if preference == "cpu":
        return "cpu"
    if preference in ("cuda", "mps"):
        if not (cuda_available() if preference == "cuda" else mps_available()):
            what = ("no CUDA device is visible (a CPU build of torch, or no driver)" if preference == "cuda"
                    else "Apple MPS is not available here (it needs macOS on Apple silicon and an MPS "
                         "build of torch)")
            raise SnaketuneError(config_path, f"resources.device is {preference} but {what}",
                                 field="resources.device",
                                 fix="set resources.device: auto (the best device here) or cpu")
        if gpus < 1:
            raise SnaketuneError(config_path, f"resources.device is {preference} but resources.gpus is 0, "
                                 "so the job holds no GPU and may run beside other GPU jobs",
                                 field="resources.gpus", fix="set resources.gpus: 1")
        return preference
    if gpus < 1:
        return "cpu"
    if cuda_available():
        return "cuda"
    if mps_available():
        return "mps"
    log.warning("resources.gpus is %d but no CUDA or MPS device is visible; running on the CPU", gpus)
    return "cpu"


def best_device() -> str:
    """What ``auto`` picks for a GPU job on this machine (verify reports it)."""
    return "cuda" if cuda_available() else "mps" if mps_available() else "cpu"


def gpu_count() -> int:
    """GPUs this machine offers Snakemake's ``gpu`` resource; Apple MPS counts as one.

    $SNAKETUNE_GPU_COUNT when set (as snaketune.gpu_slots shares out), else CUDA_VISIBLE_DEVICES when
    set (``""`` hides every card), else torch's count, else nvidia-smi's.
    """
    override = os.environ.get("SNAKETUNE_GPU_COUNT", "").strip()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if override.isdigit():
        n = int(override)
    elif visible is not None:
        ids = []
        for part in visible.split(","):
            part = part.strip()
            if not part or part.startswith("-"):  # CUDA stops at the first invalid id
                break
            ids.append(part)
        n = len(ids)
    else:
        n = cuda_device_count() or nvidia_smi_count()
    if n == 0 and mps_available():
        return 1
    return n


# --- what training does on the device -----------------------------------------------------------

# A base at least this wide (hidden size) is a real model: on a CPU its activations, not its weights, fill
# memory (SmolLM2-135M, batch 4 padded: ~4.5 GB live, ~7 GB held), and bf16 matmuls pay for their casts.
WIDE_BASE = 512


def device_options(device: str, train: dict, *, base_width: int | None = None,
                   config_path: str | None = None) -> dict:
    """``train``'s ``auto`` choices made concrete for ``device`` (TRL's own defaults are wrong off CUDA);
    ``train`` is a specialist's train settings from the config file ``config_path``; ``base_width``: the
    base's hidden size (None: unknown, taken as narrow).

    CUDA: bf16 where supported (else fp16), gradient checkpointing on, packing with flash attention.
    MPS: fp32 unless fp16 (or bf16 where torch supports it) is asked for, gradient checkpointing on,
    no packing, no bitsandbytes. CPU: no packing, no gradient checkpointing; for a base of ``WIDE_BASE``
    or wider, each batch row by row (one row's activations at a time: the memory that checkpointing would
    save, without its extra forward) and bf16 where the CPU multiplies it natively (AVX512-BF16, AMX),
    else fp32, and the heap trimmed after each step (snaketune.host_memory). The tiny demo base trains in
    fp32 on padded batches, untrimmed (each is faster at its size: trimming cost it 15-20 %).
    bench/real_base.py measures each choice.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}")
    quantization = train.get("quantization", "none")
    if device == "mps" and quantization not in (None, "none"):
        raise SnaketuneError(config_path, f"quantization {quantization} (bitsandbytes, QLoRA) does not run "
                             "on Apple MPS", field="train.quantization",
                             fix="set train.quantization: none on MPS (plain LoRA), or resources.device: cpu")
    wide = int(base_width or 0) >= WIDE_BASE
    dtype = train.get("dtype", "auto")
    if dtype == "auto":
        if device == "cuda":
            dtype = "bf16" if cuda_bf16_supported() else "fp16"
        else:
            dtype = "bf16" if device == "cpu" and wide and cpu_bf16_native() else "fp32"
    if device == "cpu" and dtype == "fp16":
        raise SnaketuneError(config_path, "fp16 training needs a GPU", field="train.dtype",
                             fix="use auto or fp32 on CPU")
    if device == "mps" and dtype == "bf16" and not mps_bf16_supported():
        raise SnaketuneError(config_path, "bf16 on Apple MPS needs macOS 14 or newer (torch says it is "
                             "not supported here)", field="train.dtype",
                             fix="use auto (fp32) or fp16 on this Mac")
    gc = train.get("gradient_checkpointing", "auto")
    gc = (device != "cpu") if gc == "auto" else bool(gc)
    packing = train.get("packing", "auto")
    if device == "mps" and packing is True:
        raise SnaketuneError(config_path, "packing (padding-free batches) needs flash attention, which Apple "
                             "MPS does not have", field="train.packing",
                             fix="set train.packing: auto or false on MPS")
    if packing == "auto":
        packing = device == "cuda" and flash_attention_available()
    row_by_row = train.get("row_by_row", "auto")
    row_by_row = (device == "cpu" and wide) if row_by_row == "auto" else bool(row_by_row)
    return {"device": device, "dtype": dtype, "gradient_checkpointing": bool(gc), "packing": bool(packing),
            "row_by_row": bool(row_by_row and not packing), "trim_heap": device == "cpu" and wide,
            "quantization": quantization}


__all__ = ["PREFERENCES", "DEVICES", "cuda_available", "cuda_bf16_supported", "cuda_device_count",
           "mps_available", "mps_bf16_supported", "cpu_bf16_native", "flash_attention_available",
           "nvidia_smi_count",
           "device_preference", "resolve_device", "best_device", "gpu_count", "WIDE_BASE", "device_options"]
