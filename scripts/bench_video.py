"""What evaluation videos cost: one evaluation's wall time without and with its video recording.

    python scripts/bench_video.py                    # the default evaluation (MT10, 10 episodes of 500 steps)
    python scripts/bench_video.py --json -- video.shadows=true video.width=320 video.height=240
    python scripts/bench_video.py -- env=custom 'env.tasks=[reach-v3]' eval.episodes=1 env.max_episode_steps=20

Everything after `--` is a training override (the same config files and checks as the CLI; eval.video=true
is added). An untrained agent of the configured shape is evaluated by the very `Evaluator` a run
uses, on this machine's CPU with one torch thread (as the background evaluation worker does), and
then recorded with the configured `video.*` settings. Each is timed twice: the first call builds
its envs (the recorder also makes one GL context per task; a background evaluation worker does
that while it waits after its first evaluation), the second is what every later evaluation costs.
`ratio` = recording / evaluation, both steady state: what eval.video=true adds to an evaluation
that records (video.every spreads it over several evaluations).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from mtrl_famo.build import build_agent
from mtrl_famo.config import ConfigError, compose
from mtrl_famo.evaluator import Evaluator


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def measure(overrides: list[str]) -> dict[str, Any]:
    """Evaluate, evaluate again, record, record again; the wall times and the videos' sizes."""
    config = compose(*overrides, "eval.video=true", "device=cpu")
    torch.set_num_threads(1)
    device = torch.device("cpu")
    obs_dim, action_dim = config.env.dims()
    agent = build_agent(config.agent, obs_dim, action_dim, len(config.env.task_names()), device)
    evaluator = Evaluator(
        config.env,
        config.seed,
        config.eval.episodes,
        agent,
        device,
        protocol=config.eval.protocol,
        video=config.video,
    )
    try:
        eval_first_s, _ = timed(evaluator.run)
        eval_s, _ = timed(evaluator.run)
        video_first_s, _ = timed(evaluator.record)
        video_s, videos = timed(evaluator.record)
    finally:
        evaluator.close()
    video = config.video
    return {
        "env": config.env.name,
        "tasks": len(config.env.task_names()),
        "eval_episodes": config.eval.episodes,
        "max_episode_steps": config.env.max_episode_steps,
        "protocol": config.eval.protocol,
        "vector_strategy": config.env.vector_strategy,
        "video": {key: getattr(video, key) for key in ("tasks", "camera", "width", "height", "frame_stride", "fps")}
        | {"shadows": video.shadows, "reflections": video.reflections, "recorded_tasks": len(videos)},
        "frames_per_video": next(iter(videos.values())).num_frames,
        "eval_first_s": eval_first_s,
        "eval_s": eval_s,
        "video_first_s": video_first_s,
        "video_s": video_s,
        "ratio": video_s / eval_s,
        "ratio_first": video_first_s / eval_first_s,
        "mp4_kb_per_video": sum(len(v.mp4) for v in videos.values()) / 1024 / len(videos),
        "gif_kb_per_video": sum(len(v.gif) for v in videos.values()) / 1024 / len(videos),
    }


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--json", action="store_true", help="print the figures as JSON")
    parse.add_argument("overrides", nargs="*", help="training overrides (after --), e.g. video.width=320")
    args = parse.parse_args()
    try:
        row = measure(args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        print(json.dumps(row, indent=2))
        return
    print(
        f"{row['env']} ({row['tasks']} tasks), {row['eval_episodes']} episodes x {row['max_episode_steps']} steps "
        f"({row['protocol']}, {row['vector_strategy']}); video {row['video']}, {row['frames_per_video']} frames\n"
        f"evaluation {row['eval_s']:.1f} s (first {row['eval_first_s']:.1f} s), "
        f"recording {row['video_s']:.1f} s (first {row['video_first_s']:.1f} s)\n"
        f"ratio {row['ratio']:.2f} (first evaluation {row['ratio_first']:.2f}); "
        f"{row['mp4_kb_per_video']:.0f} KB mp4 and {row['gif_kb_per_video']:.0f} KB GIF per video"
    )


if __name__ == "__main__":  # the eval env's worker processes re-import this module
    main()
