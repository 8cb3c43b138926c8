"""The speed layers (mtrl_famo.compiled_update, mtrl_famo.optim) change no result.

torch.compile is slow to compile on a CPU: the compiled-vs-eager checks use tiny networks and a
few updates. The CUDA graph capture itself needs a GPU; everything around it (static buffers, the
noise drawn outside the graph, the update cadence) runs here through `GraphedUpdate(capture=False)`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from mtrl_famo.balancers import REGISTRY, make
from mtrl_famo.balancers import base as balancer_base
from mtrl_famo.build import build_agent, build_learner, build_update
from mtrl_famo.compiled_update import GraphedUpdate, compile_functions, resolve_cuda_graph, restore, snapshot
from mtrl_famo.config import ConfigError, compose
from mtrl_famo.learner import SACLearner, UpdateFn
from mtrl_famo.optim import FusedAdam
from mtrl_famo.replay import Batch
from mtrl_famo.trainer import Trainer

from conftest import run_script

TWO_TASKS = ("env=custom", "env.tasks=[reach-v3,push-v3]")
TINY = ("agent.hidden_dim=8", "agent.num_layers=1", "agent.batch_size_per_task=4", "agent.replay_size=100")


@pytest.fixture(autouse=True)
def _compile_in_process() -> Iterator[None]:
    """Inductor's pool of compile workers costs more than it saves on a loaded 2-core machine (27 s
    instead of 113 s for the first compiled test with an empty cache)."""
    import torch._inductor.config

    with torch._inductor.config.patch(compile_threads=1):
        yield


def learner_for(balancer: str, *overrides: str) -> SACLearner:
    """The CLI's learner (build_learner) for a tiny agent on two tasks, same seed every time."""
    config = compose(*TWO_TASKS, *TINY, f"balancer={balancer}", "device=cpu", *overrides)
    obs_dim, action_dim = config.env.dims()
    torch.manual_seed(0)
    agent = build_agent(config.agent, obs_dim, action_dim, 2, torch.device("cpu"))
    return build_learner(config.agent, config.balancer, agent, torch.Generator().manual_seed(0))


def batches(learner: SACLearner, count: int) -> list[Batch]:
    generator = torch.Generator().manual_seed(1)
    obs_dim = learner.agent.critic.q1.trunk[0].in_features - learner.agent.action_dim
    shape, act = (2, 4), learner.agent.action_dim
    return [
        Batch(
            obs=torch.randn(*shape, obs_dim, generator=generator),
            action=torch.rand(*shape, act, generator=generator) * 2 - 1,
            reward=torch.randn(*shape, generator=generator),
            next_obs=torch.randn(*shape, obs_dim, generator=generator),
            terminated=torch.zeros(shape),
        )
        for _ in range(count)
    ]


def assert_same_run(
    plain: SACLearner, other: SACLearner, data: list[Batch], atol: float = 1e-5, update: UpdateFn | None = None
) -> None:
    """Both learners take the same updates (`other` through `update`, default its own): same losses,
    parameters and balancer state (float32 tolerance)."""
    update = other.update if update is None else update
    for batch in data:
        want, got = plain.update(batch), update(batch)
        for field in ("critic_loss", "actor_loss", "alpha_loss"):
            torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-4, atol=atol, equal_nan=True)
    for (name, want), (_, got) in zip(plain.agent.state_dict().items(), other.agent.state_dict().items()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=atol, msg=name)
    for name, balancer in plain.balancers.items():
        if hasattr(balancer, "logits"):
            torch.testing.assert_close(other.balancers[name].logits, balancer.logits, rtol=1e-4, atol=atol)
    assert other.num_updates == plain.num_updates


@pytest.mark.slow
@pytest.mark.parametrize("balancer", ["mtsac", "famo", "pcgrad"])
def test_compiled_update_equals_eager(balancer: str) -> None:
    plain, compiled = learner_for(balancer), learner_for(balancer)
    compile_functions(compiled)
    swapped = compiled.loss_fns["critic"] is not plain.loss_fns["critic"]
    assert swapped == (balancer != "pcgrad")  # a gradient method keeps the eager loss (under vmap)
    assert compiled.td_target is not plain.td_target
    assert_same_run(plain, compiled, batches(plain, 3))


@pytest.mark.parametrize("balancer", ["mtsac", "famo"])
def test_graph_static_buffer_update_equals_plain(balancer: str) -> None:
    """What a CUDA graph records (static batch and noise buffers, noise drawn outside in eager
    order, one graph per update-cadence pattern) run eagerly equals the plain update."""
    every = ("agent.actor_update_every=2", "agent.target_update_every=3")
    plain, graphed = learner_for(balancer, *every), learner_for(balancer, *every)
    assert_same_run(plain, graphed, batches(plain, 5), atol=0.0, update=GraphedUpdate(graphed, capture=False))
    assert plain.generator.get_state().equal(graphed.generator.get_state())  # the same random draws


@pytest.mark.parametrize("balancer", ["mtsac", "famo"])
def test_restore_undoes_warmup_updates(balancer: str) -> None:
    """Before capture, a graph's warm-up updates are undone in place: parameters, target critics,
    Adam moments (zeroed where the warm-up created them: Adam's fresh state) and FAMO's logits."""
    plain, warmed = learner_for(balancer), learner_for(balancer)
    data = batches(plain, 3)
    saved, generator = snapshot(warmed), warmed.generator.get_state()
    for batch in data:
        warmed.update(batch)
    restore(warmed, saved)
    warmed.num_updates = 0
    warmed.generator.set_state(generator)
    assert_same_run(plain, warmed, data, atol=0.0)


