"""A balancer from mtrl_famo in your own supervised PyTorch loop.

    python examples/supervised.py --balancer famo --steps 2000
    python examples/supervised.py --balancer cagrad --layout grouped

A shared MLP and K = 4 scalar heads learn four synthetic regression tasks at once. Each task's
target is a small random ReLU teacher of the input; tasks 0 and 1 use opposite teacher weights,
as do tasks 2 and 3, so each pair needs different features of the same directions (the trunk's
gradients conflict), and the targets are scaled by 1, 10, 0.1 and 3, so the losses differ by four
orders of magnitude. Equal weighting (mtsac) then mostly serves task 1; a balancer shares the
trunk differently. Every `--print-every` steps it prints each task's loss on a fixed held-out set;
at the end, each task's loss relative to its first one (scale-free: lower is better).

Layouts: `shared` (default) draws one input batch that every task reads, and calls `backward` with
the losses; `grouped` draws separate rows for each task (`[K, B, ...]`) and calls `backward_grouped`
with the loss function, which gives a gradient method its K gradients in one pass.
Runs on a CPU in seconds to a minute (2000 steps) for every registered balancer.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from torch import nn

from mtrl_famo.balancers import NAMES, backward, backward_grouped, make, options_of

K, INPUTS, HIDDEN, TEACHER = 4, 16, 64, 8
SCALES = (1.0, 10.0, 0.1, 3.0)
LAYOUTS = ("shared", "grouped")


class MultiHeadNet(nn.Module):
    """A shared trunk and K scalar heads, stored as one `[K, HIDDEN]` weight (task axis first)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(INPUTS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        self.head_weight = nn.Parameter(torch.randn(K, HIDDEN) / HIDDEN**0.5)
        self.head_bias = nn.Parameter(torch.zeros(K))

    def heads(self) -> list[nn.Parameter]:
        return [self.head_weight, self.head_bias]


def is_head(name: str) -> bool:
    """The parameters whose leading axis is the task axis (`backward_grouped`'s task_axis)."""
    return name.startswith("head_")


class Tasks:
    """K teachers `y_k = scale_k * relu(x A_k) c_k`, with A_1 = -A_0 and A_3 = -A_2."""

    def __init__(self, generator: torch.Generator):
        first = torch.randn(2, INPUTS, TEACHER, generator=generator) / INPUTS**0.5
        self.weights = torch.stack([first[0], -first[0], first[1], -first[1]])  # [K, INPUTS, TEACHER]
        self.readout = torch.randn(K, TEACHER, generator=generator) / TEACHER**0.5
        self.scales = torch.tensor(SCALES)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """x `[N, INPUTS]` -> `[N, K]` (every task on every row), or x `[K, B, INPUTS]` -> `[K, B]`."""
        if x.ndim == 2:
            hidden = torch.relu(torch.einsum("ni,kit->nkt", x, self.weights))
            return (hidden * self.readout).sum(-1) * self.scales
        hidden = torch.relu(torch.einsum("kbi,kit->kbt", x, self.weights))
        return (hidden * self.readout[:, None]).sum(-1) * self.scales[:, None]


def shared_losses(model: MultiHeadNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every task reads every row: x `[N, INPUTS]`, y `[N, K]` -> `[K]` mean squared errors."""
    predictions = model.trunk(x) @ model.head_weight.T + model.head_bias
    return ((predictions - y) ** 2).mean(dim=0)


def grouped_losses(model: MultiHeadNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Task k reads rows k only: x `[K, B, INPUTS]`, y `[K, B]` -> `[K]`. Written without counting axes
    from the front, so that it also gives one task's scalar loss on its rows (`[B, INPUTS]`, `[B]`)
    and its head's slice, as `backward_grouped` calls it under vmap."""
    hidden = model.trunk(x)
    predictions = (hidden * model.head_weight.unsqueeze(-2)).sum(-1) + model.head_bias.unsqueeze(-1)
    return ((predictions - y) ** 2).mean(dim=-1)


def seed_option(name: str, seed: int) -> dict[str, int]:
    """PCGrad, GradDrop and RLW draw random numbers and need `seed=`; the other methods take none."""
    return {"seed": seed} if "seed" in options_of(name) else {}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--balancer", default="famo", help=f"one of {', '.join(NAMES)} (default famo)")
    parser.add_argument("--steps", type=int, default=2000, help="optimiser steps (default 2000)")
    parser.add_argument("--layout", default="shared", help="shared (default) or grouped")
    parser.add_argument("--batch", type=int, default=256, help="rows per step (grouped: per task)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for a model this small)"
    )
    parser.add_argument("--print-every", type=int, default=None, help="steps between prints (default steps/10)")
    args = parser.parse_args(argv)
    if args.balancer not in NAMES:
        parser.exit(2, f"error: unknown balancer '{args.balancer}'; choose one of {', '.join(NAMES)}.\n")
    if args.layout not in LAYOUTS:
        parser.exit(2, f"error: unknown layout '{args.layout}'; choose one of {', '.join(LAYOUTS)}.\n")
    for option in ("steps", "batch", "threads"):
        if getattr(args, option) < 1:
            parser.exit(2, f"error: --{option} {getattr(args, option)} is invalid; it must be at least 1.\n")
    return args


def main(argv: list[str] | None = None) -> dict[str, list[float] | None]:
    """Train and print; returns the held-out losses per task, first and last, and the balancer's last
    weights (for tests)."""
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    tasks = Tasks(data)
    model = MultiHeadNet()
    balancer = make(args.balancer, K, **seed_option(args.balancer, args.seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    held_out = torch.randn(4096, INPUTS, generator=data)
    held_out_targets = tasks.targets(held_out)
    every = args.print_every or max(1, args.steps // 10)

    def evaluate() -> list[float]:
        with torch.no_grad():
            return shared_losses(model, held_out, held_out_targets).tolist()

    first = evaluate()
    print(f"balancer={args.balancer} layout={args.layout} steps={args.steps} tasks={K} target scales={SCALES}")
    print(f"{'step':>6}  " + "  ".join(f"{f'task {k}':>10}" for k in range(K)) + "  weights")
    for step in range(1, args.steps + 1):
        if args.layout == "shared":
            x = torch.randn(args.batch, INPUTS, generator=data)
            batch, loss_fn = (x, tasks.targets(x)), shared_losses
            result = backward(loss_fn(model, *batch), model.trunk.parameters(), balancer, model.heads())
        else:
            x = torch.randn(K, args.batch, INPUTS, generator=data)
            batch, loss_fn = (x, tasks.targets(x)), grouped_losses
            result = backward_grouped(model, loss_fn, batch, balancer, task_axis=is_head)
        optimizer.step()
        if balancer.needs_losses_after_step:  # FAMO: the same batch's losses after the step
            with torch.no_grad():
                balancer.update(result.losses, loss_fn(model, *batch))
        if step % every == 0 or step == args.steps:
            weights = balancer.weights()
            shown = "" if weights is None else " ".join(f"{w:.3f}" for w in weights.tolist())
            print(f"{step:>6}  " + "  ".join(f"{loss:>10.4g}" for loss in evaluate()) + f"  {shown}", flush=True)
    last = evaluate()
    ratios = [b / a for a, b in zip(first, last)]
    print("loss / first loss: " + "  ".join(f"task {k} {r:.3g}" for k, r in enumerate(ratios)))
    print(f"mean log10(loss / first loss): {sum(math.log10(r) for r in ratios) / K:.2f}")
    weights = balancer.weights()
    return {"first": first, "last": last, "weights": None if weights is None else weights.tolist()}


if __name__ == "__main__":
    main()
    sys.exit(0)
