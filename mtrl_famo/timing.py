"""Time spent in the learner's updates, measured without adding a host/device sync per step.

On the CPU an update's wall-clock time is its cost. On CUDA the host only launches the work (a
graph replay returns at once), so the update's cost is device time: a pair of CUDA events per
update batch, read only when someone asks (logging, a benchmark's end), which is when the host
waits for the device anyway.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class UpdateTimer:
    """Cumulative host and device seconds spent in `measure()` blocks since the timer was made."""

    def __init__(self, device: torch.device):
        self.uses_events = device.type == "cuda"
        self.device = device
        self.host_seconds = 0.0  # wall clock of the calls: launch time on CUDA, the whole cost on the CPU
        self._device_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Time the block (on CUDA: events on the current stream around it, read later)."""
        events = None
        if self.uses_events:
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.host_seconds += time.perf_counter() - started
            if events is not None:
                events[1].record()
                self._events.append(events)

    def device_seconds(self) -> float:
        """Total device time of the measured blocks (CUDA: waits for the last one); host time on the CPU."""
        if not self.uses_events:
            return self.host_seconds
        if self._events:
            self._events[-1][1].synchronize()
            self._device_seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1e3
            self._events.clear()
        return self._device_seconds
