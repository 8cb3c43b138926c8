"""How much memory a run needs, how much its device has free, and the refusal when it does not fit.

Checked before any work starts (`mtrl_famo.preflight.check`), so an oversized batch or replay is
one sentence instead of a process the kernel kills minutes later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mtrl_famo import balancers
from mtrl_famo.balancers import GradientManipulation
from mtrl_famo.balancers.backprop import combines_blocks, decides_from_gram
from mtrl_famo.compiled_update import resolve_compile, resolve_cuda_graph
from mtrl_famo.config import BALANCED_LOSSES, AgentConfig, BalancerConfig, ConfigError, Purpose, TrainConfig
from mtrl_famo.envs.builder import worker_count
from mtrl_famo.seeding import resolve_device

FLOAT_BYTES = 4  # training runs in float32
MIB = 2**20
# A CUDA context (driver state, the kernels torch loads lazily, cuBLAS workspaces) on the device.
# NOT measured here (no GPU): a typical figure for CUDA 12 with lazy module loading.
CUDA_CONTEXT_BYTES = 512 * MIB
# Host memory of the processes a run starts besides its own (measured here on a 2-core VM, Metaworld
# 3.1.1, proportional set size, so pages shared with the trainer after fork count once): an env worker
# process (envs/workers.py, forked) held 103 MiB with 1 task, 270-279 MiB with 5 and 489-518 MiB with
# 16-17; ENV_WORKER_BYTES + tasks * ENV_TASK_BYTES bounds those from above. The spawned evaluation
# worker (mtrl_famo.background_eval: its own interpreter, torch and the actor, its eval env in worker
# processes of its own) held 201 MiB besides its env.
ENV_WORKER_BYTES = 80 * MIB
ENV_TASK_BYTES = 40 * MIB
EVAL_WORKER_BYTES = 200 * MIB


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run holds at its peak, in three parts (see `estimate_memory`)."""

    replay: int
    networks: int
    update: int

    @property
    def total(self) -> int:
        return self.replay + self.networks + self.update