def test_build_learner_on_cpu_uses_fused_adam_and_no_compile_by_default() -> None:
    learner = learner_for("famo")
    assert all(isinstance(opt, FusedAdam) for opt in learner.optimizers.values())
    config = compose(*TWO_TASKS, *TINY, "balancer=famo", "device=cpu")
    choice = build_update(config.agent, config.balancer, learner)
    assert choice.used == "eager" and choice.update == learner.update  # auto: no graph on a CPU
    assert [(v.layer, v.outcome) for v in choice.verdicts] == [("compiled", "off"), ("graph", "off")]
    assert learner.td_target == learner.agent.td_target  # auto: not compiled on a CPU (measured slower)


def test_fused_adam_makes_gradients_contiguous_and_steps_like_adam() -> None:
    """The guard against CPU fused Adam reading a non-contiguous gradient with the parameter's strides."""
    torch.manual_seed(0)
    start = [torch.randn(6, 5), torch.randn(5)]
    grads = [torch.randn(5, 6).T, torch.randn(10)[::2]]  # non-contiguous views
    plain = [p.clone().requires_grad_() for p in start]
    fused = [p.clone().requires_grad_() for p in start]
    plain_opt, fused_opt = torch.optim.Adam(plain, lr=0.1), FusedAdam(fused, lr=0.1)
    for _ in range(3):
        for p, q, g in zip(plain, fused, grads):
            p.grad, q.grad = g.contiguous(), g
        plain_opt.step()
        fused_opt.step()
        assert all(q.grad.is_contiguous() for q in fused)
    for p, q in zip(plain, fused):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_graph_safe_is_declared_per_class() -> None:
    assert REGISTRY["mtsac"].graph_safe and REGISTRY["famo"].graph_safe
    assert not REGISTRY["pcgrad"].graph_safe and not REGISTRY["cagrad"].graph_safe
    assert all(isinstance(cls.graph_safe, bool) for cls in REGISTRY.values())


@pytest.mark.parametrize(
    "overrides, words",
    [
        (("agent.cuda_graph=true",), ("agent.cuda_graph=true", "CUDA device", "auto, true or false")),
        # Caught by the config's type check first (the key's hint is bool | Literal["auto"]).
        (("agent.compile=maybe",), ("agent.compile='maybe'", "true or false or auto")),
        (("agent.cuda_graph=sometimes",), ("agent.cuda_graph='sometimes'", "true or false or auto")),
        (("agent.compile=2",), ("agent.compile=2", "true or false or auto")),
    ],
)
def test_bad_settings_are_one_sentence(overrides: tuple[str, ...], words: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as error:
        compose(*TWO_TASKS, "device=cpu", *overrides)
    message = str(error.value)
    assert all(word in message for word in words) and "\n" not in message, message


def test_cuda_graph_true_refuses_a_balancer_with_host_control_flow() -> None:
    cuda = torch.device("cuda")  # a device name only: nothing runs on it
    with pytest.raises(ValueError) as error:
        resolve_cuda_graph(True, cuda, [REGISTRY["pcgrad"], REGISTRY["mtsac"]])
    assert "balancer=pcgrad" in str(error.value) and "famo, mtsac" in str(error.value)
    assert resolve_cuda_graph("auto", cuda, [REGISTRY["famo"], REGISTRY["mtsac"]])
    assert not resolve_cuda_graph("auto", cuda, [REGISTRY["pcgrad"], REGISTRY["mtsac"]])
    assert not resolve_cuda_graph("auto", torch.device("cpu"), [REGISTRY["famo"]])


def test_the_speed_settings_do_not_make_a_checkpoint_another_run() -> None:
    def comparable(*overrides: str) -> dict:
        return Trainer._comparable_config(SimpleNamespace(config=compose(*TWO_TASKS, *overrides)))

    assert comparable("agent.compile=true") == comparable("agent.compile=false", "agent.cuda_graph=false")
    assert comparable("agent.hidden_dim=8") != comparable()


def test_famo_device_check_raises_late_with_the_first_bad_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CUDA device the bound check is read every DEVICE_CHECK_EVERY calls (run here on CPU tensors)."""
    monkeypatch.setattr(balancer_base, "reads_at_once", lambda values: False)
    monkeypatch.setattr(balancer_base, "DEVICE_CHECK_EVERY", 4)
    famo = make("famo", 3, min_losses=1.0)
    good, bad = torch.tensor([2.0, 3.0, 4.0]), torch.tensor([2.0, 0.5, 3.0])
    famo.weighted_loss(good)
    famo.weighted_loss(bad)  # recorded, not read yet
    famo.weighted_loss(torch.tensor([0.1, 0.1, 0.1]))  # a later failure: the first one is reported
    with pytest.raises(ValueError) as error:
        famo.weighted_loss(good)  # the 4th check reads the flag
    message = str(error.value)
    assert "min_losses" in message and "[2.0, 0.5, 3.0]" in message and "\n" not in message


@pytest.mark.slow
def test_bench_compile_runs(tmp_path) -> None:
    result = run_script(
        "bench_compile.py",
        *("--sizes", "1x8x4", "--tasks", "2", "--balancers", "mtsac", "--repeats", "1", "--warmup", "1"),
        *("--threads", "1", "--json", "--variants", "eager"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["variant"] for row in rows] == ["eager"] and rows[0]["ms"] > 0
