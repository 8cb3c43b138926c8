"""Every TensorBoard tag name of a run, in one place: `mtrl_famo.metrics` writes them; the report, the
docs' tag list and the tests read them. Plain strings, no torch: `python -m mtrl_famo.report` imports
this module, and reading event files needs no training stack. (The gradient-conflict tags are
`balancer_prefix(loss) + "grad_" + field`, one per field of the statistics: `metrics.conflict_tags`.)

x-axis of every tag: environment steps per task.
"""

from __future__ import annotations

EVAL_SUCCESS = "eval/success_rate"  # mean over tasks; per task under f"{EVAL_SUCCESS}/<task>"
EVAL_RETURN = "eval/return"
TRAIN_SUCCESS = "train/success_rate"
TRAIN_RETURN = "train/return"
LOSS = {"critic_loss": "loss/critic", "actor_loss": "loss/actor", "alpha_loss": "loss/alpha"}
ALPHA = "alpha"  # per task: alpha/<task>
ENV_STEPS_PER_S = "perf/env_steps_per_s"
UPDATE_MS = "perf/update_ms"
UPDATE_LAYERS = "perf/update_layers"  # text: which update trains (eager, compiled, graph) and why
EVAL_VIDEO = "eval/video"  # per task: eval/video/<task>, an animated GIF (TensorBoard's images tab)


def balancer_prefix(loss: str) -> str:
    """`balancer/` for the critic (the loss every method balances), `balancer/<loss>/` for others."""
    return "balancer/" if loss == "critic" else f"balancer/{loss}/"


def weight_tag(loss: str) -> str:
    """Per-task weights, `<prefix>weight/<task>`: a loss-weighting balancer's loss weights, or a
    gradient method's mixing weights m of its last update (d = m^T G); mtsac's are 1/K for both."""
    return f"{balancer_prefix(loss)}weight"
