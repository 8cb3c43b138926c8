"""Every device-dependent path on a real CUDA device: `pytest -m cuda` (scripts/gpu_acceptance.py runs them).

Skipped, with the reason, where torch sees no CUDA device. Their CPU halves (the logic that needs no
GPU: fallback, static buffers, restore, memory arithmetic, flags) are in tests/test_self_check.py,
tests/test_compile.py and tests/test_cuda_paths.py. Comparisons with the eager update use the
self-check's stated tolerance (mtrl_famo.self_check: losses relative 1e-3, parameter changes
relative 1e-2 of the eager change): a replayed or compiled update may sum in another order.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from mtrl_famo import balancers, checkpoint, memory
from mtrl_famo.balancers import HostGramMixing
from mtrl_famo.build import build_agent, build_learner, build_update
from mtrl_famo.compiled_update import GraphedUpdate, compile_functions
from mtrl_famo.config import ConfigError, compose
from mtrl_famo.learner import SACLearner
from mtrl_famo.replay import TaskReplay
from mtrl_famo.self_check import change_error, loss_error, synthetic_batches
from mtrl_famo.timing import UpdateTimer

from tiny_setup import tiny_trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
    ),
]

TWO_TASKS = ("env=custom", "env.tasks=[reach-v3,push-v3]")
SMALL = ("agent.hidden_dim=32", "agent.num_layers=2", "agent.batch_size_per_task=16", "agent.replay_size=200")
CADENCES = ("agent.actor_update_every=2", "agent.target_update_every=3")
BATCH = 16


def learner_on_cuda(balancer: str, *overrides: str) -> SACLearner:
    """The CLI's eager learner (capturable Adam where the graph may record it) on cuda, same seed every time."""
    config = compose(*TWO_TASKS, *SMALL, f"balancer={balancer}", "device=cuda", *overrides)
    obs_dim, action_dim = config.env.dims()
    torch.manual_seed(0)
    agent = build_agent(config.agent, obs_dim, action_dim, 2, torch.device("cuda"))
    return build_learner(config.agent, config.balancer, agent, torch.Generator("cuda").manual_seed(0))


def assert_agree(plain: SACLearner, update, other: SACLearner, count: int) -> None:
    """`update` (acting on `other`) and the eager update of `plain` agree to the self-check's tolerance."""
    start = {name: t.clone() for name, t in other.agent.state_dict().items()}
    for batch in synthetic_batches(plain, count, BATCH):
        units, relative, loss = loss_error(update(batch), plain.update(batch))
        assert units <= 1.0, f"{loss} off by {relative:.1e}"
    for name, got in other.agent.state_dict().items():
        units, relative = change_error(start[name], got, plain.agent.state_dict()[name])
        assert units <= 1.0, f"the change of {name} is off by {relative:.1e}"
    for loss, balancer in plain.balancers.items():
        for want, got in zip(balancer.carried_state()[0], other.balancers[loss].carried_state()[0]):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("balancer", ["mtsac", "famo"])
def test_graph_replay_equals_eager_over_every_cadence(balancer: str) -> None:
    """Captured graphs (one per cadence: actor every 2nd, target every 3rd update) replayed 8 times take
    the eager updates, with the same random draws."""
    overrides = (*CADENCES, "agent.compile=false")
    plain, graphed = learner_on_cuda(balancer, *overrides), learner_on_cuda(balancer, *overrides)
    update = GraphedUpdate(graphed)
    assert_agree(plain, update, graphed, 8)
    assert len(update.graphs) == 4 and update.replays == 8 and graphed.num_updates == 8
    assert graphed.generator.get_state().equal(plain.generator.get_state())


@pytest.mark.parametrize("balancer", ["famo", "pcgrad"])
def test_compiled_update_equals_eager(balancer: str) -> None:
    """A loss-weighting method (FAMO: its loss compiled) and a gradient method (PCGrad: the TD target compiled)."""
    plain, compiled = (
        learner_on_cuda(balancer, "agent.cuda_graph=false"),
        learner_on_cuda(balancer, "agent.cuda_graph=false"),
    )
    compile_functions(compiled)
    assert_agree(plain, compiled.update, compiled, 3)


