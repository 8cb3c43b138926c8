"""The two-task 2-D toy problem of CAGrad and FAMO, solved with this project's balancers.

    python scripts/toy.py                                # both papers' setups, all balancers
    python scripts/toy.py --setup famo --balancers famo,cagrad --out toy.png
    python scripts/toy.py --steps 20000                  # shorter runs

It prints, per setup x balancer x start point, the final losses (L1, L2), `pareto_gap` at the final
x, the loss-space distance to the Pareto front, and the first step (checked every 100) within 0.05
of the front ('-': never), then writes a PNG of loss-space and x-space trajectories.

Why: a balancer that cannot reach the Pareto front of a 2-parameter problem has no business on
Metaworld, and the toy shows in seconds what the papers' toy figures show: mean-loss descent
(`mtsac`) stalls away from the front from some starts (CAGrad paper Fig. 1: both top starts;
FAMO paper Fig. 1: "ADAM fails in 1 out of 5 runs") while FAMO, and CAGrad in its own setup, reach it.

Where the definitions come from (checked against the published code, not copied):
- Losses: CAGrad paper (Liu et al., NeurIPS 2021, Fig. 1), repository Cranial-XIX/CAGrad,
  file `toy.py` (class `Toy`). With x = (x1, x2):
      h1 = log(max(|0.5(-x1-7) - tanh(-x2)|, 5e-6)) + 6
      h2 = log(max(|0.5(-x1+3) + tanh(-x2) + 2|, 5e-6)) + 6
      q1 = ((x1-7)^2 + 0.1 (x2+8)^2) / 10 - 20,   q2 = ((x1+7)^2 + 0.1 (x2+8)^2) / 10 - 20
      a = max(tanh(x2/2), 0),  b = max(tanh(-x2/2), 0)
      L1 = scale * (a h1 + b q1),  L2 = a h2 + b q2
- FAMO's version (Liu et al., NeurIPS 2023, toy figure), repository Cranial-XIX/FAMO,
  `experiments/toy/trainer.py` (problem class from AvivNavon/nash-mtl `experiments/toy/problem.py`):
  the same losses with L1 multiplied by scale = 0.1.
- Setups (`SETUPS`):
  * "cagrad": scale 1, starts (-8.5, 7.5), (-8.5, -5), (9, 9); 100,000 steps of Adam(lr=1e-3) on x;
    CAGrad c = 0.5 with the direction divided by 1 + c (`rescale=2` here). The published PCGrad and
    mean-gradient baselines are this project's `pcgrad` (mean reduction, seed 0) and `mtsac`.
  * "famo": scale 0.1, starts (-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5), (9, -1); 50,000 steps of
    Adam(lr=1e-3) on x; CAGrad c = 0.4 divided by 1 + c^2 (`rescale=1`, FAMO repo defaults);
    FAMO w_lr = 0.025, gamma = 0 (FAMO `experiments/toy/run.sh`: "a very small gamma as the
    objective is not changing"; this project's default is in configs/balancer/famo.yaml) and
    min_losses = (-21 * scale, -21) (`set_min_losses` in that trainer), needed because these losses
    go down to -20. Options not set here come from configs/balancer/<name>.yaml through `make`.
  FAMO is run with the "famo" options in both setups (min_losses follow the setup's scale).
- Pareto stationarity: `pareto_gap(x)` = min over w in the simplex of |w g1 + (1-w) g2|, in closed
  form for two tasks. The front itself is traced by minimising w L1 + (1-w) L2: on the front
  x2 < 0, where only the quadratic parts act, so x1 = 14w - 7 for the unscaled losses and x2 is a
  1-D minimisation (checked by `pareto_gap` ~ 0 along it in tests/test_toy.py).

What the runs show (paper budgets, see the table): FAMO reaches the front from all eight runs;
CAGrad from all three of its paper's starts, ending at the mean loss's minimiser (c < 1); mean loss
stalls from both top starts in CAGrad's setup and from (9, 9) in FAMO's (the papers' failures).
In FAMO's setup PCGrad and CAGrad (c=0.4) are also still off the front from (9, 9) after 50k steps
(this CAGrad arrives after ~80k steps).

Deliberate differences from the published code:
- Each step is the library loop of docs/library.md with this project's own pieces, the sequence of
  the trainer (`SACLearner._balanced_step`): the balancer from `mtrl_famo.balancers.make`, the
  public `mtrl_famo.balancers.backward` with x as the shared parameter (gradient methods combine
  the `[2, 2]` per-task gradients, loss weighting backprops `weighted_loss(losses)`), the learner's
  optimiser (`mtrl_famo.optim.make_adam`: fused torch Adam), and after the step
  `update(losses_before, losses_after)` for a balancer that asks for it (the FAMO repo calls
  `update` with the same new losses at the start of the next iteration). Losses are float32, as in
  the trainer.
- The losses are an autograd node (`ToyLosses`) whose backward is the closed-form Jacobian
  (`point_losses_and_jacobian`, tested against autograd through `losses`): the same gradients as
  autograd through the formulas, several times cheaper, which makes the papers' 50k-100k steps
  affordable.
- The FAMO repo multiplies CAGrad/PCGrad directions by K (sum loss) and clips them to norm 1; this
  project's balancers do neither (Adam is nearly invariant to the rescaling, not to the clipping).
  FAMO's own toy run has no effective clipping (that repo clips before `backward`).
- Each start point is its own parameter with its own balancer, all stepped by one optimiser (Adam
  is element-wise, so this equals separate runs, tested); with per-start step budgets
  (`run_starts`) a start leaves the batch once its budget is spent.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtrl_famo import balancers
from mtrl_famo.atomic import atomic_output
from mtrl_famo.balancers import backward
from mtrl_famo.optim import make_adam

LOWER = 5e-6  # the published clamp inside the logs
LOG_LOWER = math.log(LOWER)
DTYPE = torch.float32  # the papers' and the trainer's precision; `pareto_gap` and the front use float64


def loss_floor(scale: float) -> np.ndarray:
    """FAMO's toy lower bound of the two losses (its `min_losses`): they never go below it."""
    return np.array([-21.0 * scale, -21.0])


