"""GradDrop, UW, DWA, RLW and the scale-invariant baseline against independent checks.

Every expected value is worked out here without the implementations' helpers: GradDrop by a
per-coordinate Python loop with the paper's mask rule (Chen et al. 2020, Algorithm 1, the same
uniform draws replayed from a re-seeded generator) and a hand-worked 2-task example; UW by a
hand-written Adam step on the analytic gradient 1 - exp(-s) l and by its stationary point
s = log l; DWA by the paper's eq. 7 on hand-averaged windows; RLW by replaying the draws and by
distribution tests (scipy); scaleinvls by autograd on sum_i l_i / l_i.detach() terms computed
one task at a time. Then state round trips mid-run, `balanced_backward` on a tiny real agent
(brute-force per-task gradients, one autograd call per task), and the config checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.agents.sac import actor_loss, critic_loss
from mtrl_famo.balanced_backward import balanced_backward
from mtrl_famo.balancers import REGISTRY, GradientManipulation, LossWeighting, make
from mtrl_famo.config import ConfigError, compose

from tiny_setup import K, actor_data, critic_data, tiny_agent

NEW = ("graddrop", "uw", "dwa", "rlw", "scaleinvls")
SEEDED = {"graddrop", "rlw"}  # `seed: ${seed}` in their config files: no standalone default


def assert_one_sentence(error: pytest.ExceptionInfo, *must_contain: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.endswith("."), message
    for part in must_contain:
        assert part in message, f"{part!r} missing from: {message}"


def build(name: str, k: int, **options) -> object:
    if name in SEEDED:
        options.setdefault("seed", 0)
    return make(name, k, **options)


def test_kinds_and_positive_loss_flags() -> None:
    kinds = {"graddrop": GradientManipulation, **{n: LossWeighting for n in NEW if n != "graddrop"}}
    for name in NEW:
        balancer = build(name, 3)
        assert isinstance(balancer, kinds[name]) and balancer.num_tasks == 3
        assert balancer.needs_positive_losses == (name in ("uw", "dwa", "scaleinvls"))
        assert balancer.accepts_negative_losses() == (name in ("graddrop", "rlw"))
        assert balancer.loss_bound_option is None
        assert not balancer.needs_losses_after_step


@pytest.mark.parametrize(
    "name, options, shown",
    [
        ("graddrop", {"leak": 1.5, "seed": 0}, ("GradDrop", "leak", "1.5")),
        ("graddrop", {"leak": -0.1, "seed": 0}, ("GradDrop", "leak", "-0.1")),
        ("graddrop", {"reduction": "max", "seed": 0}, ("max", "mean", "sum")),
        ("uw", {"lr": 0.0}, ("UW", "lr", "0.0")),
        ("dwa", {"window": 0}, ("DWA", "window", "0")),
        ("dwa", {"temperature": 0.0}, ("DWA", "temperature", "0.0")),
        ("rlw", {"distribution": "uniform", "seed": 0}, ("uniform", "normal", "dirichlet")),
    ],
)
def test_bad_option_values_fail_in_one_sentence(name: str, options: dict, shown: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as error:
        make(name, 3, **options)
    assert_one_sentence(error, *shown)


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_seed_has_no_standalone_default(name: str) -> None:
    with pytest.raises(ValueError) as error:
        make(name, 3)
    assert_one_sentence(error, name, "'seed'", "${seed}")


# ---------------------------------------------------------------- GradDrop


def graddrop_reference(
    grads: np.ndarray, uniforms: np.ndarray, leak: float = 0.0, reduction: str = "mean"
) -> np.ndarray:
    """Chen et al., Algorithm 1 (f = identity), one coordinate and one task at a time:
    M_i = I[P > U] I[g_i > 0] + I[P < U] I[g_i < 0], update sum_i (leak + (1 - leak) M_i) g_i."""
    k, d = grads.shape
    out = np.zeros(d)
    for j in range(d):
        column = grads[:, j]
        if not column.any():
            continue  # no gradient at this coordinate: nothing to keep or drop
        purity = 0.5 * (1.0 + column.sum() / np.abs(column).sum())
        u = uniforms[j]
        assert purity != u, "precondition: no tie between purity and draw (the paper's rule is strict)"
        for i in range(k):
            mask = float((purity > u and column[i] > 0) or (purity < u and column[i] < 0))
            out[j] += (leak + (1.0 - leak) * mask) * column[i]
    return out / k if reduction == "mean" else out


def replayed_uniforms(generator: torch.Generator, d: int, dtype: torch.dtype) -> np.ndarray:
    """The implementation's draw: one uniform per coordinate, in the gradients' dtype."""
    return torch.rand(d, generator=generator, dtype=dtype).double().numpy()


def conflicting(k: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=generator, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("leak, reduction", [(0.0, "mean"), (0.0, "sum"), (0.3, "mean")])
def test_graddrop_matches_per_coordinate_loop_with_the_same_draws(
    leak: float, reduction: str, dtype: torch.dtype
) -> None:
    k, d, seed = 4, 300, 13
    balancer = make("graddrop", k, leak=leak, reduction=reduction, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for call in range(3):  # successive calls continue one random stream
        grads = conflicting(k, d, seed=call, dtype=dtype)
        want = graddrop_reference(grads.double().numpy(), replayed_uniforms(generator, d, dtype), leak, reduction)
        got = balancer.combine(grads)
        assert got.dtype == dtype and got.shape == (d,)
        tolerance = 1e-12 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(got.double().numpy(), want, rtol=tolerance, atol=tolerance)
        assert balancer.last_mix is None and balancer.weights() is None  # elementwise: not a mix


def fix_draws(balancer, uniforms: list[float]) -> None:
    """Replace a GradDrop's uniform draws by given values (for hand-worked cases)."""
    balancer.draw_uniforms = lambda like: torch.tensor(uniforms, dtype=like.dtype)


