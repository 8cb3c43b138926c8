"""Optional speed layers beside the plain eager `SACLearner.update` (LeanRL style).

The eager update in mtrl_famo/learner.py stays the readable reference; this module builds
accelerated update callables beside it, through the learner's public seams (the update's `noise`
argument, its `loss_fns` / `td_target` functions, the balancers' declared `carried_state`), never by
replacing its methods:

- `agent.compile`: `torch.compile` of the update's pure tensor functions (the TD target, and the
  loss functions of the losses balanced by a loss-weighting method; AOTAutograd compiles their
  backward too). Gradient-manipulation methods keep the eager loss under `vmap`.
- `agent.cuda_graph`: the whole update (critic, actor, temperatures, FAMO's after-step update,
  target critics) recorded once in a CUDA graph and replayed, for balancers whose class says
  `graph_safe = True` (no host-side control flow, no host reads: mtsac, famo).
- Adam: fused always (mtrl_famo.optim, the learner's own choice), capturable when a graph replays it.

`auto` settings come from measurements (scripts/bench_compile.py): see `COMPILE_PAYS`. Which layer
a run really trains with is decided by mtrl_famo.self_check: each one switched on is first checked
against the eager update, and falls back to the layer below (graph -> compiled -> eager) when it
raises or disagrees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from mtrl_famo import balancers as balancer_registry
from mtrl_famo.agents.sac import actor_loss, critic_loss
from mtrl_famo.balancers import Balancer, LossWeighting
from mtrl_famo.balancers.base import DEVICE_CHECK_EVERY
from mtrl_famo.config import BALANCED_LOSSES
from mtrl_famo.learner import Cadence, PolicyNoise, SACLearner, UpdateFn, UpdateResult
from mtrl_famo.optim import rebuilt
from mtrl_famo.replay import FIELDS, Batch

CHOICES = "auto, true or false"
# What `auto` resolves to, by device type. CPU: measured with `scripts/bench_compile.py --threads 2
# --repeats 40` (torch 2.13 CPU, MT10, interleaved), compiled / eager ms per update: mtsac 0.995
# (2x256x64, experiment=smoke) and 0.997 (3x400x128, the default), famo 1.035 and 1.033; with
# --threads 1: 1.01 to 1.05. No gain, and compiling costs 20 s to 2 min at start: off. CUDA: NOT
# measured (no GPU where this was written); compile and the graph are on, as LeanRL found them
# to pay for small-network SAC updates on a GPU.
COMPILE_PAYS = {"cpu": False, "cuda": True}
GRAPH_WARMUP = 3  # eager runs on a side stream before capture (cuBLAS handles, lazy state, compilation)
LAYERS = ("compiled", "graph")  # bottom up: a graph records whatever update is below it (compiled or eager)


def check_setting(key: str, value: Any) -> None:
    """`auto`, `true` or `false`; anything else is one sentence."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"agent.{key}={value} is invalid; choose {CHOICES}.")


def resolve_compile(value: bool | str, device: torch.device) -> bool:
    """Whether to compile: `auto` is what was measured to pay on this device type (COMPILE_PAYS)."""
    check_setting("compile", value)
    return COMPILE_PAYS.get(device.type, False) if value == "auto" else bool(value)


def graph_safe_names() -> list[str]:
    return [name for name in balancer_registry.NAMES if balancer_registry.REGISTRY[name].graph_safe]


def resolve_cuda_graph(value: bool | str, device: torch.device, balancer_classes: Iterable[type[Balancer]]) -> bool:
    """Whether to capture: `auto` = on a CUDA device with graph-safe balancers; `true` elsewhere is refused."""
    check_setting("cuda_graph", value)
    unsafe = sorted({cls.name for cls in balancer_classes if not cls.graph_safe})
    if value == "auto":
        return device.type == "cuda" and not unsafe
    if value and device.type != "cuda":
        raise ValueError(
            f"agent.cuda_graph=true needs a CUDA device but the run uses device={device.type}; "
            f"choose agent.cuda_graph=auto or false (valid: {CHOICES})."
        )
    if value and unsafe:
        raise ValueError(
            f"agent.cuda_graph=true cannot capture balancer={unsafe[0]}, whose update has host-side control flow; "
            f"choose agent.cuda_graph=auto or false (valid: {CHOICES}), or a graph-safe balancer "
            f"({', '.join(graph_safe_names())})."
        )
    return bool(value)


def check_config(compile_value: Any, graph_value: Any, device: str, balancer: str, apply_to: Iterable[str]) -> None:
    """The pre-flight check of both keys (mtrl_famo.preflight.check), before anything is built."""
    check_setting("compile", compile_value)
    resolved = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu"))
    classes = [balancer_registry.REGISTRY[balancer if loss in apply_to else "mtsac"] for loss in BALANCED_LOSSES]
    resolve_cuda_graph(graph_value, resolved, classes)


