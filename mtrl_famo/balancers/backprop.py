"""Balanced backward for any PyTorch model: the one home of "K task losses -> `.grad` through a balancer".

    from mtrl_famo.balancers import backward, make

    balancer = make("cagrad", num_tasks=3)            # options from configs/balancer/cagrad.yaml
    losses = torch.stack([loss_a, loss_b, loss_c])     # [K], each a scalar with its graph
    backward(losses, model.trunk.parameters(), balancer, model.heads.parameters())
    optimizer.step()

Conventions (the SAC learner's: mtrl_famo/learner.py calls `backward_grouped`, which calls `backward`):
`.grad` of every parameter given is REPLACED, never accumulated.

- Loss weighting (`LossWeighting`: mtsac, famo, uw, dwa, rlw, scaleinvls): every parameter gets the
  gradient of `balancer.weighted_loss(losses)`, from one ordinary backward pass.
- Gradient methods (`GradientManipulation`): the shared parameters get `balancer.combine(J)` of the
  `[K, D]` Jacobian J of the losses with respect to them; task-specific parameters get the gradient
  of the mean loss (for a task's own head: its task's gradient / K), so that a conflict-free PCGrad
  or CAGrad with c = 0 equals mtsac exactly.

How J is built (the cheapest measured way; `scripts/bench_backward.py`):

- Shared input (`backward`): every task may read every row, so J costs about K backward passes
  however it is built (the same matmuls; no cheaper route to even the Gram matrix exists for batches
  larger than the layers' widths). Two builds, measured with scripts/bench_backward.py (3 x 400
  trunk, batch 1280, K = 10, CPU): `batched`, ONE backward pass vmapped over the K unit cotangents
  (`autograd.grad(..., is_grads_batched=True)`), about half the time of the loop with 2 threads;
  `loop`, K `autograd.grad` calls, about 1.2x faster than batched on one thread, where the batched
  pass's extra copies of the `[K, ...]` cotangents are not paid back by fewer, larger operations
  (and the lighter one in memory: one task's gradients at a time). `auto` takes the loop on a
  CPU running torch on one thread and batched elsewhere (GPU: not measured), and falls back to
  the loop when the model has an operation that the batched pass refuses.
- Task-grouped data (`backward_grouped`): task k's loss reads only rows k of `[K, B, ...]` data, so
  the K gradients come out of one pass vmapped over the task axis, costing about one backward.

Gram-space methods (`GramMixing` with its own `combine`: pcgrad, nashmtl, fairgrad, mgda, imtl,
aligned_mtl) decide from the K x K Gram matrix alone: it is summed parameter by parameter and the
update is `m^T J` parameter by parameter, so the `[K, D]` matrix is never concatenated. A method
that overrides `combine` says it needs the vectors (CAGrad measures its norms on them): CAGrad gets J's
blocks (`combines_blocks`: its sums are taken block by block), every other such method the stacked
`[K, D]` matrix (`decides_from_gram`). (Following the Gram matrix
with a second backward of `sum_k m_k l_k` instead of `m^T J` was measured too: it costs one more
backward pass than the two small matmuls it replaces, since J is needed for the Gram matrix anyway.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from mtrl_famo.balancers.base import Balancer, GradientManipulation, GramMixing, LossWeighting

JACOBIANS = ("auto", "batched", "loop")

Parameters = Iterable[torch.Tensor] | nn.Module
# loss_fn(model, *data) -> losses [K] (or (losses, aux)); see `backward_grouped`.
GroupedLoss = Callable[..., torch.Tensor | tuple[torch.Tensor, Any]]


@dataclass
class BackwardResult:
    """What a balanced backward computed besides `.grad`: the detached losses `[K]`, a grouped loss
    function's aux, and the shared parameters' task gradients as far as they were formed."""

    losses: torch.Tensor
    aux: Any = None
    shared_grads: torch.Tensor | None = None  # [K, D]: gradient methods that combine the whole matrix
    gram: torch.Tensor | None = None  # [K, K]: Gram-space methods (the [K, D] matrix is never stacked)

    def task_gram(self) -> torch.Tensor | None:
        """The `[K, K]` Gram matrix of the shared task gradients (None for a loss-weighting method)."""
        if self.gram is None and self.shared_grads is not None:
            return self.shared_grads @ self.shared_grads.T
        return self.gram


# ---------------------------------------------------------------- checks


def _parameter_list(params: Parameters | None, what: str) -> list[torch.Tensor]:
    """The parameters of a module or an iterable, each once, each a tensor that requires grad."""
    if params is None:
        return []
    listed = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
    unique: dict[int, torch.Tensor] = {}
    for parameter in listed:
        if not isinstance(parameter, torch.Tensor):
            raise TypeError(f"backward got {type(parameter).__name__} among the {what} parameters; pass tensors.")
        if not parameter.requires_grad:
            raise ValueError(
                f"backward got a {what} parameter of shape {tuple(parameter.shape)} that does not require grad; "
                "pass only the parameters to train."
            )
        unique.setdefault(id(parameter), parameter)
    return list(unique.values())


def _check_balancer(balancer: Balancer) -> None:
    if not isinstance(balancer, (LossWeighting, GradientManipulation)):
        raise TypeError(
            f"backward needs a balancer from mtrl_famo.balancers.make, got {type(balancer).__name__} "
            "(neither LossWeighting nor GradientManipulation)."
        )


def _label(balancer: Balancer) -> str:
    """The registered name, or the class name of a balancer that is not registered."""
    return getattr(balancer, "name", type(balancer).__name__)


def _check_losses(losses: torch.Tensor, balancer: Balancer) -> None:
    _check_balancer(balancer)
    if not isinstance(losses, torch.Tensor) or losses.shape != (balancer.num_tasks,):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"backward got losses of shape {shape}; it needs one loss per task, a tensor of shape "
            f"({balancer.num_tasks},) for this balancer (num_tasks={balancer.num_tasks})."
        )
    if not losses.requires_grad:
        raise ValueError(
            "backward got losses that do not require grad; compute them from the parameters with autograd on "
            "(not under torch.no_grad() or from detached tensors)."
        )


def _check_jacobian(jacobian: str) -> None:
    if jacobian not in JACOBIANS:
        raise ValueError(f"Unknown jacobian '{jacobian}'; choose one of {', '.join(JACOBIANS)}.")


# ---------------------------------------------------------------- Jacobians


def loop_jacobian(losses: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`[K, *shape]` per parameter from K `autograd.grad` calls, one per task loss (frees the graph)."""
    num_tasks = losses.shape[0]
    rows = [
        torch.autograd.grad(
            losses[k], params, retain_graph=k < num_tasks - 1, allow_unused=True, materialize_grads=True
        )
        for k in range(num_tasks)
    ]
    return [torch.stack(column) for column in zip(*rows)]


