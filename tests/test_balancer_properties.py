"""Properties of every gradient method, on hand-built adversarial matrices and a seeded random sweep.

Each checked property is one the method's paper claims (or follows from its definition), checked on
the returned direction d and mixing weights m with independent float64 math on the [K, D] matrix G,
never with the implementation's helpers:

    CAGrad       d in the ball |d - g0| <= c |g0|; g_i . d >= F* for every task (F* <= h(w) for any w of the
                 simplex, weak duality, so g_i . d >= h(w) certifies optimality); c >= 1: 0 is in the ball, so
                 F* >= 0 and no task conflicts with d (g_i . d >= 0, hence d . g0 >= 0); matches a tight
                 independent solve (bisection on the primal's
                 worst case with scipy's NNLS projections) at norm ratios 1e4 to 1e6.
    MGDA         d = m^T G, m on the simplex, KKT of min |m^T G|^2: g_i . d >= |d|^2, equal on the support.
    IMTL-G       equal projections d . g_i / |g_i| on every task with a gradient, sum m = 1.
    Aligned-MTL  G d = sqrt(lambda_min) (G G^T)^(1/2) 1 and |d|^2 = K lambda_min (full-rank G).
    Nash-MTL     alpha_i (g_i . d) = 1 in the gradients' own scale, so |d|^2 = K.
    FairGrad     w_i^(1/alpha) (g_i . d) = 1.
    PCGrad       two tasks: d conflicts with neither; no conflicting pair: d is the mean.
    GradDrop     sign consistency: each coordinate of d is the mean of the task entries of one sign.
    mtsac        d is the mean.
Where they hold: permutation equivariance (d(PG) = d(G), m(PG) = P m(G)) and positive homogeneity
(d(sG) = s^p d(G): p = 1, Nash-MTL p = 0, FairGrad p = (1 - alpha) / (1 + alpha)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import nnls

from mtrl_famo.balancers import NAMES, REGISTRY, GradientManipulation, LossWeighting, make, options_of

SEED = {"seed": 0}


def build(name: str, k: int, **options):
    """A fresh balancer (seeded methods get seed 0)."""
    if "seed" in options_of(name):
        options = {**SEED, **options}
    return make(name, k, **options)


def update(name: str, grads: torch.Tensor, **options) -> tuple[np.ndarray, np.ndarray | None]:
    """(d, m) as float64 numpy: the method's update direction on G and its mixing weights (None if not a mix)."""
    balancer = build(name, grads.shape[0], **options)
    if isinstance(balancer, LossWeighting):  # its update on G is the weighted sum of the task gradients
        weights = balancer.weights().to(grads)
        return (weights @ grads).double().numpy(), weights.double().numpy()
    direction = balancer.combine(grads)
    assert direction.shape == grads.shape[1:] and direction.dtype == grads.dtype
    mix = balancer.weights()
    return direction.double().numpy(), None if mix is None else mix.double().numpy()


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


# ---------------------------------------------------------------- the matrices


def adversarial() -> dict[str, np.ndarray]:
    """Hand-built hard cases, float64 (D = 12 unless the case needs otherwise)."""
    rng = np.random.default_rng(2024)
    base = rng.normal(size=(6, 12)) + 0.4 * rng.normal(size=12)
    v = rng.random(6) + 0.1
    return {
        "random": base,
        "zero_row": np.vstack([base[:4], np.zeros(12), base[4]]),
        "all_zero": np.zeros((4, 12)),
        "identical": np.vstack([base[0]] * 4),
        "identical_pairs": np.vstack([base[0], base[0], base[1], base[1], base[2]]),
        "opposite": np.vstack([base[0], -base[0]]),
        "opposite_plus": np.vstack([base[0], -base[0], base[1], base[2]]),
        "rank_deficient": rng.normal(size=(8, 3)),  # K > D: 8 gradients in 3 dimensions
        "norms_1e-8_to_1e4": base[:5] * np.array([1e-8, 1e-4, 1.0, 1e2, 1e4])[:, None],
        "norms_1e-3_to_1e3": base[:5] * np.geomspace(1e-3, 1e3, 5)[:, None],
        "tiny": base * 1e-8,
        "huge": base * 1e4,
        "origin_in_hull": base - np.outer(v, v @ base) / (v @ v),  # v^T G = 0 with v > 0
        "single": base[:1],
    }


