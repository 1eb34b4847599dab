"""Where this process stands in a torchrun process group, and the collective steps training takes part in."""

from __future__ import annotations

import sys

__all__ = ["backend", "barrier", "gathered_state_dict", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def backend(device: str) -> str:
    """The process group's backend for a device type: nccl on CUDA, gloo on the CPU."""
    return "nccl" if device == "cuda" else "gloo"


def barrier() -> None:
    """Wait for every rank (nothing to wait for outside a process group)."""
    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def gathered_state_dict(trainer):
    """Under DeepSpeed ZeRO-3 the weights are partitioned across ranks: gather them for rank 0 to save.

    A collective call (every rank makes it); None whenever each rank already holds whole weights.
    """
    engine = getattr(trainer, "deepspeed", None) if getattr(trainer, "is_deepspeed_enabled", False) else None
    if engine is None or engine.config.get("zero_optimization", {}).get("stage") != 3:
        return None
    try:  # the adapter only, as Trainer.save_model does for a PEFT model under ZeRO-3
        return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    except TypeError:  # an older DeepSpeed: the whole model
        return trainer.accelerator.get_state_dict(engine)
