"""metrics.py: what each tag holds, read back with TensorBoard's own reader, against hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtrl_famo.balanced_backward import ConflictStats, conflict_stats
from mtrl_famo.balancers import make
from mtrl_famo.learner import UpdateResult
from mtrl_famo.metrics import MetricsWriter, TrainMetrics

from conftest import tb_scalars

TASKS = ["reach-v3", "push-v3"]
NAN = float("nan")


def update(critic, actor, alpha, conflicts=None) -> UpdateResult:
    return UpdateResult(torch.tensor(critic), torch.tensor(actor), torch.tensor(alpha), conflicts or {})


def stats(cos_min: float, cos_mean: float, pairs: float) -> ConflictStats:
    return ConflictStats(torch.tensor(cos_min), torch.tensor(cos_mean), torch.tensor(pairs))


def test_conflict_stats_against_numpy() -> None:
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 7))
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    cosines = [unit[i] @ unit[j] for i in range(4) for j in range(i + 1, 4)]
    got = conflict_stats(torch.tensor(grads))
    assert float(got.cosine_min) == pytest.approx(min(cosines), abs=1e-12)
    assert float(got.cosine_mean) == pytest.approx(np.mean(cosines), abs=1e-12)
    assert float(got.conflicting_pairs) == sum(c < 0 for c in cosines) > 0


def test_train_metrics_write_every_tag_from_the_window(tmp_path) -> None:
    metrics = TrainMetrics()
    metrics.start_window(0)
    metrics.add_updates(
        [
            update([1.0, 3.0], [NAN, NAN], [NAN, NAN], {"critic": stats(-0.5, 0.1, 1.0)}),  # actor skipped
            update(
                [2.0, 6.0], [-1.0, -3.0], [0.5, 1.5], {"critic": stats(0.2, 0.3, 0.0), "actor": stats(-0.9, -0.9, 1.0)}
            ),
            update([3.0, 3.0], [-2.0, -4.0], [1.0, 2.0]),
        ]
    )
    famo = make("famo", 2, w_lr=0.1, gamma=0.0, min_losses=0.0, eps=1e-8)
    famo.logits.data = torch.tensor([0.0, math.log(3.0)])  # weights 1/4, 3/4
    writer = MetricsWriter(tmp_path, TASKS)
    episodes = (np.array([1.0, 0.0]), np.array([10.0, 30.0]))
    metrics.write(
        writer,
        40,
        episodes,
        torch.tensor([[0.5], [2.0]]),
        {"critic": make("mtsac", 2), "actor": famo},
        balanced_losses=("actor",),
        update_seconds=0.3,
    )
    writer.close()

    got = {tag: points for tag, points in tb_scalars(tmp_path).items()}
    value = {tag: points[-1][1] for tag, points in got.items()}
    assert all(points[-1][0] == 40 for points in got.values())
    # Per task: mean over the window's updates (skipped actor updates are NaN), then mean over tasks.
    assert value["loss/critic"] == pytest.approx(np.mean([(1 + 2 + 3) / 3, (3 + 6 + 3) / 3]))
    assert value["loss/actor"] == pytest.approx(np.mean([(-1 - 2) / 2, (-3 - 4) / 2]))
    assert value["loss/alpha"] == pytest.approx(np.mean([(0.5 + 1.0) / 2, (1.5 + 2.0) / 2]))
    assert value["perf/update_ms"] == pytest.approx(100.0)
    assert value["train/success_rate"] == pytest.approx(0.5) and value["train/return"] == pytest.approx(20.0)
    assert (value["alpha/reach-v3"], value["alpha/push-v3"]) == (0.5, 2.0)
    # Conflict statistics: those of the latest update that computed any, critic unprefixed.
    assert value["balancer/grad_cosine_min"] == pytest.approx(0.2)
    assert value["balancer/grad_cosine_mean"] == pytest.approx(0.3)
    assert value["balancer/grad_conflicting_pairs"] == 0.0
    assert value["balancer/actor/grad_cosine_min"] == pytest.approx(-0.9)
    # Loss weights only for the losses the configured balancer is applied to, under the loss's prefix.
    assert value["balancer/actor/weight/reach-v3"] == pytest.approx(0.25)
    assert value["balancer/actor/weight/push-v3"] == pytest.approx(0.75)
    assert not any(tag.startswith("balancer/weight/") for tag in got)
    assert "perf/env_steps_per_s" in got
    assert metrics.updates == []


def test_pending_updates_survive_a_checkpoint(tmp_path) -> None:
    metrics = TrainMetrics()
    metrics.add_updates([update([1.0, 2.0], [NAN, -1.0], [0.1, 0.2], {"critic": stats(-0.1, 0.4, 1.0)})])
    restored = TrainMetrics()
    restored.load_state_dict(metrics.state_dict(), torch.device("cpu"))
    assert len(restored.updates) == 1
    original, copy = metrics.updates[0], restored.updates[0]
    for field in ("critic_loss", "actor_loss", "alpha_loss"):
        torch.testing.assert_close(getattr(copy, field), getattr(original, field), equal_nan=True)
    assert float(copy.conflicts["critic"].cosine_min) == pytest.approx(-0.1)