def test_graddrop_sign_purity_by_hand() -> None:
    # g1 = [ 1, -2, 3], g2 = [-3, -1, 1]
    # coordinate 0: sum -2, sum|.| 4, P = (1 - 1/2) / 2 = 0.25: positive side (g1's 1) when U < 0.25,
    #               negative side (g2's -3) when U > 0.25;
    # coordinate 1: both negative, P = 0: always the sum, -3;  coordinate 2: both positive, P = 1: always 4.
    grads = torch.tensor([[1.0, -2.0, 3.0], [-3.0, -1.0, 1.0]], dtype=torch.float64)
    low = make("graddrop", 2, reduction="sum", seed=0)
    fix_draws(low, [0.2, 0.5, 0.9])
    torch.testing.assert_close(low.combine(grads), torch.tensor([1.0, -3.0, 4.0], dtype=torch.float64))
    high = make("graddrop", 2, reduction="sum", seed=0)
    fix_draws(high, [0.3, 0.5, 0.9])
    torch.testing.assert_close(high.combine(grads), torch.tensor([-3.0, -3.0, 4.0], dtype=torch.float64))
    mean = make("graddrop", 2, seed=0)
    fix_draws(mean, [0.2, 0.5, 0.9])
    torch.testing.assert_close(mean.combine(grads), torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64))
    # leak 0.25 at U = 0.3: (0.25 + 0.75 M_i) g_i: coordinate 0 = 0.25*1 + (-3) = -2.75
    leaky = make("graddrop", 2, reduction="sum", leak=0.25, seed=0)
    fix_draws(leaky, [0.3, 0.5, 0.9])
    torch.testing.assert_close(leaky.combine(grads), torch.tensor([-2.75, -3.0, 4.0], dtype=torch.float64))


def test_graddrop_keeps_the_positive_side_with_probability_purity() -> None:
    grads = torch.tensor([[1.0, -2.0, 3.0], [-3.0, -1.0, 1.0]], dtype=torch.float64)
    balancer = make("graddrop", 2, reduction="sum", seed=3)
    kept_positive = [balancer.combine(grads)[0].item() == 1.0 for _ in range(20_000)]
    assert np.mean(kept_positive) == pytest.approx(0.25, abs=0.015)  # 5 standard errors