def batched_jacobian(losses: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool) -> list[torch.Tensor]:
    """`[K, *shape]` per parameter from ONE backward pass vmapped over the K unit cotangents."""
    num_tasks = losses.shape[0]
    eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses, params, grad_outputs=eye, is_grads_batched=True, retain_graph=retain_graph, allow_unused=True
    )
    # A parameter no loss reaches gets None (materialize_grads would give it one unbatched zero).
    return [p.new_zeros((num_tasks, *p.shape)) if g is None else g for p, g in zip(params, grads)]


def auto_jacobian(device: torch.device) -> str:
    """What `jacobian="auto"` builds on `device`: the loop on a CPU running torch on one thread, where it
    measured faster, and batched elsewhere (see the module docstring)."""
    return "loop" if device.type == "cpu" and torch.get_num_threads() == 1 else "batched"


def shared_input_jacobian(losses: torch.Tensor, params: Sequence[torch.Tensor], jacobian: str) -> list[torch.Tensor]:
    """The `[K, *shape]` task gradients of `params` by the method chosen (see the module docstring)."""
    if jacobian == "auto" and auto_jacobian(losses.device) == "loop":
        jacobian = "loop"
    if jacobian == "loop":
        return loop_jacobian(losses, params)
    if jacobian == "batched":
        return batched_jacobian(losses, params, retain_graph=False)
    try:  # auto: batched, keeping the graph so that the loop can still run if the batched pass is refused
        return batched_jacobian(losses, params, retain_graph=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"mtrl_famo.balancers.backprop: the batched Jacobian failed ({first_line}); using a loop of "
            "per-task backward passes instead (pass jacobian='loop' to skip the attempt).",
            RuntimeWarning,
            stacklevel=3,
        )
        return loop_jacobian(losses, params)


def _split_loss(output: torch.Tensor | tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, Any]:
    """A loss function's output as (losses, aux); aux is None when it returns the losses alone."""
    if isinstance(output, tuple):
        if len(output) != 2:
            raise ValueError(f"A grouped loss function returns losses or (losses, aux); got a tuple of {len(output)}.")
        return output
    return output, None


class _BoundLoss(nn.Module):
    """Lets `functional_call` swap the model's parameters while a loss function runs."""

    def __init__(self, model: nn.Module, loss_fn: GroupedLoss):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *data: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return _split_loss(self.loss_fn(self.model, *data))


