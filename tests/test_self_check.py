"""The speed layers' self-check and fallback (mtrl_famo.self_check), on the CPU.

The fallback logic does not depend on the device: a layer is anything that builds an update over the
one below it. Here a layer that raises (as torch.compile does at its first call on a node without a
compiler toolchain), layers that return a wrong result (a stale batch, a skipped target update,
FAMO's after-step update left out, other noise) and a correct one (the graph's static-buffer update,
run eagerly) go through the same choice the trainer makes; tests/test_cuda.py runs the real ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch

from mtrl_famo import compiled_update
from mtrl_famo.balancers import make
from mtrl_famo.build import build_agent, build_learner, eager_copy
from mtrl_famo.compiled_update import GraphedUpdate, Layer, graph_safe_names, speed_layers
from mtrl_famo.config import compose
from mtrl_famo.learner import Cadence, PolicyNoise, SACLearner, UpdateFn
from mtrl_famo.replay import Batch
from mtrl_famo.self_check import SpeedLayerError, cadence_plan, choose_update, synthetic_batches

from tiny_setup import tiny_trainer

TWO_TASKS = ("env=custom", "env.tasks=[reach-v3,push-v3]")
TINY = ("agent.hidden_dim=8", "agent.num_layers=1", "agent.batch_size_per_task=4", "agent.replay_size=100")
CADENCES = ("agent.actor_update_every=2", "agent.target_update_every=3")


def setup(balancer: str = "famo", *overrides: str) -> tuple[SACLearner, Callable[[], SACLearner]]:
    """The CLI's eager learner for a tiny agent on two tasks, and its eager-copy factory."""
    config = compose(*TWO_TASKS, *TINY, f"balancer={balancer}", "device=cpu", *overrides)
    obs_dim, action_dim = config.env.dims()
    torch.manual_seed(0)
    agent = build_agent(config.agent, obs_dim, action_dim, 2, torch.device("cpu"))
    learner = build_learner(config.agent, config.balancer, agent, torch.Generator().manual_seed(0))
    return learner, lambda: eager_copy(learner, config.balancer)


def layer(name: str, wrap: Callable[[SACLearner, UpdateFn], UpdateFn], setting: bool | str = "auto") -> Layer:
    key = {"compiled": "agent.compile", "graph": "agent.cuda_graph"}[name]
    return Layer(name, key, setting, True, "", wrap, lambda learner: None)


def static_graph(learner: SACLearner, below: UpdateFn) -> UpdateFn:
    """A correct layer: what a CUDA graph records (static buffers, noise drawn outside), run eagerly."""
    return GraphedUpdate(learner, below, capture=False)


def raises(learner: SACLearner, below: UpdateFn) -> UpdateFn:
    """torch.compile's failure on a node without a compiler toolchain (it raises at the first call)."""

    def update(batch: Batch, want_conflicts: bool = False, *, noise: PolicyNoise | None = None):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx")

    return update


def stale_batch(learner: SACLearner, below: UpdateFn) -> UpdateFn:
    """A replay whose static batch is never refreshed: every update sees the first batch."""
    first: list[Batch] = []

    def update(batch: Batch, want_conflicts: bool = False, *, noise: PolicyNoise | None = None):
        first.append(batch)
        return below(first[0], want_conflicts, noise=noise)

    return update


def no_target_update(learner: SACLearner, below: UpdateFn) -> UpdateFn:
    """The target critics never move (a graph recorded for the wrong cadence)."""

    def update(batch: Batch, want_conflicts: bool = False, *, noise: PolicyNoise | None = None):
        saved = [t.clone() for t in learner.agent.critic_target.parameters()]
        result = below(batch, want_conflicts, noise=noise)
        with torch.no_grad():
            for tensor, value in zip(learner.agent.critic_target.parameters(), saved):
                tensor.copy_(value)
        return result

    return update