def test_graddrop_without_sign_conflicts_is_the_mean() -> None:
    """Every coordinate's task entries share a sign (or are zero): nothing is dropped, at any draw."""
    k, d = 5, 400
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (d,), generator=generator).double() * 2 - 1
    grads = torch.rand(k, d, generator=generator, dtype=torch.float64) * signs
    grads[1, :50] = 0.0  # zeros beside same-signed entries
    grads[:, 50:60] = 0.0  # coordinates with no gradient at all
    assert (grads > 0).any() and (grads < 0).any(), "precondition: both signs occur"
    for reduction, want in (("mean", grads.mean(0)), ("sum", grads.sum(0))):
        balancer = make("graddrop", k, reduction=reduction, seed=1)
        for _ in range(50):
            torch.testing.assert_close(balancer.combine(grads), want, rtol=1e-12, atol=1e-15)
    # ... including the draws at the ends of [0, 1): U = 0 must not drop an all-negative coordinate.
    for edge in (0.0, 1.0 - 2.0**-24):
        balancer = make("graddrop", k, seed=0)
        fix_draws(balancer, [edge] * d)
        torch.testing.assert_close(balancer.combine(grads), grads.mean(0), rtol=1e-12, atol=1e-15)


def test_graddrop_full_leak_is_the_mean() -> None:
    grads = conflicting(3, 50, seed=4)
    torch.testing.assert_close(make("graddrop", 3, leak=1.0, seed=0).combine(grads), grads.mean(0))


def test_graddrop_seeds_and_state_round_trip_continue_the_stream() -> None:
    k = 3
    grads = [conflicting(k, 200, seed=s) for s in range(4)]
    a, b, other = make("graddrop", k, seed=7), make("graddrop", k, seed=7), make("graddrop", k, seed=8)
    outs = [a.combine(g) for g in grads]
    for g, want in zip(grads, outs):
        torch.testing.assert_close(b.combine(g), want, rtol=0, atol=0)
    assert any(not torch.equal(other.combine(g), want) for g, want in zip(grads, outs))

    first = make("graddrop", k, seed=3)
    first.combine(grads[0])
    snapshot = first.state_dict()
    continued = [first.combine(g) for g in grads[1:]]
    restored = make("graddrop", k, seed=999)
    restored.load_state_dict(snapshot)
    for g, want in zip(grads[1:], continued):
        torch.testing.assert_close(restored.combine(g), want, rtol=0, atol=0)