def grouped_jacobian(
    model: nn.Module,
    loss_fn: GroupedLoss,
    data: Sequence[torch.Tensor],
    trainable: Collection[str],
    task_axis: Callable[[str], bool],
) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
    """Losses `[K]`, aux, and `{name: gradients}` of each trainable parameter, in ONE vmapped pass.

    Task k's loss reads only rows k of the data, so the K gradients are a `vmap` over the task axis
    of the gradient of one task's loss. Shared parameters enter unbatched (their gradients come out
    stacked, `[K, *shape]`); task-axis parameters (`task_axis(name)`: their leading axis is the task
    axis, trainable or not) enter sliced, so task k sees only its own slice, and the k-th slice of
    their gradient is task k's gradient of its own slice.
    """
    bound = _BoundLoss(model, loss_fn)
    groups: dict[tuple[bool, bool], dict[str, torch.Tensor]] = {
        (train, sliced): {} for train in (True, False) for sliced in (False, True)
    }
    for name, parameter in model.named_parameters():
        groups[(name in trainable, task_axis(name))][name] = parameter.detach()

    def one_task(train_shared, train_task, frozen_shared, frozen_task, *task_data):
        params = {f"model.{n}": p for d in (train_shared, train_task, frozen_shared, frozen_task) for n, p in d.items()}
        loss, aux = functional_call(bound, params, task_data)
        return loss, (loss, () if aux is None else (aux,))

    batched = vmap(
        grad(one_task, argnums=(0, 1), has_aux=True),
        in_dims=(None, 0, None, 0) + (0,) * len(data),
    )
    (shared_grads, task_grads), (losses, aux) = batched(
        groups[(True, False)], groups[(True, True)], groups[(False, False)], groups[(False, True)], *data
    )
    return losses, (aux[0] if aux else None), {**shared_grads, **task_grads}


# ---------------------------------------------------------------- applying a balancer