CASES = adversarial()
# Where the method's defining condition has a solution (full rank, origin outside the hull, ...).
SOLVABLE = (
    "random",
    "identical",
    "identical_pairs",
    "norms_1e-8_to_1e4",
    "norms_1e-3_to_1e3",
    "tiny",
    "huge",
    "single",
)
DTYPES = (torch.float64, torch.float32)


def as_tensor(case: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(CASES[case], dtype=dtype)


def upcast(grads: torch.Tensor) -> np.ndarray:
    """The input exactly as the method saw it, in float64."""
    return grads.double().numpy()


def gradient_methods() -> list[str]:
    return sorted(name for name in NAMES if issubclass(REGISTRY[name], GradientManipulation))


# The properties below, by method: the registry test makes sure a new method gets its entry.
HOMOGENEITY = {
    "mtsac": 1.0,
    "pcgrad": 1.0,
    "cagrad": 1.0,
    "mgda": 1.0,
    "imtl": 1.0,
    "aligned_mtl": 1.0,
    "graddrop": 1.0,
    "nashmtl": 0.0,
    "fairgrad": None,  # (1 - alpha) / (1 + alpha), from the balancer's alpha
}
# Deterministic given G (PCGrad draws random projection orders: only K = 2 leaves it no choice).
EQUIVARIANT = ("mtsac", "cagrad", "mgda", "imtl", "aligned_mtl", "graddrop", "nashmtl", "fairgrad")


def test_every_gradient_method_has_its_properties_listed() -> None:
    assert set(gradient_methods()) | {"mtsac"} == set(HOMOGENEITY)
    assert set(EQUIVARIANT) | {"pcgrad"} == set(HOMOGENEITY)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(HOMOGENEITY))
def test_every_method_gives_a_finite_update_on_every_adversarial_input(name: str, dtype: torch.dtype) -> None:
    for case in CASES:
        direction, mix = update(name, as_tensor(case, dtype))
        assert np.isfinite(direction).all(), (name, case)
        assert mix is None or np.isfinite(mix).all(), (name, case)


# ---------------------------------------------------------------- permutation and scaling


def permutations(k: int) -> list[np.ndarray]:
    rng = np.random.default_rng(k)
    return [np.arange(k)[::-1].copy(), rng.permutation(k)]


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_permuting_the_tasks_permutes_the_weights_and_keeps_the_update(name: str) -> None:
    """Every input for d; inputs whose weights are unique (no repeated or dependent rows) for m."""
    unique_weights = ("random", "norms_1e-8_to_1e4", "origin_in_hull", "opposite_plus")
    for case, grads in CASES.items():
        g = torch.from_numpy(grads)
        direction, mix = update(name, g)
        scale = 1e-9 * (np.abs(grads).sum() + 1e-300)
        for order in permutations(grads.shape[0]):
            permuted, permuted_mix = update(name, g[order])
            np.testing.assert_allclose(permuted, direction, rtol=1e-7, atol=scale, err_msg=f"{name} {case}")
            if mix is not None and case in unique_weights:
                np.testing.assert_allclose(permuted_mix, mix[order], rtol=1e-6, atol=1e-9 * np.abs(mix).max())


