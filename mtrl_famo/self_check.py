"""Which update a run trains with: every speed layer switched on is checked against the eager update first.

A compiled or graph-replayed update that raises (a missing compiler toolchain, a failed capture, out
of memory) would crash the run; one that replays a stale buffer or skips a step would, worse, train a
different agent silently. So before the first accelerated update is used for training, each layer
switched on (mtrl_famo.compiled_update.speed_layers, bottom up: compiled, then the graph over
whatever passed below it) runs CHECK_UPDATES or more updates on synthetic batches of the run's
shapes beside the plain eager update, both from the same state (networks, optimisers, balancer
state, random streams): the eager one on a copy of the learner, the candidate on the learner itself
(a graph must record the very tensors that training updates), which is then put back exactly as it
was. The updates cover every cadence (actor due or not, target due or not) the run will replay and
FAMO's after-step update. A layer that raises or disagrees is switched off with one warning line,
and training goes on with the layer below (graph -> compiled -> eager); a layer set to `true` is
required, and the same failure stops the run before training in one sentence (SpeedLayerError).

The tolerance (`agree`): each update's per-task losses within a relative LOSS_RTOL of the eager
ones, and, per tensor of the agent and of each balancer's carried state, the candidate's CHANGE
over the check within a relative CHANGE_RTOL (in norm) of the eager change. Why not elementwise
values: Adam divides by the root of the second moment, so a coordinate whose gradient is zero up to
rounding moves by +-lr depending on the sign of that rounding (compiled kernels sum in another
order): a few such coordinates are legitimate, but an elementwise absolute check on parameters
fails on them, while a check against the parameters' magnitude would miss a wrong update (one step
is ~1e-4 of a weight). Measured against the change, CHANGE_RTOL = 1e-2 allows about 2.5e-5 of a
tensor's coordinates to step the other way (2 sqrt(fraction) <= 1e-2), whereas a skipped step, a
stale batch or other noise is wrong by the order of the change itself (relative error ~1).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mtrl_famo.compiled_update import Layer, restore, snapshot
from mtrl_famo.config import BALANCED_LOSSES
from mtrl_famo.learner import SACLearner, UpdateFn, UpdateResult
from mtrl_famo.replay import Batch
from mtrl_famo.seeding import restore_rng_state, rng_state

LOSS_RTOL = 1e-3  # each update's per-task losses, relative to the eager ones
LOSS_ATOL = 1e-6  # ... plus this, for losses that are (nearly) zero
CHANGE_RTOL = 1e-2  # per tensor: |candidate change - eager change| <= CHANGE_RTOL |eager change| (norms) + ...
CHANGE_ATOL = 1e-6  # ... this, for a tensor the eager updates leave (nearly) unchanged
CHECK_UPDATES = 3  # at least this many updates per layer (a graph's first call captures, the next ones replay)
CADENCE_SCAN = 64  # cadence periods up to this are checked update by update, in the run's own order
CHECK_SEED = 12345  # the synthetic batches' own generator: the run's random streams are never drawn from
EAGER = "eager"


class SpeedLayerError(RuntimeError):
    """A speed layer set to `true` (required) raised or disagreed with the eager update."""


@dataclass(frozen=True)
class Verdict:
    """What became of one speed layer: `on` (passed the self-check), `fallback` (raised or disagreed:
    switched off) or `off` (not switched on by its setting here), and why."""

    layer: str
    key: str
    setting: str  # the config value as written: auto | true | false
    outcome: str
    reason: str


@dataclass(frozen=True)
class UpdateChoice:
    """The update the trainer calls and the record of how it was chosen."""

    update: UpdateFn
    used: str  # "graph" | "compiled" | "eager"
    verdicts: tuple[Verdict, ...] = field(default=())

    def record(self) -> dict[str, Any]:
        """For summary.json: the layer used, and each layer's setting, outcome and reason."""
        return {
            "used": self.used,
            **{v.layer: {"setting": v.setting, "outcome": v.outcome, "reason": v.reason} for v in self.verdicts},
        }

    def line(self) -> str:
        """One line for the logs and TensorBoard: `update=graph (compiled: on, ...; graph: on, ...)`."""
        details = "; ".join(f"{v.layer}: {v.outcome}, {v.reason}" for v in self.verdicts)
        return f"update={self.used}" + (f" ({details})" if details else "")


def eager_choice(learner: SACLearner) -> UpdateChoice:
    """The plain update, nothing checked (a trainer that has not chosen yet, or no layer switched on)."""
    return UpdateChoice(learner.update, EAGER)


