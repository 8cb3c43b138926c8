"""MGDA, IMTL-G and Aligned-MTL checked against independent math.

Every expected value is computed here without the implementation's solvers: MGDA by a brute
force over active sets in D-dimensional space, scipy's SLSQP, random points of the simplex and
the KKT conditions; IMTL-G by the paper's closed form on the explicit [K, D] gradients (any task
as reference); Aligned-MTL by the SVD / polar decomposition of G (G = P U with U orthonormal rows:
the aligned matrix is sqrt(lambda_min) U). Conventions were read off the published code:
LibMTL (median-research-group/LibMTL, weighting/MGDA.py, IMTL.py, Aligned_MTL.py) and the
official Aligned-MTL code (SamsungLabs/MTL, optim/aligned/solver.py, optim/imtl/balancer.py).
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import minimize

from mtrl_famo.agents.networks import is_task_specific
from mtrl_famo.agents.sac import actor_loss, critic_loss
from mtrl_famo.balanced_backward import balanced_backward
from mtrl_famo.balancers import GramMixing, config_file, make, options_of
from mtrl_famo.balancers.aligned_mtl import alignment_matrix

from tiny_setup import K, loss_data, tiny_agent

METHODS = ("mgda", "imtl", "aligned_mtl")


def random_grads(k: int, d: int, seed: int, shared: float = 0.5) -> np.ndarray:
    """Partly aligned task gradients with conflicts, like real ones."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=d) * shared + rng.normal(size=(k, d))


def mix(name: str, grads: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) from the balancer's public `combine`, float64 in and out."""
    balancer = make(name, grads.shape[0], **options)
    direction = balancer.combine(torch.from_numpy(grads)).numpy()
    return balancer.weights().numpy(), direction


# ---------------------------------------------------------------- registry, options, config files


@pytest.mark.parametrize("name", METHODS)
def test_registered_as_gram_mixing_with_logged_weights(name: str) -> None:
    balancer = make(name, 3)
    assert isinstance(balancer, GramMixing) and balancer.num_tasks == 3 and balancer.weights() is None
    grads = random_grads(3, 6, seed=0)
    direction = balancer.combine(torch.from_numpy(grads))
    torch.testing.assert_close(direction, balancer.weights() @ torch.from_numpy(grads))
    assert balancer.state_dict() == {}


@pytest.mark.parametrize("name", METHODS)
def test_every_option_in_the_config_file_is_documented(name: str) -> None:
    text = config_file(name).read_text()
    assert text.startswith("#"), "a one-line description heads the file"
    block = text.split("options:", 1)[1]
    lines = [line for line in block.splitlines() if line.strip()]
    assert sorted(re.match(r"\s+(\w+):", line).group(1) for line in lines) == sorted(options_of(name))
    assert all("#" in line and line.split("#", 1)[1].strip() for line in lines)
    assert "apply_to: [critic, actor]" in text


