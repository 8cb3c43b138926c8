"""Balancers checked against independent math: hand-worked numbers, brute-force loops, scipy.

Every expected value here is computed without the implementation's helpers: PCGrad by a plain
Python projection loop, CAGrad by scipy's SLSQP on the dual of the paper (plus strong duality
and the primal constraint), FAMO by a hand-written softmax Jacobian and Adam step.
Conventions confirmed against the published code: CAGrad d = g0 + (c|g0|/|g_w|) g_w, rescale
0/1/2 = none, 1/(1+c^2), 1/(1+c) (Cranial-XIX/FAMO methods/weight_methods.py, CAGrad.cagrad;
the MTRL file Cranial-XIX/CAGrad mtrl/mtrl_files/cagrad.py divides by 1+c^2); FAMO backprops
`sum_i z_i log(l_i - b_i + eps) / sum_i(z_i / (l_i - b_i + eps))`, logits gradient
`autograd.grad(softmax(w), w, delta)` and torch Adam(weight_decay=gamma) (Cranial-XIX/FAMO famo.py).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mtrl_famo.balancers import NAMES, REGISTRY, GradientManipulation, GramMixing, LossWeighting, make, options_of

# ---------------------------------------------------------------- registry and option errors


def test_registry_names_and_kinds() -> None:
    """The methods of the published multitask tables (issue list), each reached by its name."""
    kinds = {
        "mtsac": LossWeighting,
        "famo": LossWeighting,
        "uw": LossWeighting,
        "dwa": LossWeighting,
        "rlw": LossWeighting,
        "scaleinvls": LossWeighting,
        "pcgrad": GramMixing,
        "cagrad": GramMixing,
        "nashmtl": GramMixing,
        "fairgrad": GramMixing,
        "mgda": GramMixing,
        "imtl": GramMixing,
        "aligned_mtl": GramMixing,
        "graddrop": GradientManipulation,
    }
    assert set(NAMES) == set(kinds)
    for name in NAMES:
        seeded = {"seed": 0} if "seed" in options_of(name) else {}  # seed: the run's, no default
        balancer = make(name, 3, **seeded)
        assert isinstance(balancer, kinds[name]) and balancer.num_tasks == 3
        assert REGISTRY[name].name == name


def assert_one_sentence(error: pytest.ExceptionInfo, *must_contain: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.endswith("."), message
    for part in must_contain:
        assert part in message, f"{part!r} missing from: {message}"


def test_unknown_name_names_the_bad_value_and_the_choices() -> None:
    with pytest.raises(ValueError) as error:
        make("gradnorm", 3)
    assert_one_sentence(error, "gradnorm", *NAMES)


@pytest.mark.parametrize(
    "name, option, valid",
    [
        ("cagrad", "alpha", ("c", "rescale")),
        ("famo", "lr", ("w_lr", "gamma", "min_losses")),
        ("pcgrad", "c", ("reduction", "seed")),
        ("mtsac", "seed", ()),
    ],
)
def test_unknown_option_names_it_and_the_valid_ones(name: str, option: str, valid: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as error:
        make(name, 3, **{option: 1})
    assert_one_sentence(error, f"'{option}'", name, *valid)


@pytest.mark.parametrize(
    "name, options, shown",
    [
        ("cagrad", {"c": -0.1}, ("-0.1",)),
        ("cagrad", {"rescale": 3}, ("3", "0", "1", "2")),
        ("cagrad", {"max_iter": 0}, ("max_iter", "0")),
        ("cagrad", {"tol": 0.0}, ("tol", "0.0")),
        ("pcgrad", {"reduction": "max", "seed": 0}, ("max", "mean", "sum")),
        ("famo", {"w_lr": 0.0}, ("w_lr", "0.0")),
        ("famo", {"gamma": -1.0}, ("gamma", "-1.0")),
        ("famo", {"eps": 0.0}, ("eps",)),
        ("famo", {"min_losses": [0.0, 0.1]}, ("min_losses", "2", "3")),
    ],
)
def test_bad_option_values_fail_in_one_sentence(name: str, options: dict, shown: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as error:
        make(name, 3, **options)
    assert_one_sentence(error, *shown)


def test_zero_tasks_is_refused() -> None:
    with pytest.raises(ValueError) as error:
        make("mtsac", 0)
    assert_one_sentence(error, "0")


@pytest.mark.parametrize(
    "name, options, shown",
    [
        ("famo", {"w_lr": "abc"}, ("famo", "w_lr", "'abc'", "a number")),
        ("famo", {"gamma": True}, ("famo", "gamma", "True", "a number")),
        ("famo", {"min_losses": "low"}, ("famo", "min_losses", "'low'", "a number or a list of numbers")),
        ("famo", {"min_losses": [0.0, "x", 1.0]}, ("famo", "min_losses", "a number or a list of numbers")),
        ("cagrad", {"rescale": 1.0}, ("cagrad", "rescale", "1.0", "an integer")),
        ("cagrad", {"c": [0.5]}, ("cagrad", "c", "[0.5]", "a number")),
        ("pcgrad", {"reduction": 1, "seed": 0}, ("pcgrad", "reduction", "1", "a string")),
        ("pcgrad", {"seed": "zero"}, ("pcgrad", "seed", "'zero'", "an integer")),
    ],
)
def test_option_of_the_wrong_type_fails_in_one_sentence(name: str, options: dict, shown: tuple[str, ...]) -> None:
    """Checked from the constructor's type hints before the constructor runs (no '<=' between str and int)."""
    with pytest.raises(ValueError) as error:
        make(name, 3, **options)
    assert_one_sentence(error, "wrong type", *shown)


