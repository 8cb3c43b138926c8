"""The agent's networks (agents/registry.py): per-task gradients against brute force, each network's
defining structure, the critic options (LayerNorm, width) and parameter resets."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from mtrl_famo.agents.moore import MOORENetwork, gram_schmidt
from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.agents.paco import PaCoNetwork
from mtrl_famo.agents.registry import NETWORKS, network_factory
from mtrl_famo.agents.sac import MultiTaskSAC, actor_loss, critic_loss
from mtrl_famo.agents.soft_modular import SoftModularNetwork
from mtrl_famo.task_gradients import per_task_gradients

from tiny_setup import OBS, K, actor_data, critic_data, tiny_agent

# Tiny sizes; soft_modular with 3 layers so that the routing's skip connections are exercised.
OPTIONS = {
    "multihead": {},
    "moore": {"num_experts": 3},
    "soft_modular": {"num_modules": 2, "embedding_dim": 6, "routing_width": 5},
    "paco": {"num_parameter_sets": 3, "identical_init": False},
}
LAYERS = {"multihead": 2, "moore": 2, "soft_modular": 3, "paco": 2}


def make_agent(
    network: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    init: str = "pytorch",
    critic_hidden_dim: int | None = None,
    critic_layernorm: bool = False,
) -> MultiTaskSAC:
    return tiny_agent(
        dtype,
        seed,
        init=init,
        num_layers=LAYERS[network],
        network=network,
        network_options=OPTIONS[network],
        critic_hidden_dim=critic_hidden_dim,
        critic_layernorm=critic_layernorm,
    )


def test_every_registered_network_is_tested() -> None:
    assert set(OPTIONS) == set(NETWORKS)


# ---------------------------------------------------------------- per-task gradients


CASES = {"critic": (critic_loss, critic_data, "critic."), "actor": (actor_loss, actor_data, "actor.")}


@pytest.mark.parametrize("critic_layernorm", [False, True])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("network", list(OPTIONS))
def test_per_task_gradients_equal_brute_force(network: str, case: str, critic_layernorm: bool) -> None:
    """The one vmapped backward equals K `autograd.grad` calls on the whole batch, task by task, for
    shared and task-specific parameters alike (float64)."""
    loss_fn, make_data, prefix = CASES[case]
    agent = make_agent(network, critic_layernorm=critic_layernorm)
    data = make_data(torch.float64)
    params = {n: p for n, p in agent.named_parameters() if n.startswith(prefix)}

    losses, _, grads = per_task_gradients(agent, loss_fn, data, set(params))

    full, _ = loss_fn(agent, *data)
    torch.testing.assert_close(losses, full.detach(), rtol=1e-10, atol=1e-12)
    seen = {"shared": 0, "task": 0}
    for k in range(K):
        expected = torch.autograd.grad(full[k], list(params.values()), retain_graph=True, allow_unused=True)
        for (name, parameter), want in zip(params.items(), expected):
            want = torch.zeros_like(parameter) if want is None else want
            if is_task_specific(name):
                assert parameter.shape[0] == K, f"{name}: the task axis comes first"
                others = [j for j in range(K) if j != k]
                assert torch.count_nonzero(want[others]) == 0, f"{name}: task {k}'s loss reaches other tasks' slices"
                torch.testing.assert_close(grads[name][k], want[k], rtol=1e-9, atol=1e-12)
                seen["task"] += 1
            else:
                torch.testing.assert_close(grads[name][k], want, rtol=1e-9, atol=1e-12)
                seen["shared"] += int(want.abs().sum() > 0)
    assert seen["shared"] > 0 and seen["task"] > 0


# ---------------------------------------------------------------- structure


def test_moore_expert_outputs_are_orthonormal_per_sample() -> None:
    torch.manual_seed(1)
    net = MOORENetwork(5, 3, 16, 2, K, shared_head=False, init="pytorch", layernorm=False, num_experts=4).double()
    x = torch.randn(K, 7, 5, dtype=torch.float64)
    basis = net.expert_basis(x)  # [k, K, B, h]
    assert basis.shape == (4, K, 7, 16)
    gram = torch.einsum("ikbd,jkbd->kbij", basis, basis)  # one k x k Gram matrix per task and sample
    torch.testing.assert_close(gram, torch.eye(4, dtype=torch.float64).expand_as(gram), rtol=0, atol=1e-5)
    # Not vacuous: the raw expert outputs were far from orthonormal.
    raw = torch.randn(3, 5, 9, dtype=torch.float64) + 2.0
    assert (torch.einsum("inbd,jnd->nij", raw[:, :, None], raw) - torch.eye(3)).abs().max() > 1
    ortho = gram_schmidt(raw)
    torch.testing.assert_close(
        torch.einsum("ind,jnd->nij", ortho, ortho), torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    )


def test_moore_gram_schmidt_is_the_classical_process() -> None:
    """The fused form equals the textbook loop (project each vector on the stacked basis so far, all
    projections summed, divide by norm + eps) up to float64 rounding, eps included."""
    torch.manual_seed(3)
    vectors = torch.randn(4, 6, 9, dtype=torch.float64) + 1.5  # correlated: the projections matter
    vectors[3, 0] = 1e-9 * vectors[3, 0]  # a near-zero vector: eps decides its scale
    basis: list[torch.Tensor] = []
    for vector in vectors:
        if basis:
            previous = torch.stack(basis)
            vector = vector - ((previous * vector).sum(-1, keepdim=True) * previous).sum(0)
        basis.append(vector / (vector.norm(dim=-1, keepdim=True) + 1e-8))
    torch.testing.assert_close(gram_schmidt(vectors), torch.stack(basis), rtol=1e-12, atol=1e-12)


def test_moore_gram_schmidt_in_float32_is_as_accurate_as_the_classical_loop() -> None:
    """The Gram-matrix form (float64 Gram matrices) loses no accuracy on nearly parallel float32 vectors,
    where a difference of squared norms could cancel: its error against the float64 process is at most
    the float32 textbook loop's own."""
    torch.manual_seed(4)
    vectors = torch.randn(4, 64, 400) + 0.5 * torch.randn(1, 64, 400)
    vectors[1] = vectors[0] + 1e-3 * vectors[1]  # v_1 nearly parallel to v_0
    exact = gram_schmidt(vectors.double())

    def textbook(v: torch.Tensor) -> torch.Tensor:
        basis: list[torch.Tensor] = []
        for vector in v:
            if basis:
                previous = torch.stack(basis)
                vector = vector - ((previous * vector).sum(-1, keepdim=True) * previous).sum(0)
            basis.append(vector / (vector.norm(dim=-1, keepdim=True) + 1e-8))
        return torch.stack(basis)

    ours = (gram_schmidt(vectors).double() - exact).abs().max()
    loop = (textbook(vectors).double() - exact).abs().max()
    assert ours <= loop, (ours, loop)


