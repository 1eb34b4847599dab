"""Host memory of a CPU training process: hand freed activations back to the kernel.

On a CPU, torch allocates a step's activations with malloc. glibc keeps what is freed in its heap for
reuse, and rows of different lengths (a batch row by row, length-grouped batches) leave holes that later
requests do not fit, so the heap grows over the steps although little of it is live: SmolLM2-135M held
3.5 GB after 20 steps, 2.7 GB when the heap is trimmed after each step. ``trim_heap`` (glibc's
``malloc_trim(0)``) returns the free pages of every arena to the kernel; the trainer calls it after each
optimizer step when it trains a wide base on a CPU (devices.device_options; the tiny base's steps
are short, and trimming cost it 15-20 %). The pages it returns are faulted in again by the next step:
~7 % slower than keeping them, ~25 % when trimmed after every row (bench/real_base.py, ``ours_no_trim``).
Setting glibc's
mmap threshold low instead (``MALLOC_MMAP_THRESHOLD_``) keeps the heap small too, but every large tensor
then costs fresh page faults: 2.2x slower there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["trim_heap"]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> bool:
    """Return the heap's free pages to the kernel; True if glibc released any (False off glibc)."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
