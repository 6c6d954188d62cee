"""The one-shot GPU check (benchmarks/gpu_check.py) runs its code at CPU-test size."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_at_tiny_size():
    # One iteration row (its env has the cameras) and the state simulator row: the rgb simulator
    # row runs the same code with another obs_mode and two more rgb env processes (12-45 s each
    # here to start their software renderer, by load).
    pytest.importorskip("mani_skill", reason="ManiSkill is not installed: run scripts/setup_maniskill.sh")
    out = subprocess.run(
        [sys.executable, "gpu_check.py", "--tiny", "--only", "pi05-noise-64,maniskill-state"],
        cwd=os.path.join(REPO, "benchmarks"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == ["| pi05-noise-64", "| maniskill-state"]
    for row, keys in zip(rows, ITERATION_KEYS_AND_MANISKILL_KEYS, strict=True):
        figures = dict(cell.rsplit(" ", 1) for cell in row.split(" | ")[1].split(", "))
        assert list(figures) == keys and all(float(v) > 0 for v in figures.values()), row


ITERATION_KEYS_AND_MANISKILL_KEYS = [
    ["learner GiB", "env runner GiB", "learner samples/s", "env steps/s", "build s"],
    ["raw env steps/s", "RLlib env steps/s", "RLlib / raw"],
]
