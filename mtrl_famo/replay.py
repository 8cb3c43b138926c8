"""Replay buffer: preallocated tensors on the training device, one partition per task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Batch:
    """Task-grouped transitions, every field `[K, B, ...]`."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


class TaskReplay:
    """A ring buffer of `capacity_per_task` transitions for each of K tasks.

    All tasks are written together (one vector step adds one transition per task), so one
    write position and one fill level serve every partition. Only `terminated` is stored:
    time-limit truncation is not a terminal state and TD targets bootstrap through it.
    """

    def __init__(
        self,
        num_tasks: int,
        capacity_per_task: int,
        obs_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ):
        if capacity_per_task < 1:
            raise ValueError(f"Replay capacity per task must be at least 1, got {capacity_per_task}.")
        self.num_tasks = num_tasks
        self.capacity = capacity_per_task
        self.device = torch.device(device)
        self.generator = generator
        shape = (num_tasks, capacity_per_task)
        self.storage = {
            "obs": torch.zeros(*shape, obs_dim, device=self.device),
            "action": torch.zeros(*shape, action_dim, device=self.device),
            "reward": torch.zeros(*shape, device=self.device),
            "next_obs": torch.zeros(*shape, obs_dim, device=self.device),
            "terminated": torch.zeros(*shape, device=self.device),
        }
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, **transition: torch.Tensor) -> None:
        """Write one transition per task: each field `[K, ...]` (obs, action, reward, next_obs, terminated)."""
        for name in FIELDS:
            self.storage[name][:, self.position] = transition[name].to(self.device, torch.float32)
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_per_task: int) -> Batch:
        """Stratified sample: `batch_per_task` uniform indices (with replacement) in every task."""
        if self.size == 0:
            raise RuntimeError("Cannot sample from an empty replay buffer.")
        index = torch.randint(
            0, self.size, (self.num_tasks, batch_per_task), device=self.device, generator=self.generator
        )
        rows = torch.arange(self.num_tasks, device=self.device)[:, None]
        return Batch(**{name: self.storage[name][rows, index] for name in FIELDS})

    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer as host tensors (what a checkpoint saves), copied task by task.

        Never a copy on the training device: cloning the filled buffer there would double the replay's
        device memory at every checkpoint. Each task's filled rows `storage[k, :size]` are contiguous,
        so each is copied straight into its slot of a host tensor of the filled size (no temporary on
        the device, at most one task's rows in flight; pinned memory only where a CUDA device copies,
        for the faster DMA path). The host copy is counted by the memory check (`memory.estimate_host_memory`).
        """
        filled = {name: self._host_copy(tensor) for name, tensor in self.storage.items()}
        return {"storage": filled, "position": self.position, "size": self.size}

    def _host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        pinned = tensor.is_cuda
        host = torch.empty((tensor.shape[0], self.size, *tensor.shape[2:]), dtype=tensor.dtype, pin_memory=pinned)
        for task in range(tensor.shape[0]):
            host[task].copy_(tensor[task, : self.size], non_blocking=pinned)
        if pinned:
            torch.cuda.current_stream(tensor.device).synchronize()  # the copies are complete before anyone reads them
        return host

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = int(state["size"])
        if size > self.capacity:
            raise ValueError(f"Saved replay holds {size} transitions per task, more than capacity {self.capacity}.")
        for name, tensor in state["storage"].items():
            for task in range(tensor.shape[0]):  # task by task: no second copy of the replay on the device
                self.storage[name][task, :size].copy_(tensor[task])
        self.position = int(state["position"])
        self.size = size
