"""Optional speed layers over the plain eager `SACLearner.update` (LeanRL style).

The eager update in mtrl_famo/learner.py stays the readable reference; this module only wraps it:

- `agent.compile`: `torch.compile` of the update's pure tensor functions (the TD target, and the
  loss functions of the losses balanced by a loss-weighting method; AOTAutograd compiles their
  backward too). Gradient-manipulation methods keep the eager loss under `vmap`.
- `agent.cuda_graph`: the whole update (critic, actor, temperatures, FAMO's after-step update,
  target critics) recorded once in a CUDA graph and replayed, for balancers whose class says
  `graph_safe = True` (no host-side control flow, no host reads: mtsac, famo).
- Adam: fused always (mtrl_famo.optim, the learner's own choice), capturable when a graph replays it.

`auto` settings come from measurements (scripts/bench_compile.py): see `COMPILE_PAYS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from mtrl_famo import balancers as balancer_registry
from mtrl_famo.balancers import Balancer, LossWeighting
from mtrl_famo.balancers.base import DEVICE_CHECK_EVERY
from mtrl_famo.learner import BALANCED_LOSSES, SACLearner, UpdateResult
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
    """The config validation of both keys (mtrl_famo.config.validate), before anything is built."""
    check_setting("compile", compile_value)
    resolved = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu"))
    classes = [balancer_registry.REGISTRY[balancer if loss in apply_to else "mtsac"] for loss in BALANCED_LOSSES]
    resolve_cuda_graph(graph_value, resolved, classes)


def accelerate(learner: SACLearner, compile_value: bool | str, graph_value: bool | str) -> SACLearner:
    """Compile and / or the CUDA graph as configured (capturable Adam with the graph); call before the first update."""
    device = learner.agent.temperature.device
    graph = resolve_cuda_graph(graph_value, device, [type(b) for b in learner.balancers.values()])
    if graph:  # the step count on the device: no host read inside the graph
        learner.optimizers = {name: rebuilt(opt, capturable=True) for name, opt in learner.optimizers.items()}
    if resolve_compile(compile_value, device):
        compile_functions(learner)
    if graph:
        learner.update = GraphedUpdate(learner)  # type: ignore[method-assign]
    return learner


def compile_functions(learner: SACLearner) -> None:
    """Swap the learner's pure tensor functions for compiled ones (same maths: tests/test_compile.py)."""
    for name in BALANCED_LOSSES:
        if isinstance(learner.balancers[name], LossWeighting):
            learner.loss_fns[name] = torch.compile(learner.loss_fns[name], dynamic=False)
    learner.td_target = torch.compile(learner.td_target, dynamic=False)


class GraphedUpdate:
    """`learner.update` recorded in CUDA graphs on static buffers and replayed (NOT measured: no GPU here).

    The batch and the policy noise are copied into static buffers (the noise is drawn outside
    the graph, from the learner's generator in the eager order, so the random stream is the
    eager one); the learner's own update runs on them. One graph per (actor due, target due)
    pattern of the update cadence. Capture: GRAPH_WARMUP eager updates on a side stream, every
    tensor they changed restored in place, then `torch.cuda.graph`. A balancer's failed
    device-side check is read every DEVICE_CHECK_EVERY replays.

    Load checkpoints before the first update (the trainer resumes before training): loading
    replaces optimizer state tensors that a captured graph would still point at.

    `capture=False` runs the same static-buffer update eagerly: that is what the CPU tests check
    against the plain update; only the capture itself needs a GPU.
    """

    def __init__(self, learner: SACLearner, *, capture: bool = True):
        self.learner = learner
        self.eager_update = learner.update
        self.capture = capture
        self.static_batch: Batch | None = None
        self.static_noise: list[torch.Tensor] = []
        self.graphs: dict[tuple[bool, bool], tuple[torch.cuda.CUDAGraph, UpdateResult]] = {}
        self.pool: Any = None
        self.replays = 0

    def _pattern(self) -> tuple[bool, bool]:
        n = self.learner.num_updates
        return n % self.learner.actor_update_every == 0, n % self.learner.target_update_every == 0

    def _load(self, batch: Batch, actor_due: bool) -> None:
        """Copy the batch into the static buffers and draw this update's noise as the eager update would."""
        draw = self.learner._noise
        noise = [draw(batch.next_obs), *([draw(batch.obs)] if actor_due else [])]
        if self.static_batch is None:
            self.static_batch = Batch(**{name: getattr(batch, name).clone() for name in FIELDS})
            action_dim = self.learner.agent.action_dim
            self.static_noise = [like.new_zeros((*like.shape[:-1], action_dim)) for like in (batch.next_obs, batch.obs)]
        for name in FIELDS:
            getattr(self.static_batch, name).copy_(getattr(batch, name))
        for buffer, value in zip(self.static_noise, noise):
            buffer.copy_(value)

    def static_update(self) -> UpdateResult:
        """The plain update on the static buffers, its noise taken from them (what a graph records)."""
        feed = iter(self.static_noise)
        self.learner._noise = lambda like: next(feed)  # type: ignore[method-assign]
        try:
            return self.eager_update(self.static_batch, False)
        finally:
            del self.learner._noise

    def __call__(self, batch: Batch, want_conflicts: bool = False) -> UpdateResult:
        """One update; `want_conflicts` is moot: graph-safe balancers weight losses (no task gradients)."""
        pattern = self._pattern()
        self._load(batch, actor_due=pattern[0])
        if not self.capture:
            return self.static_update()
        if pattern not in self.graphs:
            self.graphs[pattern] = self._record()
        graph, outputs = self.graphs[pattern]
        graph.replay()
        self.learner.num_updates += 1
        self.replays += 1
        if self.replays % DEVICE_CHECK_EVERY == 0:
            for balancer in self.learner.balancers.values():
                balancer.raise_if_failed()
        return UpdateResult(
            outputs.critic_loss.clone(), outputs.actor_loss.clone(), outputs.alpha_loss.clone(), conflicts={}
        )

    def _record(self) -> tuple[torch.cuda.CUDAGraph, UpdateResult]:
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
                self.static_update()
        torch.cuda.current_stream().wait_stream(side)
        restore(learner, saved)
        graph = torch.cuda.CUDAGraph()
        learner.num_updates = count
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self.static_update()
        self.pool = graph.pool()
        learner.num_updates = count
        return graph, outputs


def _optimizers(learner: SACLearner) -> list[torch.optim.Optimizer]:
    found = list(learner.optimizers.values())
    for balancer in learner.balancers.values():
        found += [value for value in vars(balancer).values() if isinstance(value, torch.optim.Optimizer)]
    return found


def _tensors(learner: SACLearner) -> list[torch.Tensor]:
    """Every tensor an update may change in place: the agent's, and each balancer's own (FAMO's logits)."""
    found = [*learner.agent.state_dict(keep_vars=True).values()]
    for balancer in learner.balancers.values():
        found += [value for value in vars(balancer).values() if isinstance(value, torch.Tensor)]
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
