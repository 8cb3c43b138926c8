"""env=mt25: Metaworld's own MT25 (task list, order, one-hot size) and the presets' per-benchmark values.

Building MT25 costs 15 to 45 s on these machines (its benchmark object samples 50 goals for each of 25
tasks), so nothing here builds it: the benchmark class that `Meta-World/MT25` builds is constructed with
its goal sampling stubbed out (its class table is all that is compared), and one real sub-env, the last
row, is built from our own factory with one task's goals, to see its observation and one-hot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gymnasium as gym
import metaworld
import numpy as np
import pytest

from mtrl_famo.config import compose
from mtrl_famo.envs.builder import METAWORLD_OBS_DIM, EnvSpec, metaworld_benchmark, sub_env_factories

K = 25


def mt25_spec(one_hot: bool = True) -> EnvSpec:
    return EnvSpec(
        name="mt25",
        one_hot=one_hot,
        vector_strategy="workers",
        workers=1,
        max_episode_steps=500,
        goals="random",
        reward_version="v2",
        reward_normalization="none",
    )


@contextmanager
def no_goal_sampling() -> Iterator[None]:
    """Metaworld benchmarks built without their goals (seconds per task); the class tables stay as they are.
    The process's benchmark cache is emptied on the way in and out: no goal-less benchmark outlives this."""
    metaworld_benchmark.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(metaworld, "_make_tasks", lambda *args, **kwargs: [])
            yield
    finally:
        metaworld_benchmark.cache_clear()


def test_mt25_is_metaworlds_own_task_list_and_order() -> None:
    """Row order = `metaworld.MT25`'s class table, the benchmark behind the registered `Meta-World/MT25`."""
    assert "Meta-World/MT25" in gym.registry  # what env.vector_strategy=sync|async builds
    with no_goal_sampling():
        own = list(metaworld.MT25(seed=0).train_classes)
    assert len(own) == len(set(own)) == K
    assert mt25_spec().task_names() == own
    assert compose("env=mt25").env.task_names() == own


def test_mt25_sub_envs_are_the_benchmark_rows_with_a_25_wide_one_hot() -> None:
    """Our factories (env.vector_strategy=workers) are Metaworld's classes in its order, each told its row
    and K=25; the last row, built for real, observes 39 + 25 numbers with its own one-hot bit set."""
    spec = mt25_spec()
    assert spec.dims() == (METAWORLD_OBS_DIM + K, 4) == (64, 4)
    assert mt25_spec(one_hot=False).dims() == (METAWORLD_OBS_DIM, 4)
    common = {"use_one_hot": True, "max_episode_steps": 500, "reward_function_version": "v2", "task_select": "random"}
    with no_goal_sampling():
        factories = sub_env_factories(spec, 0, common)
        classes = list(metaworld.MT25(seed=0).train_classes.values())
    assert [factory.keywords["env_cls"] for factory in factories] == classes
    assert [factory.keywords["env_id"] for factory in factories] == list(range(K))
    assert {factory.keywords["num_tasks"] for factory in factories} == {K}

    last = spec.task_names()[-1]
    env = factories[-1](tasks=metaworld.MT1(last, seed=0).train_tasks)  # that task's 50 real goals
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (METAWORLD_OBS_DIM + K,) == env.observation_space.shape
        np.testing.assert_array_equal(obs[METAWORLD_OBS_DIM:], np.eye(K)[K - 1])
    finally:
        env.close()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("experiment=cagrad_paper",), {"batch_size_per_task": 51, "one_hot": False, "dims": (39, 4)}),
        (("experiment=metaworld_plus",), {"eval_every": 8000, "batch_size_per_task": 128, "dims": (64, 4)}),
        (("balancer=cagrad",), {"c": 0.5}),  # not published for MT25: configs/balancer/cagrad.yaml's value
    ],
    ids=["cagrad_paper", "metaworld_plus", "cagrad"],
)
def test_mt25_presets_compose_with_their_per_benchmark_values(overrides, expected) -> None:
    config = compose("env=mt25", *overrides)
    assert config.env.name == "mt25" and len(config.env.task_names()) == K
    got = {
        "batch_size_per_task": config.agent.batch_size_per_task,
        "one_hot": config.env.one_hot,
        "dims": config.env.dims(),
        "eval_every": config.eval.every,
        "c": config.balancer.options.get("c"),
    }
    assert {key: got[key] for key in expected} == expected
    if "c" in expected:  # the balancer's own file, as on any benchmark without a published value
        assert config.balancer.options == compose("env=custom", *overrides).balancer.options