def test_self_check_verdicts_on_cuda() -> None:
    """With the defaults, FAMO trains with the graph over the compiled update; PCGrad compiled, no graph."""
    config = compose(*TWO_TASKS, *SMALL, "balancer=famo", "device=cuda")
    learner = learner_on_cuda("famo")
    choice = build_update(config.agent, config.balancer, learner)
    assert choice.used == "graph", choice.line()
    assert [(v.layer, v.outcome) for v in choice.verdicts] == [("compiled", "on"), ("graph", "on")], choice.line()
    assert learner.num_updates == 0  # the check put the learner back
    config = compose(*TWO_TASKS, *SMALL, "balancer=pcgrad", "device=cuda")
    choice = build_update(config.agent, config.balancer, learner_on_cuda("pcgrad"))
    assert choice.used == "compiled" and choice.verdicts[1].outcome == "off", choice.line()
    assert "balancer=pcgrad" in choice.verdicts[1].reason


IN_PROCESS_RUN = (
    "env=custom",
    "env.tasks=[reach-v3,push-v3,pick-place-v3]",
    "env.max_episode_steps=20",
    "agent.hidden_dim=32",
    "agent.num_layers=2",
    "agent.batch_size_per_task=8",
    "agent.warmup_steps=20",
    "agent.compile=false",  # the graph over the eager update: compiling is covered above, and costs a minute
    "eval.every=20",
    "eval.episodes=1",
    "eval.background=false",
    "log.every=10",
    "progress=false",
    "device=cuda",
    "balancer=famo",
)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag.startswith(("loss/", "eval/", "train/", "alpha/", "balancer/"))
    }


def test_checkpoint_and_resume_on_cuda_match_an_uninterrupted_run(tmp_path: Path) -> None:
    """FAMO with the graph: a finished 40-step run re-launched with steps=80 (its checkpoint loaded into a
    capturable Adam, a fresh graph captured after the load) ends like a run given 80 steps at once."""
    from mtrl_famo.trainer import Trainer

    def train(run_dir: Path, steps: int) -> dict:
        trainer = Trainer(compose(*IN_PROCESS_RUN, f"run_dir={run_dir}", f"steps={steps}"))
        summary = trainer.train()
        assert trainer.update_choice.used == "graph", trainer.update_choice.line()
        return summary

    reference, run = tmp_path / "reference", tmp_path / "run"
    train(reference, 80)
    train(run, 40)
    assert checkpoint.load_latest(run)["rng"]["generator_device"] == "cuda"
    summary = train(run, 80)
    assert summary["env_steps"] == 80 and summary["complete"]
    expected, got = scalars(reference), scalars(run)
    assert set(got) == set(expected) and "loss/critic" in got
    for tag, points in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        # Float32 rounding at most: cuBLAS may pick another kernel for a graph captured after the resume.
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in points], rtol=1e-4, atol=1e-6, err_msg=tag)


def test_background_evaluation_of_a_cuda_trained_policy(tmp_path: Path) -> None:
    """The worker evaluates a CPU snapshot of the CUDA actor: the same result as evaluating that policy here."""
    from mtrl_famo.evaluator import Evaluator

    trainer = tiny_trainer(
        tmp_path / "run", "device=cuda", "agent.compile=false", "eval.background=true", "steps=10", "eval.every=10"
    )
    summary = trainer.train()
    config = trainer.config
    cpu_agent = copy.deepcopy(trainer.agent).to("cpu")
    blocking = Evaluator(
        config.env, config.seed, config.eval.episodes, cpu_agent, torch.device("cpu"), protocol=config.eval.protocol
    )
    result = blocking.run()
    blocking.close()
    assert summary["eval_success_rate"] == result.mean_success_rate
    np.testing.assert_allclose(trainer.evaluator.last.mean_return, result.mean_return, rtol=1e-5)


