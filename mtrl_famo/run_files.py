"""What a run directory holds, named once for the trainer that writes it and the report that reads it.

Kept free of heavy imports so that `mtrl_famo.report` can read runs without torch or Metaworld.
"""

CONFIG_FILE = "config.yaml"  # the resolved config, written when the run starts
SUMMARY_FILE = "summary.json"  # written when the run reaches its requested steps
EVAL_SUCCESS_TAG = "eval/success_rate"  # mean over tasks; per task under f"{EVAL_SUCCESS_TAG}/<task>"
