"""The training loop's glue, in process on a real two-task Metaworld env.

Every expectation comes from outside the code under test: the raw gymnasium outputs recorded by a
spy on the vector env's `step`, a generator re-seeded here, or a count by hand.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mtrl_famo.balancers.famo import FAMO
from mtrl_famo.balancers.mtsac import MeanLoss
from mtrl_famo.balancers.pcgrad import PCGrad
from mtrl_famo.config import compose
from mtrl_famo.envs import EpisodeTracker
from mtrl_famo.metrics import MetricsWriter
from mtrl_famo.trainer import Trainer

from conftest import tb_scalars

TASKS = ("reach-v3", "push-v3")
K = len(TASKS)
HORIZON = 5  # Metaworld only truncates: every episode lasts exactly HORIZON steps
GOAL = slice(36, 39)  # the goal position inside Metaworld's 39-dim observation


def make_trainer(
    tmp_path,
    *,
    seed: int = 0,
    warmup: int = 3,
    updates_per_step: int = 1,
    balancer: tuple[str, ...] = ("balancer=mtsac",),
) -> Trainer:
    """A trainer built from the config the CLI would compose for these overrides."""
    config = compose(
        "env=custom",
        f"env.tasks=[{','.join(TASKS)}]",
        f"env.max_episode_steps={HORIZON}",
        "env.vector_strategy=sync",  # in-process sub-envs: StepSpy wraps `vector.step`
        "agent.hidden_dim=16",
        "agent.num_layers=1",
        "agent.batch_size_per_task=4",
        f"agent.warmup_steps={warmup}",
        "agent.replay_size=1000",
        f"agent.updates_per_step={updates_per_step}",
        *balancer,
        f"seed={seed}",
        "device=cpu",
        "steps=100",
        f"run_dir={tmp_path / f'run-seed{seed}'}",
        "progress=false",
        "eval.every=100",
        "log.every=100",
    )
    return Trainer(config)


@pytest.fixture
def trainers():
    """Builds trainers and closes their envs afterwards."""
    built: list[Trainer] = []

    def build(*args, **kwargs) -> Trainer:
        built.append(make_trainer(*args, **kwargs))
        return built[-1]

    yield build
    for trainer in built:
        trainer.env.close()


class StepSpy:
    """Replaces `trainer.env.vector.step`; records the actions and the raw gymnasium outputs.

    `inject(call_index, info)` may edit the info dict before the trainer sees it.
    """

    def __init__(self, trainer: Trainer, inject=None):
        self.original = trainer.env.vector.step
        self.inject = inject
        self.calls: list[dict] = []
        trainer.env.vector.step = self

    def __call__(self, actions):
        action = np.array(actions, copy=True)
        obs, reward, terminated, truncated, info = self.original(actions)
        if self.inject is not None:
            self.inject(len(self.calls), info)
        self.calls.append(
            {
                "action": action,
                "obs": np.array(obs, copy=True),
                "reward": np.array(reward, copy=True),
                "terminated": np.array(terminated, copy=True),
                "truncated": np.array(truncated, copy=True),
                "info": copy.deepcopy(info),
            }
        )
        return obs, reward, terminated, truncated, info


def raw_success(call: dict, last_step: bool) -> np.ndarray:
    """Metaworld's success flag of one raw step: in `final_info` on the step that ends an episode."""
    info = call["info"]
    if last_step:
        assert "final_info" in info and "success" not in info
        return np.asarray(info["final_info"]["success"], dtype=float)
    assert "final_info" not in info
    return np.asarray(info["success"], dtype=float)


# ----- 1. what the loop stores ---------------------------------------------------------------


