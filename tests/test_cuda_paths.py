"""The logic of the CUDA-only code paths, checked on the CPU where it does not need a GPU.

Tests that need a real CUDA device carry the `cuda` marker and live in tests/test_cuda.py.
"""

from __future__ import annotations

import pytest
import torch

from mtrl_famo import checkpoint
from mtrl_famo.balancers import make

from tiny_setup import tiny_trainer


def test_famo_keeps_its_capturable_adam_when_loading_a_state_saved_without_it() -> None:
    """On CUDA FAMO's Adam is capturable (a graph replays its step); a checkpoint saved on the CPU (or
    before `to()`) says capturable=False, and loading it must not switch the flag off: the first graph
    capture would then raise."""
    saved_by = make("famo", 3)
    saved_by.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.9, 1.8, 2.9]))
    state = saved_by.state_dict()
    assert state["optimizer"]["param_groups"][0]["capturable"] is False

    loaded = make("famo", 3)
    # What FAMO.to(cuda) builds; a CPU Adam accepts the flag (only its step would need a device).
    loaded.optimizer = torch.optim.Adam([loaded.logits], lr=0.1, weight_decay=0.01, capturable=True)
    loaded.load_state_dict(state)
    group = loaded.optimizer.param_groups[0]
    assert group["capturable"] is True
    assert group["lr"] == saved_by.optimizer.param_groups[0]["lr"]  # what Adam computes still comes from the state
    moments = loaded.optimizer.state[loaded.logits]
    torch.testing.assert_close(moments["exp_avg"], saved_by.optimizer.state[saved_by.logits]["exp_avg"])
    torch.testing.assert_close(loaded.logits.detach(), saved_by.logits.detach())


def test_a_failed_device_side_loss_check_stops_the_checkpoint_and_the_summary(tmp_path) -> None:
    """On CUDA FAMO's bound check is a device flag read every DEVICE_CHECK_EVERY updates; one that
    failed in the last updates must be read before a checkpoint saves the run or the summary ends it."""
    trainer = tiny_trainer(tmp_path / "run", "balancer=famo")
    check = trainer.learner.balancers["critic"].bound_check
    check.failed, check.first_bad = torch.tensor(True), torch.tensor([-1.0, 0.5])  # what a CUDA update records
    with pytest.raises(ValueError, match=r"FAMO needs every loss above its min_losses bound, got losses \[-1.0, 0.5\]"):
        trainer.save_checkpoint()
    assert checkpoint.load_latest(tmp_path / "run") is None
    with pytest.raises(ValueError, match="FAMO needs every loss above"):
        trainer.summary()
    trainer.env.close()


def test_a_checkpoint_whose_random_stream_was_drawn_on_another_device_type_is_refused_in_one_sentence(
    tmp_path,
) -> None:
    """device=auto may land a re-queued job on a CPU node (or a CPU run's resume on a GPU node): the
    generator's state cannot cross device types, so the resume is refused before anything is loaded."""
    run_dir = tmp_path / "run"
    trained = tiny_trainer(run_dir, "steps=5", "eval.every=5")
    trained.train()
    state = checkpoint.load_latest(run_dir)
    assert state["rng"]["generator_device"] == "cpu"
    state["rng"]["generator_device"] = "cuda"  # as a GPU node writes it (its generator state is 16 bytes)

    resumed = tiny_trainer(run_dir, "steps=5", "eval.every=5")
    before = {name: value.clone() for name, value in resumed.agent.state_dict().items()}
    with pytest.raises(checkpoint.CheckpointError) as refused:
        resumed.load_state_dict(state)
    message = str(refused.value)
    assert message == (
        f"{run_dir} holds a checkpoint that its training random stream was drawn on cuda and this run is on cpu, "
        "where that stream cannot continue exactly; resume with device=cuda, or use another run_dir for a new run."
    )
    for name, value in resumed.agent.state_dict().items():  # nothing was loaded
        torch.testing.assert_close(value, before[name])
    resumed.env.close()