def test_ints_are_numbers_and_min_losses_takes_a_number_or_a_list() -> None:
    famo = make("famo", 3, w_lr=1, gamma=0, min_losses=-2, eps=1)
    assert famo.optimizer.param_groups[0]["lr"] == 1 and famo.eps == 1
    torch.testing.assert_close(make("famo", 3, min_losses=[-1, 0.5, 2]).min_losses, torch.tensor([-1.0, 0.5, 2.0]))
    torch.testing.assert_close(make("famo", 3, min_losses=(0.0, 0.0, 0.0)).min_losses, torch.zeros(3))
    assert make("cagrad", 2, c=1).c == 1.0


def test_an_option_without_a_standalone_default_must_be_given() -> None:
    """PCGrad's seed is `${seed}` in its config file: the run's seed, so no default for code callers."""
    with pytest.raises(ValueError) as error:
        make("pcgrad", 3)
    assert_one_sentence(error, "pcgrad", "'seed'", "${seed}", "seed=")
    assert make("pcgrad", 3, seed=4).reduction == "mean"  # the other option still comes from the file


# ---------------------------------------------------------------- MT-SAC


def test_mtsac_is_uniform_mean() -> None:
    balancer = make("mtsac", 4)
    torch.testing.assert_close(balancer.weights(), torch.full((4,), 0.25))
    losses = torch.tensor([1.0, -2.0, 3.5, 0.25], requires_grad=True)
    objective = balancer.weighted_loss(losses)
    assert objective.item() == pytest.approx((1.0 - 2.0 + 3.5 + 0.25) / 4)
    (grad,) = torch.autograd.grad(objective, losses)
    torch.testing.assert_close(grad, torch.full((4,), 0.25))
    assert not balancer.needs_losses_after_step


# ---------------------------------------------------------------- PCGrad


