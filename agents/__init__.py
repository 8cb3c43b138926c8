"""Multi-head SAC: networks (shared trunk + per-task heads) and per-task losses."""

from mtrl_famo.agents.networks import Actor, MultiHeadMLP, TwinCritic, is_task_specific
from mtrl_famo.agents.sac import MultiTaskSAC, actor_loss, alpha_loss, critic_loss

__all__ = [
    "Actor",
    "MultiHeadMLP",
    "MultiTaskSAC",
    "TwinCritic",
    "actor_loss",
    "alpha_loss",
    "critic_loss",
    "is_task_specific",
]