def setting_text(value: bool | str) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def warn(message: str) -> None:
    """The one warning line of a layer that fell back (stderr, beside the CLI's `error:` lines)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def choose_update(
    learner: SACLearner,
    layers: Sequence[Layer],
    batch_size_per_task: int,
    make_reference: Callable[[], SACLearner],
    *,
    on_fallback: Callable[[str], None] = warn,
) -> UpdateChoice:
    """Check each layer that is on (bottom up) against the eager update; return the update to train with.

    `make_reference` returns an eager copy of `learner` as it is now (mtrl_famo.build.eager_copy).
    A failing layer is undone on the learner (`Layer.unwrap`) and reported through `on_fallback` in
    one line, or, when required (`true`), raised as SpeedLayerError in one sentence.
    """
    update: UpdateFn = learner.update
    used = EAGER
    verdicts = []
    for layer in layers:
        setting = setting_text(layer.setting)
        if not layer.on:
            verdicts.append(Verdict(layer.name, layer.key, setting, "off", layer.off_reason))
            continue
        try:
            candidate = layer.wrap(learner, update)
            problem, passed = check_layer(learner, candidate, make_reference, batch_size_per_task)
        except Exception as error:  # compile, capture, out of memory: anything the layer raises
            problem, passed = f"it raised {type(error).__name__}: {first_line(error)}", ""
        if problem is None:
            update, used = candidate, layer.name
            verdicts.append(Verdict(layer.name, layer.key, setting, "on", passed))
            continue
        layer.unwrap(learner)
        if layer.required:
            raise SpeedLayerError(
                f"{layer.key}=true requires the {layer.name} update, but {problem}; set {layer.key}=auto to "
                f"fall back to the {used} update with a warning, or {layer.key}=false."
            )
        on_fallback(
            f"{layer.key}={setting}: the {layer.name} update is off because {problem}; "
            f"training goes on with the {used} update."
        )
        verdicts.append(Verdict(layer.name, layer.key, setting, "fallback", problem))
    return UpdateChoice(update, used, tuple(verdicts))


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message as one short line (a compiler's traceback can run to pages)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cadence_plan(first: int, actor_every: int, target_every: int, minimum: int = CHECK_UPDATES) -> list[int]:
    """Update counts (values of `num_updates`) from `first` on whose cadences are every one the run
    will replay, in order. Short periods are run update by update as training would; a long one
    (unusual settings) by the first count of each cadence, so the check stays a few updates."""
    period = math.lcm(actor_every, target_every)
    if period <= CADENCE_SCAN:
        return list(range(first, first + max(period, minimum)))

    def after(every: int) -> int:  # the first multiple of `every` at or after `first`
        return -(-first // every) * every

    candidates = {first, first + 1}
    for every in (actor_every, target_every, period):
        start = after(every)
        candidates |= {start, start + 1, start + actor_every, start + target_every}
    seen: dict[tuple[bool, bool], int] = {}
    for count in sorted(candidates):
        seen.setdefault((count % actor_every == 0, count % target_every == 0), count)
    counts = sorted(seen.values())
    return counts + [counts[0]] * (minimum - len(counts))


def synthetic_batches(learner: SACLearner, count: int, batch_size_per_task: int) -> list[Batch]:
    """`count` batches of the run's shapes `[K, B, ...]` on its device, from a generator of their own."""
    agent = learner.agent
    device = agent.temperature.device
    generator = torch.Generator().manual_seed(CHECK_SEED)
    shape = (agent.num_tasks, batch_size_per_task)

    def draw(*size: int, uniform: bool = False) -> torch.Tensor:
        values = torch.rand(size, generator=generator) * 2 - 1 if uniform else torch.randn(size, generator=generator)
        return values.to(device)

    return [
        Batch(
            obs=draw(*shape, agent.obs_dim),
            action=draw(*shape, agent.action_dim, uniform=True),
            reward=draw(*shape),
            next_obs=draw(*shape, agent.obs_dim),
            terminated=torch.zeros(shape, device=device),
        )
        for _ in range(count)
    ]


def _tracked(learner: SACLearner) -> dict[str, torch.Tensor]:
    """What the check compares: the agent's state and each balancer's carried tensors, by name."""
    tracked = dict(learner.agent.state_dict())
    for loss in BALANCED_LOSSES:
        for index, tensor in enumerate(learner.balancers[loss].carried_state()[0]):
            tracked[f"balancer[{loss}].carried[{index}]"] = tensor.detach()
    return tracked


