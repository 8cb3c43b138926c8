"""What a run directory holds, named once for the trainer that writes it and the report that reads it."""

CONFIG_FILE = "config.yaml"  # the resolved config, written when the run starts
SUMMARY_FILE = "summary.json"  # written when the run reaches its requested steps
EVALUATIONS_DIR = "evaluations"  # python -m mtrl_famo.evaluate writes its tables here, never over a run file
