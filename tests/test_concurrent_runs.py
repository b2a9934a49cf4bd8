"""benchmarks/concurrent_runs.py: K tiny train_step.py processes timed together on the CPU, and a failing one."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

TINY = ["--task", "sudoku", "--batch-size", "4", "--steps", "3", "--warmup", "1", "--dtype", "float32", "--arch",
        json.dumps(dict(hidden_size=32, num_heads=2, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1,
                        halt_max_steps=2, puzzle_emb_ndim=0))]


def concurrent_runs(*argv):
    return subprocess.run([sys.executable, "benchmarks/concurrent_runs.py", *argv], cwd=REPO_ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_are_timed_together_and_a_failure_is_one_line():
    result = concurrent_runs("--runs", "2", "--", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    timed, best = [json.loads(line) for line in result.stdout.splitlines()]
    assert timed["runs"] == 2 and len(timed["steps_per_second"]) == 2 and min(timed["steps_per_second"]) > 0
    assert timed["total_steps_per_second"] == pytest.approx(sum(timed["steps_per_second"]), abs=1e-3)
    assert timed["peak_memory_gib"] == [None, None] and timed["total_versus_first"] == 1.0
    assert best == {"best_runs": 2, "total_steps_per_second": timed["total_steps_per_second"]}

    failed = concurrent_runs("--runs", "1", "--", "--task", "nosuch")
    assert failed.returncode == 2 and failed.stdout == ""
    line, = failed.stderr.strip().splitlines()
    assert line.startswith("error: process 1 of 1 exited with status 2: error: argument --task: invalid choice")
