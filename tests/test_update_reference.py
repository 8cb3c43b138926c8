"""The whole `SACLearner.update` against an independent float64 reference, two updates in a row.

Why: the update is optimised for speed (fused Adam, in-place ReLUs, the Q heads as a product and
a sum, per-task gradients in one vmapped backward). The reference here is the plain formulation:
every network evaluated task by task with `x @ W.T + b`, the per-task gradients of the shared
parameters from a loop of `torch.autograd.grad` (one call per task), PCGrad's projections as the
paper's loop, and `torch.optim.Adam(foreach=False)`. Both must give the same losses and the same
parameters after each update.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mtrl_famo import balancers
from mtrl_famo.agents import MultiHeadMLP, MultiTaskSAC
from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.learner import SACLearner
from mtrl_famo.replay import Batch

K, B, OBS, ACT, HIDDEN, LAYERS = 3, 6, 4, 2, 8, 2
LR, TAU, DISCOUNT = 1e-2, 0.05, 0.9  # large steps, so that a wrong update shows


@pytest.fixture(autouse=True)
def float64_noise():
    """The learner draws its noise in the default dtype: float64 here, so nothing is rounded to float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_agent(heads: str) -> MultiTaskSAC:
    torch.manual_seed(0)
    agent = MultiTaskSAC(
        OBS,
        ACT,
        K,
        heads=heads,
        alpha="per_task",
        init="pytorch",
        hidden_dim=HIDDEN,
        num_layers=LAYERS,
        discount=DISCOUNT,
        init_temperature=0.5,
        log_std_min=-5.0,
        log_std_max=1.0,
        network="multihead",
        network_options={},
        critic_hidden_dim=None,
        critic_layernorm=False,
    ).double()
    with torch.no_grad():  # target critics apart from the online ones, so that mixing them up shows
        for parameter in agent.critic_target.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return agent


def make_batch(seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randn(K, B, OBS, generator=gen),
        action=torch.rand(K, B, ACT, generator=gen) * 2 - 1,
        reward=torch.randn(K, B, generator=gen),
        next_obs=torch.randn(K, B, OBS, generator=gen),
        terminated=(torch.rand(K, B, generator=gen) < 0.3).double(),
    )


# --------------------------------------------------------------------------- the reference


def mlp(p: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, k: int) -> torch.Tensor:
    """Task k's rows `[B, in]` through the network stored under `prefix`, one plain layer at a time."""
    h = x
    for i in range(LAYERS):
        h = torch.relu(h @ p[f"{prefix}.trunk.{2 * i}.weight"].T + p[f"{prefix}.trunk.{2 * i}.bias"])
    if f"{prefix}.head.weight" in p:
        return h @ p[f"{prefix}.head.weight"].T + p[f"{prefix}.head.bias"]
    return h @ p[f"{prefix}.head_weight"][k] + p[f"{prefix}.head_bias"][k, 0]


def policy(p: dict[str, torch.Tensor], obs: torch.Tensor, noise: torch.Tensor, k: int):
    out = mlp(p, "actor.net", obs, k)
    mean, raw = out[:, :ACT], out[:, ACT:]
    log_std = -5.0 + 0.5 * 6.0 * (torch.tanh(raw) + 1)
    u = mean + log_std.exp() * noise
    log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
    return torch.tanh(u), log_prob - torch.log(1 - torch.tanh(u) ** 2).sum(-1)


def q_pair(p: dict[str, torch.Tensor], prefix: str, obs: torch.Tensor, action: torch.Tensor, k: int):
    x = torch.cat([obs, action], -1)
    return mlp(p, f"{prefix}.q1", x, k)[:, 0], mlp(p, f"{prefix}.q2", x, k)[:, 0]


