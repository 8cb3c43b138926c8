"""The one timer of the update benchmarks (scripts/bench_update.py, bench_backward.py, bench_compile.py).

Only torch is imported here, so a benchmark can time anything without building the training stack.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call of `fn`, a CUDA device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def interleaved_ms(timers: dict[str, Callable[[], float]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Each timer's milliseconds, `repeats` per timer, taken round by round (every timer once per round,
    after `warmup` untimed rounds), so that a noisy machine slows every candidate alike."""
    for _ in range(warmup):
        for timer in timers.values():
            timer()
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    return times