def test_graddrop_refuses_a_stream_from_another_kind_of_device() -> None:
    balancer = make("graddrop", 2, seed=0)
    state = {**balancer.state_dict(), "device": "cuda"}
    with pytest.raises(ValueError) as error:
        balancer.load_state_dict(state)
    assert_one_sentence(error, "GradDrop", "cuda", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graddrop_on_cuda_draws_on_the_device_reproducibly() -> None:
    grads = conflicting(3, 1000, seed=0).float().cuda()
    a, b = make("graddrop", 3, seed=5).to("cuda"), make("graddrop", 3, seed=5).to("cuda")
    torch.testing.assert_close(a.combine(grads), b.combine(grads), rtol=0, atol=0)
    snapshot = a.state_dict()
    want = a.combine(grads)
    c = make("graddrop", 3, seed=0).to("cuda")
    c.load_state_dict(snapshot)
    torch.testing.assert_close(c.combine(grads), want, rtol=0, atol=0)
    aligned = grads.abs()
    torch.testing.assert_close(a.combine(aligned), aligned.mean(0))
    with pytest.raises(ValueError):
        a.to("cpu")  # the stream has been drawn on the GPU


# ---------------------------------------------------------------- UW


def adam_steps(gradients: list[np.ndarray], lr: float, start: np.ndarray) -> list[np.ndarray]:
    """torch.optim.Adam's defaults (betas 0.9, 0.999, eps 1e-8, no decay), written out by hand."""
    s, m, v, out = start.copy(), np.zeros_like(start), np.zeros_like(start), []
    for t, g in enumerate(gradients, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        s = s - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        out.append(s.copy())
    return out


def test_uw_first_two_steps_by_hand() -> None:
    lr = 0.1
    uw = make("uw", 3, lr=lr)
    first = np.array([0.5, 2.0, 4.0])
    second = np.array([1.0, 3.0, 0.25])

    # Update 1 at s = 0: network weights exp(0) = 1, objective sum l + sum s = 6.5.
    losses = torch.tensor(first, requires_grad=True)
    objective = uw.weighted_loss(losses)
    assert objective.item() == pytest.approx(6.5)
    (grad,) = torch.autograd.grad(objective, losses)
    torch.testing.assert_close(grad, torch.ones(3, dtype=torch.float64))
    # d/ds (exp(-s) l + s) = 1 - l at s = 0: [0.5, -1, -3]; Adam's first step is -lr * g / (|g| + eps).
    s1 = -lr * np.array([0.5, -1.0, -3.0]) / (np.abs([0.5, -1.0, -3.0]) + 1e-8)
    np.testing.assert_allclose(uw.log_vars.detach().numpy(), s1, rtol=1e-6)
    np.testing.assert_allclose(uw.weights().numpy(), np.exp(-s1), rtol=1e-6)

    # Update 2: weights exp(-s1) on the network; s moves on 1 - exp(-s1) l with Adam's moments.
    losses = torch.tensor(second, requires_grad=True)
    objective = uw.weighted_loss(losses)
    assert objective.item() == pytest.approx(float((np.exp(-s1) * second).sum() + s1.sum()), rel=1e-6)
    (grad,) = torch.autograd.grad(objective, losses)
    np.testing.assert_allclose(grad.numpy(), np.exp(-s1), rtol=1e-6)
    _, s2 = adam_steps([1 - first, 1 - np.exp(-s1) * second], lr, np.zeros(3))
    np.testing.assert_allclose(uw.log_vars.detach().numpy(), s2, rtol=1e-5)


def test_uw_converges_to_log_losses_on_constant_losses() -> None:
    """The stationary point of exp(-s) l + s is s = log l, i.e. weights exp(-s) = 1 / l."""
    losses = torch.tensor([0.2, 1.0, 7.0, 40.0])
    uw = make("uw", 4, lr=0.02)
    for _ in range(3000):
        uw.weighted_loss(losses)
    np.testing.assert_allclose(uw.log_vars.detach().numpy(), np.log(losses.numpy()), atol=0.02)
    np.testing.assert_allclose(uw.weights().numpy() * losses.numpy(), np.ones(4), atol=0.03)


@pytest.mark.parametrize("losses", [[1.5, 0.0, 2.0], [1.5, -2.0, 2.0]])
def test_uw_refuses_non_positive_losses_in_one_sentence(losses: list[float]) -> None:
    """With l_i <= 0 the objective has no minimum in s_i: s would run off to -inf silently."""
    uw = make("uw", 3, lr=0.1)
    with pytest.raises(ValueError) as error:
        uw.weighted_loss(torch.tensor(losses))
    assert_one_sentence(error, "UW", "above zero", str(losses), "balancer.apply_to=[critic]")
    torch.testing.assert_close(uw.log_vars.detach(), torch.zeros(3))  # refused before s moved


def test_uw_gives_no_gradient_to_its_log_variances_through_the_objective() -> None:
    """balanced_backward differentiates the network only: s must move by the balancer's own step."""
    uw = make("uw", 2, lr=0.1)
    objective = uw.weighted_loss(torch.tensor([1.0, 2.0], requires_grad=True))
    assert not any(t is uw.log_vars for t in _leaves(objective))


def _leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    seen, stack, leaves = set(), [tensor.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


# ---------------------------------------------------------------- DWA


def test_dwa_weights_on_a_hand_worked_loss_sequence() -> None:
    # K = 2, window 2, T = 2. Windows: [1,2],[3,2] -> [2,2]; [1,4],[1,2] -> [1,3]; [2,3],[2,3] -> [2,3].
    # Updates 1-4: fewer than two complete windows: uniform, 1/2 each.
    # Updates 5-6: r = [1/2, 3/2], softmax(r / 2) = [e^0.25, e^0.75] / (e^0.25 + e^0.75) = [0.37754, 0.62246].
    # Update 7:    r = [2/1, 3/3] = [2, 1], softmax([1, 0.5]) = [0.62246, 0.37754].
    sequence = [[1, 2], [3, 2], [1, 4], [1, 2], [2, 3], [2, 3], [5, 5]]
    e = math.exp
    expected = [[0.5, 0.5]] * 4 + [[e(0.25) / (e(0.25) + e(0.75)), e(0.75) / (e(0.25) + e(0.75))]] * 2
    expected.append([e(1.0) / (e(1.0) + e(0.5)), e(0.5) / (e(1.0) + e(0.5))])
    assert expected[4][0] == pytest.approx(0.37754, abs=1e-5) and expected[6][0] == pytest.approx(0.62246, abs=1e-5)
    dwa = make("dwa", 2, window=2, temperature=2.0)
    for losses, want in zip(sequence, expected):
        torch.testing.assert_close(dwa.weights(), torch.tensor(want, dtype=torch.float64))
        leaf = torch.tensor(losses, dtype=torch.float64, requires_grad=True)
        objective = dwa.weighted_loss(leaf)
        (grad,) = torch.autograd.grad(objective, leaf)
        torch.testing.assert_close(grad, torch.tensor(want, dtype=torch.float64))
        assert objective.item() == pytest.approx(sum(w * v for w, v in zip(want, losses)))


def test_dwa_matches_the_papers_formula_on_random_losses() -> None:
    """Paper eq. 7 with epochs -> windows of 3 updates: w = K softmax(r / T); this class applies w / K."""
    k, window, temperature = 3, 3, 0.7
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 5.0, size=(5 * window, k))
    averages = losses.reshape(5, window, k).mean(axis=1)  # L(t) of each complete window
    dwa = make("dwa", k, window=window, temperature=temperature)
    for update, row in enumerate(losses):
        completed = update // window
        if completed < 2:
            want = np.full(k, 1.0)
        else:
            ratios = averages[completed - 1] / averages[completed - 2]
            want = k * np.exp(ratios / temperature) / np.exp(ratios / temperature).sum()
        np.testing.assert_allclose(dwa.weights().numpy(), want / k, rtol=1e-12)
        dwa.weighted_loss(torch.from_numpy(row))


def test_dwa_refuses_a_window_whose_average_is_not_positive() -> None:
    dwa = make("dwa", 2, window=2, temperature=2.0)
    dwa.weighted_loss(torch.tensor([1.0, -3.0]))
    with pytest.raises(ValueError) as error:
        dwa.weighted_loss(torch.tensor([1.0, 1.0]))
    assert_one_sentence(error, "DWA", "above zero", "1.0", "-1.0", "balancer.apply_to=[critic]")


# ---------------------------------------------------------------- RLW


def test_rlw_draws_are_the_softmax_of_seeded_normals_and_the_gradient_weights() -> None:
    k, seed = 4, 21
    rlw = make("rlw", k, seed=seed)
    torch.testing.assert_close(rlw.weights(), torch.full((k,), 0.25, dtype=torch.float64))  # before a draw
    generator = torch.Generator().manual_seed(seed)
    for call in range(5):
        normals = torch.randn(k, generator=generator, dtype=torch.float64).numpy()
        want = np.exp(normals) / np.exp(normals).sum()
        leaf = torch.tensor([1.0, -2.0, 3.0, 0.5 * call], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(rlw.weighted_loss(leaf), leaf)
        np.testing.assert_allclose(grad.numpy(), want, rtol=1e-12)
        np.testing.assert_allclose(rlw.weights().numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_rlw_reproducible_per_seed_and_different_across_seeds(distribution: str) -> None:
    losses = torch.ones(5)
    a, b, c = (make("rlw", 5, distribution=distribution, seed=s) for s in (1, 1, 2))
    draws_a, draws_b, draws_c = ([(x.weighted_loss(losses), x.weights())[1] for _ in range(10)] for x in (a, b, c))
    for wa, wb, wc in zip(draws_a, draws_b, draws_c):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0)
        assert not torch.allclose(wa, wc)
    assert not torch.allclose(draws_a[0], draws_a[1]), "redrawn every update"


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_rlw_distribution(distribution: str) -> None:
    k, n = 4, 20_000
    rlw = make("rlw", k, distribution=distribution, seed=0)
    losses = torch.ones(k)
    draws = np.stack([(rlw.weighted_loss(losses), rlw.weights())[1].numpy() for _ in range(n)])
    np.testing.assert_allclose(draws.sum(axis=1), 1.0, rtol=1e-12)
    assert (draws > 0).all()
    np.testing.assert_allclose(draws.mean(axis=0), 1.0 / k, atol=0.01)  # exchangeable: mean 1/K each
    if distribution == "normal":
        # softmax of iid N(0, 1): log(w_0 / w_1) = z_0 - z_1 ~ N(0, 2).
        log_ratio = np.log(draws[:, 0] / draws[:, 1])
        assert stats.kstest(log_ratio / math.sqrt(2.0), "norm").pvalue > 0.01
    else:
        # Dirichlet(1, ..., 1): each marginal is Beta(1, K - 1).
        assert stats.kstest(draws[:, 0], stats.beta(1, k - 1).cdf).pvalue > 0.01


# ---------------------------------------------------------------- scale-invariant baseline


def positive_losses(theta: torch.Tensor) -> torch.Tensor:
    """Three positive, differently scaled functions of theta."""
    return torch.stack(
        [
            (theta[0] - 1.0) ** 2 + 0.5,
            100.0 * ((theta[1] + theta[2]) ** 2 + 0.1),
            0.01 * (theta.pow(2).sum() + 1.0),
        ]
    )


def test_scaleinvls_gradient_is_sum_of_grad_over_loss() -> None:
    theta = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    balancer = make("scaleinvls", 3)
    (got,) = torch.autograd.grad(balancer.weighted_loss(positive_losses(theta)), theta)
    want = torch.zeros(3, dtype=torch.float64)
    values = positive_losses(theta).detach()
    for i in range(3):  # one autograd call per task
        (task_grad,) = torch.autograd.grad(positive_losses(theta)[i], theta)
        want += task_grad / values[i]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inverse = 1.0 / values
    torch.testing.assert_close(balancer.weights(), inverse / inverse.sum())
    # Scale invariance: multiplying one task's loss by 1000 leaves the update unchanged.
    scaled = torch.tensor([1.0, 1000.0, 1.0], dtype=torch.float64)
    (got_scaled,) = torch.autograd.grad(balancer.weighted_loss(positive_losses(theta) * scaled), theta)
    torch.testing.assert_close(got_scaled, want, rtol=1e-12, atol=1e-12)


def test_scaleinvls_weights_are_uniform_before_a_call() -> None:
    torch.testing.assert_close(make("scaleinvls", 4).weights(), torch.full((4,), 0.25))


@pytest.mark.parametrize("losses", [[1.5, 0.0, 2.0], [1.5, -2.0, 2.0]])
def test_scaleinvls_refuses_non_positive_losses_in_one_sentence(losses: list[float]) -> None:
    with pytest.raises(ValueError) as error:
        make("scaleinvls", 3).weighted_loss(torch.tensor(losses))
    assert_one_sentence(error, "scaleinvls", "above zero", str(losses), "balancer.apply_to=[critic]")


# ---------------------------------------------------------------- state round trips mid-run


def drive(name: str, balancer, step: int) -> torch.Tensor:
    """One update's worth of use; returns what the update would apply (objective gradient or combine)."""
    generator = torch.Generator().manual_seed(100 + step)
    if name == "graddrop":
        return balancer.combine(torch.randn(3, 40, generator=generator, dtype=torch.float64))
    losses = (torch.rand(3, generator=generator, dtype=torch.float64) + 0.1).requires_grad_(True)
    (grad,) = torch.autograd.grad(balancer.weighted_loss(losses), losses)
    return torch.cat([grad, balancer.weights().to(grad).flatten()])


OPTIONS = {"graddrop": {"seed": 4}, "uw": {"lr": 0.05}, "dwa": {"window": 3}, "rlw": {"seed": 4}, "scaleinvls": {}}
OTHER = {"graddrop": {"seed": 99}, "uw": {"lr": 0.05}, "dwa": {"window": 3}, "rlw": {"seed": 99}, "scaleinvls": {}}


@pytest.mark.parametrize("name", NEW)
def test_state_round_trip_mid_run_continues_identically(name: str, tmp_path) -> None:
    """Snapshot after 7 updates (DWA: mid-window, two windows complete), save and load it like a
    checkpoint, and the restored balancer continues exactly as the original."""
    original = make(name, 3, **OPTIONS[name])
    for step in range(7):
        drive(name, original, step)
    torch.save(original.state_dict(), tmp_path / "state.pt")
    continued = [drive(name, original, step) for step in range(7, 14)]
    restored = make(name, 3, **OTHER[name])
    restored.load_state_dict(torch.load(tmp_path / "state.pt", map_location="cpu", weights_only=False))
    for step, want in zip(range(7, 14), continued):
        torch.testing.assert_close(drive(name, restored, step), want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["uw", "dwa", "rlw"])
def test_state_dict_is_a_snapshot_not_a_live_view(name: str) -> None:
    balancer = make(name, 3, **OPTIONS[name])
    for step in range(4):
        drive(name, balancer, step)
    snapshot = balancer.state_dict()
    frozen = {key: (value.clone() if isinstance(value, torch.Tensor) else value) for key, value in snapshot.items()}
    for step in range(4, 8):
        drive(name, balancer, step)
    for key, value in frozen.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(snapshot[key], value, rtol=0, atol=0)
    if name == "uw":  # the Adam moments too
        twin = make(name, 3, **OPTIONS[name])
        twin.load_state_dict(snapshot)
        fresh = make(name, 3, **OPTIONS[name])
        for step in range(4):
            drive(name, fresh, step)
        torch.testing.assert_close(drive(name, twin, 4), drive(name, fresh, 4), rtol=0, atol=0)


# ---------------------------------------------------------------- through balanced_backward on a tiny agent


CASES = {"critic": (critic_loss, critic_data, "critic."), "actor": (actor_loss, actor_data, "actor.")}


def prepare(case: str):
    """Loss function, agent, data, the loss's parameters and each task's gradient by its own autograd call."""
    loss_fn, make_data, prefix = CASES[case]
    agent, data = tiny_agent(), make_data()
    params = {n: p for n, p in agent.named_parameters() if n.startswith(prefix)}
    losses, _ = loss_fn(agent, *data)
    per_task = []
    for k in range(K):
        grads = torch.autograd.grad(losses[k], list(params.values()), retain_graph=True, allow_unused=True)
        per_task.append({n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)})
    return loss_fn, agent, data, params, losses.detach(), per_task


def weighted_sum(per_task: list[dict[str, torch.Tensor]], weights) -> dict[str, torch.Tensor]:
    return {n: sum(float(weights[k]) * per_task[k][n] for k in range(K)) for n in per_task[0]}


def assert_grads(params: dict[str, nn.Parameter], want: dict[str, torch.Tensor]) -> None:
    for n, parameter in params.items():
        torch.testing.assert_close(parameter.grad, want[n], rtol=1e-7, atol=1e-10, msg=n)


def test_balanced_backward_uw_weights_are_exp_minus_s() -> None:
    loss_fn, agent, data, params, _losses, per_task = prepare("critic")
    uw = make("uw", K)
    s = torch.tensor([0.3, -0.5, 1.0])  # float32, as UW keeps s: its weights exp(-s) are float32 too
    with torch.no_grad():
        uw.log_vars.copy_(s)
    balanced_backward(agent, loss_fn, data, params, uw)
    assert_grads(params, weighted_sum(per_task, torch.exp(-s).tolist()))
    assert not torch.allclose(uw.log_vars.detach(), s), "s moved within the update"


def test_balanced_backward_dwa_applies_the_window_weights() -> None:
    loss_fn, agent, data, params, _losses, per_task = prepare("critic")
    dwa = make("dwa", K, window=1, temperature=2.0)
    older, newer = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([2.0, 1.0, 4.0])
    dwa.weighted_loss(older)
    dwa.weighted_loss(newer)
    ratios = [2.0, 0.5, 1.0]
    weights = [math.exp(r / 2.0) / sum(math.exp(x / 2.0) for x in ratios) for r in ratios]
    balanced_backward(agent, loss_fn, data, params, dwa)
    assert_grads(params, weighted_sum(per_task, weights))


@pytest.mark.parametrize("case", list(CASES))
def test_balanced_backward_rlw_applies_the_draw(case: str) -> None:
    loss_fn, agent, data, params, _losses, per_task = prepare(case)
    generator = torch.Generator().manual_seed(6)
    normals = torch.randn(K, generator=generator, dtype=torch.float64)
    weights = (normals.exp() / normals.exp().sum()).tolist()
    balanced_backward(agent, loss_fn, data, params, make("rlw", K, seed=6))
    assert_grads(params, weighted_sum(per_task, weights))


def test_balanced_backward_scaleinvls_is_sum_of_grad_over_loss() -> None:
    loss_fn, agent, data, params, losses, per_task = prepare("critic")
    assert (losses > 0).all(), "precondition: critic losses are positive"
    balanced_backward(agent, loss_fn, data, params, make("scaleinvls", K))
    assert_grads(params, weighted_sum(per_task, (1.0 / losses).tolist()))


@pytest.mark.parametrize("case", list(CASES))
def test_balanced_backward_graddrop(case: str) -> None:
    loss_fn, agent, data, params, _losses, per_task = prepare(case)
    shared = [n for n in params if not is_task_specific(n)]
    reference = torch.stack([torch.cat([per_task[k][n].flatten() for n in shared]) for k in range(K)])
    assert ((reference > 0).any(0) & (reference < 0).any(0)).sum() > 10, "precondition: signs conflict"

    balanced_backward(agent, loss_fn, data, params, make("graddrop", K, seed=2))

    got = torch.cat([params[n].grad.flatten() for n in shared])
    # Independent of the draws: each coordinate is the mean of its positive or of its negative entries.
    positive = reference.clamp(min=0).sum(0) / K
    negative = reference.clamp(max=0).sum(0) / K
    assert torch.all(torch.isclose(got, positive, rtol=1e-9, atol=1e-12) | torch.isclose(got, negative, rtol=1e-9))
    # With the twin's draws (same seed, coordinates in the parameters' order): the paper's loop.
    uniforms = replayed_uniforms(torch.Generator().manual_seed(2), reference.shape[1], torch.float64)
    np.testing.assert_allclose(got.numpy(), graddrop_reference(reference.numpy(), uniforms), rtol=1e-9, atol=1e-12)
    for n in params:
        if is_task_specific(n):  # heads: task k's own gradient / K
            want = torch.stack([per_task[k][n][k] for k in range(K)]) / K
            torch.testing.assert_close(params[n].grad, want, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------- config files and checks


TWO_TASKS = ("env=custom", "env.tasks=[reach-v3,push-v3]")


@pytest.mark.parametrize(
    "name, apply_to",
    [
        ("graddrop", ("critic", "actor")),
        ("uw", ("critic",)),
        ("dwa", ("critic",)),
        ("rlw", ("critic", "actor")),
        ("scaleinvls", ("critic",)),
    ],
)
def test_config_defaults_compose_and_build(name: str, apply_to: tuple[str, ...]) -> None:
    config = compose(*TWO_TASKS, f"balancer={name}", "seed=5")
    assert config.balancer.apply_to == apply_to
    assert type(make(name, 2, **config.balancer.options)) is REGISTRY[name]
    if name in SEEDED:
        assert config.balancer.options["seed"] == 5


@pytest.mark.parametrize("name", ["uw", "dwa", "scaleinvls"])
def test_positive_loss_balancers_are_refused_on_the_actor(name: str) -> None:
    with pytest.raises(ConfigError) as error:
        compose(*TWO_TASKS, f"balancer={name}", "balancer.apply_to=[critic,actor]")
    assert_one_sentence(error, f"balancer={name}", "actor loss", "balancer.apply_to=[critic]")
    assert "options" not in str(error.value)  # none of them has a bound option to suggest