def test_replay_stores_true_final_obs_and_no_termination_at_truncation(trainers, tmp_path):
    trainer = trainers(tmp_path, warmup=100)  # stay in warm-up: only the storing is under test
    spy = StepSpy(trainer)
    first_obs = trainer.collector.obs.copy()
    steps = 2 * HORIZON + 2
    for _ in range(steps):
        trainer.step()

    replay = trainer.replay
    assert replay.size == steps and replay.position == steps
    stored = {name: tensor[:, :steps].numpy() for name, tensor in replay.storage.items()}

    ends = [t for t, call in enumerate(spy.calls) if call["truncated"].any()]
    assert ends == [HORIZON - 1, 2 * HORIZON - 1]  # the horizon really truncated, for both tasks
    for t, call in enumerate(spy.calls):
        assert not call["terminated"].any()  # Metaworld never terminates ...
        np.testing.assert_array_equal(
            stored["terminated"][:, t], np.zeros(K)
        )  # ... and truncation is not stored as such
        np.testing.assert_array_equal(stored["action"][:, t], call["action"])
        np.testing.assert_allclose(stored["reward"][:, t], call["reward"], rtol=1e-6)
        previous_obs = first_obs if t == 0 else spy.calls[t - 1]["obs"]
        np.testing.assert_array_equal(stored["obs"][:, t], previous_obs.astype(np.float32))
        if t in ends:
            assert call["truncated"].all()
            final = np.stack([np.asarray(call["info"]["final_obs"][row], dtype=np.float32) for row in range(K)])
            np.testing.assert_array_equal(stored["next_obs"][:, t], final)
            # The returned obs is the reset one: a different hand/goal state, not the successor.
            for row in range(K):
                assert not np.allclose(stored["next_obs"][row, t, :18], call["obs"][row, :18].astype(np.float32))
            # ... and it is what the next stored transition starts from.
            np.testing.assert_array_equal(stored["obs"][:, t + 1], call["obs"].astype(np.float32))
        else:
            assert "final_obs" not in call["info"]
            np.testing.assert_array_equal(stored["next_obs"][:, t], call["obs"].astype(np.float32))
    np.testing.assert_array_equal(trainer.collector.obs, spy.calls[-1]["obs"].astype(np.float32))


# ----- 2. warm-up actions, then the policy's ----------------------------------------------------


def test_uniform_actions_during_warmup_then_policy_actions(trainers, tmp_path):
    warmup, seed = 4, 5
    trainer = trainers(tmp_path, seed=seed, warmup=warmup)
    spy = StepSpy(trainer)
    action_dim = trainer.env.action_dim

    states_before: list[torch.Tensor] = []
    expected_policy: dict[int, torch.Tensor] = {}
    steps = warmup + 3
    for t in range(steps):
        states_before.append(trainer.generator.get_state())
        # What the actor, as it is now, would do with the generator's next normal draw.
        noise = torch.randn(K, action_dim, generator=torch.Generator().set_state(states_before[-1]))
        with torch.no_grad():
            obs = torch.as_tensor(trainer.collector.obs, dtype=torch.float32).unsqueeze(1)
            expected_policy[t] = trainer.agent.actor.sample(obs, noise.unsqueeze(1))[0].squeeze(1)
        trainer.step()

    # Warm-up: uniform draws in [-1, 1) from a generator seeded like the trainer's, in order.
    fresh = torch.Generator().manual_seed(seed)
    for t in range(warmup):
        expected = torch.rand(K, action_dim, generator=fresh) * 2.0 - 1.0
        got = spy.calls[t]["action"]
        assert np.all((got >= -1.0) & (got <= 1.0))
        np.testing.assert_array_equal(got, expected.numpy(), err_msg=f"warm-up step {t}")
        assert not np.allclose(got, expected_policy[t].numpy()), f"warm-up step {t} acted with the policy"

    # Nothing but those draws used the generator during warm-up.
    assert torch.equal(states_before[warmup], fresh.get_state())
    # The switch is exactly at env_step == warmup: from there on the actor acts with the generator's noise.
    uniform_instead = torch.rand(K, action_dim, generator=fresh) * 2.0 - 1.0
    assert not np.allclose(spy.calls[warmup]["action"], uniform_instead.numpy()), "step == warmup still uniform"
    for t in range(warmup, steps):
        got = torch.as_tensor(spy.calls[t]["action"])
        torch.testing.assert_close(got, expected_policy[t], msg=f"policy step {t}")
        assert got.abs().max() < 1.0  # tanh-squashed


# ----- 3. updates start right after warm-up ------------------------------------------------------


def test_updates_start_after_warmup_with_updates_per_step_each(trainers, tmp_path):
    warmup, per_step = 3, 3
    trainer = trainers(tmp_path, warmup=warmup, updates_per_step=per_step)
    for step in range(1, warmup + 1):
        trainer.step()
        assert trainer.env_step == step
        assert trainer.learner.num_updates == 0 and trainer.metrics.updates == []
    for extra in range(1, 4):
        trainer.step()
        assert trainer.env_step == warmup + extra
        assert trainer.learner.num_updates == per_step * extra
        assert len(trainer.metrics.updates) == per_step * extra
        for update in trainer.metrics.updates:
            assert update.critic_loss.shape == (K,) and torch.isfinite(update.critic_loss).all()