def test_moore_mixes_the_basis_with_each_tasks_weights() -> None:
    torch.manual_seed(2)
    net = MOORENetwork(5, 3, 16, 2, K, shared_head=False, init="pytorch", layernorm=False, num_experts=4).double()
    x = torch.randn(K, 7, 5, dtype=torch.float64)
    basis = net.expert_basis(x)
    out = net(x)
    for k in range(K):
        features = torch.tanh(sum(net.task_weight[k, 0, j] * basis[j, k] for j in range(4)))
        torch.testing.assert_close(out[k], features @ net.head_weight[k] + net.head_bias[k])


def test_stacked_linear_rows_first_is_its_maps_on_shared_rows() -> None:
    """The one-matmul form for rows every map reads equals the batched maps, rows first (float64)."""
    from mtrl_famo.agents.networks import StackedLinear

    torch.manual_seed(5)
    layer = StackedLinear(3, 6, 4, "pytorch").double()
    x = torch.randn(7, 6, dtype=torch.float64)
    torch.testing.assert_close(layer.rows_first(x), layer(x).transpose(0, 1), rtol=1e-12, atol=1e-12)


def tiny_soft_modular(out_dim: int, num_layers: int, shared_head: bool) -> SoftModularNetwork:
    """A float64 Soft Modularization network on 5 inputs, 8 wide, 3 modules (drawn from the global generator)."""
    return SoftModularNetwork(
        5,
        out_dim,
        8,
        num_layers,
        K,
        shared_head=shared_head,
        init="pytorch",
        layernorm=False,
        num_modules=3,
        embedding_dim=6,
        routing_width=5,
    ).double()


