"""agent.heads=shared, agent.alpha=shared and agent.init=xavier (the published mtrl runs' agent).

With one head for all tasks every actor and critic parameter is shared, so a gradient balancer
combines the per-task gradients of all of them; the references are brute-force loops of K
`torch.autograd.grad` calls, as in tests/test_task_gradients.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.agents.sac import MultiTaskSAC, actor_loss, alpha_loss, critic_loss
from mtrl_famo.balanced_backward import balanced_backward
from mtrl_famo.balancers import make
from mtrl_famo.build import build_agent, build_learner
from mtrl_famo.config import compose
from mtrl_famo.replay import Batch
from mtrl_famo.task_gradients import per_task_gradients

from tiny_setup import ACT, OBS, FixedMix, K, actor_data, critic_data

CASES = {"critic": (critic_loss, critic_data, "critic."), "actor": (actor_loss, actor_data, "actor.")}


def shared_agent(alpha: str = "shared", init: str = "pytorch", seed: int = 0) -> MultiTaskSAC:
    torch.manual_seed(seed)
    return MultiTaskSAC(
        OBS,
        ACT,
        K,
        heads="shared",
        alpha=alpha,
        init=init,
        hidden_dim=8,
        num_layers=2,
        discount=0.99,
        init_temperature=0.7,
        log_std_min=-20.0,
        log_std_max=2.0,
        network="multihead",
        network_options={},
        critic_hidden_dim=None,
        critic_layernorm=False,
    ).double()


def group(agent: nn.Module, prefix: str) -> dict[str, nn.Parameter]:
    return {n: p for n, p in agent.named_parameters() if n.startswith(prefix)}


def brute_force(agent, loss_fn, data, params) -> torch.Tensor:
    """`[K, D]`: task k's gradient of every parameter in `params` (in their order), one autograd call each."""
    losses, _ = loss_fn(agent, *data)
    rows = []
    for k in range(K):
        grads = torch.autograd.grad(losses[k], list(params.values()), retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params.values(), grads)])
        )
    return torch.stack(rows)


def flat_grads(params: dict[str, nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in params.values()])


def test_shared_heads_and_temperature_leave_no_task_axis() -> None:
    agent = shared_agent()
    names = [n for n, _ in agent.named_parameters()]
    assert not [n for n in names if is_task_specific(n)]
    assert "actor.net.head.weight" in names and "critic.q1.head.bias" in names
    assert agent.temperature.shape == (1,) and agent.alpha().shape == (1,)
    torch.testing.assert_close(agent.task_alphas(), torch.full((K,), 0.7, dtype=torch.float64))
    per_task = MultiTaskSAC(
        OBS, ACT, K, heads="per_task", alpha="per_task", init="pytorch", hidden_dim=8, num_layers=2,
        discount=0.99, init_temperature=0.7, log_std_min=-20.0, log_std_max=2.0,
        network="multihead", network_options={}, critic_hidden_dim=None, critic_layernorm=False,
    )  # fmt: skip
    shared_count = sum(p.numel() for p in agent.parameters())
    per_task_count = sum(p.numel() for p in per_task.parameters())
    heads = (8 * 2 * ACT + 2 * ACT) + 4 * (8 + 1)  # actor head + 2 online + 2 target critic heads
    assert per_task_count - shared_count == (K - 1) * heads + (K - 1)  # + the K-1 extra temperatures


@pytest.mark.parametrize("case", list(CASES))
def test_per_task_gradients_of_a_shared_head_agent_equal_k_autograd_calls(case: str) -> None:
    loss_fn, make_data, prefix = CASES[case]
    agent, data = shared_agent(), make_data(torch.float64)
    params = group(agent, prefix)
    expected = brute_force(agent, loss_fn, data, params)
    _, _, grads = per_task_gradients(agent, loss_fn, data, set(params))
    got = torch.cat([grads[n].flatten(1) for n in params], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)
    assert torch.all(expected.norm(dim=1) > 1e-6) and not torch.allclose(expected[0], expected[1])


@pytest.mark.parametrize("case", list(CASES))
def test_a_gradient_balancer_combines_every_parameter_with_a_shared_head(case: str) -> None:
    loss_fn, make_data, prefix = CASES[case]
    agent, data = shared_agent(), make_data(torch.float64)
    params = group(agent, prefix)
    expected = brute_force(agent, loss_fn, data, params)
    balancer = FixedMix(K)
    balanced_backward(agent, loss_fn, data, params, balancer)
    assert balancer.seen.shape == (K, sum(p.numel() for p in params.values()))  # heads included
    torch.testing.assert_close(flat_grads(params), torch.tensor(FixedMix.MIX, dtype=torch.float64) @ expected)


