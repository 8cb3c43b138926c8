"""Nash-MTL and FairGrad checked against their defining conditions and independent solvers.

The defining conditions, with A = G G^T and d = w^T G (so that (A w)_i = g_i . d):
    Nash-MTL   alpha_i (A alpha)_i = 1          (Navon et al. 2022, the Nash bargaining solution)
    FairGrad   w_i^(1/α) (A w)_i = 1            (Ban & Ji 2024, α-fair; α = 1 is Nash-MTL)
Every expected value here comes from the condition itself, a closed form worked by hand, or
scipy's `root` on the condition written in log-weights (no potential, no Newton step, no helper
from the implementation). Through `balanced_backward` the reference gradients are a loop of
`torch.autograd.grad` calls, one per task, as in tests/test_task_gradients.py.
Published conventions (read from the code): Nash-MTL's alpha satisfies the condition in the
gradients' own scale (the solver sees G G^T / |G G^T|_F, the constraint puts |G G^T|_F back) and is
reused between recomputations (AvivNavon/nash-mtl methods/weight_methods.py; MTRL file
Cranial-XIX/FAMO mtrl_files/nashmtl.py); FairGrad's MT10/MT50 runs use α = 2
(OptMN-Lab/fairgrad mtrl_files/run.sh).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import root

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.agents.sac import actor_loss, critic_loss
from mtrl_famo.balanced_backward import balanced_backward
from mtrl_famo.balancers import GramMixing, make

from tiny_setup import K, tiny_agent
from tiny_setup import loss_data as batch

EXACT_NASH = {"max_norm": 0.0}  # the paper's condition (the default scale), unclipped


def random_grads(k: int, seed: int, d: int = 40) -> np.ndarray:
    """Partly aligned task gradients with some conflicts, like real ones."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=d) * 0.5 + rng.normal(size=(k, d))


def residual(weights: np.ndarray, gram: np.ndarray, fairness: float) -> float:
    """max_i |w_i^(1/α) (A w)_i - 1|: zero exactly when the defining condition holds."""
    return float(np.max(np.abs(weights ** (1.0 / fairness) * (gram @ weights) - 1.0)))


def scipy_weights(gram: np.ndarray, fairness: float) -> np.ndarray:
    """The condition w^(1/α) * (A w) = 1 solved by scipy's root finder in u = log w (so w > 0)."""
    power = 1.0 / fairness
    start = -np.log(np.diag(gram)) / (1.0 + power)  # exact when the gradients are orthogonal

    def condition(u: np.ndarray) -> np.ndarray:
        w = np.exp(u)
        return w**power * (gram @ w) - 1.0

    def jacobian(u: np.ndarray) -> np.ndarray:
        w = np.exp(u)
        # d/du_j [w_i^p (A w)_i] = p w_i^p (A w)_i δ_ij + w_i^p A_ij w_j
        return np.diag(power * w**power * (gram @ w)) + (w**power)[:, None] * gram * w[None, :]

    result = root(condition, start, jac=jacobian, method="hybr", options={"xtol": 1e-14})
    assert np.max(np.abs(condition(result.x))) <= 1e-11, result.message  # scipy's answer solves it
    return np.exp(result.x)


def weights_of(balancer, grads: np.ndarray) -> np.ndarray:
    """Run the balancer on G (float64) and return its mixing weights, checking d = w^T G."""
    g = torch.from_numpy(grads)
    direction = balancer.combine(g)
    weights = balancer.weights()
    torch.testing.assert_close(direction, weights @ g, rtol=1e-12, atol=1e-14)
    return weights.numpy()


# ---------------------------------------------------------------- the defining conditions


