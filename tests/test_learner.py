"""SACLearner.update and MultiTaskSAC against expectations worked out independently in the test.

Every expected number is recomputed here from the networks' raw outputs with textbook
formulas (tanh-Gaussian log-prob via torch.distributions.Normal, explicit clipped minimum,
hand-applied Polyak and Adam steps), never by calling the production loss/target code again.
Noise is replayed from a cloned generator: `update` draws the next-obs noise for the TD target
first, then the obs noise for the actor (only on updates where the actor moves).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from mtrl_famo import balancers
from mtrl_famo.agents import MultiTaskSAC
from mtrl_famo.learner import SACLearner
from mtrl_famo.replay import Batch

OBS, ACT, HIDDEN = 5, 2, 16
K, B = 2, 8
F64 = torch.float64
# The learner draws its noise in the default dtype (float32) even for a float64 agent, and
# Actor.sample squares that noise in float32, so its log-probs carry ~1e-7 relative error
# against a float64 hand computation. Comparisons that go through learner-drawn noise use this.
LEARNER_NOISE_TOL = 1e-6


# --------------------------------------------------------------------------- fixtures / helpers


def make_agent(num_tasks: int = K, seed: int = 0, perturb_target: bool = True, **kwargs) -> MultiTaskSAC:
    torch.manual_seed(seed)
    options = {
        "heads": "per_task",
        "alpha": "per_task",
        "init": "pytorch",
        "hidden_dim": HIDDEN,
        "num_layers": 2,
        "discount": 0.9,
        "init_temperature": 0.3,
        "log_std_min": -5.0,
        "log_std_max": 1.0,
        "network": "multihead",
        "network_options": {},
        "critic_hidden_dim": None,
        "critic_layernorm": False,
    }
    options.update(kwargs)
    agent = MultiTaskSAC(OBS, ACT, num_tasks, **options).double()
    if perturb_target:
        # The target critic must not coincide with the online one, or "which critic" is untestable.
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in agent.critic_target.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=F64))
    return agent


def make_batch(
    num_tasks: int = K, batch: int = B, seed: int = 1, terminated: float | None = None, reward: float | None = None
) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(num_tasks, batch, OBS, generator=gen, dtype=F64)
    action = torch.rand(num_tasks, batch, ACT, generator=gen, dtype=F64) * 2 - 1
    rew = torch.randn(num_tasks, batch, generator=gen, dtype=F64)
    next_obs = torch.randn(num_tasks, batch, OBS, generator=gen, dtype=F64)
    term = (torch.rand(num_tasks, batch, generator=gen) < 0.3).to(F64)
    if terminated is not None:
        term = torch.full_like(term, terminated)
    if reward is not None:
        rew = torch.full_like(rew, reward)
    return Batch(obs=obs, action=action, reward=rew, next_obs=next_obs, terminated=term)


def mtsac_balancers(num_tasks: int = K) -> dict:
    return {"critic": balancers.make("mtsac", num_tasks), "actor": balancers.make("mtsac", num_tasks)}


def make_learner(agent: MultiTaskSAC, bal: dict | None = None, seed: int = 7, **kwargs) -> SACLearner:
    """Every hyperparameter explicit (configs/agent/sac.yaml's values unless a test sets one)."""
    gen = torch.Generator().manual_seed(seed)
    options = {"lr": 3e-4, "tau": 0.005, "actor_update_every": 1, "target_update_every": 1, **kwargs}
    return SACLearner(agent, bal or mtsac_balancers(agent.num_tasks), generator=gen, **options)


def replay_noises(gen_state: torch.Tensor, num_tasks: int, batch: int, draws: int) -> list[torch.Tensor]:
    """The noises `update` will draw, in order, from a generator in state `gen_state`."""
    gen = torch.Generator().set_state(gen_state)
    return [torch.randn((num_tasks, batch, ACT), generator=gen) for _ in range(draws)]


def hand_policy(agent: MultiTaskSAC, obs: torch.Tensor, noise: torch.Tensor):
    """Tanh-Gaussian sample and log-prob from the actor's raw net output (textbook formula)."""
    out = agent.actor.net(obs)
    mean, raw = out[..., :ACT], out[..., ACT:]
    lo, hi = agent.actor.log_std_min, agent.actor.log_std_max
    log_std = lo + (hi - lo) * torch.sigmoid(2.0 * raw)  # 0.5 (tanh x + 1) == sigmoid(2x)
    std = log_std.exp()
    u = mean + std * noise
    log_prob = torch.distributions.Normal(mean, std).log_prob(u).sum(-1) - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
    return torch.tanh(u), log_prob


def q_values(critic, obs: torch.Tensor, action: torch.Tensor):
    x = torch.cat([obs, action], dim=-1)
    return critic.q1(x)[..., 0], critic.q2(x)[..., 0]


@torch.no_grad()
def hand_td_target(agent: MultiTaskSAC, critic, batch: Batch, noise: torch.Tensor, discount: float) -> torch.Tensor:
    action, log_prob = hand_policy(agent, batch.next_obs, noise)
    q1, q2 = q_values(critic, batch.next_obs, action)
    clipped = torch.where(q1 <= q2, q1, q2)
    alpha = agent.log_alpha.detach().exp()
    return batch.reward + discount * (1 - batch.terminated) * (clipped - alpha * log_prob)


@torch.no_grad()
def hand_critic_losses(critic, batch: Batch, target: torch.Tensor) -> torch.Tensor:
    q1, q2 = q_values(critic, batch.obs, batch.action)
    return ((q1 - target) ** 2).mean(-1) + ((q2 - target) ** 2).mean(-1)


@torch.no_grad()
def hand_actor_losses(
    actor_agent: MultiTaskSAC, critic, obs: torch.Tensor, noise: torch.Tensor, log_alpha: torch.Tensor
) -> torch.Tensor:
    action, log_prob = hand_policy(actor_agent, obs, noise)
    q1, q2 = q_values(critic, obs, action)
    return (log_alpha.exp() * log_prob - torch.where(q1 <= q2, q1, q2)).mean(-1)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def all_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[n], b[n]) for n in a)