def test_pcgrad_two_tasks_are_permutation_equivariant() -> None:
    """With two tasks PCGrad has no order to draw."""
    for grads in CASES.values():
        if grads.shape[0] == 2:
            g = torch.from_numpy(grads)
            np.testing.assert_allclose(update("pcgrad", g[[1, 0]])[0], update("pcgrad", g)[0], rtol=1e-12, atol=0)
    rng = np.random.default_rng(3)
    for _ in range(5):
        g = torch.from_numpy(rng.normal(size=(2, 7)))
        np.testing.assert_allclose(update("pcgrad", g[[1, 0]])[0], update("pcgrad", g)[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(HOMOGENEITY))
def test_positive_homogeneity(name: str, dtype: torch.dtype) -> None:
    """d(sG) = s^p d(G) for gradient norms from about 1e-8 to 1e4 (scales 1e-8 and 1e4 of unit-size inputs)."""
    power = HOMOGENEITY[name]
    if power is None:
        alpha = build(name, 2).alpha
        power = (1 - alpha) / (1 + alpha)
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    cases = [
        "random",
        "norms_1e-3_to_1e3",
        "zero_row",
        "identical_pairs",
        "opposite_plus",
        "origin_in_hull",
        "rank_deficient",
    ]
    if name in ("nashmtl", "fairgrad"):  # the origin in the hull: no solution, the ridge-capped one is ill-conditioned
        cases = ["random", "zero_row", "identical_pairs", "norms_1e-3_to_1e3"]
    for case in cases:
        g = as_tensor(case, dtype)
        direction = update(name, g)[0]
        # d = 0 where the origin is in the hull (MGDA, IMTL-G, CAGrad with c >= 1): rounding of G's size
        floor = 64 * eps(dtype) * float(np.abs(CASES[case]).max()) ** power if power else 0.0
        for s in (1e-8, 1e4):
            scaled = update(name, g * s)[0]
            atol = rtol * np.abs(direction).max() + floor
            np.testing.assert_allclose(scaled / s**power, direction, rtol=rtol, atol=atol, err_msg=f"{case} s={s}")


# ---------------------------------------------------------------- CAGrad


def cagrad_dual_value(grads: np.ndarray, c: float, w: np.ndarray) -> float:
    """h(w) = g_w . g0 + c |g0| |g_w|: an upper bound on F* for any w of the simplex."""
    g0, g_w = grads.mean(axis=0), w @ grads
    return float(g_w @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(g_w))


def cagrad_checks(grads: torch.Tensor, c: float, *, tol: float) -> None:
    """Ball, certified optimality per task and (c >= 1) no conflict, on the float64 upcast of G."""
    balancer = make("cagrad", grads.shape[0], c=c, rescale=0)
    d = balancer.combine(grads).double().numpy()
    g = upcast(grads)
    g0 = g.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    norms = np.linalg.norm(g, axis=1)
    rounding = 16 * eps(grads.dtype) * (radius + np.linalg.norm(g0) + norms.max())
    assert np.linalg.norm(d - g0) <= radius + rounding, "outside the ball"
    live = norms > 0
    if not live.any() or radius == 0:
        return
    allowed = tol * norms[live] * (1 + c) * np.linalg.norm(g0)
    derivatives = (g @ d)[live]
    weights = np.asarray(balancer.last_weights, dtype=np.float64)
    assert np.all(derivatives >= cagrad_dual_value(g, c, weights) - allowed), "not optimal"
    if c >= 1:
        assert np.all(derivatives >= -allowed), "conflicts with a task although c >= 1"
        assert d @ g0 >= -tol * (1 + c) * np.linalg.norm(g0) ** 2


def cagrad_tolerance(grads: torch.Tensor) -> float:
    """Near the origin d is as accurate as the Gram matrix allows: about sqrt(eps sqrt(D)) relative."""
    return 20 * math.sqrt(eps(grads.dtype) * math.sqrt(grads.shape[1]))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("c", [0.3, 0.9, 1.0, 2.5])
def test_cagrad_ball_optimality_and_non_conflict_on_adversarial_inputs(c: float, dtype: torch.dtype) -> None:
    for case in CASES:
        grads = as_tensor(case, dtype)
        try:
            cagrad_checks(grads, c, tol=cagrad_tolerance(grads))
        except AssertionError as error:
            raise AssertionError(f"{case}: {error}") from None


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_cagrad_random_sweep_with_the_origin_in_or_near_the_hull(dtype: torch.dtype) -> None:
    """Seeded: K in {3, 10}, D in {5, 100}, c in [0, 4], norms spread up to 1e4, the origin in the hull,
    at a small distance from it, or anywhere."""
    rng = np.random.default_rng(7)
    for trial in range(40):
        k, dim = (3, 5) if trial % 2 else (10, 100)
        grads = rng.normal(size=(k, dim)) + rng.normal() * rng.normal(size=dim)
        v = rng.random(k) + 0.1
        shift = (0.0, 1e-6, 1e-3, 1.0)[trial % 4]
        grads = grads - (1 - shift) * np.outer(v, v @ grads) / (v @ v)
        grads = grads * np.exp(rng.uniform(0, math.log(1e4), size=k))[:, None]
        c = float(rng.uniform(0, 4))
        cagrad_checks(torch.tensor(grads, dtype=dtype), c, tol=cagrad_tolerance(torch.tensor(grads, dtype=dtype)))


def test_cagrad_stays_in_its_ball_on_the_issue_reproducer() -> None:
    """float32, K = 10, the origin exactly in the hull of the task gradients (v^T G = 0, v > 0), c = 2."""
    worst = 0.0
    for s in range(20):
        generator = torch.Generator().manual_seed(s)
        v = torch.rand(10, generator=generator) + 0.1
        jacobian = torch.randn(10, 100, generator=generator)
        grads = jacobian - torch.outer(v, v @ jacobian) / (v @ v)
        d = make("cagrad", 10, c=2.0, rescale=0).combine(grads).double()
        g0 = grads.double().mean(0)
        worst = max(worst, float((d - g0).norm() / (2 * g0.norm())))
    assert worst <= 1 + 1e-6


@pytest.mark.parametrize("scale", [1e-8, 1e-5, 1e4])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_cagrad_is_exactly_scale_equivariant(scale: float, dtype: torch.dtype) -> None:
    """combine(sG) = s combine(G) to rounding, including inputs whose hull holds the origin."""
    for case in ("random", "origin_in_hull", "opposite_plus", "norms_1e-8_to_1e4"):
        g = as_tensor(case, dtype) / float(np.abs(CASES[case]).max())  # entries up to 1
        for c in (0.5, 2.0):
            base = make("cagrad", g.shape[0], c=c).combine(g).double().numpy()
            scaled = make("cagrad", g.shape[0], c=c).combine(g * scale).double().numpy() / scale
            rtol = 1e-10 if dtype == torch.float64 else 1e-4
            atol = rtol * np.abs(base).max() + 64 * eps(dtype)  # d = 0 for c >= 1 when the origin is in the hull
            np.testing.assert_allclose(scaled, base, rtol=rtol, atol=atol, err_msg=f"{case} c={c}")


def cagrad_primal_reference(grads: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """The primal solved in D-space without the dual: F* = max{t : dist(g0, P_t) <= c|g0|} with
    P_t = {d : g_i . d >= t for all i}, by bisection on t (the distance grows with t). For G of full
    row rank, G p = 1 has a solution p and P_t = t p + C, C = {d : g_i . d >= 0}, so the projection of
    g0 onto P_t is t p + proj_C(g0 - t p), and proj_C(x) = x + G^T lambda with lambda >= 0 minimising
    |x + G^T lambda| (scipy's NNLS, on unit rows: C does not depend on the rows' lengths). (d, F*)."""
    g0 = grads.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    p = np.linalg.lstsq(grads, np.ones(grads.shape[0]), rcond=None)[0]
    assert np.allclose(grads @ p, 1.0, rtol=1e-10), "G must have full row rank"

    def projection(t: float) -> np.ndarray:
        x = g0 - t * p
        return t * p + x + units.T @ nnls(units.T, -x)[0]

    low = float(np.min(grads @ g0))  # d = g0 is feasible
    high = float(np.min(grads @ g0 + radius * np.linalg.norm(grads, axis=1)))  # h(e_i) >= F*
    for _ in range(200):
        middle = 0.5 * (low + high)
        if not low < middle < high:
            break
        if np.linalg.norm(projection(middle) - g0) <= radius:
            low = middle
        else:
            high = middle
    return projection(low), low


@pytest.mark.parametrize("ratio", [1e4, 1e6])
@pytest.mark.parametrize("c", [0.5, 2.0])
def test_cagrad_matches_a_tight_independent_solve_at_large_norm_ratios(ratio: float, c: float) -> None:
    """K = 10 task gradients whose norms spread over `ratio` (per-task critic losses differ by orders of
    magnitude): d agrees with the reference and every task's g_i . d reaches the reference's F*, to
    1e-9 of |g_i| (1 + c) |g0|."""
    rng = np.random.default_rng(int(ratio) + int(10 * c))
    for trial in range(4):
        grads = rng.normal(size=(10, 16)) + 0.5 * rng.normal(size=16)
        grads = grads * np.geomspace(1.0, ratio, 10)[rng.permutation(10), None]
        want, worst_case = cagrad_primal_reference(grads, c)
        got = make("cagrad", 10, c=c, rescale=0).combine(torch.from_numpy(grads)).numpy()
        scale = np.linalg.norm(grads, axis=1) * (1 + c) * np.linalg.norm(grads.mean(axis=0))
        assert np.all(grads @ got >= worst_case - 1e-9 * scale), f"trial {trial}"
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want), f"trial {trial}"


def test_cagrad_gram_only_mix_stays_in_the_ball_up_to_the_gram_resolution() -> None:
    """`mix(G G^T)` (callers that never stack [K, D]) in float32, origin in and near the hull."""
    rng = np.random.default_rng(11)
    for trial in range(12):
        grads = rng.normal(size=(8, 40))
        v = rng.random(8) + 0.1
        grads = grads - (1 - (0.0, 1e-3, 1e-1)[trial % 3]) * np.outer(v, v @ grads) / (v @ v)
        g = torch.tensor(grads, dtype=torch.float32)
        c = (0.5, 1.0, 2.0, 4.0)[trial % 4]
        d = make("cagrad", 8, c=c, rescale=0).mix(g @ g.T).double() @ g.double()
        g0 = g.double().mean(0)
        assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-2)