def no_famo_update(learner: SACLearner, below: UpdateFn) -> UpdateFn:
    """FAMO's after-step update left out: its logits stay where they were."""

    def update(batch: Batch, want_conflicts: bool = False, *, noise: PolicyNoise | None = None):
        logits = learner.balancers["critic"].logits
        saved = logits.detach().clone()
        result = below(batch, want_conflicts, noise=noise)
        with torch.no_grad():
            logits.copy_(saved)
        return result

    return update


def other_noise(learner: SACLearner, below: UpdateFn) -> UpdateFn:
    """Noise from another stream than the learner's (a graph that baked in its capture's draws)."""
    generator = torch.Generator().manual_seed(99)

    def update(batch: Batch, want_conflicts: bool = False, *, noise: PolicyNoise | None = None):
        actor = learner.cadence().actor
        draw = lambda like: torch.randn((*like.shape[:-1], learner.agent.action_dim), generator=generator)  # noqa: E731
        return below(batch, want_conflicts, noise=PolicyNoise(draw(batch.next_obs), draw(batch.obs) if actor else None))

    return update


def run_updates(update: UpdateFn, learner: SACLearner, count: int) -> list[torch.Tensor]:
    results = [update(batch).critic_loss for batch in synthetic_batches(learner, count, 4)]
    return [*results, *(t.detach().clone() for t in learner.agent.state_dict().values())]


def test_a_passing_layer_is_used_and_the_run_goes_on_exactly_as_the_eager_one(capsys) -> None:
    """The check runs its updates on the learner itself, then puts everything back: parameters, Adam
    state, FAMO's logits and Adam, the generator, the update count. Training afterwards is bit for bit
    the eager learner's, over every cadence (actor every 2nd, target every 3rd update)."""
    learner, reference = setup("famo", *CADENCES)
    plain, _ = setup("famo", *CADENCES)
    choice = choose_update(learner, [layer("graph", static_graph)], 4, reference)
    assert choice.used == "graph" and isinstance(choice.update, GraphedUpdate)
    (verdict,) = choice.verdicts
    assert verdict.outcome == "on" and "6 updates and 4 cadence(s)" in verdict.reason, verdict.reason
    assert learner.num_updates == 0 and learner.generator.get_state().equal(plain.generator.get_state())
    got, want = run_updates(choice.update, learner, 7), run_updates(plain.update, plain, 7)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(learner.balancers["critic"].logits, plain.balancers["critic"].logits, rtol=0, atol=0)
    assert capsys.readouterr().err == ""


def test_a_layer_that_raises_falls_back_with_one_warning_line(capsys) -> None:
    """Defect 4 (torch.compile without a compiler toolchain raises at the first update) is a fallback:
    one warning line naming the layer and the reason; the graph is then checked over the eager update."""
    learner, reference = setup("mtsac")
    choice = choose_update(learner, [layer("compiled", raises), layer("graph", static_graph)], 4, reference)
    assert choice.used == "graph"
    assert [(v.layer, v.outcome) for v in choice.verdicts] == [("compiled", "fallback"), ("graph", "on")]
    warning = capsys.readouterr().err
    assert warning == (
        "warning: agent.compile=auto: the compiled update is off because it raised RuntimeError: InvalidCxxCompiler: "
        "No working C++ compiler found in torch._inductor.config.cpp.cxx; training goes on with the eager update.\n"
    )
    record = choice.record()
    assert record["used"] == "graph" and record["compiled"]["outcome"] == "fallback"
    assert "InvalidCxxCompiler" in record["compiled"]["reason"] and "\n" not in choice.line()


