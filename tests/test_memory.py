"""The memory estimate that refuses too-big runs, against what torch really allocates.

`estimate_memory` counts tensors from the config alone. Here a tiny update is run on the CPU
under torch's profiler with memory recording, and the allocation records (every allocation and
free, in order) give the peak bytes the update added: an independent count of the same thing.
The replay and the networks are counted exactly from the built objects.
"""

from __future__ import annotations

import gc
import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mtrl_famo.build import build_agent, build_learner, build_replay
from mtrl_famo.config import AgentConfig, BalancerConfig
from mtrl_famo.memory import estimate_memory

from tiny_setup import fill_with_random_transitions

ACTION = 4


def agent_config(
    batch: int,
    hidden: int,
    layers: int,
    replay_size: int,
    heads: str = "per_task",
    alpha: str = "per_task",
    network: dict | None = None,
) -> AgentConfig:
    return AgentConfig(
        heads=heads,
        alpha=alpha,
        init="pytorch",
        hidden_dim=hidden,
        num_layers=layers,
        batch_size_per_task=batch,
        warmup_steps=0,
        replay_size=replay_size,
        updates_per_step=1,
        lr=3e-4,
        discount=0.99,
        tau=0.005,
        actor_update_every=1,
        target_update_every=1,
        init_temperature=1.0,
        log_std_min=-20.0,
        log_std_max=2.0,
        compile="auto",
        cuda_graph="auto",
        critic_hidden_dim=None,
        critic_layernorm=False,
        reset_every=0,
        reset=("actor", "critic"),
        network=network or {"name": "multihead"},
    )


def peak_allocated_bytes(run, trace_dir) -> int:
    """Peak of (bytes allocated - bytes freed) on the CPU while `run()` runs, from torch's records.

    Frees of blocks allocated before the window (another test's garbage collected meanwhile) are
    left out by address, so only what `run` itself allocates counts.
    """
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    trace = trace_dir / "trace.json"
    prof.export_chrome_trace(str(trace))
    records = sorted(
        (event["ts"], event["args"]["Bytes"], event["args"]["Addr"])
        for event in json.loads(trace.read_text())["traceEvents"]
        if event.get("name") == "[memory]" and event["args"].get("Device Type") == 0
    )
    live = peak = 0
    mine: set[int] = set()
    for _, nbytes, address in records:
        if nbytes > 0:
            mine.add(address)
        elif address not in mine:
            continue
        else:
            mine.discard(address)
        live += nbytes
        peak = max(peak, live)
    return peak


def built(k: int, batch: int, hidden: int, layers: int, balancer: BalancerConfig, **shape):
    obs_dim = 39 + k
    config = agent_config(batch, hidden, layers, replay_size=50 * k, **shape)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    agent = build_agent(config, obs_dim, ACTION, k, cpu)
    learner = build_learner(config, balancer, agent, generator)
    replay = build_replay(config, k, obs_dim, ACTION, cpu, generator)
    fill_with_random_transitions(replay, 50)
    return config, agent, learner, replay, estimate_memory(config, balancer, k, obs_dim, ACTION)


BALANCERS = {
    "mtsac": BalancerConfig(name="mtsac", apply_to=("critic", "actor"), options={}),
    "famo": BalancerConfig(name="famo", apply_to=("critic",), options={}),
    "pcgrad": BalancerConfig(name="pcgrad", apply_to=("critic", "actor"), options={"seed": 0}),
    "cagrad-actor": BalancerConfig(name="cagrad", apply_to=("actor",), options={}),
}


@pytest.mark.parametrize("balancer", list(BALANCERS))
@pytest.mark.parametrize("k, batch, hidden, layers", [(2, 16, 32, 2), (3, 64, 48, 2), (4, 8, 16, 3)])
def test_update_estimate_is_within_a_factor_of_two_of_the_measured_peak(
    k, batch, hidden, layers, balancer, tmp_path
) -> None:
    _, _, learner, replay, estimate = built(k, batch, hidden, layers, BALANCERS[balancer])
    learner.update(replay.sample(batch))  # the first update creates the Adam state: counted with the networks
    measured = peak_allocated_bytes(lambda: learner.update(replay.sample(batch)), tmp_path)
    assert measured > 0
    assert 0.5 * measured <= estimate.update <= 2.0 * measured, (estimate.update, measured)


