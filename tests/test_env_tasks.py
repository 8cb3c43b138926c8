"""Which task each row of the vector env is, and the async vector env against the sync one.

A sub-env names its own task three ways, all read from the sub-env itself: the Metaworld class
it is an instance of (`task_name`, set to `type(self).__name__` by SawyerXYZEnv), the Metaworld
tasks (goals) it samples from (`tasks`, each `Task.env_name`), and the id of its checkpoint
(`env_id`, "<class ...>_<row>"). These are compared, position by position, with Metaworld's own
class table (`metaworld.env_dict.MT10_V3` / `MT50_V3`: name -> class) and with
`MultiTaskEnv.task_names`.

MT50 is built once for the whole file (module fixture); nothing else here builds it.
"""

from __future__ import annotations

import numpy as np
import pytest
from metaworld import env_dict

from mtrl_famo.envs import EnvSpec, build_env, normalise_step

HORIZON = 5
ASYNC_SEED = 7


def _sub_env_identity(env) -> dict[str, list]:
    vector = env.vector
    return {
        "class": list(vector.get_attr("task_name")),
        "goal_tasks": [sorted({task.env_name for task in tasks}) for tasks in vector.get_attr("tasks")],
        "num_goals": [len(tasks) for tasks in vector.get_attr("tasks")],
        "checkpoint_id": [env_id for env_id, _ in vector.call("get_checkpoint")],
    }


def assert_rows_are_tasks(env, expected_names: list[str]) -> None:
    """Row i of `env` is task `expected_names[i]`, by the sub-env's own account."""
    classes = [env_dict.ALL_V3_ENVIRONMENTS[name] for name in expected_names]
    k = len(expected_names)
    assert env.task_names == expected_names
    assert env.num_tasks == k
    identity = _sub_env_identity(env)
    assert identity["class"] == [cls.__name__ for cls in classes]
    assert identity["goal_tasks"] == [[name] for name in expected_names]
    assert identity["num_goals"] == [50] * k
    assert identity["checkpoint_id"] == [f"{cls}_{row}" for row, cls in enumerate(classes)]
    # The one-hot at the end of the obs is the row index, on reset and after a step.
    obs = env.reset()
    assert obs.shape == (k, 39 + k)
    np.testing.assert_array_equal(obs[:, -k:], np.eye(k))
    step = normalise_step(*env.vector.step(np.zeros((k, env.action_dim), dtype=np.float32)))
    np.testing.assert_array_equal(step.obs[:, -k:], np.eye(k))


@pytest.fixture(scope="module")
def mt50_env():
    env = build_env(
        EnvSpec(
            goals="random",
            reward_version="v2",
            reward_normalization="none",
            name="mt50",
            one_hot=True,
            vector_strategy="sync",
            workers=1,
            max_episode_steps=500,
        ),
        seed=0,
    )
    try:
        yield env
    finally:
        env.close()


@pytest.mark.slow
def test_mt10_row_i_is_task_i():
    env = build_env(
        EnvSpec(
            goals="random",
            reward_version="v2",
            reward_normalization="none",
            name="mt10",
            one_hot=True,
            vector_strategy="sync",
            workers=1,
            max_episode_steps=500,
        ),
        seed=0,
    )
    try:
        table = list(env_dict.MT10_V3.items())
        assert len(table) == 10
        assert env.reset().shape == (10, 39 + 10)  # Metaworld's 39 dims + the one-hot
        assert env.task_names[0] == "reach-v3"
        assert_rows_are_tasks(env, [name for name, _ in table])
        # Metaworld's own class table, position by position (and not just the names).
        assert list(env.vector.get_attr("task_name")) == [cls.__name__ for _, cls in table]
    finally:
        env.close()


@pytest.mark.slow
def test_mt50_row_i_is_task_i(mt50_env):
    table = list(env_dict.MT50_V3.items())
    assert len(table) == 50
    assert_rows_are_tasks(mt50_env, [name for name, _ in table])
    assert list(mt50_env.vector.get_attr("task_name")) == [cls.__name__ for _, cls in table]


def test_custom_rows_follow_the_given_order():
    # Not the benchmark order, so an env that re-sorts or reverses the list is caught.
    tasks = ("push-v3", "reach-v3", "door-open-v3")
    env = build_env(
        EnvSpec(
            goals="random",
            reward_version="v2",
            reward_normalization="none",
            name="custom",
            tasks=tasks,
            max_episode_steps=3,
            one_hot=True,
            vector_strategy="sync",
            workers=1,
        ),
        seed=0,
    )
    try:
        assert_rows_are_tasks(env, list(tasks))
    finally:
        env.close()


# ----- async vector env == sync vector env, including checkpoints ---------------------------

