"""Per-task gradients and balanced_backward checked against brute-force autograd.

The reference for every expected value is a loop of K ordinary `torch.autograd.grad` calls, one
per task loss of the whole `[K, B, ...]` batch: no vmap, no parameter slicing, no flattening
helper from the implementation. That is what the published code does, so agreement shows the
batched one-pass computation is the same math, only faster.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.agents.sac import MultiTaskSAC, actor_loss, critic_loss
from mtrl_famo.balanced_backward import balanced_backward
from mtrl_famo.balancers import make
from mtrl_famo.task_gradients import per_task_gradients

from tiny_setup import FixedMix, K, actor_data, critic_data, tiny_agent

TOLERANCE = {torch.float64: dict(rtol=1e-7, atol=1e-9), torch.float32: dict(rtol=1e-4, atol=1e-5)}


CASES: dict[str, tuple[Callable, Callable, str]] = {
    "critic": (critic_loss, critic_data, "critic."),
    "actor": (actor_loss, actor_data, "actor."),
}


def group(agent: nn.Module, prefix: str) -> dict[str, nn.Parameter]:
    return {n: p for n, p in agent.named_parameters() if n.startswith(prefix)}


def brute_force(
    agent: nn.Module, loss_fn: Callable, data: tuple, params: dict[str, nn.Parameter]
) -> list[dict[str, torch.Tensor]]:
    """Task k's gradient of every parameter in `params`: one autograd.grad per task loss."""
    losses, _ = loss_fn(agent, *data)
    assert losses.shape == (K,)
    out = []
    for k in range(K):
        grads = torch.autograd.grad(losses[k], list(params.values()), retain_graph=True, allow_unused=True)
        out.append({n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), grads)})
    return out


def clear_grads(agent: nn.Module) -> None:
    for p in agent.parameters():
        p.grad = None


