"""Evaluate a run's latest checkpoint: `python -m mtrl_famo.evaluate <run_dir> [key=value ...] [--out PATH] [--json]`.

The run's own resolved config (`<run_dir>/config.yaml`) with dotted overrides applied, e.g.
`eval.protocol=metaworld eval.episodes=50 device=cpu`, validated as a training config is. Keys
that would change the agent the checkpoint holds (its tasks, one-hot input, heads, temperatures,
widths) are refused. Prints a per-task table (or `--json`) and writes the same figures as JSON to
`<run_dir>/evaluations/<protocol>_step<N>_episodes<E>.json` (or `--out`); no file of the run is
modified. Bad input is one sentence on stderr and exit status 2, before any work starts.

Only what evaluation needs is read: the actor's weights and the step count from the checkpoint file
(memory-mapped; the critics, optimiser state and the rest stay on disk), never the replay file, so a
run trained on a GPU node evaluates on a laptop, even without copying its `replay-*.pt`. The memory
check is evaluation's (the actor), not training's (replay, networks, update), and the training machine's
settings are not carried over (EVALUATION_SETTINGS: the device is this machine's `auto` unless
`device=...` is given; compile and CUDA graphs, which only speed up training, are off). The evaluation env is
built afresh from the run's seed, so a checkpoint evaluates the same however many evaluations the
run did before it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from omegaconf import OmegaConf

from mtrl_famo import checkpoint, preflight
from mtrl_famo.agents.networks import Actor
from mtrl_famo.atomic import write_text_atomic
from mtrl_famo.build import build_agent
from mtrl_famo.config import ConfigError, MissingKeyError, TrainConfig, from_dict, keys_with_role
from mtrl_famo.evaluator import Evaluator
from mtrl_famo.run_files import CONFIG_FILE, EVALUATIONS_DIR, VIDEOS_DIR
from mtrl_famo.seeding import resolve_device
from mtrl_famo.video import video_path, write_video

# Config keys whose value fixes the agent's shape or the meaning of its rows (task i = row i): the
# schema's `shape` role (mtrl_famo.config).
SHAPE_KEYS = keys_with_role("shape")

# Settings of the machine a run trained on, replaced for evaluation before the overrides are applied.
# Evaluation records no video unless `eval.video=true` is given (then into evaluations/videos/), and logs to no W&B run.
EVALUATION_SETTINGS = {
    "device": "auto",
    "agent.compile": False,
    "agent.cuda_graph": False,
    "eval.video": False,
    "wandb.enabled": False,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one sentence and exit 2 like every other bad input
        raise ConfigError(f"{message[0].upper()}{message[1:]}; see python -m mtrl_famo.evaluate --help.")


def parser() -> argparse.ArgumentParser:
    parse = _Parser(
        prog="python -m mtrl_famo.evaluate",
        description="Evaluate the latest checkpoint of a training run under a chosen protocol.",
    )
    parse.add_argument("run_dir", type=Path, help="a run directory written by python -m mtrl_famo.train")
    parse.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="key=value",
        help="changes to the run's config.yaml, e.g. eval.protocol=metaworld eval.episodes=50 device=cpu",
    )
    parse.add_argument("--out", type=Path, help=f"where to write the JSON (default: <run_dir>/{EVALUATIONS_DIR}/...)")
    parse.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    return parse


def _get(cfg: dict[str, Any], key: str, add: bool) -> tuple[dict[str, Any], str]:
    """The mapping that holds dotted `key` in `cfg`, and the key's last part; ConfigError if absent
    (unless `add`: a new key in an existing group, Hydra's `+key=value`)."""
    *parents, leaf = key.split(".")
    node = cfg
    for depth, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            raise ConfigError(
                f"Unknown config key {key}: the run's {CONFIG_FILE} has no group {'.'.join(parents[: depth + 1])}."
            )
        node = node[part]
    if leaf not in node and not add:
        where = f" under {'.'.join(parents)}" if parents else ""
        raise ConfigError(f"Unknown config key {key}; valid keys{where} are {', '.join(map(str, node))}.")
    return node, leaf


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`cfg` with each `key=value` applied (values read as YAML, as Hydra reads them; `+key=value`
    adds a key an older run's config lacks); refuses unknown keys and changes to SHAPE_KEYS in one sentence."""
    for override in overrides:
        key, sep, text = override.partition("=")
        add = key.startswith("+")
        key = key.removeprefix("+")
        if not sep or not key:
            raise ConfigError(f"Override '{override}' is not of the form key=value, e.g. eval.protocol=metaworld.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"The value of {key} ('{text}') cannot be read; quote it or fix its brackets.") from None
        node, leaf = _get(cfg, key, add)
        if isinstance(node.get(leaf), dict):
            raise ConfigError(
                f"{key} is a group of keys ({', '.join(map(str, node[leaf]))}), not a value; override one of them "
                f"as {key}.<key>=<value>."
            )
        # A key of a shape section counts too (agent.network.num_experts: agent.network is a shape key).
        if any(key == shape or key.startswith(f"{shape}.") for shape in SHAPE_KEYS) and value != node.get(leaf):
            raise ConfigError(
                f"{key}={text} would not fit the agent in the checkpoint, which was trained with {key}={node[leaf]}; "
                "drop that override."
            )
        node[leaf] = value
    return cfg


@dataclass(frozen=True)
class Policy:
    """What evaluation needs of a trained agent (the evaluator's HasActor): its actor."""

    actor: Actor


def load_actor(config: TrainConfig, agent_state: dict[str, torch.Tensor], device: torch.device) -> Actor:
    """The checkpoint's actor alone on `device`: the agent is built as training builds it, but on the meta
    device (no memory, no initialisation), and only its actor is materialised and given the weights."""
    obs_dim, action_dim = config.env.dims()
    with torch.device("meta"):  # built there, not built elsewhere and moved
        meta = build_agent(config.agent, obs_dim, action_dim, len(config.env.task_names()), torch.device("meta"))
    actor = meta.actor.to_empty(device=device)
    prefix = "actor."
    actor.load_state_dict({key[len(prefix) :]: value for key, value in agent_state.items() if key.startswith(prefix)})
    return actor


@dataclass
class Request:
    """A checked evaluation request: the config, and the checkpoint's actor with its weights loaded."""

    run_dir: Path
    config: TrainConfig
    overrides: list[str]
    agent: Policy
    device: torch.device
    env_step: int  # of the checkpoint, per task
    out: Path
    as_json: bool


def check(argv: list[str]) -> Request:
    """Parse and check everything (ConfigError naming the problem); nothing is written but the
    output's folder."""
    args = parser().parse_intermixed_args(argv)
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        problem = "is not a directory" if run_dir.exists() else "does not exist"
        raise ConfigError(f"Run directory {run_dir} {problem}; pass the run_dir of a training run.")
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} holds no {CONFIG_FILE}; pass the run_dir of a training run (it writes one).")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    except Exception as error:
        raise ConfigError(f"{config_path} cannot be read ({type(error).__name__}); restore it from the run.") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{config_path} is not a config (a mapping of keys); restore it from the run.")
    for key, value in EVALUATION_SETTINGS.items():  # e.g. device=cuda of a GPU node, on a laptop
        *group, leaf = key.split(".")
        (saved.setdefault(group[0], {}) if group else saved)[leaf] = value
    try:
        config = from_dict(apply_overrides(saved, list(args.overrides)))
    except MissingKeyError as error:  # overrides cannot remove a key: the saved config lacks it
        raise ConfigError(
            f"{config_path} lacks {error.key}: the run was written by an older version of mtrl_famo, whose runs "
            "this version does not read; evaluate it with that version, or train it again with this one."
        ) from None
    preflight.check(config, "evaluate")
    try:
        state = checkpoint.load_latest(run_dir, map_location="cpu", replay=False)
    except checkpoint.CheckpointError as error:
        raise ConfigError(str(error)) from None
    if state is None:
        raise ConfigError(f"{run_dir} holds no checkpoint ({checkpoint.LATEST}); evaluate a run that has saved one.")
    device = resolve_device(config.device)
    try:
        agent = Policy(load_actor(config, state["agent"], device))
    except (KeyError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"The checkpoint in {run_dir} does not fit its {CONFIG_FILE} ({first_line}).") from None
    env_step = int(state["collector"]["env_step"])
    out = args.out or (
        run_dir / EVALUATIONS_DIR / f"{config.eval.protocol}_step{env_step}_episodes{config.eval.episodes}.json"
    )
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; pass the path of the JSON file to write.")
    try:
        preflight.check_run_dir(str(out.parent))
    except ConfigError:
        raise ConfigError(
            f"{out} cannot be written (its folder cannot be created or written); pass --out PATH."
        ) from None
    return Request(run_dir, config, list(args.overrides), agent, device, env_step, out, args.json)


def evaluate(request: Request) -> dict[str, Any]:
    """Evaluate the checkpoint's agent under the requested protocol; returns what the JSON holds. With
    `eval.video=true` also records it, into `videos/<task>_step<N>.mp4` beside the JSON."""
    config = request.config
    evaluator = Evaluator(
        config.env,
        config.seed,
        config.eval.episodes,
        request.agent,
        request.device,
        protocol=config.eval.protocol,
        video=config.video if config.eval.video else None,
    )
    videos = {}
    try:
        result = evaluator.run()
        if config.eval.video:
            for task, video in evaluator.record().items():
                videos[task] = video_path(request.out.parent / VIDEOS_DIR, task, request.env_step)
                write_video(videos[task], video)
    finally:
        evaluator.close()
    return {
        "run_dir": str(request.run_dir),
        "env_step": request.env_step,
        "protocol": config.eval.protocol,
        "episodes_per_task": config.eval.episodes,
        "seed": config.seed,
        "overrides": request.overrides,
        "mean_success_rate": result.mean_success_rate,
        "mean_return": float(result.mean_return.mean()),
        "tasks": [
            {"task": name, "success_rate": float(success), "mean_return": float(ret)}
            for name, success, ret in zip(result.task_names, result.success_rate, result.mean_return)
        ],
        **({"videos": {task: str(path) for task, path in videos.items()}} if videos else {}),
    }


def table(report: dict[str, Any]) -> str:
    """The per-task table and its mean, headed by what was evaluated how."""
    rows = [(row["task"], row["success_rate"], row["mean_return"]) for row in report["tasks"]]
    rows.append(("mean", report["mean_success_rate"], report["mean_return"]))
    width = max(len("task"), *(len(name) for name, _, _ in rows))
    lines = [
        f"{report['run_dir']}: checkpoint at {report['env_step']} environment steps per task",
        f"protocol {report['protocol']}, {report['episodes_per_task']} episodes per task, seed {report['seed']}",
        f"{'task':<{width}}  success rate  mean return",
        *(f"{name:<{width}}  {success:>12.3f}  {ret:>11.2f}" for name, success, ret in rows),
    ]
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: bad input, nothing evaluated or written)."""
    try:
        request = check(sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = evaluate(request)
    text = json.dumps(report, indent=2) + "\n"
    write_text_atomic(request.out, text)
    if request.as_json:
        print(text, end="")
    else:
        print(f"{table(report)}\nwrote {request.out}")
    return 0


def main() -> None:
    sys.exit(cli())


if __name__ == "__main__":
    main()