def _network_parameters(
    agent: AgentConfig, obs_dim: int, action_dim: int, num_tasks: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((shared, per-task) parameters of the actor, the same of the twin critics), counted on the agent that
    `build_agent` builds for `agent` (any network of agents/registry.py) on the meta device: no memory, no
    initialisation. Per-task = a parameter with the task axis first (`is_task_specific`)."""
    from mtrl_famo.agents.networks import is_task_specific
    from mtrl_famo.build import build_agent  # a layer above the agents; build does not import this module

    meta = build_agent(agent, obs_dim, action_dim, num_tasks, torch.device("meta"))
    counts = {part: [0, 0] for part in ("actor", "critic")}
    for name, parameter in meta.named_parameters():
        part = name.split(".")[0]
        if part in counts:
            counts[part][1 if is_task_specific(name) else 0] += parameter.numel()
    (actor_shared, actor_task), (critic_shared, critic_task) = counts["actor"], counts["critic"]
    return (actor_shared, actor_task), (critic_shared, critic_task)


def _kept_per_row(agent: AgentConfig, width: int) -> int:
    """Floats one network keeps for backward per input row, hidden layers only (a model of each network's
    forward, not measured except for multihead): multihead one `width` activation per layer; MOORE each of
    its k experts' activations per layer plus the k orthonormalised outputs; Soft Modularization each
    module's output per layer plus the routing network's (two embeddings, a routing layer per layer and
    its module-to-module weights); PaCo a multihead's (its composed per-task parameters are counted
    apart, `_kept_per_task`)."""
    layers, options = agent.num_layers, agent.network
    name = options["name"]
    if name == "moore":
        return options["num_experts"] * (layers + 1) * width
    if name == "soft_modular":
        modules, routing = options["num_modules"], options["routing_width"]
        return modules * layers * width + 2 * options["embedding_dim"] + layers * (routing + modules * modules)
    return layers * width


def _kept_per_task(agent: AgentConfig, parameters: int) -> int:
    """Floats one network keeps per task besides its rows' activations: PaCo's task parameters `Phi w`
    (one full parameter vector of the network per task, `parameters` / num_parameter_sets)."""
    if agent.network["name"] == "paco":
        return parameters // agent.network["num_parameter_sets"]
    return 0


def estimate_memory(
    agent: AgentConfig, balancer: BalancerConfig, num_tasks: int, obs_dim: int, action_dim: int
) -> MemoryEstimate:
    """Peak bytes of a run: the preallocated replay, the networks with their optimiser state, and
    what one update adds on top (float32 throughout).

    - replay: exactly what `TaskReplay` allocates, `agent.replay_size` transitions in all of
      obs, next_obs, action, reward and terminated.
    - networks: exactly the actor, twin critics and log-alpha(s) with their gradients and two Adam
      moments each, plus the target critics.
    - update: the sampled batch `[K, B, ...]` (and its int64 index), plus the larger of the critic
      step and the actor step. A step keeps for backward one `[K*B, hidden]` activation per layer
      of every network its loss runs with grad (critic step: both critics; actor step: the actor
      and both critics, which the action's gradient goes through) and the critics' concatenated
      input; backward holds about two more `[K*B, max(hidden, input)]` gradients at a time; the new
      gradients next to the old ones and Adam's temporaries take about twice the step's
      parameters. The target critics and FAMO's after-step recomputation run without grad: their
      activations are freed layer by layer and stay below the step's own. A gradient balancer on
      a loss adds its `[K, D]` per-task gradients of the shared parameters: once (per parameter) for a
      method that decides from their Gram matrix or from their blocks, twice for one that takes them
      concatenated for `combine` (`mtrl_famo.balancers.backprop.decides_from_gram`, `combines_blocks`).

    Against torch's own allocation records of one CPU update (tests/test_memory.py) the update
    part came out 0.87x to 1.25x the measured peak, from K=1 to 50, hidden 8 to 1024, 8 to 1024
    transitions per task and every balancer (1.01x to 1.10x for the MT10/MT50 defaults); the test
    allows a factor of two either way. Not counted: allocator caching and fragmentation (on CUDA
    the caching allocator keeps freed blocks), the Python process itself and the environments
    (a few hundred MB, to a few GB for MT50 with env.vector_strategy=async).
    """
    k, batch, hidden, layers = num_tasks, agent.batch_size_per_task, agent.hidden_dim, agent.num_layers
    rows = k * batch
    critic_in = obs_dim + action_dim

    per_task = agent.replay_size // k
    replay = k * per_task * (2 * obs_dim + action_dim + 2) * FLOAT_BYTES

    (actor_trunk, actor_heads), (critic_trunk, critic_heads) = _network_parameters(agent, obs_dim, action_dim, k)
    critic_width = hidden if agent.critic_hidden_dim is None else agent.critic_hidden_dim
    temperatures = 1 if agent.alpha == "shared" else k
    trained = actor_trunk + actor_heads + critic_trunk + critic_heads + temperatures
    networks = (4 * trained + critic_trunk + critic_heads) * FLOAT_BYTES  # value, grad, 2 Adam moments; targets

    sampled = rows * (2 * obs_dim + action_dim + 2) * FLOAT_BYTES + rows * 8
    width = max(hidden, critic_width) if layers else 0
    # One Q network; its input, cat(obs, action), is shared by both. (A LayerNorm critic keeps about twice.)
    norm = 2 if agent.critic_layernorm else 1
    kept_critic = rows * (norm * _kept_per_row(agent, critic_width) + 1) + k * _kept_per_task(agent, critic_trunk // 2)
    kept_actor = rows * (_kept_per_row(agent, hidden) + 2 * action_dim) + k * _kept_per_task(agent, actor_trunk)
    backward = 2 * rows * max(width, critic_in)
    critic_params, actor_params = critic_trunk + critic_heads, actor_trunk + actor_heads
    # Each step: new gradients next to the old ones, and Adam's temporaries, about twice the group's size.
    critic_step = 2 * kept_critic + rows * critic_in + backward + 2 * critic_params
    actor_step = kept_actor + 8 * rows * action_dim + 2 * kept_critic + rows * critic_in + backward + 2 * actor_params
    method = balancers.REGISTRY[balancer.name]
    stacked = not (decides_from_gram(method) or combines_blocks(method))
    copies = (2 if stacked else 1) if issubclass(method, GradientManipulation) else 0
    if "critic" in balancer.apply_to:
        critic_step += copies * k * critic_trunk
    if "actor" in balancer.apply_to:
        actor_step += copies * k * actor_trunk
    update = sampled + max(critic_step, actor_step) * FLOAT_BYTES
    return MemoryEstimate(replay=replay, networks=networks, update=update)


def estimate_speed_layers(need: MemoryEstimate, device_type: str, compile_on: bool, graph_on: bool) -> dict[str, int]:
    """Device bytes the speed layers add to `need` (`estimate_memory`'s), by part; empty when none is on.

    - cuda context: CUDA_CONTEXT_BYTES on a CUDA device (the free memory is read through this process's
      own context, so it is counted twice at worst: a margin of that size);
    - graph pool: the captured update's intermediates and static buffers live in the graph's private
      pool for the whole run: about one update (`need.update`), beside the eager update's blocks that
      the caching allocator keeps from the warm-up;
    - capture snapshot: the copies of every tensor the warm-up updates change (parameters, target
      critics, Adam moments), about the networks' state without gradients;
    - self-check (mtrl_famo.self_check): an eager copy of the learner and a snapshot of the learner,
      about twice the networks, while the layers are checked before training.
    """
    parts: dict[str, int] = {}
    if device_type == "cuda":
        parts["cuda context"] = CUDA_CONTEXT_BYTES
    if graph_on:
        parts["graph pool"] = need.update
        parts["capture snapshot"] = need.networks
    if compile_on or graph_on:
        parts["self-check"] = 2 * need.networks
    return parts


@dataclass(frozen=True)
class HostEstimate:
    """Host bytes a run adds besides its own process and the training tensors (see `estimate_host_memory`)."""

    env_workers: int
    eval_worker: int
    checkpoint: int

    @property
    def total(self) -> int:
        return self.env_workers + self.eval_worker + self.checkpoint


def env_process_bytes(vector_strategy: str, workers: int | str, num_tasks: int, cores: int | None = None) -> int:
    """Host bytes of the env worker processes one vector env of `num_tasks` starts (ENV_WORKER_BYTES
    each, plus ENV_TASK_BYTES per task it steps); `sync` steps them in the calling process."""
    if vector_strategy == "sync":
        return num_tasks * ENV_TASK_BYTES
    if vector_strategy == "async":  # gymnasium's: one process per task
        return num_tasks * (ENV_WORKER_BYTES + ENV_TASK_BYTES)
    if workers == "auto" and cores is not None:
        count = min(num_tasks, max(1, cores - 1))  # envs.builder.worker_count's rule, for a given core count
    else:
        count = worker_count(workers, num_tasks)
    return count * ENV_WORKER_BYTES + num_tasks * ENV_TASK_BYTES


def estimate_host_memory(config: TrainConfig, replay_bytes: int, cores: int | None = None) -> HostEstimate:
    """Host bytes a run adds to its own process: the env worker processes (`env.workers=auto`: one per
    core but one, at most one per task), the background evaluation worker with its own eval env (in
    worker processes of its own with env.vector_strategy=workers), and the host copy of the replay a
    checkpoint writes (`TaskReplay.state_dict`: the filled buffer, up to `replay_bytes`). `cores`
    replaces this machine's core count (for the arithmetic of another machine)."""
    spec, num_tasks = config.env, len(config.env.task_names())
    training = env_process_bytes(spec.vector_strategy, spec.workers, num_tasks, cores)
    evaluation = 0
    if config.eval.background:
        evaluation = EVAL_WORKER_BYTES + env_process_bytes(spec.vector_strategy, spec.workers, num_tasks, cores)
    return HostEstimate(env_workers=training, eval_worker=evaluation, checkpoint=replay_bytes)


def estimate_eval_memory(agent: AgentConfig, num_tasks: int, obs_dim: int, action_dim: int) -> int:
    """Peak bytes `python -m mtrl_famo.evaluate` holds for the policy (float32): the actor's weights twice
    (the module, and the checkpoint's copy while it is loaded) and one acting step of the K tasks.

    Nothing else of the checkpoint: the replay is a file of its own that evaluation never opens, and the
    checkpoint file is memory-mapped, so the critics, optimiser state and the rest are never read. Not
    counted, as for training: the Python process and the evaluation envs.
    """
    k = num_tasks
    (trunk, heads), _ = _network_parameters(agent, obs_dim, action_dim, k)
    acting = k * (obs_dim + _kept_per_row(agent, agent.hidden_dim) + 2 * action_dim + _kept_per_task(agent, trunk))
    return (2 * (trunk + heads) + acting) * FLOAT_BYTES


def cgroup_free_bytes(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Room left under this process's cgroup v2 memory limits (Slurm jobs, containers), the
    tightest over its cgroup and its parents; None when no limit is set or readable."""
    try:
        line = next(entry for entry in proc_cgroup.read_text().splitlines() if entry.startswith("0::"))
    except (OSError, StopIteration):
        return None
    group, rooms = root / line[3:].strip("/"), []
    while True:
        try:
            limit = (group / "memory.max").read_text().strip()
            if limit != "max":
                rooms.append(max(0, int(limit) - int((group / "memory.current").read_text())))
        except (OSError, ValueError):
            pass
        if group == root or root not in group.parents:
            break
        group = group.parent
    return min(rooms) if rooms else None


def available_memory(device: torch.device) -> int | None:
    """Bytes free for this run on `device`: CUDA's free memory, or on the CPU MemAvailable from
    /proc/meminfo (lowered to the room under a cgroup memory limit), falling back to the free
    physical pages; None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    room = cgroup_free_bytes()
    return available if room is None else min(available, room)


def format_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def check_memory(config: TrainConfig, purpose: Purpose = "train") -> None:
    """Refuse a run that does not fit in the memory free where it runs, naming the setting that takes the
    most and what is free; for `purpose="evaluate"`, an evaluation whose actor (`estimate_eval_memory`)
    does not fit.

    Training on the CPU: the replay, networks and one update (`estimate_memory`), the speed layers'
    additions (`estimate_speed_layers`) and what the run adds on the host (`estimate_host_memory`), all
    against the host's free memory. On CUDA: the first two against the device's free memory, the host
    part against the host's.
    """
    device = resolve_device(config.device)
    free = available_memory(device)
    obs_dim, action_dim = config.env.dims()
    num_tasks = len(config.env.task_names())
    if purpose == "evaluate":
        if free is None:
            return
        need_eval = estimate_eval_memory(config.agent, num_tasks, obs_dim, action_dim)
        if need_eval > free:
            elsewhere = "; pass device=cpu or" if device.type == "cuda" else ";"
            raise ConfigError(
                f"Evaluating this run needs about {format_bytes(need_eval)} for its actor (agent.hidden_dim="
                f"{config.agent.hidden_dim}, agent.num_layers={config.agent.num_layers}) but only "
                f"{format_bytes(free)} is free on {device.type}{elsewhere} evaluate on a machine with more memory."
            )
        return
    device_parts, host_parts = memory_parts(config, device.type)
    if device.type == "cuda":
        refuse_if_short(device_parts, free, "cuda")
        refuse_if_short(host_parts, available_memory(torch.device("cpu")), "the host")
    else:
        refuse_if_short(device_parts + host_parts, free, "cpu")


# (bytes, what, the setting that sizes it, how to lower it)
Part = tuple[int, str, str, str]


def memory_parts(config: TrainConfig, device_type: str, cores: int | None = None) -> tuple[list[Part], list[Part]]:
    """What a training run needs on its device and (besides) on the host, part by part."""
    agent, env = config.agent, config.env
    obs_dim, action_dim = env.dims()
    num_tasks = len(env.task_names())
    need = estimate_memory(agent, config.balancer, num_tasks, obs_dim, action_dim)
    device = torch.device(device_type)
    compile_on = resolve_compile(agent.compile, device)
    classes = [
        balancers.REGISTRY[config.balancer.name if loss in config.balancer.apply_to else "mtsac"]
        for loss in BALANCED_LOSSES
    ]
    graph_on = resolve_cuda_graph(agent.cuda_graph, device, classes)
    layer_key = "agent.cuda_graph" if graph_on else "agent.compile"
    layer_setting = f"{layer_key}={agent.cuda_graph if graph_on else agent.compile}"
    device_parts: list[Part] = [
        (need.update, "one update", f"agent.batch_size_per_task={agent.batch_size_per_task}", "lower"),
        (need.replay, "replay", f"agent.replay_size={agent.replay_size}", "lower"),
        (need.networks, "networks", f"agent.hidden_dim={agent.hidden_dim}", "lower"),
    ]
    for label, size in estimate_speed_layers(need, device_type, compile_on, graph_on).items():
        setting = (f"device={config.device}", "use") if label == "cuda context" else (layer_setting, "set")
        device_parts.append((size, label, *setting))
    host = estimate_host_memory(config, need.replay, cores)
    host_parts: list[Part] = [
        (host.checkpoint, "the replay's checkpoint copy", f"agent.replay_size={agent.replay_size}", "lower"),
        (host.env_workers, "env worker processes", f"env.workers={env.workers}", "lower"),
    ]
    if host.eval_worker:
        host_parts.append((host.eval_worker, "evaluation worker", "eval.background=true", "set"))
    return device_parts, host_parts


def _fix(setting: str, verb: str) -> str:
    """How to make a part smaller, as the sentence's advice."""
    key = setting.split("=")[0]
    if verb == "lower":
        return f"lower {key}"
    if key == "device":
        return "use device=cpu"
    return f"set {key}=false"


def refuse_if_short(parts: list[Part], free: int | None, where: str) -> None:
    """One sentence when the parts do not fit in `free` bytes (None: unknown, no check)."""
    total = sum(part[0] for part in parts)
    if free is None or total <= free:
        return
    ranked = sorted(parts, key=lambda part: part[0], reverse=True)
    _, _, setting, verb = ranked[0]
    raise ConfigError(
        f"{setting} does not fit in memory: the run needs about {format_bytes(total)} ("
        + ", ".join(f"{label} {format_bytes(size)}" for size, label, _, _ in ranked if size)
        + f") but only {format_bytes(free)} is free on {where}; {_fix(setting, verb)} or run on a "
        "machine with more memory."
    )