def famo_options(scale: float) -> dict[str, Any]:
    """FAMO's toy settings (Cranial-XIX/FAMO experiments/toy): no weight decay, losses bounded below by -21."""
    return {"w_lr": 0.025, "gamma": 0.0, "min_losses": loss_floor(scale).tolist()}


@dataclass(frozen=True)
class Setup:
    """One paper's toy experiment: loss scale, start points, optimiser and balancer options."""

    name: str
    scale: float
    starts: tuple[tuple[float, float], ...]
    steps: int
    lr: float
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


SETUPS: dict[str, Setup] = {
    "cagrad": Setup(
        name="cagrad",
        scale=1.0,
        starts=((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)),
        steps=100_000,
        lr=1e-3,
        options={
            "cagrad": {"c": 0.5, "rescale": 2},
            "famo": famo_options(1.0),
            "pcgrad": {"reduction": "mean", "seed": 0},
        },
    ),
    "famo": Setup(
        name="famo",
        scale=0.1,
        starts=((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)),
        steps=50_000,
        lr=1e-3,
        options={
            "cagrad": {"c": 0.4, "rescale": 1},
            "famo": famo_options(0.1),
            "pcgrad": {"reduction": "mean", "seed": 0},
        },
    ),
}


def losses(x: torch.Tensor | np.ndarray | Sequence[float], scale: float = 1.0) -> torch.Tensor:
    """`[..., 2]` points in, `[..., 2]` task losses (L1, L2) out; differentiable in x (the reference form)."""
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    x1, x2 = x[..., 0], x[..., 1]
    t = torch.tanh(-x2)
    h1 = torch.clamp((0.5 * (-x1 - 7) - t).abs(), LOWER).log() + 6
    h2 = torch.clamp((0.5 * (-x1 + 3) + t + 2).abs(), LOWER).log() + 6
    q1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    q2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    a = torch.clamp(torch.tanh(0.5 * x2), min=0)
    b = torch.clamp(torch.tanh(-0.5 * x2), min=0)
    return torch.stack([scale * (a * h1 + b * q1), a * h2 + b * q2], dim=-1)