def spy_critic_step(learner: SACLearner) -> list[dict]:
    """Record the online critic right after each critic optimiser step."""
    optimizer, snaps = learner.optimizers["critic"], []
    original = optimizer.step

    def step(*args, **kwargs):
        out = original(*args, **kwargs)
        snaps.append(snapshot(learner.agent.critic))
        return out

    optimizer.step = step
    return snaps


# --------------------------------------------------------------------------- 1. target network


@pytest.mark.parametrize("tau", [0.1, 0.4])
def test_target_is_lerp_towards_post_step_critic_every_target_update_every(tau):
    agent = make_agent()
    learner = make_learner(agent, lr=1e-2, tau=tau, target_update_every=2)
    after_critic_step = spy_critic_step(learner)
    batch = make_batch()
    moved = []
    for i in range(4):
        old_target = snapshot(agent.critic_target)
        learner.update(batch)
        new_target = snapshot(agent.critic_target)
        online = after_critic_step[i]
        assert not all_equal(online, old_target)  # the online critic really is elsewhere
        if i % 2 == 0:
            for n in old_target:
                expected = old_target[n] + tau * (online[n] - old_target[n])
                torch.testing.assert_close(new_target[n], expected, rtol=0, atol=1e-12)
            moved.append(True)
        else:
            assert all_equal(new_target, old_target), f"target moved on update {i}"
            moved.append(False)
    assert moved == [True, False, True, False]


def test_target_moves_every_update_by_default():
    agent = make_agent()
    learner = make_learner(agent, lr=1e-2, tau=0.2)
    batch = make_batch()
    for _ in range(3):
        old = snapshot(agent.critic_target)
        learner.update(batch)
        assert not all_equal(old, snapshot(agent.critic_target))