def loss_error(got: UpdateResult, want: UpdateResult) -> tuple[float, float, str]:
    """An update's worst per-task loss error: (in units of its tolerance, relative, which loss).
    NaN where the eager loss is NaN (the actor's and temperature's when the actor is not due) agrees."""
    worst = (0.0, 0.0, "critic_loss")
    for name in ("critic_loss", "actor_loss", "alpha_loss"):
        a, b = getattr(got, name).detach().double(), getattr(want, name).detach().double()
        if not torch.equal(a.isnan(), b.isnan()):
            return math.inf, math.inf, name
        a, b = a.nan_to_num(), b.nan_to_num()
        if a.numel() == 0:
            continue
        gap = (a - b).abs()
        units = float((gap / (LOSS_RTOL * b.abs() + LOSS_ATOL)).max())
        relative = float((gap / b.abs().clamp_min(LOSS_ATOL)).max())
        if not units <= worst[0]:  # a NaN (or inf) loss is the worst
            return (math.inf, math.inf, name) if units != units else (units, relative, name)
        worst = max(worst, (units, relative, name))
    return worst


def change_error(start: torch.Tensor, got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """One tensor's |candidate change - eager change| (norms): (in units of its tolerance, relative)."""
    start, got, want = start.double(), got.detach().double(), want.detach().double()
    change = float((want - start).norm())
    error = float((got - want).norm())
    units = error / (CHANGE_RTOL * change + CHANGE_ATOL)
    return (math.inf, math.inf) if units != units else (units, error / max(change, CHANGE_ATOL))


def check_layer(
    learner: SACLearner, candidate: UpdateFn, make_reference: Callable[[], SACLearner], batch_size_per_task: int
) -> tuple[str | None, str]:
    """Run `candidate` (on the learner) and the eager update (on a copy) side by side from the same
    state; put the learner back as it was. Returns (None, what agreed) or (what disagreed, "")."""
    saved = _save(learner)
    disagrees = "it disagrees with the eager update on the same batches:"
    try:
        reference = make_reference()
        start = {name: tensor.clone() for name, tensor in _tracked(learner).items()}
        plan = cadence_plan(learner.num_updates, learner.actor_update_every, learner.target_update_every)
        batches = synthetic_batches(learner, len(plan), batch_size_per_task)
        worst_loss = 0.0
        for index, (count, batch) in enumerate(zip(plan, batches)):
            learner.num_updates = reference.num_updates = count
            cadence = learner.cadence()
            try:
                want = reference.update(batch)
            except Exception as error:
                return f"the eager reference update of the check raised {type(error).__name__}: {first_line(error)}", ""
            got = candidate(batch)
            units, relative, loss = loss_error(got, want)
            if not units <= 1.0:
                return (
                    f"{disagrees} the {loss.replace('_', ' ')} of check update {index + 1} (actor due: "
                    f"{cadence.actor}, target due: {cadence.target}) is off by {relative:.1e} relative "
                    f"(tolerance {LOSS_RTOL:g})"
                ), ""
            worst_loss = max(worst_loss, relative)
        worst_change, worst_name = (0.0, 0.0), ""
        wanted = _tracked(reference)
        for name, got_tensor in _tracked(learner).items():
            error = change_error(start[name], got_tensor, wanted[name])
            if not error <= worst_change:
                worst_change, worst_name = error, name
        if not worst_change[0] <= 1.0:
            return (
                f"{disagrees} the change of {worst_name} over {len(plan)} updates is off by {worst_change[1]:.1e} "
                f"relative to the eager change (tolerance {CHANGE_RTOL:g})"
            ), ""
        cadences = {(c % learner.actor_update_every == 0, c % learner.target_update_every == 0) for c in plan}
        return None, (
            f"agrees with the eager update over {len(plan)} updates and {len(cadences)} cadence(s): losses within "
            f"{worst_loss:.1e} relative (tolerance {LOSS_RTOL:g}), parameter changes within {worst_change[1]:.1e} "
            f"relative (tolerance {CHANGE_RTOL:g})"
        )
    finally:
        _restore(learner, saved)


def _save(learner: SACLearner) -> dict[str, Any]:
    """What the check's updates change on the learner: its tensors (put back in place, as a graph's
    capture does), its random streams, its update count, and the full state of balancers that a graph
    never records (not graph-safe: their state may sit anywhere, e.g. a generator or a loss history)."""
    generator = learner.generator if learner.generator is not None else torch.Generator()
    return {
        "tensors": snapshot(learner),
        "generator": generator,
        "rng": rng_state(generator),
        "num_updates": learner.num_updates,
        "balancers": {
            name: copy.deepcopy(balancer.state_dict())
            for name, balancer in learner.balancers.items()
            if not type(balancer).graph_safe
        },
    }


def _restore(learner: SACLearner, saved: dict[str, Any]) -> None:
    restore(learner, saved["tensors"])
    restore_rng_state(saved["rng"], saved["generator"])  # the learner's, and the global ones
    learner.num_updates = saved["num_updates"]
    for name, state in saved["balancers"].items():
        learner.balancers[name].load_state_dict(state)
