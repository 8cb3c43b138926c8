"""The Hydra config tree, installed as the package `mtrl_famo.configs` (its YAML files are package data).

`CONFIG_DIR` is the one home of the config location: the directory holding `config.yaml` and its groups,
wherever the package lives (a checkout with an editable install, a wheel, an sdist or a git-URL install).
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