# --------------------------------------------------------------------------- 2. actor cadence


def test_actor_and_temperatures_move_only_every_actor_update_every():
    agent = make_agent()
    learner = make_learner(agent, lr=1e-2, actor_update_every=3)
    batch = make_batch()
    for i in range(6):
        actor_before = snapshot(agent.actor)
        alpha_before = agent.log_alpha.detach().clone()
        critic_before = snapshot(agent.critic)
        result = learner.update(batch)
        assert not all_equal(critic_before, snapshot(agent.critic))  # the critic moves every update
        assert torch.isfinite(result.critic_loss).all()
        if i % 3 == 0:
            assert not all_equal(actor_before, snapshot(agent.actor)), f"actor frozen on update {i}"
            assert (agent.log_alpha.detach() != alpha_before).all(), f"log_alpha frozen on update {i}"
            assert torch.isfinite(result.actor_loss).all() and torch.isfinite(result.alpha_loss).all()
        else:
            assert all_equal(actor_before, snapshot(agent.actor)), f"actor moved on update {i}"
            assert torch.equal(agent.log_alpha.detach(), alpha_before), f"log_alpha moved on update {i}"
            assert torch.isnan(result.actor_loss).all() and torch.isnan(result.alpha_loss).all()
        assert result.actor_loss.shape == result.alpha_loss.shape == (K,)


# --------------------------------------------------------------------------- 3. temperature direction


def test_each_temperature_moves_the_way_its_entropy_gap_says():
    lr = 1e-2
    agent = make_agent(log_std_min=-5.0, log_std_max=0.0)
    with torch.no_grad():
        # Policy = state-independent N(0, std_k) before tanh: task 0 almost deterministic
        # (log_std = -5), task 1 broad (log_std = 0).
        agent.actor.net.head_weight.zero_()
        agent.actor.net.head_bias.zero_()
        agent.actor.net.head_bias[0, 0, ACT:] = -50.0
        agent.actor.net.head_bias[1, 0, ACT:] = 50.0
    learner = make_learner(agent, lr=lr)
    batch = make_batch()
    pre = copy.deepcopy(agent)
    state = learner.generator.get_state()
    log_alpha_before = agent.log_alpha.detach().clone()
    alpha_before = log_alpha_before.exp()
    learner.update(batch)

    _, obs_noise = replay_noises(state, K, B, 2)
    _, log_prob = hand_policy(pre, batch.obs, obs_noise)  # the pre-step policy the update sampled
    gap = (log_prob - ACT).mean(-1)  # log pi + target entropy, target entropy = -|A|
    assert gap[0] > 1.0 and gap[1] < -1.0  # the constructed case: too little / too much entropy
    # d/dlog_alpha of -alpha (log pi + H) is -alpha * gap: task 0 gradient < 0, task 1 > 0;
    # Adam's first step moves each by lr against its gradient's sign.
    grad = -alpha_before[:, 0] * gap
    delta = agent.log_alpha.detach()[:, 0] - log_alpha_before[:, 0]
    assert delta[0] > 0 and delta[1] < 0
    torch.testing.assert_close(delta, -lr * torch.sign(grad), rtol=1e-4, atol=0)


# --------------------------------------------------------------------------- 4. critic before actor


def test_actor_loss_is_computed_with_the_critic_after_its_step():
    agent = make_agent()
    learner = make_learner(agent, lr=5e-2)
    batch = make_batch()
    pre = copy.deepcopy(agent)
    state = learner.generator.get_state()
    result = learner.update(batch)
    _, obs_noise = replay_noises(state, K, B, 2)

    expected = hand_actor_losses(pre, agent.critic, batch.obs, obs_noise, pre.log_alpha)
    with_old_critic = hand_actor_losses(pre, pre.critic, batch.obs, obs_noise, pre.log_alpha)
    torch.testing.assert_close(result.actor_loss, expected, rtol=LEARNER_NOISE_TOL, atol=LEARNER_NOISE_TOL)
    assert (expected - with_old_critic).abs().min() > 1e3 * LEARNER_NOISE_TOL


