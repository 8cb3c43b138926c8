"""Every balancer trains a tiny run end to end through the real CLI and logs what it should."""

from __future__ import annotations

import json
import math

import pytest

from conftest import tb_scalars

TASKS = ("reach-v3", "push-v3")
CONFLICT_TAGS = ("grad_cosine_min", "grad_cosine_mean", "grad_conflicting_pairs")


@pytest.mark.parametrize("balancer", ["mtsac", "famo", "pcgrad", "cagrad"])
def test_balancer_trains_through_cli(balancer: str, tiny_cli_run) -> None:
    cwd, _ = tiny_cli_run(balancer)
    run_dir = cwd / "runs" / "custom" / balancer / "seed=0"
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
    if gradient_method:
        cosines = [v for _, v in scalars["balancer/grad_cosine_min"]]
        assert all(-1.0 - 1e-5 <= v <= 1.0 + 1e-5 for v in cosines)
        pairs = [v for _, v in scalars["balancer/grad_conflicting_pairs"]]
        assert all(v in (0.0, 1.0) for v in pairs)  # two tasks: one pair
    weight_tags = [tag for tag in scalars if tag.startswith("balancer/weight/")]
    if gradient_method:
        assert not weight_tags
    elif balancer == "mtsac":  # the constant-weight member of the loss-weighting family: 1/K each
        assert sorted(weight_tags) == sorted(f"balancer/weight/{task}" for task in TASKS)
        assert all(value == pytest.approx(0.5) for tag in weight_tags for _, value in scalars[tag])
    else:  # FAMO on the critic (its default): weights on the simplex, moved away from uniform
        assert sorted(weight_tags) == sorted(f"balancer/weight/{task}" for task in TASKS)
        first, second = ([value for _, value in scalars[f"balancer/weight/{task}"]] for task in TASKS)
        assert all(a + b == pytest.approx(1.0, abs=1e-5) and a > 0 and b > 0 for a, b in zip(first, second))
        assert any(abs(a - 0.5) > 1e-4 for a in first)
