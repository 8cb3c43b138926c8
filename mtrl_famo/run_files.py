"""What a run directory holds, named once for the trainer that writes it and the report that reads it."""

CONFIG_FILE = "config.yaml"  # the resolved config, written when the run starts
SUMMARY_FILE = "summary.json"  # written when the run reaches its requested steps
EVALUATIONS_DIR = "evaluations"  # python -m mtrl_famo.evaluate writes its tables here, never over a run file

# Keys added for speed (issue 13), with what a config.yaml written before them is read as: the way
# every run worked then. They change no evaluation, so `python -m mtrl_famo.evaluate` fills them in.
SPEED_KEYS_OF_OLDER_RUNS = {
    "env.workers": "auto",
    "loop.overlap": False,
    "eval.background": False,
    "agent.compile": False,
    "agent.cuda_graph": False,
}

VIDEOS_DIR = "videos"  # eval.video=true: <task>_step<N>.mp4 (python -m mtrl_famo.evaluate: evaluations/videos)
WANDB_RUN_ID_FILE = "wandb_run_id"  # wandb.enabled=true: the W&B run id, so a resumed run continues that run
