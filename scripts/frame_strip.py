"""A frame strip of an evaluation video, as the recorder renders it (docs/observability.png).

    python scripts/frame_strip.py                                  # pick-place-v3, writes docs/observability.png
    python scripts/frame_strip.py --task push-v3 --frames 6 --out /tmp/push.png -- video.camera=corner2

The policy is Metaworld's own scripted expert for the task (`metaworld.policies`), so the strip shows
a solved episode; the frames come from `mtrl_famo.video.VideoRecorder` with the configured `video.*`
settings (everything after `--` is a training override), exactly what eval.video=true records.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from mtrl_famo.config import compose
from mtrl_famo.envs.builder import METAWORLD_OBS_DIM
from mtrl_famo.video import VideoRecorder

DOCS = Path(__file__).resolve().parent.parent / "docs"


def strip(task: str, frames: int, steps: int, overrides: list[str]) -> np.ndarray:
    """`frames` evenly spaced frames of one recorded `steps`-step episode of `task`, side by side."""
    from metaworld.policies import ENV_POLICY_MAP

    env = ["env=custom", f"env.tasks=[{task}]", f"env.max_episode_steps={steps}"]
    config = compose(*env, "eval.video=true", *overrides)
    expert = ENV_POLICY_MAP[task]()
    recorder = VideoRecorder(config.env, config.seed, config.video)
    try:  # the expert reads Metaworld's 39 numbers, without the task one-hot
        episode = recorder.episodes(lambda obs: np.stack([expert.get_action(row[:METAWORLD_OBS_DIM]) for row in obs]))
    finally:
        recorder.close()
    chosen = episode[task][np.linspace(0, len(episode[task]) - 1, frames).round().astype(int)]
    return np.concatenate(list(chosen), axis=1)


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--task", default="pick-place-v3", help="a Metaworld v3 task with a scripted policy")
    parse.add_argument("--frames", type=int, default=6, help="frames in the strip")
    parse.add_argument("--steps", type=int, default=120, help="episode length (the expert needs about 100)")
    parse.add_argument("--out", type=Path, default=DOCS / "observability.png", help="the PNG to write")
    parse.add_argument("overrides", nargs="*", help="training overrides (after --), e.g. video.camera=corner2")
    args = parse.parse_args()
    image = Image.fromarray(strip(args.task, args.frames, args.steps, args.overrides))
    image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({image.width} x {image.height}, {args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