def test_the_memory_check_on_cuda() -> None:
    free, _ = torch.cuda.mem_get_info()
    assert (
        abs(memory.available_memory(torch.device("cuda")) - free) < 64 * 2**20
    )  # read now, give or take the allocator
    config = compose(*TWO_TASKS, *SMALL, "balancer=famo", "device=cuda")  # fits
    device_parts, host_parts = memory.memory_parts(config, "cuda")
    labels = {label for _, label, _, _ in device_parts}
    assert {"cuda context", "graph pool", "capture snapshot", "self-check"} <= labels
    assert {label for _, label, _, _ in host_parts} >= {"env worker processes", "the replay's checkpoint copy"}
    with pytest.raises(ConfigError) as error:
        compose(*TWO_TASKS, "balancer=famo", "device=cuda", "agent.replay_size=100000000000")
    assert "agent.replay_size=100000000000 does not fit in memory" in str(error.value)
    assert "free on cuda" in str(error.value)


def test_the_replays_checkpoint_copy_takes_no_device_memory() -> None:
    """Defect 7: `state_dict` copied the filled buffer on the device (twice its memory at a checkpoint)."""
    replay = TaskReplay(10, 50_000, 49, 4, "cuda")
    replay.size = replay.position = 40_000
    replay.storage["reward"][3, 39_999] = 7.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    state = replay.state_dict()
    assert torch.cuda.max_memory_allocated() == before
    assert all(t.device.type == "cpu" and t.is_pinned() and t.shape[1] == 40_000 for t in state["storage"].values())
    assert state["storage"]["reward"][3, 39_999] == 7.0
    loaded = TaskReplay(10, 50_000, 49, 4, "cuda")
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loaded.load_state_dict(state)
    assert torch.cuda.max_memory_allocated() == before and loaded.storage["reward"][3, 39_999] == 7.0


@pytest.mark.parametrize(
    "name", sorted(name for name, cls in balancers.REGISTRY.items() if issubclass(cls, HostGramMixing))
)
def test_host_side_gram_solves_on_a_cuda_device(name: str) -> None:
    """The K x K solve goes to the host and its weights come back to the gradients' device, as on the CPU."""
    generator = torch.Generator().manual_seed(0)
    grads = torch.randn(4, 50, generator=generator, dtype=torch.float64)
    gram = grads @ grads.T
    on_cpu, on_cuda = balancers.make(name, 4), balancers.make(name, 4)
    want = on_cpu.mix(gram)
    got = on_cuda.mix(gram.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-9)
    learner = learner_on_cuda(name, "agent.compile=false")
    for batch in synthetic_batches(learner, 2, BATCH):
        result = learner.update(batch)
    assert torch.isfinite(result.critic_loss).all()


def test_update_timer_reads_device_time_and_famo_checks_are_read_late() -> None:
    """perf/update_ms is CUDA-event time; FAMO's bound check is a device flag read at the next read."""
    timer = UpdateTimer(torch.device("cuda"))
    x = torch.randn(512, 512, device="cuda")
    with timer.measure():
        for _ in range(20):
            x = x @ x / 512
    assert timer.device_seconds() > 0
    famo = balancers.make("famo", 2, min_losses=10.0).to("cuda")
    famo.weighted_loss(torch.tensor([1.0, 2.0], device="cuda"))  # below the bound: recorded, not read
    with pytest.raises(ValueError, match="FAMO needs every loss above its min_losses bound"):
        famo.raise_if_failed()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (device=cuda:1)")
def test_device_cuda_1_is_the_current_device_and_the_graph_trains_there(tmp_path: Path) -> None:
    trainer = tiny_trainer(
        tmp_path / "run", "device=cuda:1", "balancer=famo", "agent.compile=false", "steps=10", "eval.every=10"
    )
    assert torch.cuda.current_device() == 1
    before = {name: t.clone() for name, t in trainer.agent.state_dict().items()}
    trainer.train()
    assert trainer.update_choice.used == "graph", trainer.update_choice.line()
    moved = [name for name, t in trainer.agent.state_dict().items() if not torch.equal(t, before[name])]
    assert moved and all(t.device == torch.device("cuda", 1) for t in trainer.agent.state_dict().values())
