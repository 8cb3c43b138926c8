"""Every balancer trains a tiny run end to end through the real CLI and logs what it should."""

from __future__ import annotations

import json
import math

import pytest

from mtrl_famo.balancers import NAMES, REGISTRY, GradientManipulation, GramMixing, LossWeighting
from mtrl_famo.config import compose

from conftest import tb_scalars

TASKS = ("reach-v3", "push-v3")
CONFLICT_TAGS = ("grad_cosine_min", "grad_cosine_mean", "grad_conflicting_pairs")


@pytest.mark.parametrize("balancer", NAMES)
def test_every_balancer_trains_through_cli_and_logs_its_weights(balancer: str, tiny_balancer_runs) -> None:
    run_dir = tiny_balancer_runs[balancer]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["env_steps"] == 120
    assert f"name: {balancer}" in (run_dir / "config.yaml").read_text()
    scalars = tb_scalars(run_dir)
    for tag in ("loss/critic", "loss/actor", "loss/alpha"):
        values = [value for _, value in scalars[tag]]
        assert values and all(math.isfinite(v) for v in values), tag
    assert [step for step, _ in scalars["eval/success_rate"]] == [60, 120]

    cls = REGISTRY[balancer]
    applied = compose(f"balancer={balancer}").balancer.apply_to
    for loss in ("critic", "actor"):
        prefix = "balancer/" if loss == "critic" else "balancer/actor/"
        gradient_stats = issubclass(cls, GradientManipulation) and loss in applied
        assert (f"{prefix}grad_cosine_min" in scalars) == gradient_stats, (loss, applied)
        weights = [tag for tag in scalars if tag.startswith(f"{prefix}weight/")]
        # Every method that is a weighting of the losses or a mix of the task gradients logs its
        # weights for the losses it is applied to (an elementwise method such as GradDrop is neither).
        logs_weights = loss in applied and issubclass(cls, (LossWeighting, GramMixing))
        assert sorted(weights) == (sorted(f"{prefix}weight/{task}" for task in TASKS) if logs_weights else [])
        for tag in weights:
            assert all(math.isfinite(value) for _, value in scalars[tag])


@pytest.mark.parametrize("balancer", ["mtsac", "famo", "pcgrad", "cagrad"])
def test_balancer_trains_through_cli(balancer: str, tiny_balancer_runs) -> None:
    run_dir = tiny_balancer_runs[balancer]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["env_steps"] == 120

    scalars = tb_scalars(run_dir)
    for tag in ("loss/critic", "loss/actor", "loss/alpha"):
        values = [value for _, value in scalars[tag]]
        assert values and all(math.isfinite(v) for v in values), tag
    assert [step for step, _ in scalars["eval/success_rate"]] == [60, 120]

    gradient_method = balancer in ("pcgrad", "cagrad")
    for stat in CONFLICT_TAGS:
        # Both losses are balanced by the gradient methods; MT-SAC computes no per-task gradients.
        assert (f"balancer/{stat}" in scalars) == gradient_method
        assert (f"balancer/actor/{stat}" in scalars) == gradient_method
    weight_tags = sorted(tag for tag in scalars if tag.startswith("balancer/weight/"))
    assert weight_tags == sorted(f"balancer/weight/{task}" for task in TASKS)  # every method, one scale
    first, second = ([value for _, value in scalars[f"balancer/weight/{task}"]] for task in TASKS)
    if gradient_method:
        # Two tasks, one pair: the minimum and the mean pairwise cosine are that pair's cosine, and the
        # pair conflicts exactly when it is negative. Weights and conflict statistics are logged
        # from the same update (log.every=20 is a multiple of log.conflicts_every=5).
        for stat_prefix in ("balancer/", "balancer/actor/"):
            cosine_min = [value for _, value in scalars[f"{stat_prefix}grad_cosine_min"]]
            cosine_mean = [value for _, value in scalars[f"{stat_prefix}grad_cosine_mean"]]
            assert cosine_min == pytest.approx(cosine_mean)
            conflicts = [value for _, value in scalars[f"{stat_prefix}grad_conflicting_pairs"]]
            assert conflicts == [float(value < 0) for value in cosine_min]
        conflicting = [value for _, value in scalars["balancer/grad_conflicting_pairs"]]
        for a, b, conflict in zip(first, second, conflicting, strict=True):
            if balancer == "pcgrad":  # mean of the projected gradients: m_j = (1 - g_i.g_j/|g_j|^2 [conflict]) / 2
                assert (a, b) == (0.5, 0.5) if not conflict else (a > 0.5 and b > 0.5)
            else:  # CAGrad, c=0.5, rescale 1: m = (1/2 + lambda w) / (1 + c^2), w on the simplex, lambda >= 0
                assert min(a, b) >= 0.5 / 1.25 - 1e-6
    elif balancer == "mtsac":  # the constant-weight member of the loss-weighting family: 1/K each
        assert all(value == pytest.approx(0.5) for value in first + second)
    else:  # FAMO on the critic (its default): weights on the simplex, moved away from uniform
        assert all(a + b == pytest.approx(1.0, abs=1e-5) and a > 0 and b > 0 for a, b in zip(first, second))
        assert any(abs(a - 0.5) > 1e-4 for a in first)
