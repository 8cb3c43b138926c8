"""Milliseconds per balanced backward of the public API against plain autograd, both data layouts, one run.

    python scripts/bench_backward.py --threads 2           # 3 x 400 trunk, batch 1280, K = 10
    python scripts/bench_backward.py --balancers cagrad famo --json

The model: an MLP trunk (`--layers` x `--hidden`, ReLU, `--inputs` features in) and K scalar linear
heads stored as one `[K, hidden]` weight (task axis first), a squared error per task. Every row
times one forward pass plus everything up to `.grad` on every parameter (no optimiser step), on the
same parameters; the rows are interleaved round by round (scripts/bench_timing.py).

Task-grouped layout (each task reads only its own `batch / K` rows, `x: [K, batch/K, inputs]`, as
the SAC learner's batches):
  grouped plain       the mean loss's ordinary backward
  grouped <name>      `backward_grouped` (gradient methods: one vmapped pass for all K gradients)
Shared-input layout (every task reads every row, `x: [batch, inputs]`, as a supervised model):
  shared plain        the mean loss's ordinary backward
  shared loop         K `autograd.grad` calls, one per task (the published codes' way), no combination
  shared batched      one `autograd.grad(..., is_grads_batched=True)`, no combination
  shared <name>       `backward` (jacobian=auto), the whole balanced step
  shared <name>+wb    a Gram-space method the other way round: the Gram matrix from the batched
                      Jacobian, then ONE more backward of `sum_k m_k l_k` instead of `m^T J`
Ratios: to the layout's plain row; shared rows also to the loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from functools import partial
from itertools import pairwise

import torch
from bench_timing import interleaved_ms, time_ms
from torch import nn

from mtrl_famo import balancers
from mtrl_famo.balancers import GramMixing, LossWeighting, backward, backward_grouped
from mtrl_famo.balancers.backprop import batched_jacobian, decides_from_gram, loop_jacobian


class Net(nn.Module):
    """MLP trunk and K scalar heads (`head_weight [K, hidden]`, `head_bias [K]`)."""

    def __init__(self, inputs: int, hidden: int, layers: int, tasks: int):
        super().__init__()
        sizes = [inputs] + [hidden] * layers
        self.trunk = nn.Sequential(*(m for a, b in pairwise(sizes) for m in (nn.Linear(a, b), nn.ReLU())))
        self.head_weight = nn.Parameter(torch.randn(tasks, hidden) / hidden**0.5)
        self.head_bias = nn.Parameter(torch.zeros(tasks))

    def shared(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def heads(self) -> list[nn.Parameter]:
        return [self.head_weight, self.head_bias]


def shared_losses(net: Net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x `[N, in]`, y `[N, K]`: every task reads every row."""
    return ((net.trunk(x) @ net.head_weight.T + net.head_bias - y) ** 2).mean(dim=0)


