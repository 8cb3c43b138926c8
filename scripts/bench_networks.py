"""Each network's parameters and milliseconds per SAC update at MT10 shapes, next to multi-head.

    python scripts/bench_networks.py --threads 2
    python scripts/bench_networks.py --networks multihead moore --balancers mtsac famo --repeats 10

Shapes: K=10 tasks, observation 39 + the one-hot id (49), 4-dim actions, 128 transitions per task,
each network at its published MT10 sizes (configs/agent/network/*.yaml: multihead 3 x 400; MOORE
4 experts of 3 x 400; Soft Modularization 2 layers x 2 modules of 256, embedding 400, routing 256;
PaCo 5 parameter sets of 3 x 400). Each learner is what `python -m mtrl_famo.train env=mt10
agent/network=<network> balancer=<balancer>` builds (scripts/bench_harness.py, the benchmarks' one
builder): the balancers with their config options, FAMO on the critic only (the actor on mtsac, as
published), PCGrad and CAGrad on critic and actor. All (network, balancer) pairs are
timed in one run, interleaved round by round (scripts/bench_timing.py), and each ratio is the
median over rounds of that round's ratio, so the ratios are comparable on a noisy machine:
`x multihead` is the network's update over multi-head's with the same balancer, `x mtsac` the
balancer's over the same network's mtsac update.

On a CPU whose cores are also busy with other processes, every operation that torch runs on more
than one thread waits for a scheduler slice (measured: any elementwise op on 2 threads took ~8 ms,
whatever its size, with two busy loops on the 2 cores; 0.07 ms on 1 thread); the ratios then follow
the networks' operation counts more than their FLOPs. Compare a `--threads 1` run before reading much
into a `--threads 2` one on a loaded machine.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch
from bench_harness import compose_config, make_learner
from bench_timing import interleaved_ms, time_ms

from mtrl_famo.config import NETWORK_NAMES
from mtrl_famo.learner import SACLearner
from mtrl_famo.replay import TaskReplay

K, BATCH = 10, 128


def build(network: str, balancer: str, seed: int, device: torch.device) -> tuple[SACLearner, TaskReplay]:
    """What `python -m mtrl_famo.train env=mt10 agent/network=<network> balancer=<balancer>` trains: the
    network at its published MT10 sizes (configs/agent/network/, configs/per_benchmark/network/), the
    balancer on the losses its config applies it to (FAMO: the critic)."""
    config = compose_config(balancer, K, str(device), f"agent/network={network}", f"seed={seed}")
    return make_learner(config, device)


def parameter_count(learner: SACLearner) -> int:
    """Trainable parameters of the actor and one critic (what one network of each kind holds)."""
    agent = learner.agent
    return sum(p.numel() for p in agent.actor.parameters()) + sum(p.numel() for p in agent.critic.q1.parameters())


def time_update(learner: SACLearner, replay: TaskReplay, device: torch.device) -> float:
    sample = replay.sample(BATCH)
    return time_ms(lambda: learner.update(sample), device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--networks", nargs="*", default=list(NETWORK_NAMES), help=f"subset of {', '.join(NETWORK_NAMES)}"
    )
    parser.add_argument("--balancers", nargs="*", default=["mtsac", "pcgrad", "famo", "cagrad"])
    parser.add_argument("--repeats", type=int, default=15, help="timed updates per (network, balancer)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates per pair first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unknown = sorted(set(args.networks) - set(NETWORK_NAMES))
    if unknown:
        parser.exit(2, f"error: unknown network(s) {', '.join(unknown)}; choose from {', '.join(NETWORK_NAMES)}.\n")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    networks = ["multihead", *(n for n in args.networks if n != "multihead")]
    balancers = ["mtsac", *(b for b in args.balancers if b != "mtsac")]
    setups = {(n, b): build(n, b, args.seed, device) for n in networks for b in balancers}
    timers = {pair: partial(time_update, learner, replay, device) for pair, (learner, replay) in setups.items()}
    rounds = interleaved_ms(timers, args.repeats, args.warmup)
    times = {pair: statistics.median(t) for pair, t in rounds.items()}

    def ratio(pair: tuple[str, str], reference: tuple[str, str]) -> float:
        # The median over rounds of the round's ratio: both times were taken in the same round, so a
        # load that comes and goes between rounds cancels out (a ratio of medians would mix rounds).
        return statistics.median(t / r for t, r in zip(rounds[pair], rounds[reference]))

    print(
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} repeats={args.repeats} "
        f"K={K} (env=mt10) batch/task={BATCH}"
    )
    print(f"{'network':<13} {'params':>10} {'balancer':<8} {'ms/update':>10} {'x multihead':>12} {'x mtsac':>8}")
    for n in networks:
        count = parameter_count(setups[(n, "mtsac")][0])
        for b in balancers:
            ms = times[(n, b)]
            print(
                f"{n:<13} {count:>10,} {b:<8} {ms:>10.1f} {ratio((n, b), ('multihead', b)):>12.2f} "
                f"{ratio((n, b), (n, 'mtsac')):>8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