@pytest.mark.parametrize("num_layers", [1, 2])
def test_soft_modular_shallow_networks_mix_as_defined(num_layers: int) -> None:
    """Layer 0's rows-first path (the last layer too when there is one) against the routing definition."""
    torch.manual_seed(6)
    net = tiny_soft_modular(out_dim=3, num_layers=num_layers, shared_head=False)
    x = torch.randn(K, 7, 5, dtype=torch.float64)
    probs = net.routing_weights(x)
    embedding = net.embed[1](torch.relu(net.embed[0](x)))
    h = torch.relu(embedding)
    ys = [torch.relu(h) for _ in range(3)]
    for i, layer in enumerate(net.base_layers):
        outs = [(ys[j] if i else h) @ layer.weight[j] + layer.bias[j] for j in range(3)]
        p = probs[i]
        if i < num_layers - 1:
            ys = [torch.relu(sum(p[..., m, j, None] * outs[j] for j in range(3))) for m in range(3)]
        else:
            features = torch.relu(sum(p[..., j, None] * outs[j] for j in range(3)))
    torch.testing.assert_close(net(x), features @ net.head_weight + net.head_bias)


def test_soft_modular_routing_is_a_distribution_per_layer_that_depends_on_the_task() -> None:
    torch.manual_seed(3)
    net = tiny_soft_modular(out_dim=2, num_layers=3, shared_head=True)
    with torch.no_grad():  # routing far from its near-uniform start, so that differences are visible
        for layer in net.route_down:
            layer.weight.normal_()
    rows = torch.randn(1, 7, 5, dtype=torch.float64).expand(K, 7, 5)  # the same observations for every task
    probs = net.routing_weights(rows)
    assert [p.shape for p in probs] == [(K, 7, 3, 3), (K, 7, 3, 3), (K, 7, 3)]
    for p in probs:
        assert torch.all(p >= 0)
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1], dtype=torch.float64))
        assert not torch.allclose(p[0], p[1]), "the same observation is routed differently for another task"


def test_paco_task_parameters_are_the_shared_sets_times_the_tasks_vector() -> None:
    torch.manual_seed(4)
    net = PaCoNetwork(
        5, 3, 8, 2, K, shared_head=False, init="pytorch", layernorm=False, num_parameter_sets=4, identical_init=False
    ).double()
    x = torch.randn(K, 7, 5, dtype=torch.float64)
    out = net(x)
    composed = net.task_parameters()
    for k in range(K):
        w = net.task_composition[k]
        h = x[k]
        for i, layer in enumerate(net.layers):
            weight = sum(w[j] * layer.weight[j] for j in range(4))  # theta_tau = Phi w_tau, written out
            bias = sum(w[j] * layer.bias[j, 0] for j in range(4))
            torch.testing.assert_close(composed[i][0][k], weight, rtol=0, atol=1e-14)
            torch.testing.assert_close(composed[i][1][k, 0], bias, rtol=0, atol=1e-14)
            h = h @ weight + bias
            if i < len(net.layers) - 1:
                h = torch.relu(h)
        torch.testing.assert_close(out[k], h)


def test_paco_identical_init_starts_every_set_equal() -> None:
    net = PaCoNetwork(
        5, 3, 8, 2, K, shared_head=False, init="xavier", layernorm=False, num_parameter_sets=4, identical_init=True
    )
    for layer in net.layers:
        assert torch.equal(layer.weight, layer.weight[:1].expand_as(layer.weight))


# ---------------------------------------------------------------- critic options


@pytest.mark.parametrize("network", list(OPTIONS))
def test_critic_layernorm_normalises_hidden_activations(network: str) -> None:
    agent = make_agent(network, critic_layernorm=True)
    assert not any(isinstance(m, nn.LayerNorm) for m in agent.actor.modules()), "the actor stays plain"
    norms = [m for m in agent.critic.modules() if isinstance(m, nn.LayerNorm)]
    assert norms
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        m.register_forward_hook(lambda _m, i, out: seen.append((i[0].detach().clone(), out.detach().clone())))
        for m in norms
    ]
    obs, action, _ = critic_data(torch.float64)
    agent.critic(obs, action)
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(norms)
    for pre, out in seen:  # each sample's hidden vector standardised: zero mean, unit variance
        mean, var = pre.mean(-1, keepdim=True), pre.var(-1, unbiased=False, keepdim=True)
        torch.testing.assert_close(out, (pre - mean) / (var + 1e-5).sqrt())
        torch.testing.assert_close(out.mean(-1), torch.zeros_like(out[..., 0]), atol=1e-9, rtol=0)
        torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones_like(out[..., 0]), atol=1e-2, rtol=0)
        assert (pre.var(-1) - 1).abs().max() > 0.1, "not vacuous: the linear's outputs were not standardised"
    if network == "multihead":  # after each hidden linear, before its ReLU
        kinds = [type(m).__name__ for m in agent.critic.q1.trunk]
        assert kinds == ["Linear", "LayerNorm", "ReLU"] * LAYERS[network]
    plain = make_agent(network)
    assert not any(isinstance(m, nn.LayerNorm) for m in plain.modules()), "off by default"


