"""Seeding and device choice."""

from __future__ import annotations

import random

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


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that drives all training randomness."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)
