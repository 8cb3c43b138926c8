"""Seeding, the process-wide RNG states a checkpoint carries, and device choice."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """`auto` means cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for but no CUDA device is available; use device=cpu or device=auto.")
    return device


def use_device(device: torch.device) -> None:
    """Make a CUDA device the current one. Streams, events, graph captures and capturable Adam's
    checks are made on the *current* device: with device=cuda:1 and cuda:0 current they would land
    on another device than the kernels (a capture fails, or records nothing and replays nothing)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that drives all training randomness."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Python, numpy, torch (CPU and CUDA) global states and the training generator's."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "generator_device": generator.device.type,
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def check_generator_device(state: dict[str, Any], generator: torch.Generator) -> None:
    """Refuse to continue a training stream on another device type than it was drawn on: a CPU and a
    CUDA generator have different states (5,056 bytes against 16) and different streams, so the
    continuation could not be exact. One sentence naming the device to resume with."""
    saved, current = state["generator_device"], generator.device.type
    if saved != current:
        raise ValueError(
            f"its training random stream was drawn on {saved} and this run is on {current}, where that stream "
            f"cannot continue exactly; resume with device={saved}, or use another run_dir for a new run"
        )


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