def aligned_shared_agent_and_data():
    """A target far above every Q: each task's critic gradient pushes Q up, so no pair conflicts."""
    return shared_agent(), critic_data(torch.float64, target_value=5.0)


@pytest.mark.parametrize(
    "name, options", [("cagrad", {"c": 0.0}), ("cagrad", {"c": 0.0, "rescale": 2}), ("pcgrad", {"seed": 1})]
)
def test_conflict_free_gradient_methods_equal_mtsac_with_a_shared_head(name: str, options: dict) -> None:
    agent, data = aligned_shared_agent_and_data()
    params = group(agent, "critic.")
    reference = brute_force(agent, critic_loss, data, params)
    assert torch.all(reference @ reference.T > 0), "precondition: no pair of tasks conflicts"
    assert not torch.allclose(reference[0], reference[1]), "precondition: tasks still differ"

    balanced_backward(agent, critic_loss, data, params, make("mtsac", K))
    mean = flat_grads(params).clone()
    torch.testing.assert_close(mean, reference.mean(0))
    for p in agent.parameters():
        p.grad = None
    balanced_backward(agent, critic_loss, data, params, make(name, K, **options))
    torch.testing.assert_close(flat_grads(params), mean, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", ["shared", "per_task"])
def test_temperature_objective_is_the_whole_batch_mean_when_shared(alpha: str) -> None:
    """Shared: d/d log_alpha of the mean over all K*B samples; per task: each task's own mean."""
    agent = shared_agent(alpha=alpha)
    log_prob = torch.randn(K, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    agent.temperature_objective(alpha_loss(agent, log_prob)).backward()
    gap = log_prob + agent.target_entropy
    want = -(0.7 * gap.mean()).reshape(1) if alpha == "shared" else -(0.7 * gap.mean(-1, keepdim=True))
    torch.testing.assert_close(agent.temperature.grad, want)


def test_one_learner_update_with_shared_head_and_temperature_moves_every_parameter() -> None:
    config = compose(
        "env=custom",
        "experiment=cagrad_paper",
        "balancer=pcgrad",
        "agent.hidden_dim=8",
        "agent.num_layers=1",
        "device=cpu",
    )
    torch.manual_seed(0)
    agent = build_agent(config.agent, 39, 4, 2, torch.device("cpu"))
    learner = build_learner(config.agent, config.balancer, agent, torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in agent.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    batch = Batch(
        obs=torch.randn(2, 5, 39, generator=gen),
        action=torch.rand(2, 5, 4, generator=gen) * 2 - 1,
        reward=torch.randn(2, 5, generator=gen),
        next_obs=torch.randn(2, 5, 39, generator=gen),
        terminated=torch.zeros(2, 5),
    )
    result = learner.update(batch, want_conflicts=True)
    moved = {n for n, p in agent.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {n for n, _ in agent.named_parameters()}  # the target critics by Polyak averaging
    assert set(result.conflicts) == {"critic", "actor"}  # pcgrad over both, heads included


@pytest.mark.parametrize("shared_head", [True, False])
def test_xavier_init_gives_xavier_uniform_weights_and_zero_biases(shared_head: bool) -> None:
    torch.manual_seed(0)
    agent = MultiTaskSAC(
        39, 4, 3, heads="shared" if shared_head else "per_task", alpha="per_task", init="xavier",
        hidden_dim=400, num_layers=3, discount=0.99, init_temperature=1.0, log_std_min=-20.0, log_std_max=2.0,
        network="multihead", network_options={}, critic_hidden_dim=None, critic_layernorm=False,
    )  # fmt: skip
    linears = [m for m in agent.critic.q1.trunk if isinstance(m, nn.Linear)]
    for m in linears:
        fan_out, fan_in = m.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.95 * bound
        assert abs(m.weight.std().item() - bound / math.sqrt(3)) < 0.03 * bound
        assert torch.count_nonzero(m.bias) == 0
    head_weight = agent.actor.net.head.weight.T if shared_head else agent.actor.net.head_weight
    head_bias = agent.actor.net.head.bias if shared_head else agent.actor.net.head_bias
    bound = math.sqrt(6.0 / (400 + 8))
    assert head_weight.abs().max() <= bound and head_weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(head_bias) == 0
    pytorch = MultiTaskSAC(
        39, 4, 3, heads="per_task", alpha="per_task", init="pytorch",
        hidden_dim=400, num_layers=3, discount=0.99, init_temperature=1.0, log_std_min=-20.0, log_std_max=2.0,
        network="multihead", network_options={}, critic_hidden_dim=None, critic_layernorm=False,
    )  # fmt: skip
    assert torch.count_nonzero(pytorch.critic.q1.trunk[0].bias) > 0  # the other law really differs