# ----- 4. the balancer goes to the losses apply_to names ---------------------------------------


@pytest.mark.parametrize(
    "balancer, balanced, plain",
    [
        (
            (
                "balancer=famo",
                "balancer.apply_to=[critic]",
                "balancer.options.w_lr=0.05",
                "balancer.options.gamma=0.01",
            ),
            "critic",
            "actor",
        ),
        (
            # The actor updates every 2nd update: a balancer called once in 2 updates is the actor's.
            (
                "balancer=pcgrad",
                "balancer.apply_to=[actor]",
                "balancer.options.reduction=sum",
                "agent.actor_update_every=2",
            ),
            "actor",
            "critic",
        ),
    ],
    ids=["famo-critic", "pcgrad-actor"],
)
def test_balancer_applies_only_to_the_losses_named(trainers, tmp_path, balancer, balanced, plain):
    trainer = trainers(tmp_path, warmup=2, balancer=balancer)
    chosen, other = trainer.learner.balancers[balanced], trainer.learner.balancers[plain]
    # The other loss keeps plain MT-SAC's mean loss (MeanLoss takes no options: had the options
    # gone to it, building it would have failed).
    assert type(other) is MeanLoss
    seen: list[torch.Tensor] = []
    if type(chosen) is FAMO:
        group = chosen.optimizer.param_groups[0]
        assert (group["lr"], group["weight_decay"]) == (0.05, 0.01)  # the options reached it
        original = chosen.update
        chosen.update = lambda before, after: (seen.append(before.clone()), original(before, after))[1]
    else:
        assert type(chosen) is PCGrad and chosen.reduction == "sum"
        original = chosen.mix  # PCGrad decides from the Gram matrix of the task gradients
        chosen.mix = lambda gram: (seen.append(gram.clone()), original(gram))[1]
    for _ in range(4):
        trainer.step()
    assert trainer.learner.num_updates == 2 and len(seen) == (2 if type(chosen) is FAMO else 1)
    if type(chosen) is FAMO:
        # FAMO saw the losses of the loss it was applied to: the critic losses of each update.
        for before, update in zip(seen, trainer.metrics.updates, strict=True):
            torch.testing.assert_close(before, update.critic_loss)
    else:
        # PCGrad mixed the actor's task gradients: one call, at the one update where the actor was due.
        assert seen[0].shape == (K, K) and torch.isfinite(seen[0]).all()


# ----- 5. episode success (any step) and return (sum), as logged ---------------------------------


def test_episode_tracker_against_a_hand_count():
    tracker = EpisodeTracker(2)
    # Task 0: episodes of 3 steps; task 1: of 2 steps. Success 1 inside episodes but 0 at their end.
    reward = [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50], [6, 60], [7, 70], [8, 80]]
    success = [[0, 1], [1, 0], [0, 0], [0, 0], [0, 0], [0, 1], [1, 0], [0, 0]]
    done = [[0, 0], [0, 1], [1, 0], [0, 1], [0, 0], [1, 1], [0, 0], [1, 1]]
    for t in range(7):
        tracker.record(np.array(reward[t], float), np.array(success[t], float), np.array(done[t], bool))
    mean_success, mean_return = tracker.drain()
    # Task 0: episodes {1,2,3} (success mid-episode only) and {4,5,6} (none).
    # Task 1: {10,20} (success at its first step only), {30,40} (none), {50,60} (at its last step).
    np.testing.assert_allclose(mean_success, [(1 + 0) / 2, (1 + 0 + 1) / 3])
    np.testing.assert_allclose(mean_return, [(6 + 15) / 2, (30 + 70 + 110) / 3])
    assert tracker.drain() is None  # drained episodes are gone
    # The episodes running at the drain carry on: task 0 {7 (success), 8}, task 1 {70, 80}.
    tracker.record(np.array(reward[7], float), np.array(success[7], float), np.array(done[7], bool))
    mean_success, mean_return = tracker.drain()
    np.testing.assert_allclose(mean_success, [1.0, 0.0])
    np.testing.assert_allclose(mean_return, [15.0, 150.0])


