"""The one timer of the update benchmarks (scripts/bench_update.py, bench_backward.py, bench_compile.py,
bench_against.py and its workers, scripts/bench_harness.py).

Only torch is imported here, so a benchmark can time anything without building the training stack.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

Key = TypeVar("Key", bound=Hashable)
Sample = TypeVar("Sample")


def time_wall_cpu_ms(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU milliseconds of one call of `fn`, a CUDA device synchronised before and after.

    On a shared machine with one thread the CPU time ignores waiting for a busy core (with several
    threads it also counts OpenMP's spinning)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3, (time.process_time() - start_cpu) * 1e3


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall milliseconds of one call of `fn` (`time_wall_cpu_ms`)."""
    return time_wall_cpu_ms(fn, device)[0]


def interleaved_ms(timers: dict[Key, Callable[[], Sample]], repeats: int, warmup: int) -> dict[Key, list[Sample]]:
    """Each timer's measurements, `repeats` per timer, taken round by round (every timer once per round,
    after `warmup` untimed rounds), so that a noisy machine slows every candidate alike."""
    for _ in range(warmup):
        for timer in timers.values():
            timer()
    times: dict[Key, list[Sample]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    return times
