"""Adam's reset (periodic network resets): zeroed state steps exactly like a fresh optimizer."""

from __future__ import annotations

import torch

from mtrl_famo.optim import make_adam, reset_adam_state_


def _steps(optimizer: torch.optim.Adam, params: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        optimizer.step()


def test_reset_state_steps_exactly_like_a_fresh_adam() -> None:
    torch.manual_seed(0)
    shapes = [(3, 4), (4,)]
    params = [torch.randn(s, requires_grad=True) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(5)]
    optimizer = make_adam(params, 1e-2)
    _steps(optimizer, params, grads[:3])
    start = [p.detach().clone() for p in params]
    tensors_before = [id(t) for state in optimizer.state.values() for t in state.values()]

    reset_adam_state_(optimizer)
    assert [id(t) for state in optimizer.state.values() for t in state.values()] == tensors_before  # in place
    _steps(optimizer, params, grads[3:])

    fresh_params = [s.clone().requires_grad_(True) for s in start]
    fresh = make_adam(fresh_params, 1e-2)
    _steps(fresh, fresh_params, grads[3:])
    for reset_param, fresh_param in zip(params, fresh_params):
        assert torch.equal(reset_param, fresh_param)
    # Without the reset, the moments of the first three steps change the last two.
    torch.manual_seed(0)
    initial = [torch.randn(s) for s in shapes]
    carried = [p.clone().requires_grad_(True) for p in initial]
    _steps(make_adam(carried, 1e-2), carried, grads)
    assert not all(torch.equal(a, b) for a, b in zip(carried, params))


def test_reset_of_an_unstepped_adam_adds_no_state() -> None:
    params = [torch.zeros(2, requires_grad=True)]
    optimizer = make_adam(params, 1e-3)
    reset_adam_state_(optimizer)
    assert not optimizer.state
