"""Replay buffer: stratified shapes, per-task partitions, wrap-around, terminated flags."""

from __future__ import annotations

import torch

from mtrl_famo.replay import TaskReplay


def _add(replay: TaskReplay, value: float, terminated: bool = False) -> None:
    k = replay.num_tasks
    task_ids = torch.arange(k, dtype=torch.float32)
    replay.add(
        obs=torch.full((k, 3), value) + task_ids[:, None] * 100,
        action=torch.full((k, 2), value),
        reward=task_ids * 100 + value,
        next_obs=torch.full((k, 3), value + 1),
        terminated=torch.full((k,), float(terminated)),
    )


def test_stratified_sample_shapes_and_partitions():
    replay = TaskReplay(
        num_tasks=3, capacity_per_task=10, obs_dim=3, action_dim=2, generator=torch.Generator().manual_seed(0)
    )
    for value in range(6):
        _add(replay, float(value))
    batch = replay.sample(batch_per_task=8)
    assert batch.obs.shape == (3, 8, 3) and batch.action.shape == (3, 8, 2)
    assert batch.reward.shape == (3, 8) and batch.terminated.shape == (3, 8)
    # Row k only holds task k's transitions (reward encodes the task id).
    for k in range(3):
        assert torch.all((batch.reward[k] // 100) == k)
        torch.testing.assert_close(batch.obs[k, :, 0] - 100 * k, batch.reward[k] - 100 * k)
        torch.testing.assert_close(batch.next_obs[k, :, 0], batch.action[k, :, 0] + 1)


def test_wrap_around_keeps_the_newest():
    replay = TaskReplay(num_tasks=2, capacity_per_task=3, obs_dim=3, action_dim=2)
    for value in range(5):
        _add(replay, float(value))
    assert len(replay) == 3 and replay.position == 2
    assert sorted(replay.storage["action"][0, :, 0].tolist()) == [2.0, 3.0, 4.0]
    sampled = set(replay.sample(200).action[1, :, 0].tolist())
    assert sampled == {2.0, 3.0, 4.0}


def test_terminated_flags_are_stored():
    replay = TaskReplay(num_tasks=2, capacity_per_task=4, obs_dim=3, action_dim=2)
    _add(replay, 0.0, terminated=False)
    _add(replay, 1.0, terminated=True)
    batch = replay.sample(100)
    torch.testing.assert_close(batch.terminated, (batch.action[..., 0] == 1.0).float())


def test_state_round_trip():
    replay = TaskReplay(num_tasks=2, capacity_per_task=4, obs_dim=3, action_dim=2)
    for value in range(6):
        _add(replay, float(value))
    copy = TaskReplay(num_tasks=2, capacity_per_task=4, obs_dim=3, action_dim=2)
    copy.load_state_dict(replay.state_dict())
    assert (copy.position, copy.size) == (replay.position, replay.size)
    for name, tensor in replay.storage.items():
        torch.testing.assert_close(copy.storage[name], tensor)