@pytest.mark.parametrize(
    "wrong, words",
    [
        (stale_batch, "critic loss of check update 2"),
        (no_target_update, "the change of critic_target."),
        (no_famo_update, "the change of balancer[critic].carried[0]"),
        (other_noise, "critic loss of check update 1"),
    ],
)
def test_a_layer_that_returns_a_wrong_result_falls_back(wrong, words: str, capsys) -> None:
    learner, reference = setup("famo", *CADENCES)
    plain, _ = setup("famo", *CADENCES)
    choice = choose_update(
        learner, [layer("graph", lambda lr, below: wrong(lr, static_graph(lr, below)))], 4, reference
    )
    assert choice.used == "eager" and choice.update == learner.update
    (verdict,) = choice.verdicts
    assert verdict.outcome == "fallback" and words in verdict.reason, verdict.reason
    warning = capsys.readouterr().err
    assert warning.startswith("warning: agent.cuda_graph=auto: the graph update is off because it disagrees with")
    assert warning.endswith("training goes on with the eager update.\n") and warning.count("\n") == 1
    for a, b in zip(run_updates(choice.update, learner, 3), run_updates(plain.update, plain, 3)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the failed check left nothing behind


@pytest.mark.parametrize("wrap", [raises, stale_batch])
def test_a_required_layer_that_fails_stops_in_one_sentence(wrap, capsys) -> None:
    learner, reference = setup("famo")
    before = {name: t.clone() for name, t in learner.agent.state_dict().items()}
    with pytest.raises(SpeedLayerError) as error:
        choose_update(
            learner, [layer("graph", lambda lr, below: wrap(lr, static_graph(lr, below)), True)], 4, reference
        )
    message = str(error.value)
    assert message.startswith("agent.cuda_graph=true requires the graph update, but it ")
    assert message.endswith(
        "; set agent.cuda_graph=auto to fall back to the eager update with a warning, or agent.cuda_graph=false."
    )
    assert "\n" not in message and capsys.readouterr().err == ""
    for name, value in learner.agent.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_a_compiled_layer_whose_compiler_fails_puts_the_eager_functions_back(monkeypatch, capsys) -> None:
    """The real compile layer, with torch.compile failing at the first call as it does without a toolchain."""

    def failing_compile(fn, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("torch._inductor.exc.InvalidCxxCompiler: No working C++ compiler found")

        return compiled

    monkeypatch.setattr(compiled_update.torch, "compile", failing_compile)
    learner, reference = setup("famo")
    layers = speed_layers(learner, True, False)
    assert [(lay.name, lay.on, lay.required) for lay in layers] == [("compiled", True, True), ("graph", False, False)]
    with pytest.raises(SpeedLayerError, match=r"^agent.compile=true requires the compiled update, but it raised"):
        choose_update(learner, layers, 4, reference)
    monkeypatch.setattr(compiled_update, "COMPILE_PAYS", {"cpu": True})  # auto: on, so a failure falls back
    choice = choose_update(learner, speed_layers(learner, "auto", False), 4, reference)
    assert choice.used == "eager" and choice.verdicts[0].outcome == "fallback"
    assert learner.td_target == learner.agent.td_target and learner.loss_fns["critic"] is not None
    assert choice.verdicts[1].reason == "agent.cuda_graph=false"
    assert capsys.readouterr().err.count("\n") == 1


def test_cadence_plan_covers_every_cadence_the_run_replays() -> None:
    assert cadence_plan(0, 1, 1) == [0, 1, 2]
    assert cadence_plan(5, 2, 3) == [5, 6, 7, 8, 9, 10]  # the run's own order, one period
    for first, actor, target in ((0, 97, 89), (1234, 100, 7), (3, 1, 1000), (10, 70, 70)):
        plan = cadence_plan(first, actor, target)
        got = {Cadence(n % actor == 0, n % target == 0) for n in plan}
        want = {Cadence(n % actor == 0, n % target == 0) for n in range(first, first + 2 * math.lcm(actor, target))}
        assert got == want and len(plan) <= 4 + 3 and min(plan) >= first, (plan, got, want)


def reachable(root: object) -> dict[str, torch.Tensor]:
    """Every tensor reachable from `root` through attributes, lists, tuples, dicts and optimizer state, by path."""
    found: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def walk(value: object, path: str) -> None:
        if isinstance(value, torch.Tensor):
            found.setdefault(path, value)
            return
        if id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type(None), torch.Generator)):
            return
        seen.add(id(value))
        if isinstance(value, torch.optim.Optimizer):
            walk(value.param_groups, f"{path}.param_groups")
            walk(list(value.state.values()), f"{path}.state")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")
        elif hasattr(value, "__dict__") and not callable(value):
            for key, item in vars(value).items():
                walk(item, f"{path}.{key}")

    walk(root, "balancer")
    return found


