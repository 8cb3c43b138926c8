"""Host cost of the K x K solves: ms per `mixing_weights` call of every Gram-space balancer.

    python scripts/bench_gram_solve.py                  # K=10 and K=50
    python scripts/bench_gram_solve.py --tasks 10 --json

The methods whose K x K problem is solved in float64 numpy on the host (`HostGramMixing`: CAGrad,
Nash-MTL, FairGrad, MGDA, IMTL-G, Aligned-MTL) copy the Gram matrix off the device and the K
weights back once per balanced loss and update (critic and actor: twice per update); PCGrad solves
on the device. This times the solve alone, on the Gram matrices of random correlated task gradients
(a shared direction plus task noise, as SAC's task gradients look), each balancer built with the
options `python -m mtrl_famo.train env=mt10 balancer=<name>` gives it (configs/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mtrl_famo import balancers
from mtrl_famo.balancers.base import GramMixing, HostGramMixing
from mtrl_famo.build import options_for_loss
from mtrl_famo.config import compose

DIM = 2000  # gradient length: the Gram matrix, not D, is what the solve sees


def gram_matrices(k: int, count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    grams = []
    for _ in range(count):
        shared = torch.randn(1, DIM, generator=generator, dtype=torch.float64)
        grads = shared + 1.5 * torch.randn(k, DIM, generator=generator, dtype=torch.float64)
        grams.append(grads @ grads.T)
    return grams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--calls", type=int, default=50, help="timed calls per balancer and K")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [name for name in balancers.NAMES if issubclass(balancers.REGISTRY[name], GramMixing)]
    for k in args.tasks:
        grams = gram_matrices(k, args.calls, seed=k)
        for name in names:
            options = compose("env=mt10", f"balancer={name}").balancer.options
            balancer = balancers.make(name, k, **options_for_loss(options, "critic"))
            times = []
            for gram in grams:
                started = time.perf_counter()
                balancer.mixing_weights(gram)
                times.append((time.perf_counter() - started) * 1e3)
            row = {
                "balancer": name,
                "tasks": k,
                "host": isinstance(balancer, HostGramMixing),
                "ms_per_call": round(statistics.median(times), 3),
            }
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                where = "host (numpy)" if row["host"] else "device (torch)"
                print(f"K={k:<3} {name:<12} {where:<15} {row['ms_per_call']:>8.3f} ms", flush=True)


if __name__ == "__main__":
    main()