@pytest.mark.parametrize("k", [2, 5, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nash_condition_and_scipy_agree(k: int, seed: int) -> None:
    grads = random_grads(k, seed)
    gram = grads @ grads.T
    alpha = weights_of(make("nashmtl", k, **EXACT_NASH), grads)
    assert (alpha > 0).all()
    assert residual(alpha, gram, 1.0) <= 1e-8  # alpha_i (G d)_i = 1 for every task
    np.testing.assert_allclose(alpha, scipy_weights(gram, 1.0), rtol=1e-8)
    # |d|^2 = alpha^T A alpha = sum_i alpha_i (A alpha)_i = K: the Nash update's norm is sqrt(K).
    assert np.linalg.norm(alpha @ grads) == pytest.approx(math.sqrt(k), rel=1e-8)


@pytest.mark.parametrize("k", [2, 5, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fairness", [0.5, 2.0, 5.0])
def test_fairgrad_condition_and_scipy_agree(k: int, seed: int, fairness: float) -> None:
    grads = random_grads(k, seed)
    gram = grads @ grads.T
    w = weights_of(make("fairgrad", k, alpha=fairness), grads)
    assert (w > 0).all()
    np.testing.assert_allclose(gram @ w, w ** (-1.0 / fairness), rtol=1e-8)  # A w = w^(-1/α)
    assert residual(w, gram, fairness) <= 1e-8
    np.testing.assert_allclose(w, scipy_weights(gram, fairness), rtol=1e-8)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_fairgrad_alpha_one_is_nash_mtl(k: int) -> None:
    grads = random_grads(k, seed=7)
    fair = weights_of(make("fairgrad", k, alpha=1.0), grads)
    nash = weights_of(make("nashmtl", k, **EXACT_NASH), grads)
    np.testing.assert_allclose(fair, nash, rtol=1e-10)
    assert not np.allclose(weights_of(make("fairgrad", k, alpha=2.0), grads), nash, rtol=1e-3)


def test_warm_started_solves_still_solve_each_problem() -> None:
    nash, fair = make("nashmtl", 6, **EXACT_NASH), make("fairgrad", 6, alpha=2.0)
    for seed in range(6):
        grads = random_grads(6, seed=100 + seed) * 10.0 ** (seed - 3)  # and units that change a lot
        gram = grads @ grads.T
        assert residual(weights_of(nash, grads), gram, 1.0) <= 1e-8
        assert residual(weights_of(fair, grads), gram, 2.0) <= 1e-8


# ---------------------------------------------------------------- hand-worked cases


@pytest.mark.parametrize("n1, n2", [(1.0, 1.0), (3.0, 0.5), (1e-3, 20.0)])
def test_orthogonal_two_tasks_by_hand(n1: float, n2: float) -> None:
    # A = diag(n1^2, n2^2). Nash: alpha_i n_i^2 = 1/alpha_i -> alpha_i = 1/n_i, so
    # d = g1/n1 + g2/n2 = [1, 1, 0]: each task gets the same projection g_i . d / |g_i| = 1.
    # FairGrad: w_i n_i^2 = w_i^(-1/α) -> w_i^((α+1)/α) = n_i^-2 -> w_i = n_i^(-2α/(α+1)).
    grads = np.array([[n1, 0.0, 0.0], [0.0, n2, 0.0]])
    nash = make("nashmtl", 2, **EXACT_NASH)
    np.testing.assert_allclose(weights_of(nash, grads), [1 / n1, 1 / n2], rtol=1e-10)
    np.testing.assert_allclose(nash.combine(torch.from_numpy(grads)).numpy(), [1.0, 1.0, 0.0], rtol=1e-10)
    for fairness in (0.5, 1.0, 2.0, 4.0):
        want = np.array([n1, n2]) ** (-2 * fairness / (fairness + 1))
        np.testing.assert_allclose(weights_of(make("fairgrad", 2, alpha=fairness), grads), want, rtol=1e-10)


@pytest.mark.parametrize("cosine", [0.6, -0.6])
def test_equal_norm_two_tasks_at_an_angle_by_hand(cosine: float) -> None:
    # |g1| = |g2| = n, g1 . g2 = c n^2: A = n^2 [[1, c], [c, 1]], symmetric solution w1 = w2 = w.
    # Nash: n^2 (1 + c) w = 1/w -> w = 1 / (n sqrt(1 + c)); FairGrad: w = (n^2 (1 + c))^(-α/(α+1)).
    n = 2.5
    theta = math.acos(cosine)
    grads = n * np.array([[1.0, 0.0], [math.cos(theta), math.sin(theta)]])
    # (rtol 1e-9: the solver's ridge, 1e-10 relative to each A_ii, moves w by ridge / (2 (1 + c)).)
    w = 1 / (n * math.sqrt(1 + cosine))
    np.testing.assert_allclose(weights_of(make("nashmtl", 2, **EXACT_NASH), grads), [w, w], rtol=1e-9)
    w2 = (n**2 * (1 + cosine)) ** (-2 / 3)
    np.testing.assert_allclose(weights_of(make("fairgrad", 2, alpha=2.0), grads), [w2, w2], rtol=1e-9)


@pytest.mark.parametrize("size", [1e-4, 1.0, 300.0])
def test_default_alpha_is_at_the_papers_scale(size: float) -> None:
    """The YAML default meets alpha_i (A alpha)_i = 1 on the gradients as they are, which is the published
    codes' constraint -log(alpha_i nf) - log((A/nf) alpha)_i <= 0 (nf = |A|_F) held with equality; so
    |d| = sqrt(K) and d does not change with the gradients' units."""
    grads = size * random_grads(5, seed=3)
    gram = grads @ grads.T
    nash = make("nashmtl", 5)
    direction = nash.combine(torch.from_numpy(grads)).numpy()
    alpha = nash.weights().numpy()
    assert residual(alpha, gram, 1.0) <= 1e-8
    frobenius = np.sqrt((gram**2).sum())
    np.testing.assert_allclose(-np.log(alpha * frobenius) - np.log((gram / frobenius) @ alpha), 0.0, atol=1e-8)
    assert np.linalg.norm(direction) == pytest.approx(math.sqrt(5), rel=1e-8)
    unit = make("nashmtl", 5).combine(torch.from_numpy(random_grads(5, seed=3))).numpy()
    np.testing.assert_allclose(direction, unit, rtol=1e-8)


# ---------------------------------------------------------------- update_weights_every and max_norm


def test_update_weights_every_recomputes_exactly_every_n_updates() -> None:
    n, k = 3, 4
    nash = make("nashmtl", k, update_weights_every=n, **EXACT_NASH)
    solved_at = None
    for step in range(8):
        grads = random_grads(k, seed=20 + step)
        gram = grads @ grads.T
        direction = nash.combine(torch.from_numpy(grads))
        weights = nash.weights().numpy()
        fresh = scipy_weights(gram, 1.0)
        if step % n == 0:
            np.testing.assert_allclose(weights, fresh, rtol=1e-8)
            solved_at = weights
        else:  # the old alpha applied to the NEW G
            np.testing.assert_array_equal(weights, solved_at)
            np.testing.assert_allclose(direction.numpy(), solved_at @ grads, rtol=1e-12)
            assert not np.allclose(weights, fresh, rtol=1e-3), "reuse must be visible"


def test_max_norm_clips_exactly_and_only_above() -> None:
    k = 4
    grads = torch.from_numpy(random_grads(k, seed=5) * 0.3)
    free = make("nashmtl", k, max_norm=0.0).combine(grads)
    norm = free.norm().item()
    for max_norm in (0.25 * norm, 0.999 * norm):
        clipped = make("nashmtl", k, max_norm=max_norm).combine(grads)
        assert clipped.norm().item() == pytest.approx(max_norm, rel=1e-12)
        torch.testing.assert_close(clipped, free * (max_norm / norm), rtol=1e-12, atol=0)
    for max_norm in (1.001 * norm, 10 * norm):
        torch.testing.assert_close(make("nashmtl", k, max_norm=max_norm).combine(grads), free, rtol=0, atol=0)


def test_max_norm_applies_to_reused_weights_on_the_new_gradients() -> None:
    k = 3
    nash = make("nashmtl", k, update_weights_every=2, max_norm=1.2)
    first = torch.from_numpy(random_grads(k, seed=1))
    d0 = nash.combine(first)
    assert d0.norm().item() == pytest.approx(1.2, rel=1e-12)  # |d| = sqrt(3) > 1.2 before clipping
    unclipped = torch.from_numpy(scipy_weights((first @ first.T).numpy(), 1.0))
    for scale, want_norm in ((5.0, 1.2), (0.1, None)):  # reused alpha on a big and a small new G
        nash = make("nashmtl", k, update_weights_every=2, max_norm=1.2)
        nash.combine(first)
        second = scale * torch.from_numpy(random_grads(k, seed=2))
        d1 = nash.combine(second)
        raw = unclipped @ second
        if want_norm is None:
            assert raw.norm().item() < 1.2
            torch.testing.assert_close(d1, raw, rtol=1e-8, atol=0)
        else:
            assert d1.norm().item() == pytest.approx(want_norm, rel=1e-12)
            torch.testing.assert_close(d1, raw * (want_norm / raw.norm()), rtol=1e-8, atol=0)


# ---------------------------------------------------------------- degenerate inputs


def test_identical_task_gradients_share_the_weight_evenly() -> None:
    # g1 = g2 = g: A = n^2 [[1, 1], [1, 1]]; alpha_1 = alpha_2 = a with 2 n^2 a = 1/a -> a = 1/(n sqrt 2).
    g = np.array([3.0, -4.0, 12.0])  # n = 13
    grads = np.stack([g, g])
    np.testing.assert_allclose(weights_of(make("nashmtl", 2, **EXACT_NASH), grads), [1 / (13 * 2**0.5)] * 2, rtol=1e-9)
    w = (2 * 13.0**2) ** (-2 / 3)  # FairGrad α=2: 2 n^2 w = w^(-1/2)
    np.testing.assert_allclose(weights_of(make("fairgrad", 2, alpha=2.0), grads), [w, w], rtol=1e-9)


def test_a_zero_task_gradient_gets_no_weight_and_the_rest_are_solved_without_it() -> None:
    grads = random_grads(4, seed=11)
    with_zero = np.insert(grads, 2, 0.0, axis=0)  # task 2 has no gradient
    for name, options, fairness in (("nashmtl", EXACT_NASH, 1.0), ("fairgrad", {"alpha": 2.0}, 2.0)):
        w = weights_of(make(name, 5, **options), with_zero)
        assert np.isfinite(w).all() and w[2] == 0.0
        np.testing.assert_allclose(np.delete(w, 2), scipy_weights(grads @ grads.T, fairness), rtol=1e-8)


@pytest.mark.parametrize("name, options", [("nashmtl", {}), ("nashmtl", EXACT_NASH), ("fairgrad", {})])
def test_opposite_and_all_zero_gradients_give_finite_bounded_updates(name: str, options: dict) -> None:
    g = torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64)
    other = torch.tensor([0.5, -1.0, 3.0], dtype=torch.float64)
    # g2 = -g1 (Pareto stationary: no solution without the ridge): d = 0, weights large but finite.
    d = make(name, 2, **options).combine(torch.stack([g, -g]))
    assert torch.isfinite(d).all() and d.norm() <= 1e-6 * g.norm()
    # With a third task the stationary pair's components cancel and d stays of the usual size.
    balancer = make(name, 3, **options)
    d = balancer.combine(torch.stack([g, -g, other]))
    assert torch.isfinite(d).all() and torch.isfinite(balancer.weights()).all()
    assert d.norm() <= 10 * max(g.norm(), other.norm(), 1.0)
    # Nothing at all: zero weights, zero update.
    balancer = make(name, 3, **options)
    assert torch.equal(balancer.combine(torch.zeros(3, 5, dtype=torch.float64)), torch.zeros(5, dtype=torch.float64))
    assert torch.equal(balancer.weights(), torch.zeros(3, dtype=torch.float64))


def test_ridge_is_relative_to_each_tasks_squared_norm() -> None:
    """The documented regularisation: the condition is solved for A + ridge diag(A)."""
    ridge = 0.21  # 1 + ridge = 1.1^2
    # Orthogonal: alpha_i n_i^2 (1 + ridge) = 1/alpha_i -> alpha_i = 1 / (1.1 n_i), whatever n_i.
    grads = np.array([[3.0, 0.0], [0.0, 0.02]])
    nash = make("nashmtl", 2, ridge=ridge, **EXACT_NASH)
    np.testing.assert_allclose(weights_of(nash, grads), [1 / 3.3, 1 / 0.022], rtol=1e-10)
    # Opposite pair g, -g (no solution without it): (A + ε D) w = ε n^2 w, so Nash w = 1 / (n sqrt ε)
    # and FairGrad α = 2: ε n^2 w = w^(-1/2) -> w = (ε n^2)^(-2/3); the update is exactly zero.
    g = np.array([1.0, 2.0, 2.0])  # n = 3
    for name, options, want in (
        ("nashmtl", EXACT_NASH, 1 / (3 * 1e-4**0.5)),
        ("fairgrad", {"alpha": 2.0}, (1e-4 * 9) ** (-2 / 3)),
    ):
        balancer = make(name, 2, ridge=1e-4, **options)
        np.testing.assert_allclose(weights_of(balancer, np.stack([g, -g])), [want, want], rtol=1e-9)


@pytest.mark.parametrize("name", ["nashmtl", "fairgrad"])
def test_float32_gram_with_negative_rounding_eigenvalues(name: str) -> None:
    """A float32 G G^T of (almost) linearly dependent gradients is not quite PSD: still finite."""
    grads = torch.randn(10, 4000, generator=torch.Generator().manual_seed(0))
    grads[1] = -grads[0]
    grads[3] = grads[2] * (1 + 1e-7)
    gram = (grads @ grads.T).double()
    assert torch.linalg.eigvalsh(gram)[0] < 0, "precondition: rounding made the Gram matrix indefinite"
    balancer = make(name, 10)
    direction = balancer.combine(grads)
    assert direction.dtype == torch.float32
    assert torch.isfinite(direction).all() and torch.isfinite(balancer.weights()).all()
    assert (balancer.weights() > 0).all()


def test_single_task() -> None:
    g = torch.tensor([[3.0, -4.0]], dtype=torch.float64)  # n = 5
    # Nash exact: alpha n^2 = 1/alpha -> alpha = 1/n, d = g/|g| (unit norm = sqrt(K)).
    torch.testing.assert_close(make("nashmtl", 1, **EXACT_NASH).combine(g), g[0] / 5)
    # FairGrad: w = n^(-2α/(α+1)).
    torch.testing.assert_close(make("fairgrad", 1, alpha=3.0).combine(g), 5.0 ** (-1.5) * g[0])


def test_float32_gradients_keep_dtype_and_accuracy() -> None:
    grads = random_grads(5, seed=8)
    for name, options, fairness in (("nashmtl", EXACT_NASH, 1.0), ("fairgrad", {"alpha": 2.0}, 2.0)):
        got = make(name, 5, **options).combine(torch.from_numpy(grads).float())
        want = scipy_weights(grads @ grads.T, fairness) @ grads
        assert got.dtype == torch.float32
        assert np.linalg.norm(got.double().numpy() - want) <= 1e-5 * np.linalg.norm(want)


# ---------------------------------------------------------------- state


@pytest.mark.parametrize(
    "name, options",
    [("nashmtl", {"update_weights_every": 3, "max_norm": 1.5}), ("fairgrad", {})],
)
def test_state_round_trip_mid_run(name: str, options: dict) -> None:
    k = 4
    sequence = [torch.from_numpy(random_grads(k, seed=40 + s)) for s in range(9)]
    original = make(name, k, **options)
    for grads in sequence[:4]:
        original.combine(grads)
    snapshot = original.state_dict()
    restored = make(name, k, **options)
    restored.load_state_dict(snapshot)
    fresh = make(name, k, **options)
    differs = False
    for grads in sequence[4:]:  # interleaved: the two must not share state
        want = original.combine(grads)
        torch.testing.assert_close(restored.combine(grads), want, rtol=0, atol=0)
        torch.testing.assert_close(restored.weights(), original.weights(), rtol=0, atol=0)
        differs |= not torch.allclose(fresh.combine(grads), want, rtol=1e-6)
    if name == "nashmtl":  # the counter and the reused alpha are state: a fresh instance solves at step 4
        assert differs
    late = make(name, k, **options)  # a snapshot stays a snapshot after its source moved on
    late.load_state_dict(snapshot)
    for grads in sequence[4:]:
        late.combine(grads)
    torch.testing.assert_close(late.weights(), original.weights(), rtol=0, atol=0)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "name, options, shown",
    [
        ("nashmtl", {"update_weights_every": 0}, ("update_weights_every", "0")),
        ("nashmtl", {"max_norm": -1.0}, ("max_norm", "-1.0")),
        ("nashmtl", {"ridge": 0.0}, ("ridge", "0.0")),
        ("nashmtl", {"tol": 0.0}, ("tol",)),
        ("nashmtl", {"max_iter": 0}, ("max_iter", "0")),
        ("fairgrad", {"alpha": 0.0}, ("alpha", "0.0")),
        ("fairgrad", {"alpha": -2.0}, ("alpha", "-2.0")),
        ("fairgrad", {"ridge": -1e-3}, ("ridge",)),
        ("fairgrad", {"max_iter": 0}, ("max_iter", "0")),
    ],
)
def test_bad_option_values_fail_in_one_sentence(name: str, options: dict, shown: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as error:
        make(name, 3, **options)
    message = str(error.value)
    assert "\n" not in message and message.endswith("."), message
    for part in shown:
        assert part in message, message


def test_both_are_gram_mixing_methods() -> None:
    assert isinstance(make("nashmtl", 3), GramMixing) and isinstance(make("fairgrad", 3), GramMixing)
    with pytest.raises(ValueError, match="Unknown option 'normalize_gram'"):  # removed: alpha is at the paper's scale
        make("nashmtl", 3, normalize_gram=True)


# ---------------------------------------------------------------- through balanced_backward on a tiny agent


@pytest.mark.parametrize("case", ["critic", "actor"])
@pytest.mark.parametrize(
    "name, options, fairness",
    [
        ("nashmtl", {}, 1.0),  # the YAML defaults
        ("nashmtl", EXACT_NASH, 1.0),
        ("fairgrad", {}, 2.0),  # the YAML default α = 2
    ],
)
def test_balanced_backward_against_per_task_autograd(case: str, name: str, options: dict, fairness: float) -> None:
    loss_fn = critic_loss if case == "critic" else actor_loss
    agent, data = tiny_agent(), batch(case)
    params = {n: p for n, p in agent.named_parameters() if n.startswith(f"{case}.")}
    losses, _ = loss_fn(agent, *data)
    expected = [
        dict(zip(params, torch.autograd.grad(losses[k], list(params.values()), retain_graph=True, allow_unused=True)))
        for k in range(K)
    ]
    expected = [{n: torch.zeros_like(params[n]) if g is None else g for n, g in e.items()} for e in expected]
    shared = sorted(n for n in params if not is_task_specific(n))
    reference = torch.stack([torch.cat([expected[k][n].flatten() for n in shared]) for k in range(K)])

    balancer = make(name, K, **options)
    balanced_backward(agent, loss_fn, data, params, balancer)

    # The weights satisfy the method's condition on the brute-force Gram matrix ...
    weights = balancer.weights().numpy()
    gram = (reference @ reference.T).numpy()
    assert (weights > 0).all()
    assert residual(weights, gram, fairness) <= 1e-7
    np.testing.assert_allclose(weights, scipy_weights(gram, fairness), rtol=1e-7)
    # ... and the shared .grad is that mix of the brute-force per-task gradients; heads get the mean.
    for n, parameter in params.items():
        if is_task_specific(n):
            want = torch.stack([expected[k][n][k] for k in range(K)]) / K
        else:
            want = sum(float(weights[k]) * expected[k][n] for k in range(K))
        torch.testing.assert_close(parameter.grad, want, rtol=1e-7, atol=1e-10)
