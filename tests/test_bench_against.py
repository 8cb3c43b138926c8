"""scripts/bench_against.py times this working tree against a git revision, each in its own process."""

from __future__ import annotations

from conftest import run_script


def test_tiny_comparison_against_head_runs() -> None:
    """Both workers start (the revision's worker checks that it imported the extracted code) and time updates."""
    result = run_script(
        "bench_against.py",
        *("--rev", "HEAD", "--tasks", "3", "--hidden", "8", "--layers", "1", "--batch", "4"),
        *("--repeats", "2", "--warmup", "0", "--threads", "1", "--balancers", "mtsac", "pcgrad"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == ["mtsac", "pcgrad"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
    assert all(row[3].endswith("x") and row[6].endswith("x") for row in rows)