def grouped_losses(net: Net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x `[K, B, in]`, y `[K, B]` (or one task's rows under vmap): task k reads rows k."""
    z = net.trunk(x)
    return ((z * net.head_weight.unsqueeze(-2)).sum(-1) + net.head_bias.unsqueeze(-1) - y).pow(2).mean(-1)


def is_head(name: str) -> bool:
    return name.startswith("head_")


def plain(net: Net, losses_of: Callable[[], torch.Tensor]) -> None:
    params = list(net.parameters())
    for parameter, gradient in zip(params, torch.autograd.grad(losses_of().mean(), params)):
        parameter.grad = gradient


def loop(net: Net, losses_of: Callable[[], torch.Tensor]) -> None:
    loop_jacobian(losses_of(), list(net.parameters()))


def batched(net: Net, losses_of: Callable[[], torch.Tensor]) -> None:
    batched_jacobian(losses_of(), list(net.parameters()), retain_graph=False)


def gram_then_weighted_backward(net: Net, losses_of: Callable[[], torch.Tensor], balancer: GramMixing) -> None:
    """The alternative for Gram-space methods: the Gram matrix, then one backward of sum_k m_k l_k."""
    losses = losses_of()
    mean = torch.autograd.grad(losses.mean(), net.heads(), retain_graph=True)
    blocks = [b.flatten(1) for b in batched_jacobian(losses, net.shared(), retain_graph=True)]
    mix = balancer.mix(sum(b @ b.T for b in blocks))
    for parameter, gradient in zip(net.shared() + net.heads(), torch.autograd.grad(mix @ losses, net.shared()) + mean):
        parameter.grad = gradient


def candidates(args: argparse.Namespace, net: Net, device: torch.device) -> dict[str, Callable[[], None]]:
    """Every row of the table as a function doing one full backward (fresh balancers, fixed data)."""
    k, gen = args.tasks, torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, args.inputs, generator=gen).to(device)
    y = torch.randn(args.batch, k, generator=gen).to(device)
    gx, gy = x.reshape(k, args.batch // k, args.inputs), torch.randn(k, args.batch // k, generator=gen).to(device)
    names = args.balancers or list(balancers.NAMES)
    made = {(layout, n): balancers.make(n, k, **seed_option(n, args.seed)).to(device) for n in names for layout in "gs"}
    rows: dict[str, Callable[[], None]] = {"grouped plain": partial(plain, net, lambda: grouped_losses(net, gx, gy))}
    for n in names:
        rows[f"grouped {n}"] = partial(
            backward_grouped, net, grouped_losses, (gx, gy), made[("g", n)], task_axis=is_head
        )
    shared_of = partial(shared_losses, net, x, y)
    rows |= {"shared plain": partial(plain, net, shared_of), "shared loop": partial(loop, net, shared_of)}
    rows["shared batched"] = partial(batched, net, shared_of)
    for n in names:
        rows[f"shared {n}"] = lambda b=made[("s", n)]: backward(shared_of(), net.shared(), b, net.heads())
    for n in names:
        if isinstance(made[("s", n)], GramMixing):
            rows[f"shared {n}+wb"] = partial(gram_then_weighted_backward, net, shared_of, made[("s", n)])
    return rows


def seed_option(name: str, seed: int) -> dict[str, int]:
    """A seeded method (pcgrad, graddrop, rlw) needs seed=...; the others take none."""
    return {"seed": seed} if "seed" in balancers.options_of(name) else {}


def table(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    net = Net(args.inputs, args.hidden, args.layers, args.tasks).to(device)
    rows = candidates(args, net, device)
    times = interleaved_ms({name: partial(time_ms, fn, device) for name, fn in rows.items()}, args.repeats, args.warmup)
    ms = {name: statistics.median(t) for name, t in times.items()}
    out = []
    for name, value in ms.items():
        layout, label = name.split(" ", 1)
        row = {
            "layout": layout,
            "row": label,
            "ms": round(value, 2),
            "x_plain": round(value / ms[f"{layout} plain"], 3),
        }
        if layout == "shared":
            row["x_loop"] = round(value / ms["shared loop"], 3)
        method = label.removesuffix("+wb")
        if method in balancers.REGISTRY:
            row["kind"] = "loss" if issubclass(balancers.REGISTRY[method], LossWeighting) else "gradient"
            row["kind"] += "/gram" if decides_from_gram(balancers.REGISTRY[method]) else ""
        out.append(row)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10, help="K (default 10)")
    parser.add_argument("--batch", type=int, default=1280, help="rows in all (grouped: batch / K per task)")
    parser.add_argument("--inputs", type=int, default=49, help="input features (default 49: MT10 observations)")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--balancers", nargs="*", default=None, help=f"subset of {', '.join(balancers.NAMES)}")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")
    args = parser.parse_args(argv)
    for name in args.balancers or []:
        if name not in balancers.REGISTRY:
            parser.exit(2, f"error: unknown balancer '{name}'; choose from {', '.join(balancers.NAMES)}.\n")
    if args.tasks < 1 or args.batch % args.tasks:
        parser.exit(2, f"error: --batch {args.batch} must be a positive multiple of --tasks {args.tasks}.\n")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = table(args)
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} K={args.tasks} "
        f"batch={args.batch} trunk={args.layers}x{args.hidden} inputs={args.inputs} repeats={args.repeats}"
    )
    print(f"{'layout':<8} {'row':<18} {'kind':<14} {'ms':>9} {'x plain':>8} {'x loop':>7}")
    for row in rows:
        loop_ratio = f"{row['x_loop']:>7.2f}" if "x_loop" in row else f"{'':>7}"
        print(
            f"{row['layout']:<8} {row['row']:<18} {row.get('kind', ''):<14} {row['ms']:>9.1f} "
            f"{row['x_plain']:>8.2f} {loop_ratio}"
        )


if __name__ == "__main__":
    sys.exit(main())
