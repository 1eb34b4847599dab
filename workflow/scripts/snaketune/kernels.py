"""Fused training kernels (``train.kernels``): Liger's Triton kernels on CUDA, through TRL.

``liger`` asks for them (an error without CUDA or without liger-kernel), ``none`` never uses them,
``auto`` uses them where both CUDA and liger-kernel are present and says in the train log why not elsewhere.

What Liger changes here: TRL (1.16) applies Liger's layer kernels (RMSNorm, RoPE, SwiGLU / GeGLU MLP)
to the base model when training starts, and never Liger's fused linear cross-entropy, because TRL's
trainer computes the LM head itself. Snaketune's trainer keeps its own head on top (the LM head only at
assistant positions, ``training.assistant_head_loss``): it runs the Liger-patched decoder, then the head
on the labelled positions, so both apply together. liger-kernel is not in the lock (it needs Triton,
which only the CUDA variant has): ``pip install liger-kernel==0.8.5`` on a CUDA machine (README).
"""

from __future__ import annotations

import importlib.util
import logging

from .errors import config_error

__all__ = ["KERNELS", "LIGER_PIN", "liger_available", "resolve_kernels"]

log = logging.getLogger("snaketune.kernels")

KERNELS = ("auto", "liger", "none")
LIGER_PIN = "liger-kernel==0.8.5"  # checked against torch 2.13 / transformers 5.23 / TRL 1.16 (README)


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_kernels(train: dict, device: str, *, config_path: str | None) -> bool:
    """Whether this train step uses Liger's kernels (``train``: the specialist's train settings)."""
    choice = train.get("kernels", "auto")
    if choice not in KERNELS:
        raise config_error("train.kernels", f"{choice!r} is not one of {', '.join(KERNELS)}",
                           fix="use auto, liger or none", config_path=config_path)
    cuda = str(device).startswith("cuda")
    if choice == "none":
        return False
    if choice == "liger":
        if not cuda:
            raise config_error("train.kernels", f"is liger but this step trains on {device}: Liger's kernels "
                               "are Triton kernels for CUDA GPUs",
                               fix="set kernels: auto (Liger wherever CUDA is) or none, or give the "
                                   "specialist a GPU (resources.gpus)", config_path=config_path)
        if not liger_available():
            raise config_error("train.kernels", "is liger but liger-kernel is not installed",
                               fix=f"pip install {LIGER_PIN}, or set kernels: auto", config_path=config_path)
        log.info("kernels: Liger (RMSNorm, RoPE, SwiGLU; train.kernels is liger)")
        return True
    if not cuda:
        log.info("kernels: auto -> none: Liger's kernels need CUDA and this step trains on %s", device)
        return False
    if not liger_available():
        log.info("kernels: auto -> none: liger-kernel is not installed (pip install %s to use it)", LIGER_PIN)
        return False
    log.info("kernels: auto -> Liger (RMSNorm, RoPE, SwiGLU kernels; CUDA and liger-kernel present)")
    return True