def use_capturable_adam(learner: SACLearner, graph_value: bool | str) -> None:
    """Capturable Adam (the step count on the device: no host read inside a graph) where `agent.cuda_graph`
    may record the update. Before the first step and before a checkpoint is loaded (`load_adam_state`
    keeps the flag); harmless for an eager update should the graph fall back."""
    device = learner.agent.temperature.device
    if resolve_cuda_graph(graph_value, device, [type(b) for b in learner.balancers.values()]):
        learner.optimizers = {name: rebuilt(opt, capturable=True) for name, opt in learner.optimizers.items()}


@dataclass(frozen=True)
class Layer:
    """One speed layer as configured: its config key and value (`true` = required), whether that
    value switches it on here (and why not), and how to build its update over the one below."""

    name: str  # "compiled" | "graph"
    key: str  # "agent.compile" | "agent.cuda_graph"
    setting: bool | str
    on: bool
    off_reason: str  # why it is off (empty when on)
    wrap: Callable[[SACLearner, UpdateFn], UpdateFn]  # the accelerated update over `below`; may raise
    unwrap: Callable[[SACLearner], None]  # undo what `wrap` changed on the learner (a failed layer)

    @property
    def required(self) -> bool:
        return self.setting is True


def speed_layers(learner: SACLearner, compile_value: bool | str, graph_value: bool | str) -> list[Layer]:
    """The compile and CUDA-graph layers of this learner as configured, bottom up (see LAYERS)."""
    device = learner.agent.temperature.device
    compile_on = resolve_compile(compile_value, device)
    unsafe = sorted({type(b).name for b in learner.balancers.values() if not type(b).graph_safe})
    graph_on = resolve_cuda_graph(graph_value, device, [type(b) for b in learner.balancers.values()])
    if graph_on:
        graph_off = ""
    elif graph_value is False:
        graph_off = "agent.cuda_graph=false"
    elif device.type != "cuda":
        graph_off = f"agent.cuda_graph=auto is off on {device.type}"
    else:
        graph_off = f"agent.cuda_graph=auto is off for balancer={unsafe[0]} (host-side control flow)"
    if compile_on:
        compile_off = ""
    elif compile_value is False:
        compile_off = "agent.compile=false"
    else:
        compile_off = f"agent.compile=auto is off on {device.type} (measured not to pay: COMPILE_PAYS)"
    return [
        Layer("compiled", "agent.compile", compile_value, compile_on, compile_off, _wrap_compiled, eager_functions),
        Layer("graph", "agent.cuda_graph", graph_value, graph_on, graph_off, _wrap_graph, lambda learner: None),
    ]


def _wrap_compiled(learner: SACLearner, below: UpdateFn) -> UpdateFn:
    compile_functions(learner)
    return learner.update  # the same eager update, its pure tensor functions now compiled


def _wrap_graph(learner: SACLearner, below: UpdateFn) -> UpdateFn:
    return GraphedUpdate(learner, below)


def compile_functions(learner: SACLearner) -> None:
    """Swap the learner's pure tensor functions for compiled ones (same maths: tests/test_compile.py)."""
    for name in BALANCED_LOSSES:
        if isinstance(learner.balancers[name], LossWeighting):
            learner.loss_fns[name] = torch.compile(learner.loss_fns[name], dynamic=False)
    learner.td_target = torch.compile(learner.td_target, dynamic=False)


def eager_functions(learner: SACLearner) -> None:
    """Put the learner's eager tensor functions back (a compiled layer that failed its check)."""
    learner.loss_fns = {"critic": critic_loss, "actor": actor_loss}
    learner.td_target = learner.agent.td_target