ACTIONS = np.random.default_rng(0).uniform(-1.0, 1.0, size=(3 * HORIZON, 2, 4)).astype(np.float32)
FIELDS = ("obs", "next_obs", "reward", "terminated", "truncated", "success")


def run_like_trainer(env):
    """Step through three episodes the way Trainer.step does; return the reset obs, every
    normalised step, and the env RNG taken just before each step that ended an episode (what
    Trainer.state_dict holds at the resume point that step creates)."""
    obs = env.reset()  # Trainer.__init__ resets once more after build_env
    steps, checkpoints, episode_step = [], [], 0
    for action in ACTIONS:
        ends_episode = episode_step + 1 == env.max_episode_steps
        env_rng = env.vector.call("get_checkpoint") if ends_episode else None
        step = normalise_step(*env.vector.step(action))
        episode_step += 1
        if step.done.all():
            episode_step = 0
            checkpoints.append(env_rng)
        steps.append(step)
    return obs, steps, checkpoints


@pytest.fixture(scope="module")
def two_runs():
    """The same seed and actions on a sync and an async two-task env, each run once from a
    fresh build: {strategy: (env, reset_obs, steps, checkpoints)}. The envs stay open (for the
    round trip, which loads a checkpoint first, so it does not care where they were left)."""
    runs, envs = {}, []
    try:
        for strategy in ("sync", "async"):
            spec = EnvSpec(
                goals="random",
                reward_version="v2",
                reward_normalization="none",
                name="custom",
                tasks=("reach-v3", "push-v3"),
                one_hot=True,
                vector_strategy=strategy,
                workers=1,
                max_episode_steps=HORIZON,
            )
            env = build_env(spec, seed=ASYNC_SEED)
            envs.append(env)
            runs[strategy] = (env, *run_like_trainer(env))
        yield runs
    finally:
        for env in envs:
            env.close()


def assert_same_steps(left, right) -> None:
    assert len(left) == len(right)
    for t, (a, b) in enumerate(zip(left, right)):
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"step {t} {field}")


def test_async_steps_like_sync_over_episode_ends(two_runs):
    sync, obs_s, steps_s, ckpts_s = two_runs["sync"]
    async_, obs_a, steps_a, ckpts_a = two_runs["async"]
    assert type(sync.vector).__name__ == "SyncVectorEnv"
    assert type(async_.vector).__name__ == "AsyncVectorEnv"
    np.testing.assert_array_equal(obs_a, obs_s)
    np.testing.assert_array_equal(obs_a[:, -2:], np.eye(2))
    assert_same_steps(steps_a, steps_s)
    # Episodes end (truncation) together at HORIZON, 2*HORIZON, 3*HORIZON.
    ends = [t for t, step in enumerate(steps_a) if step.done.any()]
    assert ends == [HORIZON - 1, 2 * HORIZON - 1, 3 * HORIZON - 1]
    for t, step in enumerate(steps_a):
        if t in ends:
            assert step.truncated.all() and not step.terminated.any()
            # next_obs is the final obs of the finished episode, obs already the reset one.
            assert not np.allclose(step.next_obs[:, :18], step.obs[:, :18])
        else:
            np.testing.assert_array_equal(step.next_obs, step.obs)
    assert all(np.all(step.reward > 0) for step in steps_a)
    assert len(ckpts_a) == len(ckpts_s) == 3
    # The env RNG checkpoints are the same on both, and name the rows in order.
    assert ckpts_a == ckpts_s
    assert [env_id.rsplit("_", 1)[1] for env_id, _ in ckpts_a[1]] == ["0", "1"]


@pytest.mark.parametrize("strategy", ["async", "sync"])
def test_checkpoint_round_trip_reproduces_the_run(two_runs, strategy):
    env, _, steps, checkpoints = two_runs[strategy]
    _, _, other_steps, _ = two_runs["sync" if strategy == "async" else "async"]
    state = checkpoints[1]  # taken before the step that ended episode 2
    # The env has stepped on (a whole third episode) since; go back like load_state_dict does.
    env.vector.call("load_checkpoint", list(state))
    obs = env.reset()
    np.testing.assert_array_equal(obs, steps[2 * HORIZON - 1].obs)
    resumed = [normalise_step(*env.vector.step(action)) for action in ACTIONS[2 * HORIZON :]]
    assert_same_steps(resumed, steps[2 * HORIZON :])
    assert_same_steps(resumed, other_steps[2 * HORIZON :])  # and agrees with the other strategy
    # The checkpoint is what made that happen: a plain reset now lands elsewhere.
    assert not np.array_equal(env.reset(), steps[2 * HORIZON - 1].obs)


def test_async_rows_are_tasks(two_runs):
    assert_rows_are_tasks(two_runs["async"][0], ["reach-v3", "push-v3"])