# --------------------------------------------------------------------------- 5. TD target


def test_td_target_uses_target_critic_and_clipped_minimum_per_task():
    agent = make_agent(perturb_target=False)
    with torch.no_grad():
        # Target critic: task 0 has Q1 << Q2, task 1 has Q2 << Q1.
        agent.critic_target.q1.head_bias[0] -= 5.0
        agent.critic_target.q2.head_bias[0] += 5.0
        agent.critic_target.q1.head_bias[1] += 5.0
        agent.critic_target.q2.head_bias[1] -= 5.0
    batch = make_batch()
    noise = torch.randn((K, B, ACT), generator=torch.Generator().manual_seed(3), dtype=F64)

    action, log_prob = hand_policy(agent, batch.next_obs, noise)
    with torch.no_grad():
        q1, q2 = q_values(agent.critic_target, batch.next_obs, action)
    assert (q1[0] < q2[0]).all() and (q2[1] < q1[1]).all()
    clipped = torch.stack([q1[0], q2[1]])  # picked by hand, not by min()
    alpha = agent.log_alpha.detach().exp()  # == init_temperature 0.3, see test_init_temperature_*
    expected = batch.reward + 0.9 * (1 - batch.terminated) * (clipped - alpha * log_prob)
    online = hand_td_target(agent, agent.critic, batch, noise, 0.9)

    got = agent.td_target(batch.reward, batch.next_obs, batch.terminated, noise)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    bootstrapped = batch.terminated == 0
    assert bootstrapped.any()
    assert (got - online)[bootstrapped].abs().min() > 1e-2


# --------------------------------------------------------------------------- 6. terminated / discount


@pytest.mark.parametrize("discount", [0.9, 0.5])
def test_terminated_gives_reward_and_bootstrap_uses_discount(discount):
    agent = make_agent(discount=discount)
    noise = torch.randn((K, B, ACT), generator=torch.Generator().manual_seed(4), dtype=F64)
    done = make_batch(terminated=1.0)
    assert torch.equal(agent.td_target(done.reward, done.next_obs, done.terminated, noise), done.reward)

    live = make_batch(terminated=0.0)
    got = agent.td_target(live.reward, live.next_obs, live.terminated, noise)
    action, log_prob = hand_policy(agent, live.next_obs, noise)
    with torch.no_grad():
        q1, q2 = q_values(agent.critic_target, live.next_obs, action)
    soft_value = torch.where(q1 <= q2, q1, q2) - agent.log_alpha.detach().exp() * log_prob
    torch.testing.assert_close(got, live.reward + discount * soft_value, rtol=1e-10, atol=1e-10)
    assert (got - live.reward).abs().min() > 1e-3  # the bootstrap term is really there


def test_two_discounts_give_their_own_targets():
    batch = make_batch(terminated=0.0)
    noise = torch.randn((K, B, ACT), generator=torch.Generator().manual_seed(5), dtype=F64)
    a, b = make_agent(discount=0.9), make_agent(discount=0.5)
    ta = a.td_target(batch.reward, batch.next_obs, batch.terminated, noise)
    tb = b.td_target(batch.reward, batch.next_obs, batch.terminated, noise)
    # Same networks: (ta - r) / 0.9 == (tb - r) / 0.5 == soft value.
    torch.testing.assert_close((ta - batch.reward) / 0.9, (tb - batch.reward) / 0.5, rtol=1e-10, atol=1e-10)
    assert (ta - tb).abs().min() > 1e-3


# --------------------------------------------------------------------------- 7. learning happens


