"""Evaluation protocols (any_success, metaworld) and `python -m mtrl_famo.evaluate`.

The reference for `eval.protocol=metaworld` is Metaworld's own `metaworld.evaluation.evaluation()`,
called here on an identically built env; policies are a fixed random-weight actor and a
hand-written reach policy that succeeds on reach-v3 for some goals (so success is not 0 == 0).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from metaworld.evaluation import evaluation
from omegaconf import OmegaConf

from mtrl_famo.agents.sac import MultiTaskSAC
from mtrl_famo.build import build_agent
from mtrl_famo.config import CONFIG_DIR, compose, from_dict
from mtrl_famo.envs import EnvSpec, build_env
from mtrl_famo.evaluate import cli
from mtrl_famo.evaluator import Evaluator
from mtrl_famo.trainer import Trainer

from conftest import TINY_RUN
from tiny_setup import tiny_agent

TASKS = ("reach-v3", "push-v3")
HAND, GOAL = slice(0, 3), slice(36, 39)  # positions inside Metaworld's 39-dim observation
CPU = torch.device("cpu")


def spec(max_episode_steps: int, goals: str = "random") -> EnvSpec:
    return EnvSpec(
        name="custom",
        tasks=TASKS,
        one_hot=True,
        vector_strategy="sync",
        workers=1,
        max_episode_steps=max_episode_steps,
        goals=goals,
        reward_version="v2",
        reward_normalization="none",
    )


def reach_action(obs: np.ndarray) -> np.ndarray:
    """Move the hand straight at the goal, full speed per axis (solves reach-v3 when the goal is
    near enough for the episode's length; never push-v3: the puck stays where it is)."""
    action = np.zeros((obs.shape[0], 4), dtype=np.float32)
    action[:, :3] = np.clip((obs[:, GOAL] - obs[:, HAND]) * 100.0, -1.0, 1.0)
    return action


class ScriptedActor:
    """Stands in for the agent's actor: `mean_action` on `[K, 1, obs_dim]`; records every goal it sees."""

    def __init__(self, act=reach_action):
        self.act = act
        self.goals: list[np.ndarray] = []  # [K, 3] per call

    def mean_action(self, obs: torch.Tensor) -> torch.Tensor:
        rows = obs[:, 0].numpy()
        self.goals.append(rows[:, GOAL].copy())
        return torch.as_tensor(self.act(rows)).unsqueeze(1)


def random_actor_agent() -> MultiTaskSAC:
    return tiny_agent(
        torch.float32, seed=0, obs_dim=39 + len(TASKS), action_dim=4, num_tasks=len(TASKS), hidden_dim=16, num_layers=1
    )


def episode_goals(goals: list[np.ndarray], row: int) -> list[tuple[float, ...]]:
    """Row `row`'s goal of each episode, in order: under every_goal_in_turn consecutive episodes
    never share a goal, so an episode starts wherever the observed goal changes."""
    seen = [tuple(np.round(g[row], 6)) for g in goals]
    return [goal for i, goal in enumerate(seen) if i == 0 or goal != seen[i - 1]]


# ----- eval.protocol=metaworld is Metaworld's own evaluation() ---------------------------------


@pytest.mark.parametrize("policy", ["random_actor", "scripted_reach"])
def test_metaworld_protocol_is_metaworlds_own_evaluation(policy):
    """Two evaluations in a row through our Evaluator == two calls of `metaworld.evaluation.evaluation()`
    on an env built the same way, each started at a fresh goal shuffle (set here through gymnasium's
    set_attr, not through our code), mapped from Metaworld's dict by task name back to row order."""
    horizon, episodes = 30, 10
    agent = random_actor_agent() if policy == "random_actor" else SimpleNamespace(actor=ScriptedActor())
    evaluator = Evaluator(spec(horizon), 0, episodes, agent, CPU, protocol="metaworld")

    def reference_action(obs):
        with torch.no_grad():
            return agent.actor.mean_action(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(1)).squeeze(1).numpy()

    reference_agent = SimpleNamespace(eval_action=reference_action, reset=lambda mask: None)
    env = build_env(spec(horizon), 0, every_goal_in_turn=True)
    try:
        for _ in range(2):
            ours = evaluator.run()
            env.vector.set_attr("current_task_idx", -1)  # the next reset starts a new shuffle of the 50 goals
            _, _, success, returns = evaluation(reference_agent, env.vector, episodes)
            assert ours.task_names == list(TASKS)
            np.testing.assert_array_equal(ours.success_rate, [success[name] for name in TASKS])
            np.testing.assert_array_equal(ours.mean_return, [np.mean(returns[name]) for name in TASKS])
            if policy == "scripted_reach":
                assert 0.0 < ours.success_rate[0] < 1.0 and ours.success_rate[1] == 0.0, ours.success_rate
    finally:
        evaluator.close()
        env.close()


def test_metaworld_protocol_stops_episodes_at_first_success():
    """One fixed goal per task, so both protocols play the very same episodes until the first success:
    they agree on success, but metaworld's episode ends there while any_success plays on to the
    horizon (more reward); push-v3, never solved, runs to the horizon under both."""
    results = {}
    for protocol in ("any_success", "metaworld"):
        evaluator = Evaluator(
            spec(40, goals="fixed"), 0, 2, SimpleNamespace(actor=ScriptedActor()), CPU, protocol=protocol
        )
        try:
            results[protocol] = evaluator.run()
        finally:
            evaluator.close()
    any_success, metaworld = results["any_success"], results["metaworld"]
    np.testing.assert_array_equal(any_success.success_rate, [1.0, 0.0])
    np.testing.assert_array_equal(metaworld.success_rate, [1.0, 0.0])
    assert metaworld.mean_return[0] < any_success.mean_return[0] - 5.0  # reach-v3 pays ~10 per step near the goal
    # Same steps; only the summation differs (float32 rewards here, Metaworld's float64 statistics there).
    np.testing.assert_allclose(metaworld.mean_return[1], any_success.mean_return[1], rtol=1e-6)


@pytest.mark.parametrize(("goals", "distinct"), [("random", 50), ("fixed", 1)])
def test_metaworld_protocol_visits_every_goal_once(goals, distinct):
    """goals=random: 50 episodes of each task visit its 50 goals once each, in every evaluation (not
    only the first: an evaluation must not carry on where the last one stopped); goals=fixed: the
    seed's one goal every time."""
    actor = ScriptedActor(act=lambda obs: np.zeros((obs.shape[0], 4), dtype=np.float32))  # 2 steps: no success
    evaluator = Evaluator(spec(2, goals), 0, 50, SimpleNamespace(actor=actor), CPU, protocol="metaworld")
    try:
        for _ in range(2):
            actor.goals.clear()
            evaluator.run()
            assert len(actor.goals) == 50 * 2  # 50 full episodes of 2 steps, every row
            for row in range(len(TASKS)):
                all_seen = {tuple(np.round(g[row], 6)) for g in actor.goals}
                assert len(all_seen) == distinct, (goals, row, len(all_seen))
                if goals == "random":
                    assert len(episode_goals(actor.goals, row)) == 50
    finally:
        evaluator.close()


@pytest.mark.parametrize("protocol", ["any_success", "metaworld"])
def test_evaluator_checkpoint_resumes_the_goal_sequence(protocol):
    """An Evaluator restored from another's state_dict (through torch.save, as in a checkpoint)
    evaluates exactly what the original evaluates next: same goals, success and returns."""
    original_actor, resumed_actor = ScriptedActor(), ScriptedActor()
    original = Evaluator(spec(30), 0, 3, SimpleNamespace(actor=original_actor), CPU, protocol=protocol)
    resumed = Evaluator(spec(30), 0, 3, SimpleNamespace(actor=resumed_actor), CPU, protocol=protocol)
    try:
        original.run()
        first_goals = list(original_actor.goals)
        buffer = io.BytesIO()
        torch.save(original.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=False)
        original_actor.goals.clear()
        expected = original.run()
        resumed.load_state_dict(state)
        got = resumed.run()
        for row in range(len(TASKS)):
            assert episode_goals(resumed_actor.goals, row) == episode_goals(original_actor.goals, row)
            assert episode_goals(original_actor.goals, row) != episode_goals(first_goals, row)  # the state matters
        np.testing.assert_array_equal(got.success_rate, expected.success_rate)
        np.testing.assert_array_equal(got.mean_return, expected.mean_return)
        assert got.success_rate[0] > 0.0 or expected.mean_return[0] > 0.0
    finally:
        original.close()
        resumed.close()


# ----- python -m mtrl_famo.evaluate --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TINY_RUN (any_success evaluation) trained in process, written as the CLI writes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[*TINY_RUN, f"run_dir={run_dir}", "device=cpu"])
    config = from_dict(OmegaConf.to_container(cfg, resolve=True))
    assert config.eval.protocol == "any_success"
    Trainer(config).train(resolved_config=OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def expected_evaluation(run_dir: Path, *overrides: str):
    """What evaluating the checkpoint's weights gives, built here from the composed config."""
    config = compose(*TINY_RUN, "device=cpu", *overrides)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    agent = build_agent(config.agent, *config.env.dims(), len(config.env.task_names()), CPU)
    agent.load_state_dict(state["agent"])
    evaluator = Evaluator(config.env, config.seed, config.eval.episodes, agent, CPU, protocol=config.eval.protocol)
    try:
        return evaluator.run()
    finally:
        evaluator.close()


def test_evaluate_cli_table_json_and_untouched_run(tiny_run, capsys):
    before = file_hashes(tiny_run)
    assert {"checkpoint.pt", "config.yaml", "summary.json"} <= set(before)
    overrides = ("eval.protocol=metaworld", "eval.episodes=2")
    assert cli([str(tiny_run), *overrides, "device=cpu"]) == 0
    out = capsys.readouterr().out
    after = file_hashes(tiny_run)
    written = "evaluations/metaworld_step120_episodes2.json"
    assert set(after) == set(before) | {written}
    assert {name: after[name] for name in before} == before  # every file of the run byte-identical

    report = json.loads((tiny_run / written).read_text())
    expected = expected_evaluation(tiny_run, *overrides)
    assert report["protocol"] == "metaworld" and report["episodes_per_task"] == 2 and report["env_step"] == 120
    assert [row["task"] for row in report["tasks"]] == list(TASKS)
    assert [row["success_rate"] for row in report["tasks"]] == expected.success_rate.tolist()
    assert [row["mean_return"] for row in report["tasks"]] == expected.mean_return.tolist()
    assert report["mean_success_rate"] == expected.mean_success_rate
    assert report["mean_return"] == float(expected.mean_return.mean())

    assert "protocol metaworld, 2 episodes per task" in out and "120 environment steps per task" in out
    for name, success, ret in [
        *((row["task"], row["success_rate"], row["mean_return"]) for row in report["tasks"]),
        ("mean", report["mean_success_rate"], report["mean_return"]),
    ]:
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert line.split()[1:] == [f"{success:.3f}", f"{ret:.2f}"], line
    assert str(tiny_run / written) in out

    # --json prints exactly what --out receives; the run stays as it was.
    target = tiny_run.parent / "elsewhere" / "eval.json"
    assert cli([str(tiny_run), "eval.protocol=metaworld", "eval.episodes=2", "--json", "--out", str(target)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed) == json.loads(target.read_text()) == {**report, "overrides": list(overrides)}
    assert file_hashes(tiny_run) == after


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "does not exist"),
        (["{empty}"], "holds no config.yaml"),
        (["{no_checkpoint}"], "holds no checkpoint"),
        (["{run}", "eval.protokol=metaworld"], "Unknown config key eval.protokol"),
        (["{run}", "eval.protocol=best"], "Unknown eval.protocol 'best'"),
        (["{run}", "eval.episodes=0"], "eval.episodes=0 is invalid"),
        (["{run}", "agent.hidden_dim=64"], "agent.hidden_dim=64 would not fit the agent"),
        (["{run}", "env.tasks=[push-v3,reach-v3]"], "env.tasks=[push-v3,reach-v3] would not fit the agent"),
        (["{run}", "--out", "/proc/no/such.json"], "cannot be written"),
    ],
    ids=["no-dir", "no-config", "no-checkpoint", "unknown-key", "unknown-value", "bad-value", "shape", "rows", "out"],
)
def test_evaluate_cli_refuses_bad_input(tiny_run, tmp_path, capsys, args, message):
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.yaml").write_bytes((tiny_run / "config.yaml").read_bytes())
    paths = {"missing": tmp_path / "missing", "empty": tmp_path, "no_checkpoint": no_checkpoint, "run": tiny_run}
    before = {path: file_hashes(path) for path in (tiny_run, no_checkpoint)}
    assert cli([arg.format(**paths) for arg in args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.endswith(".\n") and captured.err.count("\n") == 1
    assert message in captured.err, captured.err
    assert {path: file_hashes(path) for path in before} == before  # nothing written or changed


def test_evaluate_cli_refuses_a_config_of_an_older_version_in_one_sentence(tiny_run, tmp_path, capsys):
    """A config.yaml that lacks a key this version writes (here the speed keys and the wandb group) comes
    from an older, unreleased version: refused, nothing filled in with a guess."""
    import shutil

    old_run = tmp_path / "old_run"
    shutil.copytree(tiny_run, old_run, ignore=shutil.ignore_patterns("evaluations"))
    saved = OmegaConf.to_container(OmegaConf.load(old_run / "config.yaml"))
    del saved["loop"], saved["wandb"]
    (old_run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    before = file_hashes(old_run)
    assert cli([str(old_run)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {old_run / 'config.yaml'} lacks loop: the run was written by an older version of mtrl_famo, whose "
        "runs this version does not read; evaluate it with that version, or train it again with this one.\n"
    )
    assert file_hashes(old_run) == before


# ----- what evaluation reads: the checkpoint file, never the replay file ---------------------------


def test_evaluate_needs_neither_the_replay_file_nor_the_training_memory(tiny_run, tmp_path, monkeypatch, capsys):
    """A copy of the run without its replay file, its config.yaml as a GPU node writes it (device=cuda,
    compile and CUDA graph on), evaluates exactly like the run on this CPU machine without any override,
    with 1 GiB free and a replay setting that training would refuse there (the memory check is
    evaluation's: the actor); with less room than the actor needs, it is refused in one sentence."""
    import shutil

    from mtrl_famo import checkpoint, memory
    from mtrl_famo.config import ConfigError

    run_dir = tmp_path / "copied"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("evaluations"))
    (replay,) = run_dir.glob(f"{checkpoint.REPLAY_PREFIX}*.pt")
    assert torch.load(run_dir / checkpoint.LATEST, weights_only=False)["replay_file"] == replay.name
    replay.unlink()  # as when only config.yaml and checkpoint.pt were copied to a laptop
    saved = OmegaConf.load(run_dir / "config.yaml")
    saved.device, saved.agent.compile, saved.agent.cuda_graph = "cuda", True, True
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved))

    monkeypatch.setattr(memory, "available_memory", lambda device: 2**30)
    huge = "agent.replay_size=1000000000"  # 1e9 transitions: hundreds of GB for training
    with pytest.raises(ConfigError, match=r"agent\.replay_size=1000000000 does not fit in memory"):
        compose(*TINY_RUN, "device=cpu", huge)
    assert cli([str(run_dir), huge, "--json", "--out", str(tmp_path / "copy.json")]) == 0
    assert cli([str(tiny_run), "--json", "--out", str(tmp_path / "run.json")]) == 0
    capsys.readouterr()
    copy, run = (json.loads((tmp_path / name).read_text()) for name in ("copy.json", "run.json"))
    assert copy["tasks"] == run["tasks"] and copy["env_step"] == run["env_step"] == 120

    monkeypatch.setattr(memory, "available_memory", lambda device: 1024)
    assert cli([str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Evaluating this run needs about") and "only 1.0 KiB is free" in err, err
    assert err.count("\n") == 1


def test_checkpoint_replay_is_a_file_of_its_own(tmp_path) -> None:
    """Each save writes the replay under a new name that its checkpoint names; only the replays of the
    newest and the previous checkpoint stay. Resuming reads it back (falling back to the previous
    checkpoint when the newest one's replay is gone); evaluation reads without it."""
    from mtrl_famo import checkpoint

    def replay(step: int) -> dict:
        return {"storage": {"obs": torch.full((2, 3, 4), float(step))}, "position": step, "size": 3}

    for step in (1, 2, 3):
        checkpoint.save(tmp_path, {"env_step": step, "replay": replay(step)})
    files = sorted(path.name for path in tmp_path.glob(f"{checkpoint.REPLAY_PREFIX}*.pt"))
    named = {
        name: torch.load(tmp_path / name, weights_only=False)["replay_file"]
        for name in (checkpoint.LATEST, checkpoint.PREVIOUS)
    }
    assert files == sorted(named.values()) and len(set(files)) == 2
    assert not list(tmp_path.glob(".*.tmp"))

    state = checkpoint.load_latest(tmp_path)
    assert state["env_step"] == 3 and state["replay"]["position"] == 3
    assert torch.equal(state["replay"]["storage"]["obs"], replay(3)["storage"]["obs"])
    evaluation = checkpoint.load_latest(tmp_path, replay=False)
    assert evaluation["env_step"] == 3 and "replay" not in evaluation

    (tmp_path / named[checkpoint.LATEST]).unlink()
    with pytest.warns(RuntimeWarning, match="resuming from the previous checkpoint"):
        state = checkpoint.load_latest(tmp_path)
    assert state["env_step"] == 2 and state["replay"]["position"] == 2
    assert checkpoint.load_latest(tmp_path, replay=False)["env_step"] == 3


@pytest.mark.parametrize("older_format", [2, 3])
def test_checkpoint_of_an_older_layout_is_refused_in_one_sentence(tiny_run, tmp_path, capsys, older_format) -> None:
    """Format 2 held the replay inside checkpoint.pt, format 3 a flat config copy; nothing was released with
    them, so they are refused (no conversion), for resuming and for evaluation alike."""
    import shutil

    from mtrl_famo import checkpoint

    run_dir = tmp_path / "old"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("evaluations"))
    state = torch.load(run_dir / checkpoint.LATEST, weights_only=False)
    torch.save({**state, "format_version": older_format, "replay": {}}, run_dir / checkpoint.LATEST)
    with pytest.raises(checkpoint.OlderLayoutError, match="older layout"):
        checkpoint.load_latest(run_dir)
    assert cli([str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a checkpoint of an older layout" in err and err.count("\n") == 1