# ---------------------------------------------------------------- MGDA


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_mgda_kkt_of_the_minimum_norm_point(dtype: torch.dtype) -> None:
    """m on the simplex, g_i . d >= |d|^2 for every task, with equality where m_i > 0."""
    for case in CASES:
        g = as_tensor(case, dtype)
        d, m = update("mgda", g)
        grads = upcast(g)
        scale = (np.linalg.norm(grads, axis=1).max() ** 2 + 1e-300) * (1e-9 if dtype == torch.float64 else 1e-4)
        assert np.all(m >= 0) and m.sum() == pytest.approx(1.0, abs=1e-6), case
        np.testing.assert_allclose(m @ grads, d, rtol=1e-5, atol=1e-6 * np.abs(grads).max())
        products = grads @ d
        assert np.all(products >= d @ d - scale), case
        support = m > 1e-6
        np.testing.assert_allclose(products[support], d @ d, atol=scale, err_msg=case)


# ---------------------------------------------------------------- IMTL-G


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_imtl_equal_projections_on_every_unit_task_gradient(dtype: torch.dtype) -> None:
    """On inputs where the paper's system is solvable (K <= D; zero gradients have no unit gradient) and
    the task-gradient norms span at most 1e6 (at 1e12 the smallest task falls under the `rcond` cut)."""
    solvable = [case for case in SOLVABLE if case != "norms_1e-8_to_1e4"]
    for case in (*solvable, "zero_row", "opposite", "opposite_plus", "origin_in_hull"):
        g = as_tensor(case, dtype)
        d, m = update("imtl", g)
        grads = upcast(g)
        norms = np.linalg.norm(grads, axis=1)
        live = norms > 0
        projections = (grads[live] @ d) / norms[live]
        size = float(np.abs(m) @ norms)  # the scale d is built on
        tol = 1e-8 if dtype == torch.float64 else 1e-4
        assert np.ptp(projections) <= tol * size, case
        assert m.sum() == pytest.approx(1.0, abs=tol), case
        assert np.all(m[~live] == 0), case


