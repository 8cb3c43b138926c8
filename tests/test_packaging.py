"""Installed layout: agents/ and envs/ are importable only as mtrl_famo.agents and mtrl_famo.envs."""

from __future__ import annotations

import subprocess
import sys


def test_agents_and_envs_are_namespaced_and_not_top_level(tmp_path) -> None:
    # From a directory outside the repository, as another project would import them.
    code = (
        "import importlib.util, mtrl_famo.agents as a, mtrl_famo.envs as e\n"
        "assert a.__file__.endswith('agents/__init__.py') and e.__file__.endswith('envs/__init__.py')\n"
        "print(importlib.util.find_spec('agents'), importlib.util.find_spec('envs'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None"]
