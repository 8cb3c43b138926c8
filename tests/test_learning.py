"""It learns: a short CPU run on Metaworld reach-v3 beats a random policy by a wide margin.

Both are scored by the same evaluator (the run's own evaluation env, 20 deterministic episodes,
success at any step, random goals), so the only difference is the policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtrl_famo.config import compose
from mtrl_famo.envs import build_env, evaluate
from mtrl_famo.trainer import Trainer

pytestmark = pytest.mark.slow  # 12k steps of SAC: about a minute of one core

REACH = [
    "env=mt1",
    "env.task=reach-v3",
    "agent.hidden_dim=64",  # 128 learned no better (0.25 vs 0.35 at lr 3e-4, 20k steps) at 1.5x the time of an update
    "agent.num_layers=2",
    "agent.warmup_steps=1000",
    # Adam's rate of CleanRL's SAC critic, above mtrl's 3e-4: with it 12k steps learn more often than
    # 20k at 3e-4 (seed study below), at 60% of the cost.
    "agent.lr=1e-3",
    "steps=12000",
    "eval.every=12000",
    "eval.episodes=20",
    # Its one evaluation is at the end: a background worker would only add an interpreter (the same
    # result on CPU, tests/test_background_eval.py).
    "eval.background=false",
    # One env, stepped in this process: every strategy steps it bit for bit alike (the same run, checked
    # at 1.6k steps), and a worker process would only add its pipe round trips to each step.
    "env.vector_strategy=sync",
    "device=cpu",
    "progress=false",
]

# Single runs are chaotic, so the margin asks for 4x the random policy's rate (0.05), not more; a run
# that does not learn stays near the random policy's rate. This run (seed 0, one evaluation at the end)
# reaches 0.50. Seed study of this config, evaluated every 3k steps (the same training; the evaluation
# at 12k then scores later goals of the evaluation env's shuffle): seeds 0-5 reached 0.25, 0.45, 0.45,
# 0.05, 0.40 and 0.25 at 12k, 5 of 6 above the margin. The former config (lr 3e-4, 20k steps) reached
# 0.35 here, and 0.00 and 0.40 with seeds 1-2 evaluated every 5k: 2 of 3, at 1.7x the steps.
MARGIN = 0.15


def random_policy_success(episodes: int) -> float:
    """Uniform random actions, scored exactly like the trained policy (same env, same seed)."""
    config = compose(*REACH)
    env = build_env(config.env, config.seed)
    rng = np.random.default_rng(0)
    try:
        result = evaluate(lambda obs: rng.uniform(-1, 1, (len(obs), 4)).astype(np.float32), env, episodes)
    finally:
        env.close()
    return result.mean_success_rate


def test_sac_learns_reach_well_above_a_random_policy(tmp_path: Path) -> None:
    random_success = random_policy_success(episodes=20)
    torch.manual_seed(0)
    summary = Trainer(compose(*REACH, f"run_dir={tmp_path}")).train()
    learned = summary["eval_success_rate"]
    print(f"reach-v3 after {summary['env_steps']} steps: success {learned:.2f}, random policy {random_success:.2f}")
    assert learned >= random_success + MARGIN, (learned, random_success)