def _inject_success(call_index: int, info: dict) -> None:
    """Scripted successes on real steps: mid-episode for task 0 in episode 0, at the last step for
    task 1 in episode 1 (where Metaworld reports it in final_info), mid-episode for task 1 in episode 2."""
    episode, t = divmod(call_index, HORIZON)
    if (episode, t) == (0, 2):
        info["success"][0] = 1.0
    elif (episode, t) == (1, HORIZON - 1):
        assert info["_final_info"].all() and info["final_info"]["_success"].all()
        info["final_info"]["success"][1] = 1.0
    elif (episode, t) == (2, 1):
        info["success"][1] = 1.0


def test_logged_train_success_and_return_follow_the_episode_definitions(trainers, tmp_path):
    trainer = trainers(tmp_path, warmup=100)
    spy = StepSpy(trainer, inject=_inject_success)
    log_dir = tmp_path / "tb"
    logger = MetricsWriter(log_dir, trainer.task_names)
    log_after = (2 * HORIZON + 2, 4 * HORIZON)  # the first log falls inside episode 2
    for until in log_after:
        while trainer.env_step < until:
            trainer.step()
        trainer.log_train(logger)
    logger.close()

    # Hand count from the raw steps, episode by episode.
    episodes = []  # (per-task return, per-task any-step success, per-task last-step success)
    for start in range(0, 4 * HORIZON, HORIZON):
        calls = spy.calls[start : start + HORIZON]
        assert [bool(c["truncated"].all()) for c in calls] == [False] * (HORIZON - 1) + [True]
        flags = np.stack([raw_success(c, last_step=i == HORIZON - 1) for i, c in enumerate(calls)])
        episodes.append((sum(c["reward"].astype(np.float64) for c in calls), flags.max(0), flags[-1]))

    logged = tb_scalars(log_dir, ("train/",))
    assert [step for step, _ in logged["train/success_rate"]] == list(log_after)
    assert [step for step, _ in logged["train/return"]] == list(log_after)
    for index, finished in enumerate((episodes[0:2], episodes[2:4])):
        expected_return = np.mean([ret for ret, _, _ in finished], axis=0).mean()
        expected_success = np.mean([any_step for _, any_step, _ in finished], axis=0).mean()
        last_step_success = np.mean([last for _, _, last in finished], axis=0).mean()
        assert expected_success != last_step_success  # the script tells the two definitions apart
        assert logged["train/success_rate"][index][1] == pytest.approx(expected_success, abs=1e-6)
        assert logged["train/return"][index][1] == pytest.approx(expected_return, rel=1e-5)
    assert [value for _, value in logged["train/success_rate"]] == pytest.approx([0.5, 0.25])


# ----- 6. seeds ----------------------------------------------------------------------------------


def _run_recorded(trainer: Trainer, steps: int) -> dict:
    spy = StepSpy(trainer)
    record = {"reset_obs": trainer.collector.obs.copy()}
    for _ in range(steps):
        trainer.step()
    record["actions"] = np.stack([c["action"] for c in spy.calls])
    record["obs"] = np.stack([c["obs"] for c in spy.calls])
    record["critic"] = torch.stack([u.critic_loss for u in trainer.metrics.updates]).numpy()
    record["actor"] = torch.stack([u.actor_loss for u in trainer.metrics.updates]).numpy()
    trainer.env.close()
    return record


SEED_STEPS, SEED_WARMUP = 7, 3


@pytest.fixture(scope="module")
def seed3_run(tmp_path_factory):
    return _run_recorded(make_trainer(tmp_path_factory.mktemp("seed3"), seed=3, warmup=SEED_WARMUP), SEED_STEPS)


@pytest.mark.slow
def test_same_seed_same_obs_actions_and_losses(seed3_run, tmp_path):
    again = _run_recorded(make_trainer(tmp_path, seed=3, warmup=SEED_WARMUP), SEED_STEPS)
    assert seed3_run["critic"].shape == (SEED_STEPS - SEED_WARMUP, K)
    for key in ("reset_obs", "obs", "actions", "critic", "actor"):
        np.testing.assert_array_equal(again[key], seed3_run[key], err_msg=f"same seed, different {key}")


def test_other_seed_other_goals_and_losses(seed3_run, tmp_path):
    other = _run_recorded(make_trainer(tmp_path, seed=4, warmup=SEED_WARMUP), SEED_STEPS)
    for row in range(K):  # every task gets another goal ...
        assert not np.allclose(other["reset_obs"][row, GOAL], seed3_run["reset_obs"][row, GOAL])
    assert not np.allclose(other["critic"], seed3_run["critic"])  # ... and the run other losses
    assert not np.allclose(other["actions"], seed3_run["actions"])
