"""What a run directory holds, named once for the trainer that writes it and the report that reads it."""

CONFIG_FILE = "config.yaml"  # the resolved config, written when the run starts
SUMMARY_FILE = "summary.json"  # written when the run reaches its requested steps
EVALUATIONS_DIR = "evaluations"  # python -m mtrl_famo.evaluate writes its tables here, never over a run file
VIDEOS_DIR = "videos"  # eval.video=true: <task>_step<N>.mp4 (python -m mtrl_famo.evaluate: evaluations/videos)
WANDB_RUN_ID_FILE = "wandb_run_id"  # wandb.enabled=true: the W&B run id, so a resumed run continues that run
