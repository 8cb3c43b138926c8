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


@pytest.mark.slow
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


# ----- defect 7: a checkpoint's replay copy and what the memory check counts on a GPU machine -----
GiB = 1 << 30


def test_the_replays_state_is_a_host_copy_of_the_filled_part_alone() -> None:
    """`TaskReplay.state_dict` copies task by task into host tensors of the filled size: never a clone on
    the training device (that doubled the device's replay at every checkpoint; tests/test_cuda.py checks
    the device's peak), and never a view whose storage would make torch.save write the whole capacity."""
    from mtrl_famo.replay import TaskReplay

    replay = TaskReplay(3, 10, 2, 1, "cpu", torch.Generator().manual_seed(0))
    for step in range(4):
        replay.add(
            obs=torch.full((3, 2), float(step)),
            action=torch.ones(3, 1),
            reward=torch.arange(3.0) + step,
            next_obs=torch.zeros(3, 2),
            terminated=torch.zeros(3),
        )
    state = replay.state_dict()
    for name, saved in state["storage"].items():
        assert saved.device.type == "cpu" and saved.shape[:2] == (3, 4) and saved.is_contiguous()
        assert saved.untyped_storage().nbytes() == saved.numel() * saved.element_size()  # not the capacity's
        assert saved.untyped_storage().data_ptr() != replay.storage[name].untyped_storage().data_ptr()
        torch.testing.assert_close(saved, replay.storage[name][:, :4], rtol=0, atol=0)
    replay.storage["reward"].zero_()  # the saved state does not move with the buffer
    assert state["storage"]["reward"][2, 3] == 5.0
    loaded = TaskReplay(3, 10, 2, 1, "cpu")
    loaded.load_state_dict(state)
    torch.testing.assert_close(loaded.storage["obs"][:, :4], replay.storage["obs"][:, :4], rtol=0, atol=0)
    assert (loaded.size, loaded.position) == (4, 4) and loaded.storage["obs"][1, 3, 0] == 3.0


def test_the_speed_layers_count_the_context_graph_pool_capture_snapshot_and_self_check() -> None:
    from mtrl_famo.memory import CUDA_CONTEXT_BYTES, MemoryEstimate, estimate_speed_layers

    need = MemoryEstimate(replay=1000, networks=300, update=70)
    assert estimate_speed_layers(need, "cuda", compile_on=True, graph_on=True) == {
        "cuda context": CUDA_CONTEXT_BYTES,
        "graph pool": 70,  # the captured update's intermediates, held for the whole run
        "capture snapshot": 300,  # copies of what the warm-up changes
        "self-check": 600,  # the eager copy and the learner's snapshot
    }
    assert estimate_speed_layers(need, "cuda", compile_on=False, graph_on=False) == {"cuda context": CUDA_CONTEXT_BYTES}
    assert estimate_speed_layers(need, "cpu", compile_on=True, graph_on=False) == {"self-check": 600}
    assert estimate_speed_layers(need, "cpu", compile_on=False, graph_on=False) == {}


def test_the_host_part_counts_env_workers_the_evaluation_worker_and_the_checkpoint_copy() -> None:
    """On a 16-core GPU node `env.workers=auto` starts one worker per core but one (at most one per task), and
    the background evaluation worker builds its eval env with worker processes of its own."""
    from mtrl_famo.config import compose
    from mtrl_famo.memory import ENV_TASK_BYTES, ENV_WORKER_BYTES, EVAL_WORKER_BYTES, estimate_host_memory

    mt10 = compose("env=mt10", "device=cpu")
    host = estimate_host_memory(mt10, replay_bytes=123, cores=16)
    assert host.env_workers == 10 * ENV_WORKER_BYTES + 10 * ENV_TASK_BYTES  # min(10 tasks, 16 - 1 workers)
    assert host.eval_worker == EVAL_WORKER_BYTES + host.env_workers
    assert host.checkpoint == 123 and host.total == 2 * host.env_workers + EVAL_WORKER_BYTES + 123
    mt50 = compose("env=mt50", "device=cpu", "eval.background=false")
    host = estimate_host_memory(mt50, replay_bytes=0, cores=16)
    assert (host.env_workers, host.eval_worker) == (15 * ENV_WORKER_BYTES + 50 * ENV_TASK_BYTES, 0)
    sync = compose("env=mt10", "device=cpu", "env.vector_strategy=sync")
    assert estimate_host_memory(sync, 0, cores=16).env_workers == 10 * ENV_TASK_BYTES  # in the trainer's process


def test_a_gpu_run_that_does_not_fit_on_the_host_or_the_device_is_refused_before_it_starts(monkeypatch) -> None:
    from mtrl_famo import memory
    from mtrl_famo.config import ConfigError, compose

    free = {"cuda": 80 * GiB, "cpu": 1 * GiB}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(memory, "available_memory", lambda device: free[device.type])
    monkeypatch.setattr("mtrl_famo.envs.builder.os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    with pytest.raises(ConfigError) as error:
        compose("env=mt10", "balancer=famo", "device=cuda")
    message = str(error.value)
    assert message.startswith("eval.background=true does not fit in memory: the run needs about 2.")
    assert "evaluation worker 1.4 GiB, env worker processes 1.2 GiB, the replay's checkpoint copy 396.7 MiB" in message
    assert message.endswith(
        "only 1.0 GiB is free on the host; set eval.background=false or run on a machine with more memory."
    )
    free["cpu"] = 8 * GiB
    compose("env=mt10", "balancer=famo", "device=cuda")  # fits
    device_parts, _ = memory.memory_parts(compose("env=mt10", "balancer=famo", "device=cuda"), "cuda")
    assert {label for _, label, _, _ in device_parts} >= {
        "cuda context",
        "graph pool",
        "capture snapshot",
        "self-check",
    }
    free["cuda"] = 1 * GiB  # the replay, networks and update fit, not with the graph and the context
    with pytest.raises(ConfigError) as error:
        compose("env=mt10", "balancer=famo", "device=cuda")
    assert "cuda context 512.0 MiB" in str(error.value) and "free on cuda" in str(error.value)