def assert_one_sentence(error: pytest.ExceptionInfo, *must_contain: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.endswith("."), message
    for part in must_contain:
        assert part in message, f"{part!r} missing from: {message}"


@pytest.mark.parametrize(
    "name, options, shown",
    [
        ("mgda", {"normalization": "loss"}, ("loss", "none", "l2")),
        ("mgda", {"tol": 0.0}, ("tol", "0.0")),
        ("mgda", {"max_iter": 0}, ("max_iter", "0")),
        ("imtl", {"rcond": -1e-3}, ("rcond", "-0.001")),
        ("aligned_mtl", {"scale_mode": "max"}, ("max", "min", "median", "rmse")),
        ("aligned_mtl", {"eig_rtol": 1.5}, ("eig_rtol", "1.5")),
    ],
)
def test_bad_option_values_fail_in_one_sentence(name: str, options: dict, shown: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as error:
        make(name, 3, **options)
    assert_one_sentence(error, *shown)


@pytest.mark.parametrize(
    "name, options", [("mgda", {"max_iter": 10.0}), ("imtl", {"rcond": "small"}), ("aligned_mtl", {"scale_mode": 1})]
)
def test_options_of_the_wrong_type_are_refused(name: str, options: dict) -> None:
    with pytest.raises(ValueError) as error:
        make(name, 3, **options)
    assert_one_sentence(error, "wrong type", name)


# ---------------------------------------------------------------- MGDA


def min_norm_by_active_sets(grads: np.ndarray) -> np.ndarray:
    """Brute force in D-space: for every subset S, the point of least norm on the affine hull of
    {g_i : i in S} (least squares on explicit vectors); the best one with weights >= 0 is the
    minimum-norm point of the convex hull (it lies in the relative interior of some face)."""
    k = grads.shape[0]
    best, best_value = None, math.inf
    for size in range(1, k + 1):
        for subset in itertools.combinations(range(k), size):
            base, others = grads[subset[0]], grads[list(subset[1:])]
            # x = base + sum_j c_j (g_j - base), least |x|
            coefficients = np.linalg.lstsq((others - base).T, -base, rcond=None)[0] if size > 1 else np.zeros(0)
            weights = np.zeros(k)
            weights[list(subset)] = np.concatenate([[1.0 - coefficients.sum()], coefficients])
            value = float(np.sum((weights @ grads) ** 2))
            if weights.min() >= -1e-12 and value < best_value:
                best, best_value = weights, value
    return best


def min_norm_by_slsqp(grads: np.ndarray) -> np.ndarray:
    k = grads.shape[0]
    result = minimize(
        lambda w: float(np.sum((w @ grads) ** 2)),
        np.full(k, 1.0 / k),
        jac=lambda w: 2.0 * grads @ (w @ grads),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1.0},
        options={"ftol": 1e-16, "maxiter": 5000},
    )
    return np.clip(result.x, 0.0, None) / np.clip(result.x, 0.0, None).sum()


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(4))
def test_mgda_matches_brute_force_over_active_sets(k: int, seed: int) -> None:
    grads = random_grads(k, 7, seed)  # D > K: affinely independent, so m is unique
    want = min_norm_by_active_sets(grads)
    m, d = mix("mgda", grads)
    np.testing.assert_allclose(m, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(d, want @ grads, rtol=0, atol=1e-10 * np.abs(grads).max())


@pytest.mark.parametrize("k, d", [(10, 30), (10, 4), (50, 200), (50, 20)])
def test_mgda_matches_scipy_and_is_no_worse(k: int, d: int) -> None:
    """SLSQP is the independent solver; MGDA is exact, so never worse than it, and d (unique) agrees."""
    grads = random_grads(k, d, seed=k + d)
    reference = min_norm_by_slsqp(grads)
    _, direction = mix("mgda", grads)
    scale = np.max(np.sum(grads**2, axis=1))
    assert direction @ direction <= np.sum((reference @ grads) ** 2) + 1e-13 * scale
    assert np.linalg.norm(direction - reference @ grads) <= 1e-5 * math.sqrt(scale)


@pytest.mark.parametrize("k, d", [(3, 5), (6, 10), (6, 3), (12, 40)])
def test_mgda_no_point_of_the_simplex_does_better(k: int, d: int) -> None:
    grads = random_grads(k, d, seed=d)
    _, direction = mix("mgda", grads)
    rng = np.random.default_rng(1)
    samples = np.vstack([np.eye(k), rng.dirichlet(np.ones(k), size=20000), rng.dirichlet(np.full(k, 0.1), size=20000)])
    norms = np.sum((samples @ grads) ** 2, axis=1)
    assert norms.min() >= direction @ direction - 1e-12 * np.max(np.sum(grads**2, axis=1))


@pytest.mark.parametrize("k, d, shared", [(2, 6, 0.5), (5, 8, 0.0), (10, 30, 1.0), (10, 3, 0.3), (50, 100, 0.5)])
@pytest.mark.parametrize("seed", range(3))
def test_mgda_kkt_conditions(k: int, d: int, shared: float, seed: int) -> None:
    """Optimality on the simplex: (A m)_i = m^T A m where m_i > 0 and >= elsewhere."""
    grads = random_grads(k, d, seed, shared)
    gram = grads @ grads.T
    m, _ = mix("mgda", grads)
    assert m.min() >= 0 and m.sum() == pytest.approx(1.0, abs=1e-14)
    products, value = gram @ m, m @ gram @ m
    scale = np.max(np.diag(gram))
    support = m > 1e-12
    assert np.abs(products[support] - value).max() <= 1e-10 * scale
    assert products.min() >= value - 1e-10 * scale


def test_mgda_two_tasks_by_hand() -> None:
    # g1 = (1, 0), g2 = (0, 2): m1 = (g2 - g1).g2 / |g1 - g2|^2 = (-1, 2).(0, 2) / 5 = 4/5,
    # d = (4/5, 2/5), and d.g1 = d.g2 = 4/5 = |d|^2.
    m, d = mix("mgda", np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(m, [0.8, 0.2], rtol=0, atol=1e-14)
    np.testing.assert_allclose(d, [0.8, 0.4], rtol=0, atol=1e-14)
    # g1 = (1, 0), g2 = (3, 1): (g2 - g1).g2 / |g1 - g2|^2 = 7/5 > 1, clipped: d = g1 (g1.g2 = 3 >= |g1|^2).
    m, d = mix("mgda", np.array([[1.0, 0.0], [3.0, 1.0]]))
    np.testing.assert_allclose(m, [1.0, 0.0], rtol=0, atol=1e-14)
    np.testing.assert_allclose(d, [1.0, 0.0], rtol=0, atol=1e-14)


@pytest.mark.parametrize("seed", range(10))
def test_mgda_two_tasks_closed_form(seed: int) -> None:
    g1, g2 = random_grads(2, 5, seed, shared=[0.0, 1.0, 3.0][seed % 3])
    m1 = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
    m, _ = mix("mgda", np.vstack([g1, g2]))
    np.testing.assert_allclose(m, [m1, 1.0 - m1], rtol=0, atol=1e-12)


def test_mgda_l2_normalization_solves_on_unit_gradients() -> None:
    # g1 = (2, 0), g2 = (0, 1): unit gradients e1, e2, min-norm weights w = (1/2, 1/2), so
    # d = (e1 + e2) / 2 and m_i = w_i / |g_i| = (1/4, 1/2).
    m, d = mix("mgda", np.array([[2.0, 0.0], [0.0, 1.0]]), normalization="l2")
    np.testing.assert_allclose(m, [0.25, 0.5], rtol=0, atol=1e-14)
    np.testing.assert_allclose(d, [0.5, 0.5], rtol=0, atol=1e-14)
    grads = random_grads(4, 6, seed=3) * np.array([[0.01], [1.0], [30.0], [2.0]])
    norms = np.linalg.norm(grads, axis=1)
    want = min_norm_by_active_sets(grads / norms[:, None])
    m, d = mix("mgda", grads, normalization="l2")
    np.testing.assert_allclose(m * norms, want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(d, want @ (grads / norms[:, None]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("scale", [1e-6, 1e5])
def test_mgda_weights_do_not_depend_on_the_gradients_units(scale: float) -> None:
    grads = random_grads(6, 9, seed=2)
    np.testing.assert_allclose(mix("mgda", grads * scale)[0], mix("mgda", grads)[0], rtol=0, atol=1e-10)


def test_mgda_degenerate_inputs() -> None:
    g = np.array([[1.0, -2.0, 0.5]])
    # Identical gradients: d = g for any split; ties go to the smallest |m|, the uniform one.
    m, d = mix("mgda", np.repeat(g, 4, axis=0))
    np.testing.assert_allclose(m, np.full(4, 0.25), atol=1e-12)
    np.testing.assert_allclose(d, g[0], atol=1e-12)
    # A duplicated task shares its weight equally with its twin.
    pair = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-0.5, 1.0, 0.0]])
    m, d = mix("mgda", pair)
    want = min_norm_by_active_sets(pair[1:])
    np.testing.assert_allclose(m, [want[0] / 2, want[0] / 2, want[1]], atol=1e-12)
    # ... also when another task is outside the support (so the active-set iterations run).
    m, d = mix("mgda", np.vstack([pair, [[3.0, 3.0, 0.0]]]))
    np.testing.assert_allclose(m, [want[0] / 2, want[0] / 2, want[1], 0.0], atol=1e-12)
    # A zero task gradient: the origin is in the hull, d = 0 (Pareto-stationary), all weight on it.
    with_zero = np.vstack([random_grads(2, 3, seed=0), np.zeros((1, 3))])
    for normalization in ("none", "l2"):
        m, d = mix("mgda", with_zero, normalization=normalization)
        assert m.tolist() == [0.0, 0.0, 1.0] and np.abs(d).max() == 0.0
    # Every gradient zero: d = 0, uniform m. One task: its own gradient.
    m, d = mix("mgda", np.zeros((3, 4)))
    assert m.tolist() == [1 / 3] * 3 and not d.any()
    m, d = mix("mgda", g)
    assert m.tolist() == [1.0] and d.tolist() == g[0].tolist()
    m, d = mix("mgda", g, normalization="l2")
    np.testing.assert_allclose(d, g[0] / np.linalg.norm(g), atol=1e-15)


# ---------------------------------------------------------------- IMTL-G


def unit(grads: np.ndarray) -> np.ndarray:
    return grads / np.linalg.norm(grads, axis=1, keepdims=True)


def imtl_paper(grads: np.ndarray, reference: int = 0) -> np.ndarray:
    """The paper's closed form on the explicit [K, D] gradients, task `reference` as the first one:
    D = [g_r - g_i], U = [u_r - u_i] (i != r), alpha_i = g_r U^T (D U^T)^{-1}, alpha_r = 1 - sum."""
    others = [i for i in range(grads.shape[0]) if i != reference]
    units = unit(grads)
    differences = grads[reference] - grads[others]
    unit_differences = units[reference] - units[others]
    alpha = grads[reference] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
    weights = np.empty(grads.shape[0])
    weights[others] = alpha
    weights[reference] = 1.0 - alpha.sum()
    return weights


@pytest.mark.parametrize("k, d", [(2, 5), (3, 4), (5, 12), (10, 30), (50, 200)])
@pytest.mark.parametrize("seed", range(3))
def test_imtl_equal_projections_and_unit_sum(k: int, d: int, seed: int) -> None:
    grads = random_grads(k, d, seed)
    m, direction = mix("imtl", grads)
    projections = unit(grads) @ direction
    assert np.ptp(projections) <= 1e-9 * np.linalg.norm(direction)
    assert m.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("k, d", [(2, 3), (3, 3), (4, 6), (6, 8)])
@pytest.mark.parametrize("seed", range(3))
def test_imtl_matches_the_papers_formula_in_d_space(k: int, d: int, seed: int) -> None:
    grads = random_grads(k, d, seed) * np.random.default_rng(seed).uniform(0.1, 10.0, size=(k, 1))
    m, direction = mix("imtl", grads)
    for reference in range(k):  # the paper's choice of reference task does not matter
        want = imtl_paper(grads, reference)
        np.testing.assert_allclose(m, want, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(direction, imtl_paper(grads) @ grads, rtol=1e-9, atol=1e-10)


def test_imtl_two_tasks_by_hand() -> None:
    # Orthogonal g1 = (3, 0), g2 = (0, 1): d = (3 m1, m2) with d.u1 = 3 m1 = d.u2 = m2 and m1 + m2 = 1,
    # so m = (1/4, 3/4), d = (3/4, 3/4).
    m, d = mix("imtl", np.array([[3.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(m, [0.25, 0.75], rtol=0, atol=1e-14)
    np.testing.assert_allclose(d, [0.75, 0.75], rtol=0, atol=1e-14)
    # Orthogonal with equal norms: the mean.
    grads = np.array([[0.0, 2.0, 0.0], [2.0, 0.0, 0.0]])
    m, d = mix("imtl", grads)
    np.testing.assert_allclose(m, [0.5, 0.5], rtol=0, atol=1e-14)
    np.testing.assert_allclose(d, grads.mean(0), rtol=0, atol=1e-14)
    # Any two tasks: d.(u1 - u2) = 0 forces equal weights on the unit gradients, m_i ∝ 1/|g_i|.
    for seed in range(5):
        pair = random_grads(2, 4, seed) * [[0.3], [5.0]]
        inverse = 1.0 / np.linalg.norm(pair, axis=1)
        np.testing.assert_allclose(mix("imtl", pair)[0], inverse / inverse.sum(), rtol=1e-12)


def test_imtl_direction_does_not_depend_on_the_task_gradient_scales() -> None:
    """Impartiality: rescaling one task's gradient changes m, not the direction of d."""
    grads = random_grads(5, 9, seed=4)
    _, direction = mix("imtl", grads)
    scaled = grads * np.array([[100.0], [1.0], [0.01], [3.0], [1.0]])
    _, scaled_direction = mix("imtl", scaled)
    np.testing.assert_allclose(
        scaled_direction / np.linalg.norm(scaled_direction), direction / np.linalg.norm(direction), atol=1e-10
    )


def test_imtl_is_symmetric_in_the_tasks() -> None:
    grads = random_grads(5, 7, seed=6)
    grads[3] = grads[1]  # a singular system too
    order = np.array([4, 2, 0, 3, 1])
    np.testing.assert_allclose(mix("imtl", grads[order])[0], mix("imtl", grads)[0][order], atol=1e-12)


def test_imtl_degenerate_inputs() -> None:
    g = np.array([1.0, -2.0, 0.5])
    # Identical gradients: every m with sum 1 works; the least-norm one is uniform (d = g).
    m, d = mix("imtl", np.tile(g, (3, 1)))
    np.testing.assert_allclose(m, np.full(3, 1 / 3), atol=1e-12)
    np.testing.assert_allclose(d, g, atol=1e-12)
    # Parallel gradients of different lengths: again undetermined, the mean.
    parallel = np.outer([0.5, 1.0, 4.0], g)
    m, d = mix("imtl", parallel)
    np.testing.assert_allclose(m, np.full(3, 1 / 3), atol=1e-12)
    np.testing.assert_allclose(d, parallel.mean(0), atol=1e-12)
    # Opposite gradients g, -2g: d.u = -d.u forces d = 0 with m = (2/3, 1/3) (the paper's formula agrees).
    m, d = mix("imtl", np.vstack([g, -2.0 * g]))
    np.testing.assert_allclose(m, [2 / 3, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(m, imtl_paper(np.vstack([g, -2.0 * g])), atol=1e-12)
    np.testing.assert_allclose(d, 0.0, atol=1e-12)
    # Duplicated task among others: the twins share the weight the pair needs.
    grads = random_grads(3, 5, seed=1)
    twins = np.vstack([grads[0], grads[0], grads[1:]])
    m, d = mix("imtl", twins)
    want = imtl_paper(grads)
    np.testing.assert_allclose(m, [want[0] / 2, want[0] / 2, *want[1:]], atol=1e-10)
    # A zero task gradient has no unit vector: it is left out (m_i = 0) and the rest is IMTL-G.
    with_zero = np.vstack([grads[:2], np.zeros((1, 5)), grads[2:]])
    m, d = mix("imtl", with_zero)
    np.testing.assert_allclose(m, [want[0], want[1], 0.0, want[2]], atol=1e-10)
    # Every gradient zero: uniform, d = 0. One task: its own gradient.
    m, d = mix("imtl", np.zeros((4, 3)))
    assert m.tolist() == [0.25] * 4 and not d.any()
    m, d = mix("imtl", g[None])
    assert m.tolist() == [1.0] and d.tolist() == g.tolist()
    for case in (np.tile(g, (3, 1)), parallel, with_zero, np.zeros((4, 3)), twins):
        assert np.all(np.isfinite(mix("imtl", case)[0]))


# ---------------------------------------------------------------- Aligned-MTL


def aligned_reference(grads: np.ndarray, tol: float = 1e-10) -> tuple[np.ndarray, float, np.ndarray]:
    """From the SVD G = U S W^T (rank r, singular values above tol * largest): the aligned matrix
    sigma_r U_r W_r^T (each singular value set to the smallest kept one), sigma_r^2, and m with
    G^T m = that matrix's row sum: m = sigma_r U_r S_r^{-1} U_r^T 1."""
    left, singular, right = np.linalg.svd(grads, full_matrices=False)
    rank = int(np.sum(singular > tol * singular[0]))
    left, singular, right = left[:, :rank], singular[:rank], right[:rank]
    smallest = singular[-1]
    weights = smallest * left @ ((left.T @ np.ones(grads.shape[0])) / singular)
    return smallest * left @ right, smallest**2, weights


@pytest.mark.parametrize("k, d", [(2, 3), (3, 5), (10, 30), (50, 120)])
@pytest.mark.parametrize("seed", range(3))
def test_aligned_gradients_are_orthogonal_with_equal_norms(k: int, d: int, seed: int) -> None:
    grads = random_grads(k, d, seed)
    balancer = make("aligned_mtl", k)
    m, direction = balancer.mixing_weights_numpy(grads @ grads.T), balancer.combine(torch.from_numpy(grads)).numpy()
    # The aligned matrix B G: B symmetric with B 1 = m; its rows are the aligned task gradients.
    b = alignment_matrix(grads @ grads.T, scale_mode="min", eig_rtol=1.1920929e-07)
    np.testing.assert_allclose(b, b.T, atol=1e-12)
    np.testing.assert_allclose(b.sum(axis=1), m, rtol=0, atol=1e-12 * np.abs(m).max())
    aligned = b @ grads
    lambda_min = np.linalg.svd(grads, compute_uv=False)[-1] ** 2  # independent of the eigh inside
    np.testing.assert_allclose(aligned @ aligned.T, lambda_min * np.eye(k), rtol=0, atol=1e-10 * lambda_min)
    np.testing.assert_allclose(direction, aligned.sum(axis=0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k, d", [(2, 3), (4, 4), (10, 30), (50, 120)])
def test_aligned_matches_the_polar_decomposition(k: int, d: int) -> None:
    """Full rank: G = P U (P = sqrt(A), U orthonormal rows) and B G = sqrt(lambda_min) U, so
    d = sqrt(lambda_min) * (sum of U's rows) and m = sqrt(lambda_min) A^{-1/2} 1."""
    grads = random_grads(k, d, seed=k)
    orthonormal, _ = scipy.linalg.polar(grads, side="left")
    lambda_min = np.linalg.svd(grads, compute_uv=False)[-1] ** 2
    m, direction = mix("aligned_mtl", grads)
    np.testing.assert_allclose(direction, math.sqrt(lambda_min) * orthonormal.sum(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m, aligned_reference(grads)[2], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k, d", [(6, 3), (12, 5), (50, 20)])
def test_aligned_rank_deficient_keeps_the_range(k: int, d: int) -> None:
    """K > rank: the zero eigenvalues are dropped and the aligned rows form a tight frame of the range
    of A with every singular value sqrt(lambda_r): B A B = lambda_r U_r U_r^T."""
    grads = random_grads(k, d, seed=d)
    aligned, smallest, weights = aligned_reference(grads)
    m, direction = mix("aligned_mtl", grads)
    np.testing.assert_allclose(m, weights, rtol=1e-8, atol=1e-10 * np.abs(weights).max())
    np.testing.assert_allclose(direction, aligned.sum(0), rtol=1e-8, atol=1e-10)
    left = np.linalg.svd(grads, full_matrices=False)[0][:, :d]  # basis of the range of A
    b = alignment_matrix(grads @ grads.T, scale_mode="min", eig_rtol=1.1920929e-07)
    np.testing.assert_allclose(b @ grads @ grads.T @ b, smallest * left @ left.T, rtol=0, atol=1e-9 * smallest)


def test_aligned_orthonormal_rows_give_the_sum() -> None:
    """A = I: B = I, so d is the plain sum of the task gradients."""
    orthonormal = np.linalg.qr(np.random.default_rng(0).normal(size=(9, 4)))[0].T  # 4 orthonormal rows
    m, direction = mix("aligned_mtl", orthonormal)
    np.testing.assert_allclose(m, np.ones(4), atol=1e-12)
    np.testing.assert_allclose(direction, orthonormal.sum(0), atol=1e-12)
    # Orthogonal rows of different lengths: each is rescaled to the shortest one's length.
    lengths = np.array([1.0, 2.0, 4.0, 0.5])
    m, _ = mix("aligned_mtl", orthonormal * lengths[:, None])
    np.testing.assert_allclose(m, 0.5 / lengths, atol=1e-12)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_scale_modes(scale_mode: str) -> None:
    """The official code's scale modes: every aligned singular value is sqrt(s), s the smallest, the
    lower median (torch.median) or the mean eigenvalue of A."""
    grads = random_grads(6, 10, seed=1)
    eigenvalues = np.sort(np.linalg.svd(grads, compute_uv=False) ** 2)
    s = {"min": eigenvalues[0], "median": eigenvalues[2], "rmse": eigenvalues.mean()}[scale_mode]
    left, singular, right = np.linalg.svd(grads, full_matrices=False)
    m, direction = mix("aligned_mtl", grads, scale_mode=scale_mode)
    np.testing.assert_allclose(direction, math.sqrt(s) * (left @ right).sum(0), rtol=1e-9)
    np.testing.assert_allclose(m, math.sqrt(s) * left @ (left.T @ np.ones(6) / singular), rtol=1e-9)


def test_aligned_eig_rtol_is_the_published_rank_rule() -> None:
    """Eigenvalues at or below eig_rtol * K * lambda_max are dropped (published: float32 eps, times K)."""
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.normal(size=(8, 3)))[0].T
    grads = np.diag([1.0, 0.5, math.sqrt(2e-7)]) @ basis  # orthogonal rows: eigenvalues 1, 0.25, 2e-7
    # Default 1.19e-7 * 3 * 1 = 3.6e-7 >= 2e-7: that eigenvalue is dropped, s = 0.25 on the other two
    # (without the factor K, 1.19e-7 < 2e-7 would keep it).
    m, _ = mix("aligned_mtl", grads)
    np.testing.assert_allclose(m, [0.5, 1.0, 0.0], atol=1e-12)
    # 5e-8 * 3 = 1.5e-7 < 2e-7 keeps it: s = 2e-7, every row rescaled to length sqrt(2e-7).
    m, _ = mix("aligned_mtl", grads, eig_rtol=5e-8)
    np.testing.assert_allclose(m, math.sqrt(2e-7) / np.array([1.0, 0.5, math.sqrt(2e-7)]), rtol=1e-9)


def test_aligned_degenerate_inputs() -> None:
    g = np.array([1.0, -2.0, 0.5])
    # Identical gradients: rank 1, B = 1 1^T / K, m = 1, d = K g.
    m, d = mix("aligned_mtl", np.tile(g, (4, 1)))
    np.testing.assert_allclose(m, np.ones(4), atol=1e-12)
    np.testing.assert_allclose(d, 4 * g, atol=1e-12)
    # A zero task gradient spans a dropped eigenvector: weight 0, the others aligned among themselves.
    grads = random_grads(3, 5, seed=3)
    with_zero = np.vstack([grads[:1], np.zeros((1, 5)), grads[1:]])
    m, d = mix("aligned_mtl", with_zero)
    want_m, want_d = mix("aligned_mtl", grads)
    np.testing.assert_allclose(m, [want_m[0], 0.0, *want_m[1:]], atol=1e-12)
    np.testing.assert_allclose(d, want_d, atol=1e-12)
    # Every gradient zero: nothing kept, m = 0, d = 0. One task: its own gradient.
    m, d = mix("aligned_mtl", np.zeros((3, 4)))
    assert m.tolist() == [0.0] * 3 and not d.any()
    m, d = mix("aligned_mtl", g[None])
    np.testing.assert_allclose(m, [1.0], atol=1e-15)
    np.testing.assert_allclose(d, g, atol=1e-15)


# ---------------------------------------------------------------- all three


@pytest.mark.parametrize("name", METHODS)
def test_float32_gradients_keep_their_dtype(name: str) -> None:
    grads = random_grads(5, 40, seed=8)
    _, want = mix(name, grads)
    got = make(name, 5).combine(torch.from_numpy(grads).float())
    assert got.dtype == torch.float32
    assert np.linalg.norm(got.double().numpy() - want) <= 1e-4 * np.linalg.norm(want)


# ---------------------------------------------------------------- through balanced_backward on the agent


def reference_weights(name: str, grads: np.ndarray) -> np.ndarray:
    """m from the independent references above, on the brute-force [K, D] gradients."""
    if name == "mgda":
        return min_norm_by_active_sets(grads)
    if name == "imtl":
        return imtl_paper(grads)
    return aligned_reference(grads)[2]


@pytest.mark.parametrize("case", ["critic", "actor"])
@pytest.mark.parametrize("name", METHODS)
def test_balanced_backward_shared_grad_is_the_mix_of_brute_force_gradients(name: str, case: str) -> None:
    loss_fn, prefix = {"critic": (critic_loss, "critic."), "actor": (actor_loss, "actor.")}[case]
    agent, data = tiny_agent(), loss_data(case)
    params = {n: p for n, p in agent.named_parameters() if n.startswith(prefix)}
    losses, _ = loss_fn(agent, *data)
    per_task = []  # one ordinary autograd.grad per task loss
    for k in range(K):
        grads = torch.autograd.grad(losses[k], list(params.values()), retain_graph=True, allow_unused=True)
        per_task.append({n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)})
    shared = sorted(n for n in params if not is_task_specific(n))
    matrix = np.stack([torch.cat([per_task[k][n].flatten() for n in shared]).numpy() for k in range(K)])
    weights = reference_weights(name, matrix)
    assert not np.allclose(weights, weights.mean()), "precondition: the method does more than averaging"

    balanced_backward(agent, loss_fn, data, params, make(name, K))

    for n, parameter in params.items():
        if is_task_specific(n):
            want = torch.stack([per_task[k][n][k] for k in range(K)]) / K
        else:
            want = sum(float(weights[k]) * per_task[k][n] for k in range(K))
        torch.testing.assert_close(parameter.grad, want, rtol=1e-7, atol=1e-10)
