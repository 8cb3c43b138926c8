"""Vector-step normalisation and evaluation against Metaworld's real envs."""

from __future__ import annotations

import numpy as np
import pytest

from mtrl_famo.envs import EnvSpec, build_env, evaluate, normalise_step
from mtrl_famo.envs.builder import MultiTaskEnv


def test_one_hot_position_and_shapes(two_task_env):
    obs = two_task_env.reset()
    assert obs.shape == (2, 39 + 2)
    np.testing.assert_array_equal(obs[:, -2:], np.eye(2))
    assert two_task_env.task_names == ["reach-v3", "push-v3"]
    assert two_task_env.action_dim == 4


def test_one_hot_can_be_switched_off():
    env = build_env(
        EnvSpec(
            goals="random",
            reward_version="v2",
            reward_normalization="none",
            name="mt1",
            tasks=("reach-v3",),
            one_hot=False,
            max_episode_steps=3,
            vector_strategy="sync",
            workers=1,
        ),
        seed=1,
    )
    try:
        assert env.reset().shape == (1, 39)
    finally:
        env.close()


def test_truncation_gives_final_obs_and_success_from_final_info(two_task_env):
    env = two_task_env
    env.reset()
    actions = np.zeros((2, 4), dtype=np.float32)
    for _ in range(2):
        obs, reward, terminated, truncated, info = env.vector.step(actions)
        step = normalise_step(obs, reward, terminated, truncated, info)
        assert not step.done.any()
        np.testing.assert_array_equal(step.next_obs, step.obs)
    obs, reward, terminated, truncated, info = env.vector.step(actions)
    # Every row truncates on the same step: success is only inside final_info.
    assert "final_info" in info and "success" not in info
    info["final_info"]["success"] = np.array([0.0, 1.0])
    step = normalise_step(obs, reward, terminated, truncated, info)
    np.testing.assert_array_equal(step.truncated, [True, True])
    np.testing.assert_array_equal(step.terminated, [False, False])
    np.testing.assert_array_equal(step.success, [0.0, 1.0])
    for row in range(2):
        np.testing.assert_allclose(step.next_obs[row], info["final_obs"][row].astype(np.float32))
    # The returned obs is already the reset obs (SAME_STEP autoreset), so it differs from the final one.
    assert not np.allclose(step.next_obs[:, :18], step.obs[:, :18])


def test_rows_finishing_at_different_steps():
    obs = np.arange(6, dtype=np.float32).reshape(2, 3)
    final = np.array([None, np.array([9.0, 9.0, 9.0])], dtype=object)
    info = {
        "success": np.array([1.0, 0.0]),
        "_success": np.array([True, False]),
        "final_obs": final,
        "_final_obs": np.array([False, True]),
        "final_info": {"success": np.array([0.0, 1.0]), "_success": np.array([False, True])},
        "_final_info": np.array([False, True]),
    }
    step = normalise_step(obs, np.zeros(2), np.array([False, False]), np.array([False, True]), info)
    np.testing.assert_array_equal(step.success, [1.0, 1.0])
    np.testing.assert_array_equal(step.next_obs[0], obs[0])
    np.testing.assert_array_equal(step.next_obs[1], [9.0, 9.0, 9.0])


class _ScriptedVector:
    """Stands in for a vector env whose task 0 succeeds mid-episode only."""

    num_envs = 2

    def __init__(self, horizon: int = 4):
        self.horizon = horizon
        self.t = 0

    def reset(self):
        self.t = 0
        return np.zeros((2, 3)), {}

    def step(self, actions):
        self.t += 1
        done = self.t == self.horizon
        success = np.array([1.0 if self.t == 2 else 0.0, 0.0])
        reward = np.array([1.0, 2.0])
        truncated = np.array([done, done])
        info = {"success": success, "_success": np.array([True, True])}
        if done:
            info = {
                "final_info": info,
                "final_obs": np.array([np.zeros(3), np.zeros(3)], dtype=object),
                "_final_obs": np.array([True, True]),
            }
            self.t = 0
        return np.zeros((2, 3)), reward, np.array([False, False]), truncated, info


def test_evaluation_counts_success_at_any_step():
    env = MultiTaskEnv(vector=_ScriptedVector(), task_names=["a", "b"], max_episode_steps=4)
    result = evaluate(lambda obs: np.zeros((2, 4)), env, num_episodes=3)
    np.testing.assert_array_equal(result.success_rate, [1.0, 0.0])
    np.testing.assert_array_equal(result.mean_return, [4.0, 8.0])
    assert result.mean_success_rate == pytest.approx(0.5)


@pytest.mark.slow
def test_evaluation_on_real_env_matches_a_hand_count():
    """evaluate() against the raw gymnasium outputs of an identically seeded env, counted by hand."""
    spec = EnvSpec(
        goals="random",
        reward_version="v2",
        reward_normalization="none",
        name="custom",
        tasks=("reach-v3", "push-v3"),
        max_episode_steps=3,
        one_hot=True,
        vector_strategy="sync",
        workers=1,
    )
    policy = lambda obs: np.full((2, 4), 0.3, dtype=np.float32)  # noqa: E731
    env, twin = build_env(spec, seed=0), build_env(spec, seed=0)
    try:
        result = evaluate(policy, env, num_episodes=2)
        twin.vector.reset()
        returns, success = np.zeros((2, 2)), np.zeros((2, 2), dtype=bool)
        for t in range(6):  # 2 episodes of 3 steps; rows finish together
            _, reward, _, _, info = twin.vector.step(policy(None))
            returns[t // 3] += reward
            flags = info["final_info"]["success"] if "final_info" in info else info["success"]
            success[t // 3] |= np.asarray(flags) > 0
    finally:
        env.close()
        twin.close()
    np.testing.assert_allclose(result.mean_return, returns.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(result.success_rate, success.mean(axis=0))
    assert np.all(result.mean_return > 0)


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            EnvSpec(
                goals="random",
                reward_version="v2",
                reward_normalization="none",
                name="mt11",
                one_hot=True,
                vector_strategy="sync",
                workers=1,
                max_episode_steps=500,
            ),
            "Unknown env 'mt11'",
        ),
        (
            EnvSpec(
                goals="random",
                reward_version="v2",
                reward_normalization="none",
                name="mt1",
                tasks=("reach-v9",),
                one_hot=True,
                vector_strategy="sync",
                workers=1,
                max_episode_steps=500,
            ),
            "Unknown Metaworld task 'reach-v9'",
        ),
        (
            EnvSpec(
                goals="random",
                reward_version="v2",
                reward_normalization="none",
                name="custom",
                tasks=(),
                one_hot=True,
                vector_strategy="sync",
                workers=1,
                max_episode_steps=500,
            ),
            "non-empty env.tasks",
        ),
        (
            EnvSpec(
                goals="random",
                reward_version="v2",
                reward_normalization="none",
                name="mt10",
                vector_strategy="threads",
                workers=1,
                one_hot=True,
                max_episode_steps=500,
            ),
            "Unknown env.vector_strategy 'threads'",
        ),
        (
            EnvSpec(
                goals="random",
                reward_version="v2",
                reward_normalization="none",
                name="mt10",
                max_episode_steps=600,
                one_hot=True,
                vector_strategy="sync",
                workers=1,
            ),
            "max_episode_steps=600",
        ),
    ],
)
def test_bad_env_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        spec.validate()