def pcgrad(grads: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """The paper's loop: project g_i off each original g_j it conflicts with, in order; mean."""
    projected = []
    for i in range(grads.shape[0]):
        g = grads[i].clone()
        for j in orders[i].tolist():
            dot = g @ grads[j]
            if dot < 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return torch.stack(projected).mean(0)


class Reference:
    """The agent's parameters as plain float64 leaves, updated by the textbook multitask SAC step."""

    def __init__(self, agent: MultiTaskSAC, balancer_copies: dict[str, balancers.Balancer] | None):
        trained = ((n, t) for n, t in agent.named_parameters() if not n.startswith("critic_target."))
        self.p = {n: t.detach().clone().requires_grad_() for n, t in trained}
        self.target = {f"critic.{n}": t.detach().clone() for n, t in agent.critic_target.named_parameters()}
        self.balancers = balancer_copies  # PCGrad copies drawing the same orders, or None for MT-SAC
        group = {g: [n for n in self.p if n.startswith(g)] for g in ("critic.", "actor.", "log_alpha")}
        self.groups = group
        self.optimizers = {
            g: torch.optim.Adam([self.p[n] for n in names], lr=LR, foreach=False) for g, names in group.items()
        }

    def step(self, group: str, losses: torch.Tensor) -> None:
        names = self.groups[group]
        mean_grads = torch.autograd.grad(losses.mean(), [self.p[n] for n in names], retain_graph=True)
        grads = dict(zip(names, mean_grads))
        if self.balancers is not None and group in ("critic.", "actor."):
            shared = [n for n in names if not is_task_specific(n)]
            per_task = torch.stack(
                [
                    torch.cat(
                        [
                            g.flatten()
                            for g in torch.autograd.grad(losses[k], [self.p[n] for n in shared], retain_graph=True)
                        ]
                    )
                    for k in range(K)
                ]
            )
            direction = pcgrad(per_task, self.balancers[group.rstrip(".")].draw_orders())
            offset = 0
            for n in shared:
                grads[n] = direction[offset : offset + self.p[n].numel()].view_as(self.p[n])
                offset += self.p[n].numel()
        for n in names:
            self.p[n].grad = grads[n].clone()
        self.optimizers[group].step()

    def update(self, batch: Batch, td_noise: torch.Tensor, actor_noise: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.p
        alpha = p["log_alpha"].detach().exp()[:, 0]
        with torch.no_grad():
            targets = []
            for k in range(K):
                next_action, next_log_prob = policy(p, batch.next_obs[k], td_noise[k], k)
                q1, q2 = q_pair(self.target, "critic", batch.next_obs[k], next_action, k)
                soft = torch.where(q1 <= q2, q1, q2) - alpha[k] * next_log_prob
                targets.append(batch.reward[k] + DISCOUNT * (1 - batch.terminated[k]) * soft)
        critic = []
        for k in range(K):
            q1, q2 = q_pair(p, "critic", batch.obs[k], batch.action[k], k)
            critic.append(((q1 - targets[k]) ** 2).mean() + ((q2 - targets[k]) ** 2).mean())
        critic_losses = torch.stack(critic)
        self.step("critic.", critic_losses)
        actor, log_probs = [], []
        for k in range(K):
            action, log_prob = policy(p, batch.obs[k], actor_noise[k], k)
            q1, q2 = q_pair(p, "critic", batch.obs[k], action, k)
            actor.append((alpha[k] * log_prob - torch.where(q1 <= q2, q1, q2)).mean())
            log_probs.append(log_prob.detach())
        actor_losses = torch.stack(actor)
        self.step("actor.", actor_losses)
        alpha_losses = torch.stack([-(p["log_alpha"][k, 0].exp() * (log_probs[k] - ACT)).mean() for k in range(K)])
        self.p["log_alpha"].grad = torch.autograd.grad(alpha_losses.sum(), p["log_alpha"])[0]
        self.optimizers["log_alpha"].step()
        with torch.no_grad():
            for n, t in self.target.items():
                t += TAU * (p[n] - t)
        return {"critic": critic_losses.detach(), "actor": actor_losses.detach(), "alpha": alpha_losses.detach()}


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("heads", ["per_task", "shared"])
@pytest.mark.parametrize("method", ["mtsac", "pcgrad"])
def test_two_updates_equal_the_plain_formulation(method: str, heads: str) -> None:
    agent = make_agent(heads)
    options = {"seed": 3, "reduction": "mean"} if method == "pcgrad" else {}
    learner_balancers = {loss: balancers.make(method, K, **options) for loss in ("critic", "actor")}
    copies = copy.deepcopy(learner_balancers) if method == "pcgrad" else None
    reference = Reference(agent, copies)
    generator = torch.Generator().manual_seed(11)
    learner = SACLearner(
        agent, learner_balancers, lr=LR, tau=TAU, actor_update_every=1, target_update_every=1, generator=generator
    )
    noises = torch.Generator().set_state(generator.get_state())
    for seed in (1, 2):
        batch = make_batch(seed)
        td_noise, actor_noise = (torch.randn(K, B, ACT, generator=noises) for _ in range(2))
        expected = reference.update(batch, td_noise, actor_noise)
        result = learner.update(batch)
        torch.testing.assert_close(result.critic_loss, expected["critic"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(result.actor_loss, expected["actor"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(result.alpha_loss, expected["alpha"], rtol=1e-10, atol=1e-10)
        for name, parameter in reference.p.items():
            parameter = agent.get_parameter(name)
            torch.testing.assert_close(parameter, reference.p[name].detach(), rtol=1e-9, atol=1e-9, msg=name)
        for name, parameter in agent.critic_target.named_parameters():
            torch.testing.assert_close(parameter, reference.target[f"critic.{name}"], rtol=1e-9, atol=1e-9, msg=name)


def test_single_output_heads_equal_a_per_task_matmul() -> None:
    """Q heads (one output) are a broadcast product and a sum: same values and gradients as `h @ W_k + b_k`."""
    torch.manual_seed(0)
    net = MultiHeadMLP(5, 1, 16, 2, 4, shared_head=False, init="pytorch", layernorm=False).double()
    x = torch.randn(4, 7, 5)
    out = net(x)
    features = net.trunk(x)
    expected = torch.stack([features[k] @ net.head_weight[k] + net.head_bias[k, 0] for k in range(4)])
    torch.testing.assert_close(out, expected)
    weights = [net.head_weight, net.head_bias, *net.trunk.parameters()]
    got = torch.autograd.grad((out**3).sum(), weights)
    want = torch.autograd.grad((expected**3).sum(), weights)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def graph_nodes(root) -> set[str]:
    """Names of every autograd node reachable from `root`."""
    seen, names, stack = set(), set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_in_place_relus_cost_no_copies_in_backward(heads: str) -> None:
    """The trunk's in-place ReLUs act on base tensors: an in-place op on a view would make autograd
    copy the whole activation (CopySlices / AsStridedBackward) in every backward."""
    agent = make_agent(heads)
    batch = make_batch(1)
    q1, q2 = agent.critic(batch.obs, batch.action)
    mean, _ = agent.actor(batch.obs)
    names = graph_nodes(q1.grad_fn) | graph_nodes(q2.grad_fn) | graph_nodes(mean.grad_fn)
    assert "ReluBackward0" in names  # the trunk really is in the graph
    assert not names & {"CopySlices", "AsStridedBackward0"}, sorted(names)