def test_gradient_balancers_add_their_per_task_gradient_matrix(tmp_path) -> None:
    """PCGrad on the critic holds the [K, D] shared-trunk gradients (per parameter: it decides from their
    Gram matrix, so no concatenated copy) on top of what MT-SAC needs."""
    k, batch, hidden, layers = 4, 8, 64, 2
    critic_only = BalancerConfig(name="pcgrad", apply_to=("critic",), options={"seed": 0})
    peaks, estimates = {}, {}
    for name, balancer in (("mtsac", BALANCERS["mtsac"]), ("pcgrad", critic_only)):
        _, agent, learner, replay, estimate = built(k, batch, hidden, layers, balancer)
        learner.update(replay.sample(batch))
        peaks[name] = peak_allocated_bytes(
            lambda learner=learner, replay=replay: learner.update(replay.sample(batch)), tmp_path
        )
        estimates[name] = estimate.update
    shared = sum(p.numel() for n, p in agent.critic.named_parameters() if ".trunk." in n)  # D, counted here
    extra = peaks["pcgrad"] - peaks["mtsac"]
    assert 0.5 * (k * shared * 4) <= extra <= 2.0 * (k * shared * 4)
    assert 0.5 * extra <= estimates["pcgrad"] - estimates["mtsac"] <= 2.0 * extra


NETWORK_CASES = [
    ("per_task", "per_task", {"name": "multihead"}),
    ("shared", "shared", {"name": "multihead"}),
    ("shared", "per_task", {"name": "multihead"}),
    ("per_task", "per_task", {"name": "moore", "num_experts": 3}),
    ("per_task", "per_task", {"name": "soft_modular", "num_modules": 2, "embedding_dim": 16, "routing_width": 8}),
    ("per_task", "per_task", {"name": "paco", "num_parameter_sets": 3, "identical_init": False}),
]


@pytest.mark.parametrize("heads, alpha, network", NETWORK_CASES, ids=lambda case: str(case))
def test_replay_and_networks_are_counted_exactly(heads: str, alpha: str, network: dict) -> None:
    """Every network's parameters (counted on the meta device), their gradients and Adam moments."""
    _, agent, learner, replay, estimate = built(
        3, 8, 24, 2, BALANCERS["famo"], heads=heads, alpha=alpha, network=network
    )
    learner.update(replay.sample(8))
    assert estimate.replay == sum(t.numel() * t.element_size() for t in replay.storage.values())
    parameters = sum(p.numel() * p.element_size() for p in agent.parameters())  # target critics included
    grads = sum(p.grad.numel() * p.grad.element_size() for p in agent.parameters() if p.grad is not None)
    adam = sum(
        t.numel() * t.element_size()
        for opt in learner.optimizers.values()
        for state in opt.state.values()
        for name, t in state.items()
        if name in ("exp_avg", "exp_avg_sq")
    )
    assert estimate.networks == parameters + grads + adam


def test_env_dims_match_a_real_metaworld_env(two_task_env) -> None:
    """The estimate is made before any env is built; its observation and action sizes are Metaworld's."""
    from mtrl_famo.envs import EnvSpec

    spec = EnvSpec(
        goals="random",
        reward_version="v2",
        reward_normalization="none",
        name="custom",
        tasks=("reach-v3", "push-v3"),
        max_episode_steps=3,
        one_hot=True,
        vector_strategy="sync",
        workers=1,
    )
    assert spec.dims() == (two_task_env.obs_dim, two_task_env.action_dim) == (41, 4)
    assert EnvSpec(
        goals="random",
        reward_version="v2",
        reward_normalization="none",
        name="custom",
        tasks=("reach-v3", "push-v3"),
        one_hot=False,
        vector_strategy="sync",
        workers=1,
        max_episode_steps=500,
    ).dims() == (39, 4)


@pytest.mark.parametrize("heads", ["per_task", "shared"])
def test_evaluation_counts_the_actor_alone(heads: str) -> None:
    """`python -m mtrl_famo.evaluate`'s check: the actor's weights twice (module and checkpoint copy) and one
    acting step, exactly, whatever the replay and batch sizes that training needed."""
    from mtrl_famo.memory import estimate_eval_memory

    k, hidden, layers, obs_dim = 3, 24, 2, 42
    agent = build_agent(agent_config(8, hidden, layers, 150, heads=heads), obs_dim, ACTION, k, torch.device("cpu"))
    actor = sum(p.numel() * p.element_size() for p in agent.actor.parameters())
    acting = k * (obs_dim + layers * hidden + 2 * ACTION) * 4
    for batch, replay_size in ((8, 150), (1024, 10**9)):
        config = agent_config(batch, hidden, layers, replay_size, heads=heads)
        assert estimate_eval_memory(config, k, obs_dim, ACTION) == 2 * actor + acting