def test_critic_width_is_separate_from_the_actors() -> None:
    agent = make_agent("multihead", critic_hidden_dim=12)
    assert [m.out_features for m in agent.actor.net.trunk if isinstance(m, nn.Linear)] == [8, 8]
    for q in (agent.critic.q1, agent.critic.q2, agent.critic_target.q1):
        assert [m.out_features for m in q.trunk if isinstance(m, nn.Linear)] == [12, 12]
        assert q.head_weight.shape == (K, 12, 1)
    moore = make_agent("moore", critic_hidden_dim=12)
    assert moore.actor.net.head_weight.shape[1] == 8 and moore.critic.q1.head_weight.shape[1] == 12


# ---------------------------------------------------------------- resets


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("network", list(OPTIONS))
def test_reset_critic_redraws_it_and_leaves_the_rest(network: str) -> None:
    agent = make_agent(network, dtype=torch.float32)
    before = {part: snapshot(getattr(agent, part)) for part in ("actor", "critic", "critic_target")}
    alpha = agent.log_alpha.detach().clone()
    with torch.no_grad():
        agent.critic_target.q1.parameters().__next__().add_(1.0)  # the target no longer equals the critic

    agent.reset_parameters(["critic"], torch.Generator().manual_seed(11))

    after = snapshot(agent.critic)
    for name, value in after.items():
        if not name.endswith(("norm.weight", "norm.bias")) and before["critic"][name].std() > 0:
            assert not torch.equal(value, before["critic"][name]), f"{name} was not re-drawn"
    assert_same(snapshot(agent.critic_target), after)  # targets copied from the fresh critics
    assert_same(snapshot(agent.actor), before["actor"])
    assert torch.equal(agent.log_alpha, alpha)
    twin = make_agent(network, seed=5, dtype=torch.float32)
    twin.reset_parameters(["critic"], torch.Generator().manual_seed(11))
    assert_same(snapshot(twin.critic), after)  # the same generator state, the same parameters


@pytest.mark.parametrize("init", ["pytorch", "xavier"])
def test_reset_multihead_equals_a_fresh_construction(init: str) -> None:
    """With the generator in the global generator's state at construction, a reset of the actor and
    the critics gives exactly the parameters a fresh agent gets (the construction's law and order)."""
    fresh = make_agent("multihead", seed=21, dtype=torch.float32, init=init)
    agent = make_agent("multihead", seed=3, dtype=torch.float32, init=init)
    agent.reset_parameters(["critic", "actor"], torch.Generator().manual_seed(21))
    if init == "pytorch":
        assert_same(snapshot(agent.actor), snapshot(fresh.actor))
        assert_same(snapshot(agent.critic), snapshot(fresh.critic))
    # The law: weights uniform within the bound of their layer, biases as the init says.
    for name, p in agent.critic.named_parameters():
        if name.endswith("weight"):
            fan_in, fan_out = (p.shape[-2], p.shape[-1]) if p.ndim == 3 else (p.shape[1], p.shape[0])
            bound = (6 / (fan_in + fan_out)) ** 0.5 if init == "xavier" else fan_in**-0.5
            assert p.abs().max() <= bound
        elif init == "xavier":
            assert torch.count_nonzero(p) == 0


def test_reset_law_matches_construction_statistically() -> None:
    """A wide layer's weights after a reset are uniform on the init bound: mean ~ 0, variance ~ b^2/3."""
    agent = tiny_agent(
        torch.float32, init="xavier", hidden_dim=512, network="moore", network_options={"num_experts": 2}
    )
    agent.reset_parameters(["actor"], torch.Generator().manual_seed(0))
    weight = agent.actor.net.experts[1].weight  # [k, 512, 512]
    bound = (6 / 1024) ** 0.5
    assert abs(weight.mean().item()) < 0.01 * bound
    assert abs(weight.var().item() / (bound**2 / 3) - 1) < 0.01
    assert torch.count_nonzero(agent.actor.net.experts[1].bias) == 0