def test_critic_loss_falls_on_a_fixed_batch():
    agent = make_agent()
    learner = make_learner(agent, lr=1e-2, tau=0.01)
    batch = make_batch()
    losses = [learner.update(batch).critic_loss.sum().item() for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_critic_converges_to_constant_reward_when_terminal():
    reward = 3.0
    agent = make_agent()
    # Terminal targets do not involve the actor: keep it still so the test stays fast.
    learner = make_learner(agent, lr=3e-2, actor_update_every=10**6)
    batch = make_batch(terminated=1.0, reward=reward)
    with torch.no_grad():
        q1, q2 = q_values(agent.critic, batch.obs, batch.action)
    assert (q1 - reward).abs().max() > 1.0 and (q2 - reward).abs().max() > 1.0
    for _ in range(100):
        learner.update(batch)
    with torch.no_grad():
        q1, q2 = q_values(agent.critic, batch.obs, batch.action)
    assert (q1 - reward).abs().max() < 0.05 * reward
    assert (q2 - reward).abs().max() < 0.05 * reward


# --------------------------------------------------------------------------- 8. configuration


@pytest.mark.parametrize("lr", [1e-3, 2e-2])
def test_first_adam_step_moves_each_group_by_about_lr(lr):
    agent = make_agent()
    learner = make_learner(agent, lr=lr)
    before = {"critic": snapshot(agent.critic), "actor": snapshot(agent.actor)}
    alpha_before = agent.log_alpha.detach().clone()
    learner.update(make_batch())
    after = {"critic": snapshot(agent.critic), "actor": snapshot(agent.actor)}
    for group in ("critic", "actor"):
        biggest = max((after[group][n] - before[group][n]).abs().max().item() for n in before[group])
        assert lr * 0.999 < biggest <= lr * (1 + 1e-9), (group, biggest)
    torch.testing.assert_close(
        (agent.log_alpha.detach() - alpha_before).abs(), torch.full((K, 1), lr, dtype=F64), rtol=1e-4, atol=0
    )


@pytest.mark.parametrize("temperature", [0.05, 2.0])
def test_init_temperature_is_every_tasks_alpha(temperature):
    agent = make_agent(num_tasks=3, init_temperature=temperature)
    assert agent.alpha().shape == (3, 1)
    # log_alpha is created in float32 before .double(), hence float32 precision.
    torch.testing.assert_close(agent.alpha(), torch.full((3, 1), temperature, dtype=F64), rtol=1e-7, atol=0)


@pytest.mark.parametrize("bounds", [(-5.0, 1.0), (-8.0, 0.5)])
def test_log_std_stays_in_bounds_and_reaches_them(bounds):
    lo, hi = bounds
    agent = make_agent(log_std_min=lo, log_std_max=hi)
    obs = torch.randn(K, 64, OBS, generator=torch.Generator().manual_seed(9), dtype=F64) * 10
    with torch.no_grad():
        _, log_std = agent.actor(obs)
        assert (log_std >= lo).all() and (log_std <= hi).all()
        assert log_std.max() - log_std.min() > 0.01  # not stuck on one value
        agent.actor.net.head_weight.zero_()
        agent.actor.net.head_bias[0, 0, ACT:] = -40.0
        agent.actor.net.head_bias[1, 0, ACT:] = 40.0
        _, log_std = agent.actor(obs)
    torch.testing.assert_close(log_std[0], torch.full_like(log_std[0], lo), rtol=0, atol=1e-9)
    torch.testing.assert_close(log_std[1], torch.full_like(log_std[1], hi), rtol=0, atol=1e-9)
    # And in between the map is lo + (hi - lo) * sigmoid(2 raw).
    with torch.no_grad():
        agent.actor.net.head_bias[0, 0, ACT:] = 0.25
        _, log_std = agent.actor(obs)
    torch.testing.assert_close(log_std[0], torch.full_like(log_std[0], lo + (hi - lo) / (1 + math.exp(-0.5))))


# --------------------------------------------------------------------------- 9. FAMO before/after


def hand_famo(
    logits: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    step: int,
    before: np.ndarray,
    after: np.ndarray,
    w_lr: float,
    gamma: float,
    eps: float = 1e-8,
):
    """One FAMO logit update in numpy: J_softmax @ delta, then Adam with L2 weight decay."""
    z = np.exp(logits - logits.max())
    z /= z.sum()
    delta = np.log(before + eps) - np.log(after + eps)
    jacobian = np.diag(z) - np.outer(z, z)
    g = jacobian @ delta + gamma * logits
    b1, b2 = 0.9, 0.999
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**step), v / (1 - b2**step)
    return logits - w_lr * m_hat / (np.sqrt(v_hat) + 1e-8), m, v