def point_losses_and_jacobian(x1: float, x2: float, scale: float = 1.0) -> tuple[float, ...]:
    """(L1, L2, dL1/dx1, dL1/dx2, dL2/dx1, dL2/dx2) at one point, in closed form.

    The same function as `losses`, with autograd's one-sided derivatives at the kinks (clamp passes
    the gradient at its bound, |0|' = 0). Plain floats: on 2-element problems this is several times
    cheaper than numpy or autograd, which is what makes the papers' 50k-100k steps affordable.
    """
    t = math.tanh(-x2)
    dt_neg = 1.0 - t * t  # d tanh(-x2) / dx2 = -dt_neg
    u1 = 0.5 * (-x1 - 7) - t
    u2 = 0.5 * (-x1 + 3) + t + 2
    h1, dh1 = (math.log(abs(u1)) + 6, 1.0 / u1) if abs(u1) >= LOWER else (LOG_LOWER + 6, 0.0)
    h2, dh2 = (math.log(abs(u2)) + 6, 1.0 / u2) if abs(u2) >= LOWER else (LOG_LOWER + 6, 0.0)
    q1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    q2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    dq_dx2 = 0.02 * (x2 + 8)
    s = math.tanh(0.5 * x2)
    ds = 0.5 * (1.0 - s * s)
    a, da = (s, ds) if s >= 0 else (0.0, 0.0)
    b, db = (-s, -ds) if s <= 0 else (0.0, 0.0)
    return (
        scale * (a * h1 + b * q1),
        a * h2 + b * q2,
        scale * (-0.5 * a * dh1 + b * (x1 - 7) / 5),
        scale * (da * h1 + a * dh1 * dt_neg + db * q1 + b * dq_dx2),
        -0.5 * a * dh2 + b * (x1 + 7) / 5,
        da * h2 - a * dh2 * dt_neg + db * q2 + b * dq_dx2,
    )


def losses_and_jacobian(x: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Losses `[..., 2]` and Jacobian `[..., 2 tasks, 2 coords]` of `[..., 2]` points, in x's float dtype."""
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    rows = np.array([point_losses_and_jacobian(x1, x2, scale) for x1, x2 in x.reshape(-1, 2).tolist()], dtype=dtype)
    rows = rows.reshape(*x.shape[:-1], 6)
    return rows[..., :2], rows[..., 2:].reshape(*x.shape[:-1], 2, 2)


def task_gradients(
    x: torch.Tensor | np.ndarray | Sequence[float], scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses `[..., 2]` and per-task gradients `[..., 2 tasks, 2 coords]` by autograd, in float64."""
    x = torch.as_tensor(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=torch.float64)
    x = x.clone().requires_grad_(True)
    values = losses(x, scale)
    grads = [torch.autograd.grad(values[..., k].sum(), x, retain_graph=k == 0)[0] for k in range(2)]
    return values.detach(), torch.stack(grads, dim=-2)


def min_norm(grads: torch.Tensor) -> torch.Tensor:
    """|w g1 + (1-w) g2| minimised over w in [0, 1], for `[..., 2, D]` gradients (closed form)."""
    g1, g2 = grads[..., 0, :], grads[..., 1, :]
    diff = g1 - g2
    w = ((g2 * (g2 - g1)).sum(-1) / (diff * diff).sum(-1).clamp_min(1e-300)).clamp(0.0, 1.0)
    return (w[..., None] * g1 + (1 - w[..., None]) * g2).norm(dim=-1)


def pareto_gap(x: torch.Tensor | np.ndarray | Sequence[float], scale: float = 1.0) -> float | np.ndarray:
    """Pareto-stationarity gap: 0 exactly where some convex combination of the task gradients vanishes.

    One point `[2]` gives a float, a batch `[..., 2]` an array.
    """
    _, grads = task_gradients(x, scale)
    gap = min_norm(grads).numpy()
    return float(gap) if gap.ndim == 0 else gap


def pareto_front(scale: float = 1.0, num: int = 401) -> tuple[np.ndarray, np.ndarray]:
    """Points `[num, 2]` of the Pareto set and their losses `[num, 2]`, by weighted-sum scalarisation.

    The front is convex, so every point minimises w L1 + (1-w) L2 (unscaled losses) for some w.
    There x2 < 0, only the quadratic parts act and the x1-derivative vanishes at x1 = 14w - 7;
    x2 then minimises the weighted sum along that line (bounded 1-D search, float64).
    """
    from scipy.optimize import minimize_scalar

    points = []
    for w in np.linspace(0.0, 1.0, num):
        x1 = 14.0 * w - 7.0

        def weighted(x2: float, x1: float = x1, w: float = w) -> float:
            l1, l2 = point_losses_and_jacobian(x1, x2)[:2]
            return w * l1 + (1.0 - w) * l2

        result = minimize_scalar(weighted, bounds=(-12.0, -4.0), method="bounded", options={"xatol": 1e-9})
        points.append((x1, result.x))
    xs = np.asarray(points)
    return xs, losses_and_jacobian(xs, scale)[0]


def front_distance(loss_points: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Euclidean distance of `[..., 2]` loss vectors to the polyline through `front` `[M, 2]`."""
    p = np.asarray(loss_points, dtype=np.float64)[..., None, :]
    a, b = front[:-1], front[1:]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-300), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1).min(-1)


