"""The public `backward` / `backward_grouped` against brute force, for every registered balancer.

The reference is the definition, written without the implementation's helpers: a loop of K
`torch.autograd.grad` calls (one per task loss) gives the per-task gradients; a twin balancer
(same options, same calls) then gives `combine(J)` for the shared parameters of a gradient method
and the mean of the task gradients for the task-specific ones, or, for a loss-weighting method,
the gradient of its `weighted_loss`. `.grad` must be replaced: every parameter starts with junk.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from mtrl_famo.balancers import (
    NAMES,
    REGISTRY,
    GradientManipulation,
    GramMixing,
    LossWeighting,
    backward,
    backward_grouped,
    make,
    options_of,
)
from mtrl_famo.balancers.backprop import auto_jacobian, combines_blocks, decides_from_gram

from conftest import REPO

K, N, B, IN, HIDDEN = 3, 7, 5, 4, 6
SCALES = torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64)  # loss scales that differ by orders of magnitude
TOL = dict(rtol=1e-7, atol=1e-10)
LAYOUTS = ("shared_batched", "shared_loop", "grouped")


class Net(nn.Module):
    """A shared trunk and K scalar heads stored with the task axis first (one row per task)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh())
        self.head_weight = nn.Parameter(torch.randn(K, HIDDEN))
        self.head_bias = nn.Parameter(torch.randn(K))

    def shared(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def heads(self) -> list[nn.Parameter]:
        return [self.head_weight, self.head_bias]


def shared_input_losses(net: Net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every task reads every row: `[N, K]` predictions, one squared error per task."""
    predictions = net.trunk(x) @ net.head_weight.T + net.head_bias
    return SCALES * ((predictions - y) ** 2).mean(dim=0)


def grouped_losses(net: Net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Task k reads rows k only; written axis-agnostic, so it also runs per task under vmap."""
    z = net.trunk(x)
    predictions = (z * net.head_weight.unsqueeze(-2)).sum(-1) + net.head_bias.unsqueeze(-1)
    return ((predictions - y) ** 2).mean(-1)


def grouped_scaled_losses(net: Net, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale * grouped_losses(net, x, y)


def setup(layout: str, seed: int = 0) -> tuple[Net, tuple[torch.Tensor, ...], Callable]:
    torch.manual_seed(seed)
    net = Net().double()
    gen = torch.Generator().manual_seed(seed + 1)
    if layout == "grouped":
        data = (
            torch.randn(K, B, IN, generator=gen, dtype=torch.float64),
            torch.randn(K, B, generator=gen, dtype=torch.float64),
            SCALES.clone(),
        )
        return net, data, grouped_scaled_losses
    data = (
        torch.randn(N, IN, generator=gen, dtype=torch.float64),
        torch.randn(N, K, generator=gen, dtype=torch.float64),
    )
    return net, data, shared_input_losses


def build(name: str) -> object:
    options = {"seed": 3} if "seed" in options_of(name) else {}
    return make(name, K, **options)


def brute_force(net: Net, losses: torch.Tensor, balancer: object) -> dict[nn.Parameter, torch.Tensor]:
    """The expected `.grad` of every parameter, from K autograd.grad calls and a twin balancer."""
    params = net.shared() + net.heads()
    if isinstance(balancer, LossWeighting):
        grads = torch.autograd.grad(balancer.weighted_loss(losses), params)
        return dict(zip(params, grads))
    rows = [torch.autograd.grad(losses[k], params, retain_graph=True) for k in range(K)]
    expected = {p: sum(row[i] for row in rows) / K for i, p in enumerate(params) if i >= len(net.shared())}
    jacobian = torch.stack([torch.cat([row[i].flatten() for i in range(len(net.shared()))]) for row in rows])
    direction = balancer.combine(jacobian)
    offset = 0
    for parameter in net.shared():
        expected[parameter] = direction[offset : offset + parameter.numel()].view_as(parameter)
        offset += parameter.numel()
    return expected


def run_public(layout: str, net: Net, data: tuple, loss_fn: Callable, balancer: object) -> None:
    if layout == "grouped":
        backward_grouped(net, loss_fn, data, balancer, task_axis=lambda name: name.startswith("head_"))
    else:
        jacobian = "loop" if layout == "shared_loop" else "batched"
        backward(loss_fn(net, *data), net.shared(), balancer, net.heads(), jacobian=jacobian)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", NAMES)
def test_public_backward_equals_brute_force(name: str, layout: str) -> None:
    net, data, loss_fn = setup(layout)
    balancer, twin = build(name), build(name)
    for _ in range(2):  # a second round checks the state carried between updates (warm starts, windows, draws)
        before = loss_fn(net, *data)
        expected = brute_force(net, before, twin)
        for parameter in net.parameters():
            parameter.grad = torch.full_like(parameter, 1e3)  # junk: the result must replace it
        run_public(layout, net, data, loss_fn, balancer)
        for parameter in net.parameters():
            torch.testing.assert_close(parameter.grad, expected[parameter], **TOL)
        if balancer.weights() is not None:
            torch.testing.assert_close(balancer.weights(), twin.weights(), **TOL)
        with torch.no_grad():  # move the parameters, as an optimiser step would
            for parameter in net.parameters():
                parameter.sub_(0.05 * parameter.grad)
        if balancer.needs_losses_after_step:  # FAMO: the losses on the same batch after the step
            with torch.no_grad():
                after = loss_fn(net, *data)
            balancer.update(before.detach(), after)
            twin.update(before.detach(), after)


class FixedMix(GradientManipulation):
    """A gradient method that is not Gram-space: the public path must hand it the whole `[K, D]` matrix."""

    def combine(self, grads: torch.Tensor) -> torch.Tensor:
        self.seen = grads.clone()
        return torch.tensor([0.7, -1.3, 2.1], dtype=grads.dtype) @ grads


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_non_gram_method_gets_the_stacked_jacobian(layout: str) -> None:
    net, data, loss_fn = setup(layout)
    balancer = FixedMix(K)
    expected = brute_force(net, loss_fn(net, *data), FixedMix(K))
    run_public(layout, net, data, loss_fn, balancer)
    for parameter in net.parameters():
        torch.testing.assert_close(parameter.grad, expected[parameter], **TOL)
    assert balancer.seen.shape == (K, sum(p.numel() for p in net.shared()))


class EqualMix(GramMixing):
    """A Gram-space method that keeps the base class's combine: it is handed the Gram matrix only."""

    def mixing_weights(self, gram: torch.Tensor) -> torch.Tensor:
        return torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=gram.dtype)

    def combine(self, grads: torch.Tensor) -> torch.Tensor:  # the base class's maths, recording what it saw
        self.seen = grads
        return super().combine(grads)


class EqualMixFromGram(GramMixing):
    def mixing_weights(self, gram: torch.Tensor) -> torch.Tensor:
        return torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=gram.dtype)


def test_a_gram_method_that_overrides_combine_gets_the_stacked_jacobian() -> None:
    """Overriding combine says the method needs the vectors (CAGrad measures norms on them)."""
    assert decides_from_gram(EqualMixFromGram) and not decides_from_gram(EqualMix)
    for layout in LAYOUTS:
        net, data, loss_fn = setup(layout)
        overriding, from_gram = EqualMix(K), EqualMixFromGram(K)
        run_public(layout, net, data, loss_fn, from_gram)
        want = {p: p.grad.clone() for p in net.parameters()}
        run_public(layout, net, data, loss_fn, overriding)
        assert overriding.seen.shape == (K, sum(p.numel() for p in net.shared()))
        for parameter in net.parameters():
            torch.testing.assert_close(parameter.grad, want[parameter], **TOL)


def test_the_kinds_are_all_covered() -> None:
    """Every kind of balancer is among the registered ones the brute-force test runs."""
    kinds = [build(name) for name in NAMES]
    assert any(isinstance(b, LossWeighting) for b in kinds)
    assert any(decides_from_gram(b) for b in kinds)
    assert any(isinstance(b, GradientManipulation) and not isinstance(b, GramMixing) for b in kinds)
    # Only a method that overrides combine_blocks gets J's blocks (CAGrad); none that decides from Gram does.
    assert [name for name in NAMES if combines_blocks(REGISTRY[name])] == ["cagrad"]
    assert not combines_blocks(EqualMix) and not combines_blocks(EqualMixFromGram)


def test_result_carries_the_gram_matrix_and_losses() -> None:
    net, data, loss_fn = setup("shared_batched")
    losses = loss_fn(net, *data)
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(losses[k], net.shared(), retain_graph=True)])
        for k in range(K)
    ]
    jacobian = torch.stack(rows)
    result = backward(losses, net.shared(), make("mgda", K), net.heads())
    torch.testing.assert_close(result.task_gram(), jacobian @ jacobian.T, **TOL)
    torch.testing.assert_close(result.losses, losses.detach())
    assert result.shared_grads is None and not result.losses.requires_grad