def test_reset_refuses_unknown_parts() -> None:
    with pytest.raises(ValueError, match=r"Unknown part.*temperature.*choose from actor, critic"):
        make_agent("multihead").reset_parameters(["temperature"], torch.Generator())


# ---------------------------------------------------------------- registry and the default agent


def test_registry_refuses_bad_names_and_options_in_one_sentence() -> None:
    common = dict(hidden_dim=8, num_layers=2, num_tasks=K, shared_head=False, init="pytorch", layernorm=False)
    with pytest.raises(ValueError, match="Unknown network 'care'; choose one of multihead, moore, soft_modular, paco"):
        network_factory("care", options={}, **common)
    with pytest.raises(ValueError, match="has no option experts; its options are: num_experts"):
        network_factory("moore", options={"experts": 4}, **common)
    with pytest.raises(ValueError, match=r"needs option\(s\) identical_init, num_parameter_sets \(configs/agent"):
        network_factory("paco", options={}, **common)
    # Every option is required: none has a default outside configs/agent/network/<name>.yaml.
    with pytest.raises(ValueError, match=r"'paco' needs option\(s\) identical_init \("):
        network_factory("paco", options={"num_parameter_sets": 2}, **common)
    with pytest.raises(ValueError, match="heads=shared"):
        paco = {"num_parameter_sets": 2, "identical_init": False}
        network_factory("paco", options=paco, **{**common, "shared_head": True})(4, 1)


# sha256 (first 16 hex digits) of the default agent's state dict and of its actor/critic outputs on
# fixed data, computed on the tree before the network options existed (commit 4dba153).
DEFAULT_AGENT_CHECKSUMS = {
    ("per_task", "pytorch", "per_task", 8, 2): "221a74dc4e316c96",
    ("shared", "xavier", "shared", 8, 2): "8c1fea3ee95e4259",
    ("per_task", "xavier", "per_task", 16, 0): "14b839c0b9cc5ccb",
    ("per_task", "pytorch", "shared", 16, 3): "f3e22023c6d79328",
}


@pytest.mark.parametrize("settings", list(DEFAULT_AGENT_CHECKSUMS))
def test_default_agent_is_bit_identical_to_before(settings: tuple) -> None:
    heads, init, alpha, hidden, layers = settings
    torch.manual_seed(7)
    agent = MultiTaskSAC(
        6,
        2,
        3,
        heads=heads,
        alpha=alpha,
        init=init,
        hidden_dim=hidden,
        num_layers=layers,
        discount=0.99,
        init_temperature=1.0,
        log_std_min=-20.0,
        log_std_max=2.0,
        network="multihead",
        network_options={},
        critic_hidden_dim=None,
        critic_layernorm=False,
    )
    digest = hashlib.sha256()
    for name, tensor in agent.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    generator = torch.Generator().manual_seed(3)
    obs = torch.randn(3, 5, 6, generator=generator)
    noise = torch.randn(3, 5, 2, generator=generator)
    action, log_prob = agent.actor.sample(obs, noise)
    q1, q2 = agent.critic(obs, action)
    for tensor in (action, log_prob, q1, q2):
        digest.update(tensor.detach().numpy().tobytes())
    assert digest.hexdigest()[:16] == DEFAULT_AGENT_CHECKSUMS[settings]


def test_every_network_config_builds_its_network() -> None:
    """configs/agent/network/<name>.yaml: one per registered network, its options accepted as they stand."""
    import yaml

    from mtrl_famo.configs import CONFIG_DIR

    files = sorted((CONFIG_DIR / "agent" / "network").glob("*.yaml"))
    assert {f.stem for f in files} == set(NETWORKS)
    for path in files:
        options = yaml.safe_load(path.read_text())
        name = options.pop("name")
        assert name == path.stem
        net = network_factory(
            name,
            hidden_dim=8,
            num_layers=2,
            num_tasks=K,
            shared_head=False,
            init="pytorch",
            layernorm=False,
            options=options,
        )(OBS, 1)
        assert net(torch.randn(K, 2, OBS)).shape == (K, 2, 1)