def prepare(case: str, dtype: torch.dtype = torch.float64):
    """Loss function, tiny agent, task-grouped data, the loss's parameter group, and the brute-force
    per-task gradients (`expected[k][name]`) for one CASES entry."""
    loss_fn, make_data, prefix = CASES[case]
    agent = tiny_agent(dtype)
    data = make_data(dtype)
    params = group(agent, prefix)
    return loss_fn, agent, data, params, brute_force(agent, loss_fn, data, params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_per_task_gradients_equal_k_autograd_calls(case: str, dtype: torch.dtype) -> None:
    loss_fn, agent, data, params, expected = prepare(case, dtype)

    losses, aux, grads = per_task_gradients(agent, loss_fn, data, set(params))

    direct_losses, direct_aux = loss_fn(agent, *data)
    torch.testing.assert_close(losses, direct_losses.detach(), **TOLERANCE[dtype])
    torch.testing.assert_close(aux, direct_aux, **TOLERANCE[dtype])
    assert set(grads) == set(params), "exactly the trainable parameters get gradients"
    shared_seen = task_seen = 0
    for name, parameter in params.items():
        # A head already has the task axis first: its slice k is task k's own gradient.
        assert grads[name].shape == (parameter.shape if is_task_specific(name) else (K, *parameter.shape))
        for k in range(K):
            if is_task_specific(name):
                task_seen += 1
                # Only slice k of a head is reached by task k's loss (the premise of the batching).
                others = [j for j in range(K) if j != k]
                assert torch.count_nonzero(expected[k][name][others]) == 0
                torch.testing.assert_close(grads[name][k], expected[k][name][k], **TOLERANCE[dtype])
            else:
                shared_seen += 1
                torch.testing.assert_close(grads[name][k], expected[k][name], **TOLERANCE[dtype])
    assert shared_seen > 0 and task_seen > 0
    # Nothing outside the trainable group was touched.
    assert all(p.grad is None for p in agent.parameters())


def test_per_task_gradients_tasks_really_differ() -> None:
    """Guard against a vacuous pass: the per-task shared gradients are distinct and non-zero."""
    agent = tiny_agent()
    params = group(agent, "critic.")
    _, _, grads = per_task_gradients(agent, critic_loss, critic_data(torch.float64), set(params))
    trunk = grads["critic.q1.trunk.0.weight"].flatten(1)
    assert torch.all(trunk.norm(dim=1) > 1e-6)
    assert not torch.allclose(trunk[0], trunk[1])


@pytest.mark.parametrize("case", list(CASES))
def test_balanced_backward_routes_shared_and_head_gradients(case: str) -> None:
    loss_fn, agent, data, params, expected = prepare(case)
    balancer = FixedMix(K)

    result = balanced_backward(agent, loss_fn, data, params, balancer)

    for name, parameter in params.items():
        if is_task_specific(name):  # task k's own gradient, scaled like the mean loss
            want = torch.stack([expected[k][name][k] for k in range(K)]) / K
        else:
            want = sum(m * expected[k][name] for k, m in enumerate(FixedMix.MIX))
        torch.testing.assert_close(parameter.grad, want, rtol=1e-7, atol=1e-9)
    # The matrix the balancer saw and the one returned hold the brute-force rows (as a Gram matrix,
    # which does not depend on how the parameters were flattened).
    shared = [n for n in params if not is_task_specific(n)]
    reference = torch.stack([torch.cat([expected[k][n].flatten() for n in shared]) for k in range(K)])
    assert balancer.seen.shape == reference.shape
    torch.testing.assert_close(balancer.seen @ balancer.seen.T, reference @ reference.T, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(result.shared_grads, balancer.seen)
    torch.testing.assert_close(result.losses, loss_fn(agent, *data)[0].detach())
    if case == "actor":
        # The actor loss runs through the critic (Q(s, pi(s))): only the actor group may receive .grad.
        # (The critic loss never reaches the actor and the temperature enters both losses detached, so
        # the matching checks there could not fail and are not made.)
        assert all(p.grad is None for p in group(agent, "critic.").values())


def flat_shared(params: dict[str, nn.Parameter], per_name: dict[str, torch.Tensor]) -> torch.Tensor:
    """The test's own flattening (alphabetical): gradient methods are equivariant to it."""
    return torch.cat([per_name[n].flatten() for n in sorted(params) if not is_task_specific(n)])


def unflat_shared(params: dict[str, nn.Parameter], vector: torch.Tensor) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for n in sorted(params):
        if not is_task_specific(n):
            out[n] = vector[offset : offset + params[n].numel()].view_as(params[n])
            offset += params[n].numel()
    return out


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name, options", [("pcgrad", {"seed": 5}), ("cagrad", {"c": 0.6, "rescale": 1})])
def test_balanced_backward_shared_grad_is_combine_of_brute_force(case: str, name: str, options: dict) -> None:
    loss_fn, agent, data, params, expected = prepare(case)
    twin = make(name, K, **options)  # same seed / warm start: same random orders and same solve
    reference = torch.stack([flat_shared(params, expected[k]) for k in range(K)])
    want_shared = unflat_shared(params, twin.combine(reference))

    balanced_backward(agent, loss_fn, data, params, make(name, K, **options))

    for n, parameter in params.items():
        want = torch.stack([expected[k][n][k] for k in range(K)]) / K if is_task_specific(n) else want_shared[n]
        torch.testing.assert_close(parameter.grad, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", list(CASES))
def test_balanced_backward_mtsac_is_gradient_of_mean_loss(case: str) -> None:
    loss_fn, agent, data, params, expected = prepare(case)

    result = balanced_backward(agent, loss_fn, data, params, make("mtsac", K))

    for n, parameter in params.items():
        torch.testing.assert_close(parameter.grad, sum(expected[k][n] for k in range(K)) / K, rtol=1e-7, atol=1e-9)
    assert result.shared_grads is None


def test_balanced_backward_famo_uses_paper_weights() -> None:
    """FAMO's .grad is sum_k c z_k / (l_k - b_k + eps) grad l_k, weights computed here by hand."""
    agent = tiny_agent()
    data = critic_data(torch.float64)
    params = group(agent, "critic.")
    expected = brute_force(agent, critic_loss, data, params)
    losses = critic_loss(agent, *data)[0].detach()
    bounds = (0.5 * losses.min()).item()
    famo = make("famo", K, min_losses=bounds, eps=1e-3)
    logits = torch.tensor([0.4, -0.9, 0.2])
    with torch.no_grad():
        famo.logits.copy_(logits)
    z = torch.exp(logits.double()) / torch.exp(logits.double()).sum()
    shifted = losses - bounds + 1e-3
    c = 1.0 / (z / shifted).sum()
    weights = c * z / shifted

    balanced_backward(agent, critic_loss, data, params, famo)

    for n, parameter in params.items():
        want = sum(weights[k] * expected[k][n] for k in range(K))
        torch.testing.assert_close(parameter.grad, want, rtol=1e-5, atol=1e-8)


def aligned_agent_and_data() -> tuple[MultiTaskSAC, tuple[torch.Tensor, ...]]:
    """Tasks with different data but identical heads and a target far above Q: no conflicts."""
    agent = tiny_agent()
    with torch.no_grad():
        for net in (agent.critic.q1, agent.critic.q2):
            net.head_weight.copy_(net.head_weight[:1].expand_as(net.head_weight))
            net.head_bias.copy_(net.head_bias[:1].expand_as(net.head_bias))
    return agent, critic_data(torch.float64, target_value=3.0)


@pytest.mark.parametrize(
    "name, options", [("cagrad", {"c": 0.0}), ("cagrad", {"c": 0.0, "rescale": 2}), ("pcgrad", {"seed": 1})]
)
def test_conflict_free_gradient_methods_equal_mtsac(name: str, options: dict) -> None:
    agent, data = aligned_agent_and_data()
    params = group(agent, "critic.")
    expected = brute_force(agent, critic_loss, data, params)
    reference = torch.stack([flat_shared(params, expected[k]) for k in range(K)])
    gram = reference @ reference.T
    assert torch.all(gram > 0), "precondition: no pair of tasks conflicts"
    assert not torch.allclose(reference[0], reference[1]), "precondition: tasks still differ"

    balanced_backward(agent, critic_loss, data, params, make("mtsac", K))
    mean_grads = {n: p.grad.clone() for n, p in params.items()}
    clear_grads(agent)
    balanced_backward(agent, critic_loss, data, params, make(name, K, **options))

    for n, parameter in params.items():
        torch.testing.assert_close(parameter.grad, mean_grads[n], rtol=1e-9, atol=1e-12)
