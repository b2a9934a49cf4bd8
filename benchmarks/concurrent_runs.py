"""How many training runs at once give one device the most steps per second in total:
`python benchmarks/concurrent_runs.py --runs 1 2 4 8 -- --task sudoku --batch-size 96`.

For each K of `--runs`, starts K processes of benchmarks/train_step.py with the arguments after `--`, all on
the same device (CUDA_VISIBLE_DEVICES as set, or `--gpu ID`). They wait for each other after their warm-up
(train_step.py's `--barrier-dir`), so all K time the same interval. Prints one JSON line per K: each
process's steps/s and peak memory, their total steps/s and that total against the first K's; then one line
naming the K with the most total steps/s, the `--runs-per-gpu` to give puzzle_tools/sweep.py for runs of
that shape. On the CPU the processes share the cores: set OMP_NUM_THREADS so that K of them do not
oversubscribe them. A quick CPU check:

    OMP_NUM_THREADS=1 python benchmarks/concurrent_runs.py --runs 1 2 -- --task sudoku --batch-size 4 \\
        --steps 5 --warmup 1 --dtype float32 \\
        --arch '{"hidden_size": 32, "num_heads": 2, "H_layers": 1, "L_layers": 1, "puzzle_emb_ndim": 0}'
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from command_line import OneLineArgumentParser, UserError, run_cli

TRAIN_STEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py")


class BenchmarkError(UserError):
    """A process that failed; the message names it and its last line of output."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4, 8], help="process counts K to time "
                                                                                  "(default: 1 2 4 8)")
    parser.add_argument("--gpu", default=None, help="the GPU to share (CUDA_VISIBLE_DEVICES of every process)")
    parser.add_argument("train_step_args", nargs="*", metavar="-- ARG",
                        help="arguments of benchmarks/train_step.py, the same for every process")
    args = parser.parse_args(argv)
    if min(args.runs) < 1:
        parser.error(f"--runs: each count must be at least 1, got {min(args.runs)}")
    return args


def last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def time_together(count: int, train_step_args: List[str], gpu: Optional[str]) -> dict:
    """Start `count` train_step.py processes at once and gather what each timed."""
    env = dict(os.environ) if gpu is None else dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
    with tempfile.TemporaryDirectory(prefix="concurrent_runs-") as folder:
        command = [sys.executable, TRAIN_STEP, *train_step_args, "--barrier-dir", folder,
                   "--barrier-size", str(count)]
        logs = [(os.path.join(folder, f"{i}.out"), os.path.join(folder, f"{i}.err")) for i in range(count)]
        processes = []
        for out_path, err_path in logs:
            with open(out_path, "w") as out, open(err_path, "w") as err:
                processes.append(subprocess.Popen(command, stdout=out, stderr=err, env=env))
        try:
            while any(p.poll() is None for p in processes):
                # One that failed would leave the others waiting for it at the barrier.
                failed = [i for i, p in enumerate(processes) if p.poll() not in (None, 0)]
                if failed:
                    break
                time.sleep(0.2)
            for i, process in enumerate(processes):
                if process.poll() not in (None, 0):
                    raise BenchmarkError(f"process {i + 1} of {count} exited with status {process.returncode}: "
                                         f"{last_line(logs[i][1])}")
            runs = [json.loads(last_line(out_path))["runs"] for out_path, _ in logs]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    timed = [run for process_runs in runs for run in process_runs]
    rates = [run["steps_per_second"] for run in timed]
    return dict(runs=count, steps_per_second=rates, total_steps_per_second=round(sum(rates), 3),
                peak_memory_gib=[run["peak_memory_gib"] for run in timed])


def main(argv=None) -> None:
    args = parse_args(argv)
    results = []
    for count in args.runs:
        result = time_together(count, args.train_step_args, args.gpu)
        # The total against the first count's, e.g. 1.6 when 4 runs at once do 1.6 times the work of 1.
        result["total_versus_first"] = round(result["total_steps_per_second"] /
                                             (results or [result])[0]["total_steps_per_second"], 3)
        results.append(result)
        print(json.dumps(result), flush=True)
    best = max(results, key=lambda result: result["total_steps_per_second"])
    print(json.dumps(dict(best_runs=best["runs"], total_steps_per_second=best["total_steps_per_second"])),
          flush=True)


if __name__ == "__main__":
    run_cli(main)