def test_famo_gets_losses_before_then_after_the_critic_step():
    num_tasks, w_lr, gamma = 3, 0.05, 0.1
    agent = make_agent(num_tasks=num_tasks)
    famo = balancers.make("famo", num_tasks, w_lr=w_lr, gamma=gamma)
    learner = make_learner(agent, {"critic": famo, "actor": balancers.make("mtsac", num_tasks)}, lr=2e-2)
    calls = []
    original = famo.update

    def spy(losses_before, losses_after):
        calls.append((losses_before.detach().clone(), losses_after.detach().clone()))
        original(losses_before, losses_after)

    famo.update = spy
    batch = make_batch(num_tasks=num_tasks)
    logits = np.zeros(num_tasks)
    m, v = np.zeros(num_tasks), np.zeros(num_tasks)
    for i in range(3):
        pre = copy.deepcopy(agent)
        state = learner.generator.get_state()
        result = learner.update(batch)
        next_noise, _ = replay_noises(state, num_tasks, B, 2)
        target = hand_td_target(pre, pre.critic_target, batch, next_noise, 0.9)
        before = hand_critic_losses(pre.critic, batch, target)
        after = hand_critic_losses(agent.critic, batch, target)
        assert (before - after).abs().min() > 1e3 * LEARNER_NOISE_TOL  # the step changed every task's loss

        assert len(calls) == i + 1
        got_before, got_after = calls[-1]
        tol = {"rtol": LEARNER_NOISE_TOL, "atol": LEARNER_NOISE_TOL}
        torch.testing.assert_close(got_before, before, **tol)
        torch.testing.assert_close(got_after, after, **tol)
        torch.testing.assert_close(result.critic_loss, before, **tol)

        logits, m, v = hand_famo(logits, m, v, i + 1, before.numpy(), after.numpy(), w_lr, gamma)
        np.testing.assert_allclose(famo.logits.detach().double().numpy(), logits, rtol=0, atol=1e-5)
        assert np.abs(logits).max() > 0.5 * w_lr  # the logits did move


def test_adam_state_of_an_unfused_checkpoint_loads_into_fused_adam_and_steps_alike() -> None:
    """A checkpoint written before fused Adam (`fused: None` in its param groups) resumes with the
    learner's fused Adam, not the saved flag, and steps as the plain Adam it was saved from."""
    from mtrl_famo.optim import load_adam_state, make_adam

    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    plain = torch.optim.Adam(weights, lr=1e-2)
    for _ in range(3):
        for w in weights:
            w.grad = torch.randn_like(w)
        plain.step()
    saved = copy.deepcopy(plain.state_dict())  # a checkpoint's copy, not the live moments
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    fused = make_adam(copies, 1e-2)
    load_adam_state(fused, saved)
    assert fused.param_groups[0]["fused"] is True
    grads = [torch.randn_like(w) for w in weights]
    for w, c, g in zip(weights, copies, grads):
        w.grad, c.grad = g.clone(), g.clone()
    plain.step()
    fused.step()
    for w, c in zip(weights, copies):
        torch.testing.assert_close(c, w)