# ---------------------------------------------------------------- Aligned-MTL


def test_aligned_mtl_update_is_the_sum_of_orthogonal_equal_norm_gradients() -> None:
    """G d = sqrt(lambda_min) A^(1/2) 1 and |d|^2 = K lambda_min (A = G G^T full rank; scipy's sqrtm).
    Norms spread by 1e2 at most: eigenvalues below K eps32 lambda_max are cut (the published rank rule)."""
    spread = CASES["random"][:5] * np.geomspace(0.1, 10.0, 5)[:, None]
    for case, grads in [
        *((case, CASES[case]) for case in ("random", "tiny", "huge", "single")),
        ("norms_1e-1_to_1e1", spread),
    ]:
        d, _ = update("aligned_mtl", torch.from_numpy(grads))
        gram = grads @ grads.T
        smallest = float(np.linalg.eigvalsh(gram)[0])
        root = np.real(scipy.linalg.sqrtm(gram))
        k = grads.shape[0]
        np.testing.assert_allclose(grads @ d, math.sqrt(smallest) * root.sum(axis=1), rtol=1e-6, err_msg=case)
        assert d @ d == pytest.approx(k * smallest, rel=1e-6), case


# ---------------------------------------------------------------- Nash-MTL and FairGrad


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["nashmtl", "fairgrad"])
def test_fair_shares_condition_in_the_gradients_own_scale(name: str, dtype: torch.dtype) -> None:
    """w_i^(1/alpha) (g_i . d) = 1 (alpha = 1: Nash-MTL's alpha_i (G G^T alpha)_i = 1, so |d|^2 = K)."""
    alpha = 1.0 if name == "nashmtl" else build(name, 2).alpha
    for case in (*SOLVABLE, "zero_row"):
        g = as_tensor(case, dtype)
        d, w = update(name, g)
        grads = upcast(g)
        live = np.linalg.norm(grads, axis=1) > 0
        tol = 1e-7 if dtype == torch.float64 else 1e-3
        np.testing.assert_allclose(w[live] ** (1 / alpha) * (grads[live] @ d), 1.0, atol=tol, err_msg=case)
        assert np.all(w[~live] == 0)
        if name == "nashmtl":
            assert d @ d == pytest.approx(live.sum(), rel=tol), case