def pcgrad_reference(grads: np.ndarray, orders: list[list[int]], reduction: str = "mean") -> np.ndarray:
    """Yu et al.: project each g_i, in its order, off every ORIGINAL g_j it conflicts with."""
    projected = []
    for i, order in enumerate(orders):
        g = grads[i].copy()
        for j in order:
            dot = float(g @ grads[j])
            if dot < 0:
                g = g - dot / float(grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    total = np.sum(projected, axis=0)
    return total / len(orders) if reduction == "mean" else total


def expected_orders(generator: torch.Generator, k: int) -> list[list[int]]:
    """The implementation's order draw: one uniform key per (task, other task), ascending."""
    keys = torch.rand(k, k, generator=generator)
    return [sorted((j for j in range(k) if j != i), key=lambda j: keys[i, j].item()) for i in range(k)]


def test_pcgrad_two_tasks_by_hand() -> None:
    # g1 = [1, 0], g2 = [-1, 1]: g1.g2 = -1 < 0, so both are projected.
    # g1' = g1 - (-1 / |g2|^2) g2 = [1, 0] + 0.5 [-1, 1] = [0.5, 0.5]   (g1'.g2 = 0)
    # g2' = g2 - (-1 / |g1|^2) g1 = [-1, 1] + [1, 0]      = [0, 1]      (g2'.g1 = 0)
    # mean = [0.25, 0.75], sum = [0.5, 1.5]
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    torch.testing.assert_close(make("pcgrad", 2, seed=0).combine(grads), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(make("pcgrad", 2, reduction="sum", seed=0).combine(grads), torch.tensor([0.5, 1.5]))


def test_pcgrad_without_conflict_is_the_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    grads = torch.rand(5, 7, generator=generator, dtype=torch.float64) + 0.1  # all dots positive
    torch.testing.assert_close(make("pcgrad", 5, seed=0).combine(grads), grads.mean(0))
    torch.testing.assert_close(make("pcgrad", 5, reduction="sum", seed=0).combine(grads), grads.sum(0))


def conflicting(k: int, d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(k, d, generator=generator, dtype=torch.float64)
    gram = grads @ grads.T
    assert (gram < 0).any(), "precondition: some tasks conflict"
    return grads


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pcgrad_k4_matches_loop_with_the_same_random_orders(reduction: str) -> None:
    k, seed = 4, 11
    balancer = make("pcgrad", k, reduction=reduction, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for call in range(4):  # successive calls continue one random stream
        grads = conflicting(k, 6, seed=call)
        want = pcgrad_reference(grads.numpy(), expected_orders(generator, k), reduction)
        got = balancer.combine(grads)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_pcgrad_result_is_one_of_the_permutation_outcomes_and_orders_matter() -> None:
    """Independent of how orders are drawn: the output is PCGrad under SOME order per task."""
    k = 3
    grads = torch.tensor([[1.0, 0.2, -0.3], [-0.8, 1.0, 0.1], [-0.5, -0.9, 1.0]], dtype=torch.float64)
    per_task = [list(itertools.permutations([j for j in range(k) if j != i])) for i in range(k)]
    outcomes = [pcgrad_reference(grads.numpy(), [list(o) for o in combo]) for combo in itertools.product(*per_task)]
    distinct = {tuple(np.round(o, 9)) for o in outcomes}
    assert len(distinct) > 1, "precondition: the order changes the answer"
    seen = set()
    for seed in range(12):
        got = make("pcgrad", k, seed=seed).combine(grads).numpy()
        distances = [np.abs(got - o).max() for o in outcomes]
        assert min(distances) < 1e-12
        seen.add(int(np.argmin(distances)))
    assert len(seen) > 1, "different seeds should draw different orders"


def test_pcgrad_projection_removes_the_conflict_for_two_tasks() -> None:
    """K=2 invariant: each projected gradient is orthogonal to the other original one."""
    grads = conflicting(2, 9, seed=1)
    g1, g2 = grads
    summed = make("pcgrad", 2, reduction="sum", seed=0).combine(grads)
    g1p = g1 - (g1 @ g2) / (g2 @ g2) * g2
    g2p = g2 - (g1 @ g2) / (g1 @ g1) * g1
    torch.testing.assert_close(g1p @ g2, torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(summed, g1p + g2p)


def test_pcgrad_seed_reproducible_and_state_round_trip_continues_the_stream() -> None:
    k = 5
    grads = [conflicting(k, 8, seed=s) for s in range(4)]
    a, b = make("pcgrad", k, seed=7), make("pcgrad", k, seed=7)
    for g in grads:
        torch.testing.assert_close(a.combine(g), b.combine(g), rtol=0, atol=0)

    first = make("pcgrad", k, seed=3)
    first.combine(grads[0])
    snapshot = first.state_dict()
    continued = [first.combine(g) for g in grads[1:]]
    restored = make("pcgrad", k, seed=999)
    restored.load_state_dict(snapshot)
    for g, want in zip(grads[1:], continued):
        torch.testing.assert_close(restored.combine(g), want, rtol=0, atol=0)


# ---------------------------------------------------------------- CAGrad


def cagrad_reference(grads: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Unrescaled CAGrad direction and dual optimum, from scipy's SLSQP on the paper's dual.

    min_{w in simplex} F(w) = g_w . g0 + sqrt(phi) |g_w|, phi = c^2 |g0|^2, g_w = sum_i w_i g_i;
    d = g0 + sqrt(phi) / |g_w| * g_w.
    """
    k = grads.shape[0]
    g0 = grads.mean(axis=0)
    radius = c * np.linalg.norm(g0)

    def objective(w: np.ndarray) -> float:
        gw = w @ grads
        return float(gw @ g0 + radius * np.linalg.norm(gw))

    def jacobian(w: np.ndarray) -> np.ndarray:
        gw = w @ grads
        return grads @ g0 + radius * (grads @ gw) / max(np.linalg.norm(gw), 1e-300)

    best = None
    for start in [np.full(k, 1.0 / k), *np.eye(k)[: min(k, 3)] * 0.9 + 0.1 / k]:
        result = minimize(
            objective,
            start,
            jac=jacobian,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1.0},
            options={"ftol": 1e-15, "maxiter": 2000},
        )
        w = np.clip(result.x, 0.0, None)
        w = w / w.sum()
        if best is None or objective(w) < objective(best):
            best = w
    gw = best @ grads
    return g0 + radius / np.linalg.norm(gw) * gw, objective(best)


def random_grads(k: int, seed: int, d: int = 30) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=d) * 0.5  # partly aligned tasks, like real ones, with conflicts
    return shared + rng.normal(size=(k, d))


@pytest.mark.parametrize("k", [2, 5, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("c", [0.5, 0.9])
def test_cagrad_matches_scipy_on_the_dual(k: int, seed: int, c: float) -> None:
    grads = random_grads(k, seed)
    want, dual_value = cagrad_reference(grads, c)
    got = make("cagrad", k, c=c, rescale=0).combine(torch.from_numpy(grads)).numpy()

    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    g0 = grads.mean(axis=0)
    # Primal side, independent of any solver: d lies on the sphere |d - g0| = c |g0| ...
    assert np.linalg.norm(got - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-6)
    # ... and by strong duality its worst task improvement equals the dual optimum.
    assert (grads @ got).min() == pytest.approx(dual_value, rel=1e-4, abs=1e-6 * np.linalg.norm(g0) ** 2)


@pytest.mark.parametrize("rescale, divisor", [(0, 1.0), (1, 1.0 + 0.7**2), (2, 1.0 + 0.7)])
def test_cagrad_rescale_conventions(rescale: int, divisor: float) -> None:
    grads = random_grads(4, seed=5)
    want, _ = cagrad_reference(grads, 0.7)
    got = make("cagrad", 4, c=0.7, rescale=rescale).combine(torch.from_numpy(grads)).numpy()
    np.testing.assert_allclose(got, want / divisor, rtol=1e-5, atol=1e-6 * np.linalg.norm(want))


def test_cagrad_warm_start_across_calls_still_solves_each_problem() -> None:
    balancer = make("cagrad", 6, c=0.5, rescale=0)
    for seed in range(5):
        grads = random_grads(6, seed=100 + seed)
        want, _ = cagrad_reference(grads, 0.5)
        got = balancer.combine(torch.from_numpy(grads)).numpy()
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_cagrad_solves_each_support_once_and_the_cache_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dual's `affine_pair` is solved once per support and problem: over warm-started solves of
    random problems (K = 2..10, c from 0.1 to 2, some with the origin in the hull), the solutions are
    bit-identical to solving every request afresh, and no support of a problem is solved twice."""
    from mtrl_famo.balancers import cagrad

    def solves(fresh: bool) -> tuple[list, list]:
        solved: list[tuple] = []  # (the problem's dual, support); holding the dual keeps its id unique
        original = cagrad._Dual._solve_affine_pair

        def counting(self, support):
            solved.append((self, tuple(support.tolist())))
            return original(self, support)

        with monkeypatch.context() as patch:
            patch.setattr(cagrad._Dual, "_solve_affine_pair", counting)
            if fresh:
                patch.setattr(cagrad._Dual, "affine_pair", counting)
            results = []
            for k, c in itertools.product((2, 3, 6, 10), (0.1, 0.5, 2.0)):
                balancer = make("cagrad", k, c=c, rescale=0)
                for seed in range(4):
                    grads = random_grads(k, seed=1000 * k + seed)
                    if seed == 3:
                        grads[-1] = -grads[:-1].sum(0)  # the origin in the convex hull
                    gram = grads @ grads.T
                    results.append(balancer.solve(gram, cagrad.gram_resolution(torch.float64, grads.shape[1]), 1.0))
        return results, solved

    cached, solved = solves(fresh=False)
    fresh, requested = solves(fresh=True)
    once = {(id(dual), support) for dual, support in solved}
    assert len(solved) == len(once) < len(requested)  # each support once per problem; the cache was used
    for a, b in zip(cached, fresh, strict=True):
        for field in ("weights", "pair", "cone"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None and y is None) or np.array_equal(x, y), field
        assert (a.step, a.converged, a.cycles) == (b.step, b.converged, b.cycles)


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_cagrad_is_scale_equivariant(scale: float) -> None:
    """Real gradients are tiny or huge; the solve must not depend on their units."""
    grads = torch.from_numpy(random_grads(5, seed=9))
    base = make("cagrad", 5, c=0.5).combine(grads)
    scaled = make("cagrad", 5, c=0.5).combine(grads * scale)
    torch.testing.assert_close(scaled / scale, base, rtol=1e-4, atol=1e-6 * base.norm().item())


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_cagrad_c0_is_the_mean(rescale: int) -> None:
    grads = torch.from_numpy(random_grads(5, seed=4))
    torch.testing.assert_close(make("cagrad", 5, c=0.0, rescale=rescale).combine(grads), grads.mean(0))


def test_cagrad_single_task_and_zero_gradients() -> None:
    g = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    # K=1: g_w = g0 = g, d = g + c|g| g/|g| = (1 + c) g, then /(1+c) with rescale 2.
    torch.testing.assert_close(make("cagrad", 1, c=0.5, rescale=0).combine(g), 1.5 * g[0])
    torch.testing.assert_close(make("cagrad", 1, c=0.5, rescale=2).combine(g), g[0])
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    out = make("cagrad", 3, c=0.5).combine(zeros)
    assert torch.equal(out, torch.zeros(4, dtype=torch.float64))


def test_cagrad_float32_input_keeps_dtype_and_accuracy() -> None:
    grads = random_grads(5, seed=8)
    want, _ = cagrad_reference(grads, 0.5)
    got = make("cagrad", 5, c=0.5, rescale=0).combine(torch.from_numpy(grads).float())
    assert got.dtype == torch.float32
    assert np.linalg.norm(got.double().numpy() - want) <= 1e-4 * np.linalg.norm(want)


# ---------------------------------------------------------------- FAMO


class FamoReference:
    """FAMO Algorithm 2 written out by hand: softmax, its Jacobian and torch-style Adam with L2."""

    def __init__(self, k: int, w_lr: float, gamma: float, bounds: np.ndarray, eps: float):
        self.xi, self.m, self.v, self.t = np.zeros(k), np.zeros(k), np.zeros(k), 0
        self.w_lr, self.gamma, self.bounds, self.eps = w_lr, gamma, bounds, eps

    def z(self) -> np.ndarray:
        e = np.exp(self.xi - self.xi.max())
        return e / e.sum()

    def loss_weights(self, losses: np.ndarray) -> np.ndarray:
        """d(objective)/d(l_i) = c z_i / (l_i - b_i + eps), c = 1 / sum_j z_j / (l_j - b_j + eps)."""
        shifted = losses - self.bounds + self.eps
        c = 1.0 / np.sum(self.z() / shifted)
        return c * self.z() / shifted

    def update(self, before: np.ndarray, after: np.ndarray) -> None:
        delta = np.log(before - self.bounds + self.eps) - np.log(after - self.bounds + self.eps)
        z = self.z()
        jacobian = np.diag(z) - np.outer(z, z)  # d z_i / d xi_j
        grad = jacobian.T @ delta + self.gamma * self.xi  # torch Adam's weight_decay: L2 on the grad
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        self.xi = self.xi - self.w_lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def test_famo_first_step_by_hand() -> None:
    famo = make("famo", 3, w_lr=0.025, gamma=0.001)
    before = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    # z = 1/3 each; c = 1 / ((1/3)(1 + 1/2 + 1/4)) = 12/7; weights c z / l = [4/7, 2/7, 1/7].
    losses = before.clone().requires_grad_(True)
    objective = famo.weighted_loss(losses)
    assert objective.item() == pytest.approx(12 / 7 * (1 / 3) * (0 + math.log(2) + math.log(4)), rel=1e-7)
    (weights,) = torch.autograd.grad(objective, losses)
    torch.testing.assert_close(weights, torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64), rtol=1e-7, atol=0)

    # delta = [log 2, log(2/1.8), 0]; softmax Jacobian at uniform z: (delta - mean(delta)) / 3
    # = [+, -, -]; Adam's first step moves each logit by w_lr against the sign (xi_0 = 0: no decay).
    famo.update(before, torch.tensor([0.5, 1.8, 4.0], dtype=torch.float64))
    delta = [math.log(2), math.log(2 / 1.8), 0.0]
    grad = [(d - sum(delta) / 3) / 3 for d in delta]
    assert grad[0] > 0 and grad[1] < 0 and grad[2] < 0
    want_logits = torch.tensor([-0.025 * g / (abs(g) + 1e-8) for g in grad])
    torch.testing.assert_close(famo.logits.detach(), want_logits, rtol=1e-6, atol=0)
    assert famo.weights()[0] < 1 / 3  # the task that improved most is weighted down
    assert famo.weights().sum().item() == pytest.approx(1.0)


def famo_loss_sequence(k: int, steps: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        before = rng.uniform(0.6, 3.0, size=k)
        out.append((before, before * rng.uniform(0.7, 1.2, size=k)))
    return out


@pytest.mark.parametrize("bounds", [0.0, [0.1, 0.5, 0.0, 0.2]])
def test_famo_several_steps_match_hand_reference(bounds) -> None:
    k, w_lr, gamma, eps = 4, 0.05, 0.01, 1e-6
    famo = make("famo", k, w_lr=w_lr, gamma=gamma, min_losses=bounds, eps=eps)
    reference = FamoReference(k, w_lr, gamma, np.broadcast_to(np.asarray(bounds, dtype=np.float64), (k,)), eps)
    for before, after in famo_loss_sequence(k, steps=6, seed=0):
        losses = torch.tensor(before, requires_grad=True)
        (weights,) = torch.autograd.grad(famo.weighted_loss(losses), losses)
        np.testing.assert_allclose(weights.numpy(), reference.loss_weights(before), rtol=1e-5)
        np.testing.assert_allclose(weights.sum().item(), 1.0, rtol=1e-6)
        famo.update(torch.tensor(before), torch.tensor(after))
        reference.update(before, after)
        np.testing.assert_allclose(famo.logits.detach().numpy(), reference.xi, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(famo.weights().numpy(), reference.z(), rtol=1e-5)
    assert np.abs(reference.xi).max() > 0.1, "the weights really moved"


def test_famo_weighted_loss_gradient_on_a_tiny_model() -> None:
    """grad of the backpropagated objective = sum_i c z_i / (l_i - b_i + eps) grad l_i."""
    k = 3
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, k)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, k, dtype=torch.float64)
    famo = make("famo", k, min_losses=0.05, eps=1e-4)
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.3, -0.4, 0.9]))
    params = list(model.parameters())
    losses = (model(x) - y).pow(2).mean(0)
    per_task = [torch.autograd.grad(losses[i], params, retain_graph=True) for i in range(k)]

    xi = np.array([0.3, -0.4, 0.9])
    z = np.exp(xi) / np.exp(xi).sum()
    shifted = losses.detach().numpy() - 0.05 + 1e-4
    weights = (1.0 / np.sum(z / shifted)) * z / shifted
    got = torch.autograd.grad(famo.weighted_loss(losses), params)
    for p_index, g in enumerate(got):
        want = sum(float(weights[i]) * per_task[i][p_index] for i in range(k))
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-9)


def test_famo_refuses_losses_at_or_below_their_bound() -> None:
    famo = make("famo", 3, min_losses=1.0)
    for call in (famo.weighted_loss, lambda losses: famo.update(losses, torch.tensor([2.0, 2.0, 2.0]))):
        with pytest.raises(ValueError) as error:
            call(torch.tensor([2.0, 0.5, 3.0]))
        message = str(error.value)
        assert "min_losses" in message and "0.5" in message and "\n" not in message
    with pytest.raises(ValueError):
        make("famo", 2).weighted_loss(torch.tensor([1.0, -0.5]))  # default bound 0: negative actor-like loss
    make("famo", 3, min_losses=1.0).weighted_loss(torch.tensor([1.0, 1.5, 2.0]))  # at the bound: l - b + eps > 0


def test_famo_state_round_trip_gives_identical_subsequent_weights() -> None:
    k = 4
    steps = famo_loss_sequence(k, steps=7, seed=3)

    def step(balancer, before: np.ndarray, after: np.ndarray) -> None:
        balancer.weighted_loss(torch.tensor(before))
        balancer.update(torch.tensor(before), torch.tensor(after))

    original = make("famo", k, w_lr=0.05, gamma=0.01)
    for before, after in steps[:3]:
        step(original, before, after)
    snapshot = original.state_dict()
    restored = make("famo", k, w_lr=0.05, gamma=0.01)
    restored.load_state_dict(snapshot)
    for before, after in steps[3:]:  # both continue, interleaved: they must not share state
        step(original, before, after)
        step(restored, before, after)
        torch.testing.assert_close(restored.weights(), original.weights(), rtol=0, atol=0)

    # A snapshot is a snapshot: taken before the last 4 steps, it still resumes from there.
    late = make("famo", k, w_lr=0.05, gamma=0.01)
    late.load_state_dict(snapshot)
    for before, after in steps[3:]:
        step(late, before, after)
    torch.testing.assert_close(late.weights(), original.weights(), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if issubclass(REGISTRY[n], GramMixing)])