def options_for(balancer_name: str, setup: Setup) -> dict[str, Any]:
    """The setup's options for a balancer (empty: the project's defaults; a seeded method gets 0)."""
    options = dict(setup.options.get(balancer_name, {}))
    if balancer_name in balancers.REGISTRY and "seed" in balancers.options_of(balancer_name):
        options.setdefault("seed", 0)
    return options


def loss_shift(balancer_name: str, scale: float) -> np.ndarray:
    """What to subtract from the toy's losses before a balancer sees them. The toy's losses are
    logs and go negative; a method that needs positive losses and has no bound option of its own
    (FAMO's `min_losses`) sees them measured from `loss_floor`, as FAMO does. Gradients are unchanged."""
    cls = balancers.REGISTRY.get(balancer_name)
    if cls is not None and cls.needs_positive_losses and cls.loss_bound_option is None:
        return loss_floor(scale)
    return np.zeros(2)


class ToyLosses(torch.autograd.Function):
    """The toy's two losses of one point `x [2]` as an autograd node whose backward is the closed-form
    Jacobian (`point_losses_and_jacobian`): `balancers.backward` then differentiates through it as
    through any model, at the cost of a 2 x 2 product instead of autograd through ~30 scalar ops."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        x1, x2 = x.tolist()
        values = point_losses_and_jacobian(x1, x2, scale)
        ctx.save_for_backward(torch.tensor(values[2:], dtype=x.dtype).view(2, 2))
        return torch.tensor(values[:2], dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (jacobian,) = ctx.saved_tensors
        return grad_losses @ jacobian, None


def run_starts(
    balancer_name: str,
    starts: np.ndarray | Sequence[Sequence[float]],
    steps: int | Sequence[int],
    scale: float = 1.0,
    lr: float = 1e-3,
    options: dict[str, Any] | None = None,
    *,
    stop: Callable[[int, np.ndarray], bool] | None = None,
    check_every: int = 100,
) -> list[np.ndarray]:
    """Trajectories `[steps_s + 1, 2]` from S start points, one balancer object per start.

    `steps` is one budget for all starts or one per start. Each start is its own float32 parameter
    `[2]` (a row of one `[S, 2]` tensor) with its own balancer, all stepped by one optimiser (Adam is
    element-wise, so this equals separate runs); a start whose budget is spent leaves the batch (no
    `.grad`, so Adam skips it). Runs on one torch thread (restored after).

    `stop(s, x)`, if given, is asked every `check_every` steps about each start s still running, with
    its current point x (`[2]`, float64): True ends that start's run there (its trajectory is then
    shorter than its budget; the other starts go on unchanged).

    Each step is the library loop of docs/library.md, as `SACLearner._balanced_step` runs it: the
    public `balancers.backward` (x is the shared parameter), the learner's optimiser
    (`mtrl_famo.optim.make_adam`), then `update(losses_before, losses_after)` for a balancer that
    asks for it, on the losses at the new x.
    """
    start_array = np.asarray(starts, dtype=np.float64)
    if start_array.ndim != 2 or start_array.shape[1] != 2:
        raise ValueError(f"Start points must have shape [S, 2], got {list(start_array.shape)}.")
    count = len(start_array)
    budgets = [int(steps)] * count if np.ndim(steps) == 0 else [int(n) for n in steps]  # type: ignore[union-attr]
    if len(budgets) != count or min(budgets, default=0) < 0:
        raise ValueError(f"steps must be one non-negative budget or one per start ({count}), got {steps}.")
    if check_every < 1:
        raise ValueError(f"check_every must be at least 1, got {check_every}.")
    objects = [balancers.make(balancer_name, 2, **(options or {})) for _ in range(count)]
    if not count:
        return []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-element tensors: threads only add overhead
    try:
        trajectory, budgets = _run(
            objects, start_array, budgets, scale, lr, loss_shift(balancer_name, scale), stop, check_every
        )
    finally:
        torch.set_num_threads(threads)
    return [trajectory[: budget + 1, s].numpy() for s, budget in enumerate(budgets)]


def _run(
    objects: list[Any],
    start_array: np.ndarray,
    budgets: list[int],
    scale: float,
    lr: float,
    shift: np.ndarray,
    stop: Callable[[int, np.ndarray], bool] | None,
    check_every: int,
) -> tuple[torch.Tensor, list[int]]:
    """The loop of `run_starts`: the trajectory `[max(budgets) + 1, S, 2]` (NaN past a start's budget)
    and each start's budget, cut short where `stop` ended it.

    The points are rows of one `[S, 2]` tensor (each row its own leaf parameter, stepped in place by
    the fused Adam), so one copy per step records every start. Only tensor creation and Python
    bookkeeping happen here besides the library calls; everything per start that can be done once is.
    """
    count = len(start_array)
    budgets = list(budgets)
    shift_tensor = torch.as_tensor(shift, dtype=DTYPE)
    shifted = bool(shift_tensor.any())
    flat = torch.tensor(start_array.tolist(), dtype=DTYPE)  # [S, 2]; rows are the parameters
    points = [flat[s].requires_grad_(True) for s in range(count)]
    optimizer = make_adam(points, lr)
    after_step = [s for s in range(count) if objects[s].needs_losses_after_step]

    def task_losses(x: torch.Tensor) -> torch.Tensor:  # the toy's losses as the balancer sees them
        values = ToyLosses.apply(x, scale)
        return values - shift_tensor if shifted else values

    def losses_at(x1: float, x2: float) -> torch.Tensor:  # `ToyLosses.apply`'s values, without the node
        loss = torch.tensor(point_losses_and_jacobian(x1, x2, scale)[:2], dtype=DTYPE)
        return loss - shift_tensor if shifted else loss

    trajectory = torch.full((max(budgets) + 1, count, 2), math.nan, dtype=DTYPE)
    trajectory[0] = flat
    # Per-step work only changes when a start's budget runs out (or `stop` may end one): each stretch
    # between those steps gets its lists once.
    begin = 0
    while begin < max(budgets):
        end = min(b for b in budgets if b > begin)
        if stop is not None:
            end = min(end, (begin // check_every + 1) * check_every)
        for s in range(count):  # spent: no .grad, so the optimiser skips it
            if budgets[s] <= begin:
                points[s].grad = None
        active = [(s, points[s], [points[s]], objects[s]) for s in range(count) if budgets[s] > begin]
        updating = [(i, s, objects[s]) for i, (s, *_) in enumerate(active) if s in after_step]
        every = len(active) == count
        rows = [s for s, *_ in active]
        for step in range(begin, end):
            befores = [backward(task_losses(x), params, balancer, jacobian="loop") for _, x, params, balancer in active]
            optimizer.step()
            with torch.no_grad():
                if updating:
                    now = flat.tolist()
                    for i, s, balancer in updating:
                        balancer.update(befores[i].losses, losses_at(*now[s]))
                if every:
                    trajectory[step + 1] = flat
                else:
                    trajectory[step + 1, rows] = flat[rows]
        begin = end
        if stop is not None and begin % check_every == 0:
            for s in rows:
                if budgets[s] > begin and stop(s, trajectory[begin, s].double().numpy()):
                    budgets[s] = begin
    return trajectory, budgets


def run_batch(
    balancer_name: str,
    starts: np.ndarray | Sequence[Sequence[float]],
    steps: int,
    scale: float = 1.0,
    lr: float = 1e-3,
    options: dict[str, Any] | None = None,
) -> np.ndarray:
    """Trajectories `[S, steps + 1, 2]` from S start points, all with the same budget (see `run_starts`)."""
    trajectories = run_starts(balancer_name, starts, steps, scale, lr, options)
    return np.stack(trajectories) if trajectories else np.empty((0, steps + 1, 2), dtype=np.float32)


def run(
    balancer_name: str,
    start: Sequence[float],
    steps: int | None = None,
    setup: str = "cagrad",
    options: dict[str, Any] | None = None,
) -> np.ndarray:
    """Trajectory `[steps + 1, 2]` of x from one start point under a paper's setup (see `run_batch`).

    `steps` defaults to the setup's; `options` replace the setup's options for this balancer.
    """
    if setup not in SETUPS:
        raise ValueError(f"Unknown setup '{setup}'; choose one of {', '.join(SETUPS)}.")
    chosen = SETUPS[setup]
    options = options_for(balancer_name, chosen) if options is None else options
    return run_batch(
        balancer_name, [start], chosen.steps if steps is None else steps, chosen.scale, chosen.lr, options
    )[0]


@dataclass(frozen=True)
class Outcome:
    """Where one run ended: final losses, Pareto gap, distance to the front, first step near it."""

    setup: str
    balancer: str
    start: tuple[float, float]
    final_x: tuple[float, float]
    final_losses: tuple[float, float]
    gap: float
    front_distance: float
    reached_step: int | None


REACHED = 0.05  # loss-space distance to the front that counts as "on the front" for `reached_step`
SUBSAMPLE = 100  # trajectory stride for `reached_step` and for the plots


def summarise(setup: Setup, balancer_name: str, trajectories: np.ndarray, front: np.ndarray) -> list[Outcome]:
    """One `Outcome` per start point from `[S, steps + 1, 2]` trajectories."""
    outcomes = []
    for start, trajectory in zip(setup.starts, trajectories):
        final = trajectory[-1].astype(np.float64)
        final_losses = losses_and_jacobian(final, setup.scale)[0]
        stride = trajectory[::SUBSAMPLE].astype(np.float64)
        near = np.nonzero(front_distance(losses_and_jacobian(stride, setup.scale)[0], front) < REACHED)[0]
        outcomes.append(
            Outcome(
                setup=setup.name,
                balancer=balancer_name,
                start=(float(start[0]), float(start[1])),
                final_x=(float(final[0]), float(final[1])),
                final_losses=(float(final_losses[0]), float(final_losses[1])),
                gap=float(pareto_gap(final, setup.scale)),
                front_distance=float(front_distance(final_losses, front)),
                reached_step=int(near[0]) * SUBSAMPLE if near.size else None,
            )
        )
    return outcomes


HEADER = (
    f"{'setup':<7} {'balancer':<8} {'start':>13} {'L1':>9} {'L2':>9} {'pareto_gap':>11} {'front_dist':>11} "
    f"{'reached':>8}"
)


def format_row(outcome: Outcome) -> str:
    """One table row; `reached` is the first step within REACHED of the front, '-' if never."""
    start = f"({outcome.start[0]:g}, {outcome.start[1]:g})"
    reached = "-" if outcome.reached_step is None else str(outcome.reached_step)
    return (
        f"{outcome.setup:<7} {outcome.balancer:<8} {start:>13} {outcome.final_losses[0]:>9.4f} "
        f"{outcome.final_losses[1]:>9.4f} {outcome.gap:>11.2e} {outcome.front_distance:>11.2e} {reached:>8}"
    )


COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def plot(
    results: dict[str, dict[str, np.ndarray]], fronts: dict[str, tuple[np.ndarray, np.ndarray]], out: Path
) -> None:
    """Loss-space (top) and x-space (bottom) trajectories per setup and balancer; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(results.values())))
    rows, cols = 2 * len(results), len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    grid = np.linspace(-10.0, 10.0, 201)
    mesh = np.stack(np.meshgrid(grid, grid), axis=-1)
    for r, (setup_name, by_balancer) in enumerate(results.items()):
        setup = SETUPS[setup_name]
        front_x, front_losses = fronts[setup_name]
        surface = losses(torch.from_numpy(mesh), setup.scale).sum(-1).numpy()
        for c, name in enumerate(names):
            loss_ax, x_ax = axes[2 * r, c], axes[2 * r + 1, c]
            loss_ax.plot(front_losses[:, 0], front_losses[:, 1], color="k", lw=3, alpha=0.35, label="Pareto front")
            x_ax.contour(grid, grid, surface, levels=20, cmap="viridis", linewidths=0.6)
            x_ax.plot(front_x[:, 0], front_x[:, 1], color="k", lw=3, alpha=0.35)
            for s, trajectory in enumerate(by_balancer[name]):
                color = COLORS[s % len(COLORS)]
                thin = np.concatenate([trajectory[::SUBSAMPLE], trajectory[-1:]]).astype(np.float64)
                path = losses_and_jacobian(thin, setup.scale)[0]
                loss_ax.plot(path[:, 0], path[:, 1], color=color, lw=1.2, label=f"start {tuple(setup.starts[s])}")
                loss_ax.plot(*path[0], "o", color=color, ms=4)
                loss_ax.plot(*path[-1], "*", color=color, ms=9, mec="k", mew=0.5)
                x_ax.plot(thin[:, 0], thin[:, 1], color=color, lw=1.2)
                x_ax.plot(*thin[0], "o", color=color, ms=4)
                x_ax.plot(*thin[-1], "*", color=color, ms=9, mec="k", mew=0.5)
            loss_ax.set_title(f"{name} ({setup_name} setup, scale {setup.scale:g})", fontsize=9)
            loss_ax.set_xlabel("L1", fontsize=8)
            loss_ax.set_ylabel("L2", fontsize=8)
            x_ax.set_title(f"{name}: x-space, contours of L1 + L2", fontsize=9)
            x_ax.set_xlabel("x1", fontsize=8)
            x_ax.set_ylabel("x2", fontsize=8)
            x_ax.set_xlim(-10, 10)
            x_ax.set_ylim(-10, 10)
            x_ax.set_aspect("equal")
        axes[2 * r, 0].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    with atomic_output(out) as handle:
        fig.savefig(handle, format="png", dpi=80)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (`argv=None`: sys.argv), separate so tests can drive `main` directly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("toy.png"), help="PNG to write (default: toy.png)")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps per run (default: each paper's)")
    parser.add_argument(
        "--balancers", default=",".join(balancers.NAMES), help=f"comma-separated (default: {','.join(balancers.NAMES)})"
    )
    parser.add_argument("--setup", choices=(*SETUPS, "both"), default="both", help="which paper's toy (default: both)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every chosen balancer from every start point, print the table, write the figure."""
    args = parse_args(argv)
    names = [n.strip() for n in args.balancers.split(",") if n.strip()]
    try:
        if not names:
            raise ValueError(f"--balancers is empty; choose from {', '.join(balancers.NAMES)}.")
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {args.steps}.")
        if args.out.is_dir():
            raise ValueError(f"--out {args.out} is a directory; give a file name such as toy.png.")
        setups = list(SETUPS) if args.setup == "both" else [args.setup]
        for setup_name in setups:  # bad names or options fail here, before any work
            for name in names:
                balancers.make(name, 2, **options_for(name, SETUPS[setup_name]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-element tensors: threads only add overhead
    try:
        results: dict[str, dict[str, np.ndarray]] = {}
        fronts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        print(HEADER, flush=True)
        for setup_name in setups:
            setup = SETUPS[setup_name]
            steps = setup.steps if args.steps is None else args.steps
            fronts[setup_name] = pareto_front(setup.scale)
            results[setup_name] = {}
            for name in names:
                began = time.perf_counter()
                trajectories = run_batch(name, setup.starts, steps, setup.scale, setup.lr, options_for(name, setup))
                results[setup_name][name] = trajectories
                for outcome in summarise(setup, name, trajectories, fronts[setup_name][1]):
                    print(format_row(outcome), flush=True)
                elapsed = time.perf_counter() - began
                note = f"# {setup_name}/{name}: {steps} steps x {len(setup.starts)} starts in {elapsed:.1f} s"
                print(note, file=sys.stderr, flush=True)
        plot(results, fronts, args.out)
    finally:
        torch.set_num_threads(threads)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