@pytest.mark.parametrize("name", graph_safe_names())
def test_graph_safe_balancers_declare_every_tensor_an_update_changes(name: str, monkeypatch) -> None:
    """A CUDA graph's capture restores in place what its warm-up changed, from `carried_state()`: a tensor
    an update changes that the balancer does not declare would keep the warm-up's values."""
    monkeypatch.setattr("mtrl_famo.balancers.base.reads_at_once", lambda values: False)  # CUDA's deferred checks
    balancer = make(name, 3)
    losses = [torch.tensor([1.0, 2.0, 3.0], requires_grad=True), torch.tensor([0.9, 1.5, 2.9])]
    balancer.weighted_loss(losses[0]).backward()  # first update: lazily created state counts as changed
    balancer.update(losses[0].detach(), losses[1])
    before = {path: tensor.detach().clone() for path, tensor in reachable(balancer).items()}
    identity = {path: id(tensor) for path, tensor in reachable(balancer).items()}
    balancer.weighted_loss(losses[1].requires_grad_()).backward()
    balancer.update(losses[1].detach(), torch.tensor([0.8, 1.4, 2.5]))
    tensors, optimizers = balancer.carried_state()
    # What `restore` puts back: the declared tensors, and the state (moments, step) of the declared optimizers.
    moments = [t for opt in optimizers for state in opt.state.values() for t in state.values() if torch.is_tensor(t)]
    declared = {id(t) for t in [*tensors, *moments]}
    for path, tensor in reachable(balancer).items():
        changed = path not in before or identity[path] != id(tensor) or not torch.equal(before[path], tensor.detach())
        if changed:
            assert id(tensor) in declared, (
                f"{name}: {path} changes on an update but carried_state() does not declare it"
            )


@pytest.mark.slow
def test_the_trainer_records_the_update_it_chose(tmp_path, monkeypatch, capsys) -> None:
    """summary.json, TensorBoard (text via the metrics module) and the progress bar say which update
    trained and why; a required layer that fails stops the run before anything is written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtrl_famo import tags
    from mtrl_famo import trainer as trainer_module

    monkeypatch.setattr(compiled_update.torch, "compile", lambda fn, **options: fn)  # a compiler that passes
    bars: list[str] = []
    real_tqdm = trainer_module.tqdm
    monkeypatch.setattr(trainer_module, "tqdm", lambda **kw: bars.append(kw["desc"]) or real_tqdm(**kw))
    run = tiny_trainer(tmp_path / "run", "steps=10", "eval.every=10", "agent.compile=true")
    summary = run.train()
    assert summary["update"]["used"] == "compiled" and summary["update"]["compiled"]["outcome"] == "on"
    assert summary["update"]["graph"] == {
        "setting": "auto",
        "outcome": "off",
        "reason": "agent.cuda_graph=auto is off on cpu",
    }
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["update"] == summary["update"]
    assert bars == ["update=compiled"]
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0}).Reload()
    (text,) = events.Tensors(f"{tags.UPDATE_LAYERS}/text_summary")
    assert text.tensor_proto.string_val[0].decode().startswith("update=compiled (compiled: on, agrees with the eager")

    def failing_compile(fn, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("no working C++ compiler")

        return compiled

    monkeypatch.setattr(compiled_update.torch, "compile", failing_compile)
    run.run_dir = tmp_path / "refused"  # the same trainer again (a second Metaworld build costs seconds)
    with pytest.raises(SpeedLayerError, match=r"agent\.compile=true requires the compiled update"):
        run.train()
    assert sorted(path.name for path in run.run_dir.iterdir()) == []  # nothing written