# ---------------------------------------------------------------- PCGrad and GradDrop


def test_pcgrad_two_tasks_conflict_with_neither_and_no_conflict_is_the_mean() -> None:
    rng = np.random.default_rng(5)
    for case, grads in [*CASES.items(), *((f"random2_{i}", rng.normal(size=(2, 6))) for i in range(10))]:
        d, _ = update("pcgrad", torch.from_numpy(grads))
        scale = 1e-12 * (np.linalg.norm(grads, axis=1).max() ** 2 + 1e-300)
        if grads.shape[0] == 2:
            assert np.all(grads @ d >= -scale), case
        gram = grads @ grads.T
        if np.all(gram >= 0):
            np.testing.assert_allclose(d, grads.mean(axis=0), rtol=1e-12, atol=1e-15, err_msg=case)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_graddrop_keeps_one_sign_per_coordinate(dtype: torch.dtype) -> None:
    """leak 0, mean: d_j is the mean of the positive task entries or of the negative ones (never a
    mix of signs), and the plain mean where no entry conflicts."""
    for case in CASES:
        g = as_tensor(case, dtype)
        d, mix = update("graddrop", g, leak=0.0, reduction="mean")
        assert mix is None
        grads = upcast(g)
        k = grads.shape[0]
        positive, negative = np.clip(grads, 0, None).sum(axis=0) / k, np.clip(grads, None, 0).sum(axis=0) / k
        tol = 8 * eps(dtype) * (np.abs(grads).sum(axis=0) / k + 1e-300)
        assert np.all(np.minimum(np.abs(d - positive), np.abs(d - negative)) <= tol), case
        agree = (grads >= 0).all(axis=0) | (grads <= 0).all(axis=0)
        np.testing.assert_allclose(d[agree], grads.mean(axis=0)[agree], rtol=0, atol=float(np.max(tol)), err_msg=case)