@pytest.mark.parametrize("jacobian", ["batched", "loop"])
@pytest.mark.parametrize("name", ["cagrad", "graddrop", "mtsac"])
def test_a_parameter_no_loss_reaches_gets_a_zero_gradient(name: str, jacobian: str) -> None:
    net, data, loss_fn = setup("shared_batched")
    unused = nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
    unused.grad = torch.ones_like(unused)
    backward(loss_fn(net, *data), [*net.shared(), unused], build(name), net.heads(), jacobian=jacobian)
    assert torch.equal(unused.grad, torch.zeros_like(unused))
    assert all(p.grad.abs().sum() > 0 for p in net.shared())


def test_task_specific_is_optional() -> None:
    net, data, loss_fn = setup("shared_batched")
    backward(loss_fn(net, *data), net.trunk, make("cagrad", K), None)
    assert all(p.grad is not None for p in net.trunk.parameters())
    assert net.head_weight.grad is None and net.head_bias.grad is None


class HostRoundTrip(torch.autograd.Function):
    """Doubles its input; its backward goes through numpy, which a batched (vmapped) backward refuses."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(2 * g.detach().numpy())


@pytest.fixture
def two_threads():
    """`jacobian="auto"` tries the batched pass only with more than one CPU thread (tests run on one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_auto_is_the_loop_on_one_cpu_thread_and_batched_otherwise(two_threads) -> None:
    assert auto_jacobian(torch.device("cpu")) == "batched"
    assert auto_jacobian(torch.device("cuda", 0)) == "batched"
    torch.set_num_threads(1)
    assert auto_jacobian(torch.device("cpu")) == "loop"


def test_auto_falls_back_to_the_loop_when_the_batched_pass_is_refused(two_threads) -> None:
    net, data, _ = setup("shared_batched")

    def losses_through_numpy() -> torch.Tensor:
        predictions = HostRoundTrip.apply(net.trunk(data[0])) @ net.head_weight.T + net.head_bias
        return ((predictions - data[1]) ** 2).mean(dim=0)

    backward(losses_through_numpy(), net.shared(), make("pcgrad", K, seed=0), net.heads(), jacobian="loop")
    want = {p: p.grad.clone() for p in net.parameters()}
    with pytest.raises(RuntimeError):
        backward(losses_through_numpy(), net.shared(), make("pcgrad", K, seed=0), net.heads(), jacobian="batched")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backward(losses_through_numpy(), net.shared(), make("pcgrad", K, seed=0), net.heads())
    assert any("jacobian='loop'" in str(w.message) for w in caught)
    for parameter in net.parameters():
        torch.testing.assert_close(parameter.grad, want[parameter], **TOL)


def one_sentence(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_bad_input_is_one_sentence() -> None:
    net, data, loss_fn = setup("shared_batched")
    losses = loss_fn(net, *data)
    with pytest.raises(ValueError) as error:
        backward(losses[:2], net.shared(), make("mtsac", K))
    assert "(3,)" in one_sentence(error) and "(2,)" in one_sentence(error)
    with pytest.raises(ValueError) as error:
        backward(losses.detach(), net.shared(), make("mtsac", K))
    assert "do not require grad" in one_sentence(error)
    with pytest.raises(ValueError) as error:
        backward(losses, net.shared(), make("cagrad", K), jacobian="forward")
    assert "'forward'" in one_sentence(error) and "auto, batched, loop" in one_sentence(error)
    with pytest.raises(ValueError) as error:
        backward(losses, net.shared(), make("cagrad", K), net.shared()[:1])
    assert "both as shared and as task-specific" in one_sentence(error)
    with pytest.raises(ValueError) as error:
        backward_grouped(net, grouped_losses, (torch.zeros(K + 1, B, IN), torch.zeros(K + 1, B)), make("cagrad", K))
    assert "(4, 5, 4)" in one_sentence(error) and "num_tasks=3" in one_sentence(error)
    with pytest.raises(ValueError) as error:
        everything = lambda name: True  # noqa: E731 - every parameter claimed to carry the task axis
        backward_grouped(
            net, grouped_losses, (torch.zeros(K, B, IN), torch.zeros(K, B)), make("cagrad", K), task_axis=everything
        )
    assert "'trunk.0.weight' of shape (6, 4)" in one_sentence(error) and "num_tasks=3" in one_sentence(error)
    with pytest.raises(ValueError) as error:
        make("famo_typo", K)
    assert "famo_typo" in one_sentence(error) and "famo" in str(error.value).split("choose one of")[1]


@pytest.mark.parametrize("name", [n for n in NAMES if "seed" in options_of(n)])
def test_a_seeded_method_says_which_argument_it_needs(name: str) -> None:
    with pytest.raises(ValueError) as error:
        make(name, K)
    assert "pass seed=... to make()" in one_sentence(error)
    assert name in {"pcgrad", "graddrop", "rlw"}, "a new seeded method: say so in docs/library.md"


@pytest.fixture(scope="module")
def bench_backward():
    """scripts/bench_backward.py imported as a module (in-process: it is run for its rows, not timed)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_backward
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return bench_backward


def test_the_benchmark_has_every_row(bench_backward, capsys) -> None:
    tiny = ["--tasks", "2", "--batch", "4", "--inputs", "3", "--hidden", "4", "--layers", "1"]
    bench_backward.main([*tiny, "--repeats", "1", "--warmup", "0", "--threads", "1", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    gram = [n for n in NAMES if issubclass(REGISTRY[n], GramMixing)]
    assert [(r["layout"], r["row"]) for r in rows] == [
        ("grouped", "plain"),
        *(("grouped", n) for n in NAMES),
        ("shared", "plain"),
        ("shared", "loop"),
        ("shared", "batched"),
        *(("shared", n) for n in NAMES),
        *(("shared", f"{n}+wb") for n in gram),
    ]
    assert all(r["ms"] > 0 and r["x_plain"] > 0 for r in rows)
    assert all("x_loop" in r for r in rows if r["layout"] == "shared")


def test_the_benchmark_refuses_bad_input_in_one_line(bench_backward, capsys) -> None:
    for arguments, needle in ((["--balancers", "cagard"], "'cagard'"), (["--tasks", "3", "--batch", "10"], "10")):
        with pytest.raises(SystemExit) as exit_code:
            bench_backward.main(arguments)
        assert exit_code.value.code == 2
        message = capsys.readouterr().err.strip()
        assert "\n" not in message and needle in message
