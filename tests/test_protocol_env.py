"""The env side of the published MTRL protocol (`experiment=cagrad_paper`), on real Metaworld.

Expectations come from outside the code under test: the published reward normalisation written
out as a plain-Python loop, the raw gymnasium outputs recorded by a spy on the vector env's
`step`, and the goal Metaworld itself holds (`_target_pos`), which it also shows in obs[36:39].
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtrl_famo.collector import Collector
from mtrl_famo.config import compose
from mtrl_famo.envs import RunningRewardScale, build_env
from mtrl_famo.replay import TaskReplay
from mtrl_famo.trainer import Trainer

from conftest import DETERMINISTIC_TAGS, tb_scalars

TASKS = ("reach-v3", "push-v3")
K = len(TASKS)
HORIZON = 150  # cagrad_paper's episode length
STEPS = 2 * HORIZON
GOAL = slice(36, 39)  # the goal position inside Metaworld's 39-dim observation
ALPHA, EPSILON = 0.001, 1e-8  # garage's NormalizedEnv reward_alpha and epsilon

# The preset with a tiny network; episodes, observations, goals and rewards stay the preset's.
PAPER_RUN = [
    "experiment=cagrad_paper",
    "env=custom",
    f"env.tasks=[{','.join(TASKS)}]",
    "env.vector_strategy=sync",  # in-process sub-envs: StepSpy wraps `vector.step`, goals read from `vector.envs`
    "agent.hidden_dim=16",
    "agent.num_layers=1",
    "agent.warmup_steps=50",
    "agent.batch_size_per_task=8",
    "agent.replay_size=1000",
    f"eval.every={HORIZON}",
    "eval.episodes=1",
    # Blocking: the evaluation policy is spied on in this process, and a background worker is one more
    # interpreter per run (2-3 s of CPU); tests/test_background_eval.py resumes with one.
    "eval.background=false",
    f"log.every={HORIZON}",
    "device=cpu",
    "progress=false",
]


def published_scale(rewards) -> tuple[list[float], float, float]:
    """One task's rewards through the published normalisation (garage NormalizedEnv), written out
    here from the formula: returns (scaled rewards, final mean, final variance)."""
    mean, var, scaled = 0.0, 1.0, []
    for r in map(float, rewards):
        mean = (1 - ALPHA) * mean + ALPHA * r
        var = (1 - ALPHA) * var + ALPHA * (r - mean) ** 2
        scaled.append(r / (math.sqrt(var) + EPSILON))
    return scaled, mean, var


def twice_updated_scale(rewards) -> list[float]:
    """The same estimate moved twice per step (what Metaworld 3's exponential wrapper does)."""
    mean, var, scaled = 0.0, 1.0, []
    for r in map(float, rewards):
        for _ in range(2):
            mean = (1 - ALPHA) * mean + ALPHA * r
            var = (1 - ALPHA) * var + ALPHA * (r - mean) ** 2
        scaled.append(r / (math.sqrt(var) + EPSILON))
    return scaled


class StepSpy:
    """Replaces `trainer.env.vector.step`; records the raw gymnasium outputs."""

    def __init__(self, trainer: Trainer):
        self.original = trainer.env.vector.step
        self.calls: list[dict] = []
        trainer.env.vector.step = self

    def __call__(self, actions):
        obs, reward, terminated, truncated, info = self.original(actions)
        self.calls.append(
            {
                "action": np.array(actions, copy=True),
                "obs": np.array(obs, copy=True),
                "reward": np.array(reward, dtype=np.float64, copy=True),
                "truncated": np.array(truncated, copy=True),
            }
        )
        return obs, reward, terminated, truncated, info


def record_eval_obs(trainer: Trainer) -> list[np.ndarray]:
    """Every observation the evaluation policy is given, from now on."""
    seen: list[np.ndarray] = []
    policy = trainer.evaluator.policy
    trainer.evaluator.policy = lambda obs: (seen.append(np.array(obs, copy=True)), policy(obs))[1]
    return seen


def metaworld_goals(trainer: Trainer) -> np.ndarray:
    return np.stack([np.asarray(env.unwrapped._target_pos) for env in trainer.env.vector.envs])


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A straight run of the preset to STEPS, recorded (it is also the resume test's reference)."""
    run_dir = tmp_path_factory.mktemp("paper") / "run"
    trainer = Trainer(compose(*PAPER_RUN, f"steps={STEPS}", f"run_dir={run_dir}"))
    spy = StepSpy(trainer)
    eval_obs = record_eval_obs(trainer)
    record = {"trainer": trainer, "run_dir": run_dir, "first_obs": trainer.collector.obs.copy()}
    record["metaworld_goals"] = metaworld_goals(trainer)
    record["summary"] = trainer.train()
    record["calls"], record["eval_obs"] = spy.calls, eval_obs
    return record


# ----- 1. the normaliser alone -------------------------------------------------------------------


def test_running_reward_scale_is_the_published_formula_updated_once_per_step() -> None:
    rng = np.random.default_rng(0)
    rewards = rng.uniform(0.0, 10.0, size=(3000, 3)) * np.array([1.0, 5.0, 0.1])  # tasks of different scales
    scale = RunningRewardScale(3)
    got = np.stack([scale(row) for row in rewards])
    for task in range(3):  # each task on its own: the tasks share nothing
        expected, mean, var = published_scale(rewards[:, task])
        np.testing.assert_allclose(got[:, task], expected, rtol=1e-12, err_msg=f"task {task}")
        assert scale.mean[task] == pytest.approx(mean, rel=1e-12)
        assert scale.var[task] == pytest.approx(var, rel=1e-12)
        # Two updates per step (Metaworld 3's exponential wrapper) would give other numbers.
        assert not np.allclose(got[:, task], twice_updated_scale(rewards[:, task]), rtol=1e-4)
    assert not np.allclose(got, rewards, rtol=1e-3)  # it really rescales

    # Its state continues a stream exactly; a state of another number of tasks is refused.
    half = RunningRewardScale(3)
    for row in rewards[:1500]:
        half(row)
    resumed = RunningRewardScale(3)
    resumed.load_state_dict(half.state_dict())
    np.testing.assert_array_equal(np.stack([resumed(row) for row in rewards[1500:]]), got[1500:])
    with pytest.raises(ValueError, match="tasks"):
        RunningRewardScale(2).load_state_dict(half.state_dict())


def test_collector_checkpoint_carries_the_scale_and_refuses_a_mismatch(two_task_env) -> None:
    def collector(reward_normalization: str) -> Collector:
        replay = TaskReplay(K, 10, two_task_env.obs_dim, two_task_env.action_dim)
        generator = torch.Generator().manual_seed(0)
        # warm-up only: the agent is never asked to act
        return Collector(
            two_task_env, None, replay, 100, generator, torch.device("cpu"), reward_normalization=reward_normalization
        )

    scaled = collector("running_std")
    for _ in range(two_task_env.max_episode_steps):  # one episode: a resume point
        scaled.step()
    state = scaled.state_dict()
    assert not np.allclose(state["reward_scale"]["mean"], 0.0)
    again = collector("running_std")
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.reward_scale.mean, scaled.reward_scale.mean)
    np.testing.assert_array_equal(again.reward_scale.var, scaled.reward_scale.var)
    with pytest.raises(ValueError, match="reward_normalization"):
        collector("none").load_state_dict(state)
    # A state written before reward scaling existed (every run stored raw rewards) loads as unscaled.
    old = {key: value for key, value in state.items() if key != "reward_scale"}
    collector("none").load_state_dict(old)
    with pytest.raises(ValueError, match="reward_normalization"):
        collector("running_std").load_state_dict(old)
    with pytest.raises(ValueError, match=r"Unknown env\.reward_normalization"):
        collector("running-std")


# ----- 2. through the real loop: what the replay holds, what is logged ---------------------------


@pytest.mark.slow
def test_replay_holds_scaled_rewards_and_logged_train_returns_stay_raw(paper_run: dict) -> None:
    trainer, calls = paper_run["trainer"], paper_run["calls"]
    assert len(calls) == STEPS and trainer.replay.size == STEPS
    raw = np.stack([call["reward"] for call in calls])  # [STEPS, K], Metaworld's float64 rewards
    stored = trainer.replay.storage["reward"][:, :STEPS].numpy()
    for task in range(K):
        expected, mean, var = published_scale(raw[:, task])
        np.testing.assert_allclose(stored[task], expected, rtol=2e-6, err_msg=TASKS[task])
        assert not np.allclose(stored[task], raw[:, task], rtol=1e-3)  # the check can tell them apart
        assert trainer.collector.reward_scale.mean[task] == pytest.approx(mean, rel=1e-5)
        assert trainer.collector.reward_scale.var[task] == pytest.approx(var, rel=1e-5)

    # train/return: the mean over tasks of the episode's summed RAW rewards, one episode per log.
    logged = tb_scalars(paper_run["run_dir"], ("train/return",))["train/return"]
    assert [step for step, _ in logged] == [HORIZON, 2 * HORIZON]
    for (_, value), episode in zip(logged, (slice(0, HORIZON), slice(HORIZON, STEPS)), strict=True):
        assert value == pytest.approx(raw[episode].sum(0).mean(), rel=1e-5)
        assert value != pytest.approx(stored[:, episode].sum(1).mean(), rel=1e-3)


# ----- 3. the preset's episodes, observations and goals -------------------------------------------


@pytest.mark.slow
def test_cagrad_paper_has_150_step_episodes_and_39_dim_observations(paper_run: dict) -> None:
    trainer, calls, eval_obs = paper_run["trainer"], paper_run["calls"], paper_run["eval_obs"]
    env = trainer.config.env
    assert (env.max_episode_steps, env.one_hot, env.goals, env.reward_normalization) == (
        HORIZON,
        False,
        "fixed",
        "running_std",
    )
    assert trainer.env.obs_dim == 39 and trainer.env.max_episode_steps == HORIZON
    assert trainer.replay.storage["obs"].shape[-1] == 39
    assert all(call["obs"].shape == (K, 39) for call in calls)
    ends = [t for t, call in enumerate(calls) if call["truncated"].any()]
    assert ends == [HORIZON - 1, STEPS - 1] and all(calls[t]["truncated"].all() for t in ends)
    # Evaluations at 150 and 300, one episode per task each: 150 policy calls apiece, 39 numbers.
    assert len(eval_obs) == 2 * HORIZON and all(obs.shape == (K, 39) for obs in eval_obs)


@pytest.mark.slow
def test_cagrad_paper_keeps_each_tasks_goal_in_training_and_evaluation(paper_run: dict) -> None:
    first_obs, calls, eval_obs = paper_run["first_obs"], paper_run["calls"], paper_run["eval_obs"]
    goals = paper_run["metaworld_goals"]
    # obs[36:39] is the goal Metaworld holds (checked here, not assumed).
    np.testing.assert_allclose(first_obs[:, GOAL], goals, rtol=1e-6)
    assert not np.allclose(goals[0], goals[1])
    # Training: the reset observations after each episode end, and every other one, show that goal.
    resets = [first_obs] + [calls[t]["obs"] for t in (HORIZON - 1, STEPS - 1)]
    for obs in resets + [call["obs"] for call in calls]:  # (the spy's raw obs are float64)
        np.testing.assert_array_equal(obs[:, GOAL].astype(np.float32), first_obs[:, GOAL])
    # Evaluation (its own env, built from the same seed): the same goal in both evaluations.
    for obs in eval_obs:
        np.testing.assert_array_equal(obs[:, GOAL], first_obs[:, GOAL])


@pytest.mark.slow
def test_random_goals_change_across_resets_in_training_and_evaluation(tmp_path: Path) -> None:
    horizon, episodes = 5, 4
    trainer = Trainer(
        compose(
            *PAPER_RUN,
            "env.goals=random",
            f"env.max_episode_steps={horizon}",
            f"eval.episodes={episodes}",
            "agent.warmup_steps=100",  # no updates: only the env is under test
            f"run_dir={tmp_path / 'run'}",
        )
    )
    try:
        spy = StepSpy(trainer)
        first_obs = trainer.collector.obs.copy()
        for _ in range(horizon * (episodes - 1)):
            trainer.step()
        ends = range(horizon - 1, horizon * (episodes - 1), horizon)
        resets = [first_obs] + [spy.calls[t]["obs"].astype(np.float32) for t in ends]  # spy's are float64
        eval_obs = record_eval_obs(trainer)
        trainer.evaluator.run()
        eval_starts = eval_obs[::horizon]
        assert len(resets) == len(eval_starts) == episodes
        for task in range(K):
            assert len({tuple(obs[task, GOAL]) for obs in resets}) > 1, f"training {TASKS[task]}"
            assert len({tuple(obs[task, GOAL]) for obs in eval_starts}) > 1, f"evaluation {TASKS[task]}"
    finally:
        trainer.env.close()
        trainer.evaluator.close()


# ----- 4. the reward version reaches Metaworld -----------------------------------------------------


@pytest.mark.slow
def test_reward_version_v1_and_v2_give_different_rewards_for_the_same_actions() -> None:
    actions = np.random.default_rng(1).uniform(-1.0, 1.0, size=(20, K, 4)).astype(np.float32)
    rewards, observations, in_metaworld = {}, {}, {}
    for version in ("v1", "v2"):
        config = compose(*PAPER_RUN, f"env.reward_version={version}")
        env = build_env(config.env, config.seed)
        try:
            steps = [env.step(action) for action in actions]
            in_metaworld[version] = [sub.unwrapped.reward_function_version for sub in env.vector.envs]
        finally:
            env.close()
        rewards[version] = np.stack([step.reward for step in steps])
        observations[version] = np.stack([step.obs for step in steps])
    np.testing.assert_array_equal(observations["v1"], observations["v2"])  # same seed, same dynamics ...
    for task in range(K):  # ... but another reward function, for every task
        assert not np.allclose(rewards["v1"][:, task], rewards["v2"][:, task]), TASKS[task]
    assert in_metaworld == {"v1": ["v1"] * K, "v2": ["v2"] * K}


# ----- 5. exact resume with running_std and fixed goals --------------------------------------------


@pytest.mark.slow
def test_resume_with_running_std_and_fixed_goals_matches_the_straight_run(paper_run: dict, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = Trainer(compose(*PAPER_RUN, f"steps={HORIZON}", f"run_dir={run_dir}"))
    assert first.train()["env_steps"] == HORIZON
    saved = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["collector"]
    np.testing.assert_array_equal(saved["reward_scale"]["var"], first.collector.reward_scale.var)
    assert not np.allclose(saved["reward_scale"]["var"], 1.0)  # the statistics have moved

    resumed = Trainer(compose(*PAPER_RUN, f"steps={STEPS}", f"run_dir={run_dir}"))
    summary = resumed.train()

    reference = paper_run["trainer"]
    assert summary == paper_run["summary"] and summary["env_steps"] == STEPS
    assert resumed.replay.size == reference.replay.size == STEPS
    for name, tensor in reference.replay.storage.items():
        torch.testing.assert_close(resumed.replay.storage[name], tensor, rtol=0, atol=0, msg=name)
    np.testing.assert_array_equal(resumed.collector.reward_scale.mean, reference.collector.reward_scale.mean)
    np.testing.assert_array_equal(resumed.collector.reward_scale.var, reference.collector.reward_scale.var)
    expected, got = tb_scalars(paper_run["run_dir"], DETERMINISTIC_TAGS), tb_scalars(run_dir, DETERMINISTIC_TAGS)
    assert {"loss/critic", "loss/actor", "eval/return", "train/return"} <= set(expected)
    assert set(got) == set(expected)
    for tag, points in expected.items():
        assert got[tag] == points, f"{tag} differs from the straight run"