def test_logged_mixing_weights_reproduce_the_update(name: str) -> None:
    """What a gradient method logs as its weights is the m of its update: d = m^T G exactly."""
    grads = torch.randn(5, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads[1] = -0.7 * grads[0] + 0.1 * grads[1]  # a conflicting pair, so the methods act
    balancer = make(name, 5, seed=0) if "seed" in options_of(name) else make(name, 5)
    assert balancer.weights() is None  # nothing applied yet
    direction = balancer.combine(grads)
    torch.testing.assert_close(direction, balancer.weights() @ grads)
    assert not torch.allclose(balancer.weights(), torch.full((5,), 0.2, dtype=torch.float64))


@pytest.mark.parametrize("c", [0.0, 0.4, 2.0])
def test_cagrad_on_column_blocks_equals_cagrad_on_the_stacked_matrix(c: float) -> None:
    """The public backward hands CAGrad J's blocks (one per parameter) instead of the stacked [K, D]
    matrix: each block's part of d, the Gram matrix and the mixing weights must be the stacked ones."""
    torch.manual_seed(3)
    for blocks in (
        [torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)],
        [torch.randn(3, 5, dtype=torch.float64) * 10.0**e for e in (-3, 0, 2)],
    ):
        stacked = torch.cat(blocks, dim=1)
        whole = make("cagrad", stacked.shape[0], c=c)
        expected = whole.combine(stacked)
        split = make("cagrad", stacked.shape[0], c=c)
        parts, gram = split.combine_blocks(blocks)
        torch.testing.assert_close(torch.cat(parts), expected, rtol=1e-12, atol=1e-12 * expected.norm().item())
        torch.testing.assert_close(gram, stacked @ stacked.T)
        torch.testing.assert_close(split.weights(), whole.weights())
