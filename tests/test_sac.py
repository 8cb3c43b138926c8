"""Multi-head SAC networks and losses against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from mtrl_famo.agents import MultiHeadMLP, MultiTaskSAC, actor_loss, alpha_loss, critic_loss


def test_batched_heads_equal_each_head_alone():
    torch.manual_seed(0)
    shape = dict(in_dim=5, out_dim=3, hidden_dim=16, num_layers=2, num_tasks=4)
    net = MultiHeadMLP(**shape, shared_head=False, init="pytorch", layernorm=False)
    x = torch.randn(4, 7, 5)
    batched = net(x)
    for k in range(4):
        head = torch.nn.Linear(16, 3)
        with torch.no_grad():
            head.weight.copy_(net.head_weight[k].T)
            head.bias.copy_(net.head_bias[k, 0])
        torch.testing.assert_close(batched[k], head(net.trunk(x[k])))


def _linear_agent() -> MultiTaskSAC:
    """K=2 tasks, 1-dim obs and action, no hidden layers: every network is linear per task."""
    agent = MultiTaskSAC(
        obs_dim=1,
        action_dim=1,
        num_tasks=2,
        heads="per_task",
        alpha="per_task",
        init="pytorch",
        num_layers=0,
        hidden_dim=1,
        init_temperature=0.5,
        log_std_min=-2.0,
        log_std_max=0.0,
        discount=0.9,
        network="multihead",
        network_options={},
        critic_hidden_dim=None,
        critic_layernorm=False,
    )
    with torch.no_grad():
        # Q1_k(s, a) = w_s s + w_a a + b ; inputs are [s, a].
        agent.critic.q1.head_weight.copy_(torch.tensor([[[1.0], [2.0]], [[0.0], [1.0]]]))
        agent.critic.q1.head_bias.copy_(torch.tensor([[[0.0]], [[1.0]]]))
        agent.critic.q2.head_weight.copy_(torch.tensor([[[1.0], [1.0]], [[0.0], [0.0]]]))
        agent.critic.q2.head_bias.copy_(torch.tensor([[[0.0]], [[0.5]]]))
        # Actor outputs [mean, raw_log_std] = [0.3 s, 0] for task 0 and [-0.2, 0] for task 1.
        agent.actor.net.head_weight.copy_(torch.tensor([[[0.3, 0.0]], [[0.0, 0.0]]]))
        agent.actor.net.head_bias.copy_(torch.tensor([[[0.0, 0.0]], [[-0.2, 0.0]]]))
        agent.critic_target.load_state_dict(agent.critic.state_dict())
    return agent


def q_values(task: int, s: float, a: float) -> tuple[float, float]:
    q1 = [(1.0 * s + 2.0 * a + 0.0), (0.0 * s + 1.0 * a + 1.0)][task]
    q2 = [(1.0 * s + 1.0 * a + 0.0), 0.5][task]
    return q1, q2


def test_critic_loss_by_hand():
    agent = _linear_agent()
    obs = torch.tensor([[[1.0], [2.0]], [[3.0], [-1.0]]])
    action = torch.tensor([[[0.5], [-0.5]], [[1.0], [0.0]]])
    target = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    losses, _ = critic_loss(agent, obs, action, target)
    # Task 0: Q1 = (2, 1), Q2 = (1.5, 1.5) -> 1 + 0.25 ; task 1: Q1 = (2, 1), Q2 = (.5, .5) -> 2 + 0.25.
    torch.testing.assert_close(losses, torch.tensor([1.25, 2.25]))


def tanh_gaussian_log_prob(mean: float, log_std: float, noise: float) -> float:
    """Naive textbook formula, independent of the stable one in the code."""
    std = math.exp(log_std)
    u = mean + std * noise
    gaussian = -0.5 * ((u - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    return gaussian - math.log(1.0 - math.tanh(u) ** 2)


def test_actor_and_alpha_losses_by_hand():
    agent = _linear_agent()
    obs = torch.tensor([[[2.0]], [[5.0]]])
    noise = torch.tensor([[[0.5]], [[-1.0]]])
    losses, log_prob = actor_loss(agent, obs, noise)
    log_std = -2.0 + 0.5 * 2.0 * (math.tanh(0.0) + 1.0)  # = -1
    expected_losses, expected_log_probs = [], []
    for task, (s, mean, eps) in enumerate([(2.0, 0.6, 0.5), (5.0, -0.2, -1.0)]):
        lp = tanh_gaussian_log_prob(mean, log_std, eps)
        a = math.tanh(mean + math.exp(log_std) * eps)
        expected_losses.append(0.5 * lp - min(q_values(task, s, a)))
        expected_log_probs.append(lp)
    torch.testing.assert_close(losses, torch.tensor(expected_losses))
    torch.testing.assert_close(log_prob[:, 0], torch.tensor(expected_log_probs))
    alpha_losses = alpha_loss(agent, log_prob)
    target_entropy = -1.0
    torch.testing.assert_close(alpha_losses, torch.tensor([-0.5 * (lp + target_entropy) for lp in expected_log_probs]))


@pytest.mark.parametrize("terminated", [0.0, 1.0])
def test_td_target_bootstraps_unless_terminated(terminated):
    agent = _linear_agent()
    reward = torch.tensor([[1.0], [2.0]])
    next_obs = torch.tensor([[[1.0]], [[-1.0]]])
    noise = torch.tensor([[[0.0]], [[0.3]]])
    target = agent.td_target(reward, next_obs, torch.full((2, 1), terminated), noise)
    log_std = -1.0
    expected = []
    for task, (s, mean, eps, r) in enumerate([(1.0, 0.3, 0.0, 1.0), (-1.0, -0.2, 0.3, 2.0)]):
        a = math.tanh(mean + math.exp(log_std) * eps)
        soft_value = min(q_values(task, s, a)) - 0.5 * tanh_gaussian_log_prob(mean, log_std, eps)
        expected.append(r + 0.9 * (1.0 - terminated) * soft_value)
    torch.testing.assert_close(target[:, 0], torch.tensor(expected))


def test_polyak_update_moves_targets_by_tau():
    agent = _linear_agent()
    before = agent.critic_target.q1.head_bias.clone()
    with torch.no_grad():
        agent.critic.q1.head_bias.add_(1.0)
    agent.update_target(0.1)
    torch.testing.assert_close(agent.critic_target.q1.head_bias, before + 0.1)


def test_mean_action_is_tanh_of_mean():
    agent = _linear_agent()
    obs = torch.tensor([[[2.0]], [[5.0]]])
    torch.testing.assert_close(agent.actor.mean_action(obs)[:, 0, 0], torch.tanh(torch.tensor([0.6, -0.2])))
