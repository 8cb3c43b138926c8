"""examples/supervised.py runs with every registered balancer in both data layouts, as a user runs it."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import pytest

from mtrl_famo.balancers import NAMES

from conftest import REPO

EXAMPLE = REPO / "examples" / "supervised.py"


@pytest.fixture(scope="module")
def supervised():
    """The example imported as a module (in-process: one interpreter for every balancer)."""
    spec = importlib.util.spec_from_file_location("supervised_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("layout", ["shared", "grouped"])
def test_every_balancer_trains_a_few_steps_and_prints_per_task_losses(supervised, layout, capsys) -> None:
    for name in NAMES:
        result = supervised.main(["--balancer", name, "--steps", "3", "--batch", "8", "--layout", layout])
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"balancer={name} layout={layout} steps=3")
        per_task = [line.split() for line in lines if line.split()[:1] == ["3"]]
        assert per_task and len(per_task[0]) >= 1 + supervised.K, lines  # the step, then one loss per task
        assert all(math.isfinite(v) for v in result["last"]), (name, result)
        assert result["last"] != result["first"], f"{name} did not move the model"
        if name == "famo":  # its after-step update is part of the loop: the weights leave 1/K
            assert max(abs(w - 1 / supervised.K) for w in result["weights"]) > 1e-4, result["weights"]


def test_bad_balancer_is_one_sentence_naming_the_choices(supervised, capsys) -> None:
    with pytest.raises(SystemExit) as exit_code:
        supervised.main(["--balancer", "famoo"])
    assert exit_code.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "'famoo'" in message
    assert all(name in message for name in NAMES)


@pytest.mark.slow
def test_runs_as_a_script_from_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--balancer", "famo", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loss / first loss:" in result.stdout