def _assign(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    for parameter, gradient in zip(params, grads):
        parameter.grad = gradient


def decides_from_gram(balancer: Balancer | type[Balancer]) -> bool:
    """Whether the public backward hands this method only the Gram matrix (a `GramMixing` whose
    `combine` is the base class's `mix(J J^T) @ J`) rather than the stacked `[K, D]` Jacobian."""
    cls = balancer if isinstance(balancer, type) else type(balancer)
    return issubclass(cls, GramMixing) and cls.combine is GramMixing.combine


def combines_blocks(balancer: Balancer | type[Balancer]) -> bool:
    """Whether the public backward hands this gradient method J's column blocks, one per shared parameter,
    never stacked (it overrides `combine_blocks`: CAGrad), rather than the stacked `[K, D]` Jacobian."""
    cls = balancer if isinstance(balancer, type) else type(balancer)
    return issubclass(cls, GradientManipulation) and cls.combine_blocks is not GradientManipulation.combine_blocks


def apply_gradient_method(
    balancer: GradientManipulation, shared: Sequence[torch.Tensor], jacobian: Sequence[torch.Tensor]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Set the shared parameters' `.grad` to `balancer.combine(J)`, given J as `[K, *shape]` blocks.

    A Gram-space method gets only the Gram matrix, summed block by block, and the update is `m^T J`
    block by block; a method that `combines_blocks` gets the blocks; any other method gets the `[K, D]`
    matrix. Returns (stacked J or None, Gram or None).
    """
    num_tasks = balancer.num_tasks
    flat = [block.reshape(num_tasks, -1) for block in jacobian]
    if decides_from_gram(balancer):
        gram = flat[0] @ flat[0].T
        for block in flat[1:]:
            gram = gram + block @ block.T
        mix = balancer.mix(gram)
        _assign(shared, [torch.tensordot(mix, block, dims=1) for block in jacobian])
        return None, gram
    if combines_blocks(balancer):  # decides from the blocks themselves (CAGrad): no [K, D] copy either
        directions, gram = balancer.combine_blocks(flat)
        _assign(shared, [part.view_as(parameter) for part, parameter in zip(directions, shared)])
        return None, gram
    stacked = torch.cat(flat, dim=1)
    direction = balancer.combine(stacked)
    offset = 0
    for parameter in shared:
        parameter.grad = direction[offset : offset + parameter.numel()].view_as(parameter)
        offset += parameter.numel()
    return stacked, None


# ---------------------------------------------------------------- the public entry points


def backward(
    losses: torch.Tensor,
    shared: Parameters,
    balancer: Balancer,
    task_specific: Parameters | None = None,
    *,
    jacobian: str = "auto",
) -> BackwardResult:
    """Set `.grad` (replacing it) of `shared` and `task_specific` from the `[K]` task losses through `balancer`.

    `shared`: the parameters every task uses (a module or an iterable of tensors); `task_specific`:
    those each belonging to one task (heads), which get the mean loss's gradient under a gradient
    method. `jacobian` ("auto", "batched" or "loop") says how a gradient method builds the task
    Jacobian; a loss-weighting method ignores it. The graph is freed, as by `loss.backward()`.
    """
    _check_losses(losses, balancer)
    shared_params = _parameter_list(shared, "shared")
    task_params = _parameter_list(task_specific, "task-specific")
    both = {id(p) for p in shared_params} & {id(p) for p in task_params}
    if both:
        raise ValueError(
            f"backward got {len(both)} parameter(s) both as shared and as task-specific; give each parameter once."
        )
    if isinstance(balancer, LossWeighting):
        params = shared_params + task_params
        objective = balancer.weighted_loss(losses)
        _assign(params, torch.autograd.grad(objective, params, allow_unused=True, materialize_grads=True))
        return BackwardResult(losses.detach())
    _check_jacobian(jacobian)
    if not shared_params:
        raise ValueError(f"backward with gradient method '{_label(balancer)}' needs at least one shared parameter.")
    if task_params:  # through the task-specific part of the graph only; the graph stays for the Jacobian
        mean = torch.autograd.grad(
            losses.mean(), task_params, retain_graph=True, allow_unused=True, materialize_grads=True
        )
    jacobian_blocks = shared_input_jacobian(losses, shared_params, jacobian)
    stacked, gram = apply_gradient_method(balancer, shared_params, jacobian_blocks)
    if task_params:
        _assign(task_params, mean)
    return BackwardResult(losses.detach(), shared_grads=stacked, gram=gram)


def backward_grouped(
    model: nn.Module,
    loss_fn: GroupedLoss,
    data: Sequence[torch.Tensor],
    balancer: Balancer,
    *,
    params: Iterable[str] | None = None,
    task_axis: Callable[[str], bool] | None = None,
) -> BackwardResult:
    """`backward` for task-grouped data: task k's loss reads only rows k of every `[K, B, ...]` tensor in `data`.

    `loss_fn(model, *data)` returns the `[K]` losses (or `(losses, aux)`). A gradient method also
    calls it per task under `torch.func.vmap`: then every data tensor has lost its leading task axis,
    every task-axis parameter appears as its task's slice, and it must return that task's scalar loss
    (write it with operations that do not count axes from the front: matmul, reductions over the
    trailing axes). `params`: names of the parameters to set `.grad` on (default: every parameter of
    `model` that requires grad); `task_axis(name)`: whether a parameter's leading axis is the task
    axis (default: none), making it task-specific, and the others shared. Randomness inside the loss
    must come in through `data` (vmap refuses random ops).
    """
    _check_balancer(balancer)
    names = [n for n, p in model.named_parameters() if p.requires_grad] if params is None else list(params)
    named = dict(model.named_parameters())
    for name in names:
        if name not in named:
            raise ValueError(f"backward_grouped got params name '{name}', which is not a parameter of the model.")
    is_task = task_axis or (lambda name: False)
    shared = [n for n in names if not is_task(n)]
    task = [n for n in names if is_task(n)]
    for tensor in data:
        if tensor.ndim == 0 or tensor.shape[0] != balancer.num_tasks:
            raise ValueError(
                f"backward_grouped got a data tensor of shape {tuple(tensor.shape)}; task-grouped data has the task "
                f"axis first, of size num_tasks={balancer.num_tasks}."
            )
    for name, parameter in named.items():
        if is_task(name) and (parameter.ndim == 0 or parameter.shape[0] != balancer.num_tasks):
            raise ValueError(
                f"backward_grouped got task-axis parameter '{name}' of shape {tuple(parameter.shape)}; a task-axis "
                f"parameter has the task axis first, of size num_tasks={balancer.num_tasks}."
            )
    if isinstance(balancer, LossWeighting):
        losses, aux = _split_loss(loss_fn(model, *data))
        result = backward(losses, [named[n] for n in shared], balancer, [named[n] for n in task])
        result.aux = aux
        return result
    if not shared:
        raise ValueError(
            f"backward_grouped with gradient method '{_label(balancer)}' needs at least one shared parameter."
        )
    losses, aux, grads = grouped_jacobian(model, loss_fn, data, set(names), is_task)
    stacked, gram = apply_gradient_method(balancer, [named[n] for n in shared], [grads[n] for n in shared])
    _assign([named[n] for n in task], [grads[n] / balancer.num_tasks for n in task])
    return BackwardResult(losses.detach(), aux, stacked, gram)