class GraphedUpdate:
    """An update (`below`: the learner's own, eager or with compiled functions) recorded in CUDA
    graphs on static buffers and replayed (NOT measured: no GPU here).

    The batch and the policy noise are copied into static buffers (the noise is drawn outside
    the graph by `learner.draw_noise`, from the learner's generator in the eager order, so the
    random stream is the eager one) and handed to `below` through its `noise` argument. One graph
    per cadence (actor due, target due) of the update. Capture: GRAPH_WARMUP eager updates on a
    side stream, every tensor they changed restored in place (`snapshot`/`restore`: the agent, the
    optimisers and each balancer's declared `carried_state`), then `torch.cuda.graph`. A balancer's
    failed device-side check is read every DEVICE_CHECK_EVERY replays.

    Load checkpoints before the first call (the trainer resumes before it chooses its update):
    loading replaces optimizer state tensors that a captured graph would still point at.

    `capture=False` runs the same static-buffer update eagerly: that is what the CPU tests check
    against the plain update; only the capture itself needs a GPU.
    """

    def __init__(self, learner: SACLearner, below: UpdateFn | None = None, *, capture: bool = True):
        self.learner = learner
        self.below = learner.update if below is None else below
        self.capture = capture
        self.static_batch: Batch | None = None
        self.static_noise: PolicyNoise | None = None
        self.graphs: dict[Cadence, tuple[torch.cuda.CUDAGraph, UpdateResult]] = {}
        self.pool: Any = None
        self.replays = 0

    def _load(self, batch: Batch, noise: PolicyNoise) -> None:
        """Copy the batch and this update's noise into the static buffers."""
        if self.static_batch is None:
            self.static_batch = Batch(**{name: getattr(batch, name).clone() for name in FIELDS})
            like = noise.next_actions  # the actions' noise has the obs' leading shape (the same [K, B] in a batch)
            actions = like.new_zeros((*batch.obs.shape[:-1], like.shape[-1]))
            self.static_noise = PolicyNoise(torch.zeros_like(like), actions)
        for name in FIELDS:
            getattr(self.static_batch, name).copy_(getattr(batch, name))
        self.static_noise.next_actions.copy_(noise.next_actions)
        if noise.actions is not None:
            self.static_noise.actions.copy_(noise.actions)

    def static_update(self, cadence: Cadence) -> UpdateResult:
        """`below` on the static buffers (what a graph records for `cadence`)."""
        noise = PolicyNoise(self.static_noise.next_actions, self.static_noise.actions if cadence.actor else None)
        return self.below(self.static_batch, False, noise=noise)

    def __call__(self, batch: Batch, want_conflicts: bool = False, *, noise: PolicyNoise | None = None) -> UpdateResult:
        """One update; `want_conflicts` is moot: graph-safe balancers weight losses (no task gradients)."""
        cadence = self.learner.cadence()
        noise = self.learner.draw_noise(batch, cadence.actor) if noise is None else noise
        if cadence.actor and noise.actions is None:
            raise ValueError("The actor is due on this update, so `noise.actions` must be given.")
        self._load(batch, noise)
        if not self.capture:
            return self.static_update(cadence)
        if cadence not in self.graphs:
            self.graphs[cadence] = self._record(cadence)
        graph, outputs = self.graphs[cadence]
        graph.replay()
        self.learner.num_updates += 1
        self.replays += 1
        if self.replays % DEVICE_CHECK_EVERY == 0:
            for balancer in self.learner.balancers.values():
                balancer.raise_if_failed()
        return UpdateResult(
            outputs.critic_loss.clone(), outputs.actor_loss.clone(), outputs.alpha_loss.clone(), conflicts={}
        )

    def _record(self, cadence: Cadence) -> tuple[torch.cuda.CUDAGraph, UpdateResult]:
        learner = self.learner
        for balancer in learner.balancers.values():
            balancer.raise_if_failed()  # a capture later resets the flags: read them first
        count = learner.num_updates
        saved = snapshot(learner)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                learner.num_updates = count
                self.static_update(cadence)
        torch.cuda.current_stream().wait_stream(side)
        restore(learner, saved)
        graph = torch.cuda.CUDAGraph()
        learner.num_updates = count
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self.static_update(cadence)
        self.pool = graph.pool()
        learner.num_updates = count
        return graph, outputs


def _optimizers(learner: SACLearner) -> list[torch.optim.Optimizer]:
    """The learner's optimisers and those each balancer declares it carries (FAMO's Adam)."""
    found = list(learner.optimizers.values())
    for balancer in learner.balancers.values():
        found += balancer.carried_state()[1]
    return found


def _tensors(learner: SACLearner) -> list[torch.Tensor]:
    """Every tensor an update may change in place: the agent's, and each balancer's declared ones (FAMO's logits)."""
    found = [*learner.agent.state_dict(keep_vars=True).values()]
    for balancer in learner.balancers.values():
        found += balancer.carried_state()[0]
    return found


def snapshot(learner: SACLearner) -> dict[str, Any]:
    """Copies of what a warm-up update changes, for `restore`."""
    return {
        "tensors": [tensor.detach().clone() for tensor in _tensors(learner)],
        "optimizers": [
            {id(p): {k: v.clone() for k, v in state.items() if torch.is_tensor(v)} for p, state in opt.state.items()}
            for opt in _optimizers(learner)
        ],
    }


def restore(learner: SACLearner, saved: dict[str, Any]) -> None:
    """Undo warm-up updates in place (the graph records these very tensors). Optimizer state that the
    warm-up created is zeroed: Adam's fresh state (step 0, zero moments)."""
    with torch.no_grad():
        for tensor, value in zip(_tensors(learner), saved["tensors"]):
            tensor.copy_(value)
        for opt, opt_saved in zip(_optimizers(learner), saved["optimizers"]):
            for parameter, state in opt.state.items():
                before = opt_saved.get(id(parameter), {})
                for key, value in state.items():
                    if torch.is_tensor(value):
                        value.copy_(before[key]) if key in before else value.zero_()
        for balancer in learner.balancers.values():
            for check in balancer.deferred_checks():
                if check.failed is not None:
                    check.failed.zero_()
