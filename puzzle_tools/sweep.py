"""Run a grid of `pretrain.py` config overrides x seeds, one subprocess per run, and append one CSV row per
finished run; rerunning the same command resumes a cut-off sweep.

    python puzzle_tools/sweep.py --csv results.csv --grid arch.routing.controller=none,hrm \\
        --grid arch.routing.topk=null,4 --seeds 0 1 2 -- data=sudoku epochs=2000 eval_interval=1000

Each run is `python pretrain.py <overrides after --> <grid point> seed=<s> checkpoint_path=<runs-dir>/<config
id>_seed<s>`, run from the current folder with WANDB_MODE=disabled unless WANDB_MODE is set. The config id is
a readable slug of the grid point (`controller-hrm__topk-4`). Runs go one after another, seed by seed (so a
cut-off sweep has every grid point of the first seeds), or with `--gpus 0,1,...` one per GPU in parallel
(CUDA_VISIBLE_DEVICES per run). `--runs-per-gpu N` runs up to N at once on each listed GPU (or, without
`--gpus`, on the default device), for runs too small to fill a GPU alone; `benchmarks/concurrent_runs.py`
measures which N gives the most steps per second in total. When an `arch.routing.*` key is set and `arch=...`
is not, the arch config that adds a `routing` block to the default architecture (the config/arch file
extending it) is added, since the default's own file has no routing keys; `arch.routing.controller=none` is
then the plain default architecture.

The sweep dimensions of the PoH design notes ("does PoH routing help HRM?") as overrides:

    baseline vs routing     --grid arch.routing.controller=none,hrm
    inner iterations        --grid arch.L_cycles=1,2,4,8   (and arch.H_cycles=...; at least 1 cycle each)
    slow period T           --grid arch.routing.T=2,3,4,6,8
    top-k heads             --grid arch.routing.topk=null,1,2,4,8   (at most arch.num_heads)
    controller lr           --grid routing.controller_lr=5e-5,1e-4,2e-4,5e-4
    entropy weight          --grid routing.entropy_reg=0,5e-4,1e-3,2e-3,5e-3
    ACT vs fixed T          --grid arch.routing.controller=hrm_act,hrm

The architecture keys live under `arch.routing.`; how the controllers train (`controller_lr`,
`entropy_reg`, `temperature_init`, `warmup_epochs`, ...) under the top-level `routing.`. Runs of one seed
differ only by their controllers (the same initial weights for everything else, the same data order, the
same `routing.encoder_clip`), so compare arms seed by seed: `compare.py --paired`.

CSV columns, read from the run folder's metrics.jsonl and all_config.yaml:
  config_id, seed, one column per swept key (the value as given);
  train_time_s (wall time of the subprocess: start-up, data, training and evaluations);
  steps_per_s (median of the logged train/steps_per_second: the intervals holding compilation or an
  evaluation are outliers), tokens_per_s (median of train/tokens_per_second, else steps_per_s x
  global_batch_size x the dataset's seq_len), peak_gpu_mem_gib (largest train/peak_gpu_memory_gib; empty
  when not logged, as on the CPU);
  device: what the run trained on, torch.cuda.get_device_name() (e.g. "NVIDIA H200") or "cpu", asked of a
  short child process with the run's CUDA_VISIBLE_DEVICES (so the sweep itself holds no GPU); a CSV of an
  older sweep without this column is continued without it;
  routing_entropy, head_concentration (Herfindahl index), top1_share: means over both levels (H, L) of
  train/routing/{routing_entropy_mean,head_herfindahl,top1_share}_<level>, averaged over the last 5 logged
  train rows; n_H_updates: the controllers' slow updates per logged step, summed over the levels, averaged
  likewise (empty without routing, or for the classical controller);
  every metric of the last evaluation row (all/exact_accuracy, all/accuracy, all/lm_loss, all/steps, ...);
  fixed_overrides (the overrides after --, so rows of different settings never mix) and run_dir.

A (config id, seed) pair already in the CSV is skipped. A failed run is reported with the last line of its
stderr, recorded in its run folder's sweep_run.json (with sweep_stdout.log and sweep_stderr.log beside it)
and not appended; the exit status is then 1. A run folder left by an earlier, unfinished attempt of the same
sweep is cleared and run again; one that finished but whose row could not be written (a full disk) is not:
its row is taken from the folder. The CSV is checked to be writable before the first run. Bad flags, a CSV whose columns or fixed overrides differ from this sweep's,
or a run folder this sweep did not start are one `error:` line and exit status 2.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import functools
import io
import itertools
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from command_line import OneLineArgumentParser, UserError, exit_status, run_cli
from dataset.format import read_metadata
from models.routing import RoutingDiagnostics
from training.config import MAX_SEED
from training.metrics import TRAIN_PREFIX, logged_routing_levels, routing_metric_name
from dataset.text_file import FileReadError, csv_rows, read_json, read_yaml
from training.run_folder import (METRICS_FILE, FileWriteError, RunFolderError, append_text, read_config, read_metrics,
                                 write_text)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO_ROOT, "pretrain.py")

MARKER_FILE = "sweep_run.json"
STDOUT_LOG, STDERR_LOG = "sweep_stdout.log", "sweep_stderr.log"

# Keys every run sets itself, so they cannot be swept or fixed.
PER_RUN_KEYS = ("seed", "checkpoint_path")
CONFIG_DIR = os.path.join(REPO_ROOT, "config")
# Logged train rows whose routing diagnostics are averaged: the end of the run, smoothed over a few logs.
ROUTING_TAIL_ROWS = 5

MEASURED_COLUMNS = ("train_time_s", "steps_per_s", "tokens_per_s", "peak_gpu_mem_gib")
DEVICE_COLUMN = "device"
# What a run's device is called, printed by a child process that sees the run's CUDA_VISIBLE_DEVICES.
DEVICE_PROBE = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
ROUTING_COLUMNS = ("routing_entropy", "head_concentration", "top1_share", "n_H_updates")
TRAILING_COLUMNS = ("fixed_overrides", "run_dir")
# CSV column -> routing diagnostic (a RoutingDiagnostics field, logged per level) and how the levels combine.
ROUTING_SOURCES = {"routing_entropy": ("entropy_mean", "mean"),
                   "head_concentration": ("herfindahl", "mean"),
                   "top1_share": ("top1_share", "mean"),
                   "n_H_updates": ("slow_updates", "sum")}


class SweepError(UserError):
    """Bad flags, an incompatible CSV or a foreign run folder; the message names the flag, file or key."""


class RunFailure(Exception):
    """A run that exited with an error or left no usable metrics."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    config_id: str
    seed: int
    point: Dict[str, str]  # swept key -> value, as given on the command line
    overrides: Tuple[str, ...]  # everything pretrain.py gets
    run_dir: str


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    returncode: int
    wall_time_s: float
    stderr_tail: str
    device: str = ""  # the device's name (DEVICE_COLUMN), filled in by run_one


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", required=True, help="results file; rows are appended, existing (config, seed) "
                                                     "pairs skipped")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a swept config key and its values (repeat for more keys; the grid is their product)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of every grid point "
                                                                                "(default: 0 1 2)")
    parser.add_argument("--runs-dir", default=None,
                        help="parent of the run folders (default: checkpoints/sweep-<CSV file name without .csv>)")
    parser.add_argument("--gpus", default=None, metavar="0,1,...",
                        help="run in parallel, one run per listed GPU (default: one run at a time, "
                             "CUDA_VISIBLE_DEVICES untouched)")
    parser.add_argument("--runs-per-gpu", type=int, default=1, metavar="N",
                        help="run up to N runs at once on each GPU of --gpus (without --gpus: N at once on the "
                             "default device); default 1")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="start at most this many of the pending runs, then stop (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="print the pending runs' commands and exit")
    parser.add_argument("overrides", nargs="*", metavar="-- OVERRIDE",
                        help="config overrides shared by every run (after --), e.g. data=sudoku epochs=2000")
    return parser.parse_args(argv)


def split_values(text: str) -> List[str]:
    """Split `a,b,[c,d]` at the commas outside brackets, so list values like [inputs,logits] stay whole."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return values


def override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def parse_grid(grid_flags: Sequence[str]) -> Dict[str, List[str]]:
    grid: Dict[str, List[str]] = {}
    for flag in grid_flags:
        key, sep, text = flag.partition("=")
        values = split_values(text)
        if not sep or not key or not all(values):
            raise SweepError(f"--grid {flag!r}: expected KEY=V1,V2,... with non-empty values")
        if key in grid:
            raise SweepError(f"--grid {key}: the key is given twice; list all its values in one --grid")
        if key in PER_RUN_KEYS:
            raise SweepError(f"--grid {key}: set per run by the sweep (use --seeds, --runs-dir)")
        if len(set(values)) != len(values):
            raise SweepError(f"--grid {flag!r}: a value is listed twice")
        grid[key] = values
    return grid


def check_fixed_overrides(overrides: Sequence[str], grid: Dict[str, List[str]]) -> None:
    for override in overrides:
        key = override_key(override)
        if "=" not in override or not key:
            raise SweepError(f"override {override!r}: expected KEY=VALUE after --")
        if key in PER_RUN_KEYS:
            raise SweepError(f"override {override!r}: {key} is set per run by the sweep (use --seeds, --runs-dir)")
        if key in grid:
            raise SweepError(f"override {override!r}: {key} is also swept with --grid; give it in one place")


def routed_default_arch() -> str:
    """The arch config that routes the training config's default architecture: the config/arch file whose
    `defaults` extend that architecture and that sets `routing`."""
    training_defaults = read_yaml(os.path.join(CONFIG_DIR, "cfg_pretrain.yaml"), SweepError)["defaults"]
    default_arch = next(entry["arch"] for entry in training_defaults if isinstance(entry, dict) and "arch" in entry)
    arch_dir = os.path.join(CONFIG_DIR, "arch")
    for name in sorted(os.listdir(arch_dir)):
        arch = read_yaml(os.path.join(arch_dir, name), SweepError)
        if name.endswith(".yaml") and "routing" in arch and default_arch in arch.get("defaults", []):
            return name[:-len(".yaml")]
    raise SweepError(f"arch.routing.* is set, but no config/arch file adds routing to the default {default_arch!r}: "
                     "choose one with arch=...")


def routing_arch_overrides(overrides: Sequence[str], grid: Dict[str, List[str]]) -> List[str]:
    """The routed default architecture (`arch=...`) when routing keys are set and no arch is chosen: the default
    architecture's own file has no `arch.routing.*` keys."""
    keys = [override_key(o) for o in [*overrides, *grid]]
    if any(key.startswith("arch.routing.") for key in keys) and "arch" not in keys:
        return [f"arch={routed_default_arch()}"]
    return []


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def config_ids(grid: Dict[str, List[str]], points: List[Dict[str, str]]) -> List[str]:
    """A readable id per grid point: `<key>-<value>` joined by `__`, keys shortened to their last part when
    that stays unambiguous (`controller-hrm__topk-4`); `base` for the empty grid."""
    short = {key: key.rsplit(".", 1)[-1] for key in grid}
    if len(set(short.values())) != len(short):
        short = {key: key for key in grid}
    ids = ["__".join(f"{slug(short[k])}-{slug(v)}" for k, v in point.items()) or "base" for point in points]
    for (first, a), (second, b) in itertools.combinations(zip(points, ids), 2):
        if a == b:
            raise SweepError(f"--grid: the points {first} and {second} give the same config id {a!r}")
    return ids


def plan_runs(grid: Dict[str, List[str]], seeds: Sequence[int], fixed: Sequence[str], runs_dir: str) -> List[RunSpec]:
    """Every (grid point, seed), seed-major, with the overrides pretrain.py gets."""
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {' '.join(map(str, seeds))}: a seed is listed twice")
    check_fixed_overrides(fixed, grid)
    shared = routing_arch_overrides(fixed, grid) + list(fixed)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    ids = config_ids(grid, points)
    specs = []
    for seed in seeds:
        for config_id, point in zip(ids, points):
            run_dir = os.path.join(runs_dir, f"{config_id}_seed{seed}")
            overrides = (*shared, *(f"{k}={v}" for k, v in point.items()), f"seed={seed}", f"checkpoint_path={run_dir}")
            specs.append(RunSpec(config_id, seed, point, overrides, run_dir))
    return specs


def leading_columns(grid: Dict[str, List[str]]) -> List[str]:
    """Columns before the evaluation metrics, which are known only once a run has finished."""
    return ["config_id", "seed", *grid, *MEASURED_COLUMNS, DEVICE_COLUMN, *ROUTING_COLUMNS]


class ResultsCsv:
    """The results file: its header, the (config id, seed) pairs it holds, and row-by-row appends."""

    def __init__(self, path: str, grid: Dict[str, List[str]], fixed_overrides: str):
        self.path = path
        self.leading = leading_columns(grid)
        self.fixed_overrides = fixed_overrides
        self.header: Optional[List[str]] = None
        self.done: set = set()
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            self._read_existing()

    def _read_existing(self) -> None:
        rows = csv_rows(self.path, SweepError)
        header = next(rows, [])
        expected = self.leading + ["..."] + list(TRAILING_COLUMNS)
        without_device = [column for column in self.leading if column != DEVICE_COLUMN]
        if header[:len(without_device)] == without_device:
            self.leading = without_device  # an older sweep's CSV: its rows go on without the device column
        if header[:len(self.leading)] != self.leading or header[-len(TRAILING_COLUMNS):] != list(TRAILING_COLUMNS):
            raise SweepError(f"{self.path}: its columns ({','.join(header)}) differ from this sweep's "
                             f"({','.join(expected)}); use another --csv")
        for line, fields in enumerate(rows, start=2):
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise SweepError(f"{self.path}, row {line}: {len(fields)} fields, but the header has {len(header)}; "
                                 f"mend or remove the row")
            row = dict(zip(header, fields))
            if row["fixed_overrides"] != self.fixed_overrides:
                raise SweepError(f"{self.path}, row {line}: written with the overrides {row['fixed_overrides']!r}, "
                                 f"this sweep has {self.fixed_overrides!r}; use another --csv")
            self.done.add((row["config_id"], row["seed"]))
        self.header = header

    def check_writable(self) -> None:
        """Fail before the first run, not after it, when the file cannot be written (a missing or read-only
        folder, a path under a file)."""
        existed = os.path.exists(self.path)
        append_text(self.path, "")
        if not existed:
            os.remove(self.path)

    def has(self, spec: RunSpec) -> bool:
        return (spec.config_id, str(spec.seed)) in self.done

    def append(self, row: Dict[str, object]) -> None:
        """Append one row (header first if the file is new); a row needing other columns stops the sweep."""
        if DEVICE_COLUMN not in self.leading:
            row = {column: value for column, value in row.items() if column != DEVICE_COLUMN}
        eval_columns = sorted(set(row) - set(self.leading) - set(TRAILING_COLUMNS))
        needed = self.leading + eval_columns + list(TRAILING_COLUMNS)
        if self.header is not None and sorted(self.header) != sorted(needed):
            missing = sorted(set(needed) - set(self.header)) or sorted(set(self.header) - set(needed))
            raise SweepError(f"{self.path}: its columns differ from what run {row['run_dir']} needs "
                             f"(first difference: {missing[0]}); use another --csv")
        header = self.header or needed
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header)
        if self.header is None:
            writer.writeheader()
        writer.writerow(row)
        append_text(self.path, text.getvalue(), sync=True)  # the row whole or not at all
        self.header = header
        self.done.add((row["config_id"], str(row["seed"])))


def read_marker(run_dir: str) -> Optional[dict]:
    """The run folder's marker, or None where it has none or an unreadable one (it is then not this sweep's)."""
    try:
        marker = read_json(os.path.join(run_dir, MARKER_FILE))
    except FileReadError:
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(run_dir: str, marker: dict) -> None:
    write_text(os.path.join(run_dir, MARKER_FILE), json.dumps(marker, indent=1))


def check_run_folders(specs: Sequence[RunSpec], csv_path: str) -> None:
    """A pending run's folder may exist only as this sweep's own unfinished attempt (it is cleared then)."""
    for spec in specs:
        marker = read_marker(spec.run_dir)
        if os.path.exists(spec.run_dir) and (marker is None or marker.get("csv") != os.path.abspath(csv_path)):
            raise SweepError(f"run folder {spec.run_dir} exists and was not started by this sweep "
                             f"(its {MARKER_FILE} does not name {csv_path}); remove it or pass another --runs-dir")


def command_of(spec: RunSpec) -> List[str]:
    return [sys.executable, PRETRAIN, *spec.overrides]


def last_line(path: str) -> str:
    """The last non-empty line of a log; progress bars redraw with carriage returns, so those split too."""
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in re.split(r"[\r\n]", f.read()) if line.strip()]
    return lines[-1] if lines else ""


def run_environment(gpu: Optional[str]) -> Dict[str, str]:
    """The environment of a run on `gpu` (None: CUDA_VISIBLE_DEVICES as the sweep has it)."""
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


@functools.lru_cache(maxsize=None)
def device_name(gpu: Optional[str]) -> str:
    """The name of the device a run on `gpu` trains on ("" when the probe fails; the run will say why)."""
    probe = subprocess.run([sys.executable, "-c", DEVICE_PROBE], env=run_environment(gpu), capture_output=True,
                           text=True)
    return probe.stdout.strip() if probe.returncode == 0 else ""


def launch_run(spec: RunSpec, gpu: Optional[str]) -> RunOutcome:
    """Run pretrain.py for one spec, its output going to log files in the run folder."""
    env = run_environment(gpu)
    start = time.perf_counter()
    stderr_path = os.path.join(spec.run_dir, STDERR_LOG)
    with open(os.path.join(spec.run_dir, STDOUT_LOG), "w") as out, open(stderr_path, "w") as err:
        returncode = subprocess.run(command_of(spec), stdout=out, stderr=err, env=env).returncode
    return RunOutcome(returncode, time.perf_counter() - start, last_line(stderr_path))


def median_of(rows: Sequence[dict], key: str) -> Optional[float]:
    values = [row[key] for row in rows if key in row]
    return statistics.median(values) if values else None


def config_tokens_per_step(run_dir: str) -> Optional[int]:
    """global_batch_size x seq_len from the run's all_config.yaml and its dataset's metadata, if readable."""
    try:
        config = read_config(run_dir)
        return int(config["global_batch_size"]) * read_metadata(config["data_path"], "train").seq_len
    except (UserError, KeyError, TypeError, ValueError):
        return None


def logged_routing(row: dict, diagnostic: str) -> List[float]:
    """A train row's values of one routing diagnostic, one per level that logged it."""
    levels = logged_routing_levels((key[len(TRAIN_PREFIX):] for key in row if key.startswith(TRAIN_PREFIX)), diagnostic)
    return [row[TRAIN_PREFIX + routing_metric_name(diagnostic, level)] for level in levels]


def routing_summary(train_rows: Sequence[dict]) -> Dict[str, Optional[float]]:
    diagnostics = [f.name for f in dataclasses.fields(RoutingDiagnostics)]
    tail = [row for row in train_rows if any(logged_routing(row, d) for d in diagnostics)][-ROUTING_TAIL_ROWS:]
    summary: Dict[str, Optional[float]] = {}
    for column, (diagnostic, combine) in ROUTING_SOURCES.items():
        per_row = []
        for row in tail:
            levels = logged_routing(row, diagnostic)
            if levels:
                per_row.append(sum(levels) / (len(levels) if combine == "mean" else 1))
        summary[column] = statistics.fmean(per_row) if per_row else None
    return summary


def summarize_run(spec: RunSpec, outcome: RunOutcome, fixed_overrides: str) -> Dict[str, object]:
    """The CSV row of a finished run, from its metrics.jsonl (and all_config.yaml for tokens/s)."""
    metrics_path = os.path.join(spec.run_dir, METRICS_FILE)
    if not os.path.isfile(metrics_path):
        raise RunFailure(f"no {metrics_path}")
    try:
        rows = read_metrics(metrics_path)
    except RunFolderError as e:
        raise RunFailure(str(e)) from None
    train_rows = [row for row in rows if "train/lm_loss" in row]
    eval_rows = [row for row in rows
                 if any(k.endswith("/exact_accuracy") and not k.startswith("train/") for k in row)]
    if not eval_rows:
        raise RunFailure(f"{metrics_path} holds no evaluation row")
    steps_per_s = median_of(train_rows, "train/steps_per_second")
    tokens_per_s = median_of(train_rows, "train/tokens_per_second")
    if tokens_per_s is None and steps_per_s is not None:
        tokens_per_step = config_tokens_per_step(spec.run_dir)
        tokens_per_s = steps_per_s * tokens_per_step if tokens_per_step is not None else None
    peaks = [row["train/peak_gpu_memory_gib"] for row in rows if "train/peak_gpu_memory_gib" in row]
    row: Dict[str, object] = {"config_id": spec.config_id, "seed": spec.seed, **spec.point,
                              "train_time_s": round(outcome.wall_time_s, 3), "steps_per_s": steps_per_s,
                              "tokens_per_s": tokens_per_s, "peak_gpu_mem_gib": max(peaks) if peaks else None,
                              DEVICE_COLUMN: outcome.device,
                              **routing_summary(train_rows),
                              **{k: v for k, v in eval_rows[-1].items() if k != "step"},
                              "fixed_overrides": fixed_overrides, "run_dir": spec.run_dir}
    return {k: "" if v is None else v for k, v in row.items()}


Launcher = Callable[[RunSpec, Optional[str]], RunOutcome]


def run_one(spec: RunSpec, gpu: Optional[str], csv_path: str, launch: Launcher) -> RunOutcome:
    """Clear an unfinished earlier attempt, mark the folder as this sweep's, launch, record the outcome. A run
    that finished but whose row was not written (a full disk) is not trained again: its row is taken from
    its folder."""
    earlier = read_marker(spec.run_dir)
    if earlier is not None and earlier.get("status") == "finished":
        return RunOutcome(0, earlier["wall_time_s"], earlier["stderr_tail"], earlier.get("device", ""))
    if os.path.exists(spec.run_dir):
        shutil.rmtree(spec.run_dir)  # check_run_folders made sure it is this sweep's own unfinished attempt
    os.makedirs(spec.run_dir)
    marker = dict(csv=os.path.abspath(csv_path), config_id=spec.config_id, seed=spec.seed, gpu=gpu,
                  device=device_name(gpu), command=command_of(spec), status="running")
    write_marker(spec.run_dir, marker)
    outcome = dataclasses.replace(launch(spec, gpu), device=marker["device"])
    write_marker(spec.run_dir, dict(marker, status="finished" if outcome.returncode == 0 else "failed",
                                    returncode=outcome.returncode, wall_time_s=outcome.wall_time_s,
                                    stderr_tail=outcome.stderr_tail))
    return outcome


def record_run(spec: RunSpec, outcome: RunOutcome, results: ResultsCsv, fixed_overrides: str) -> None:
    """Append the row of a run that exited normally. One whose folder gives no row is marked failed, so that
    a rerun trains it again; a row that cannot be written stops the sweep, and a rerun takes it from the
    folder without training again."""
    if outcome.returncode != 0:
        raise RunFailure(f"exit status {outcome.returncode}: {outcome.stderr_tail}")
    try:
        row = summarize_run(spec, outcome, fixed_overrides)
    except RunFailure as e:
        write_marker(spec.run_dir, dict(read_marker(spec.run_dir) or {}, status="failed", failure=str(e)))
        raise
    try:
        results.append(row)
    except FileWriteError as e:
        raise SweepError(f"{e}; the run in {spec.run_dir} finished: rerun the same command to record its row "
                         f"(the run is not trained again)") from None


def run_sweep(specs: Sequence[RunSpec], results: ResultsCsv, fixed_overrides: str, slots: Sequence[Optional[str]],
              launch: Launcher) -> List[Tuple[RunSpec, str]]:
    """Run `specs`, one per free slot (each a GPU id, listed once per run it may take at a time, or None for
    the default device), appending each success to `results`; returns the failures."""
    free_gpus: "queue.Queue[Optional[str]]" = queue.Queue()
    for gpu in slots:
        free_gpus.put(gpu)

    def on_free_gpu(spec: RunSpec) -> RunOutcome:
        gpu = free_gpus.get()
        try:
            return run_one(spec, gpu, results.path, launch)
        finally:
            free_gpus.put(gpu)

    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool, \
            tqdm(total=len(specs), unit="run", desc="sweep") as progress:
        futures = {pool.submit(on_free_gpu, spec): spec for spec in specs}
        try:
            for future in concurrent.futures.as_completed(futures):
                spec = futures[future]
                try:
                    record_run(spec, future.result(), results, fixed_overrides)
                except (RunFailure, OSError) as e:  # OSError: the run folder or its logs could not be written
                    failures.append((spec, str(e)))
                    tqdm.write(f"failed: {spec.config_id} seed {spec.seed} ({e}); logs in {spec.run_dir}",
                               file=sys.stderr)
                progress.update(1)
        except BaseException:
            for future in futures:
                future.cancel()  # runs not yet started; the running ones finish and are redone on resume
            raise
    return failures


def plan_and_run(args: argparse.Namespace) -> int:
    grid = parse_grid(args.grid)
    csv_name = os.path.splitext(os.path.basename(args.csv))[0]
    runs_dir = args.runs_dir or os.path.join("checkpoints", f"sweep-{csv_name}")
    specs = plan_runs(grid, args.seeds, args.overrides, runs_dir)
    gpus: List[Optional[str]] = [None]
    if args.gpus is not None:
        gpus = args.gpus.split(",")
        if not all(gpus) or len(set(gpus)) != len(gpus):
            raise SweepError(f"--gpus {args.gpus!r}: expected distinct comma-separated GPU ids, e.g. 0,1")
    if args.runs_per_gpu < 1:
        raise SweepError(f"--runs-per-gpu must be at least 1, got {args.runs_per_gpu}")
    bad_seeds = [seed for seed in args.seeds if not 0 <= seed <= MAX_SEED]
    if bad_seeds:  # pretrain.py would refuse each run
        raise SweepError(f"--seeds must be in 0..{MAX_SEED} (2**63 - 1), got {' '.join(map(str, bad_seeds))}")
    if args.max_runs is not None and args.max_runs < 1:
        raise SweepError(f"--max-runs must be at least 1, got {args.max_runs}")
    fixed_overrides = " ".join(args.overrides)
    results = ResultsCsv(args.csv, grid, fixed_overrides)
    pending = [spec for spec in specs if not results.has(spec)]
    skipped = len(specs) - len(pending)
    pending = pending[:args.max_runs]
    if args.dry_run:
        for spec in pending:
            print(" ".join(command_of(spec)))
        return 0
    check_run_folders(pending, args.csv)
    if pending:
        results.check_writable()
    print(f"sweep: {len(specs)} runs ({len(specs) // len(args.seeds)} grid points x {len(args.seeds)} seeds), "
          f"{skipped} already in {args.csv}, {len(pending)} to run now", flush=True)
    slots = [gpu for gpu in gpus for _ in range(args.runs_per_gpu)]
    failures = run_sweep(pending, results, fixed_overrides, slots, launch_run)
    print(f"sweep: {len(pending) - len(failures)} runs finished, {len(failures)} failed"
          + (f" ({', '.join(f'{s.config_id} seed {s.seed}' for s, _ in failures)})" if failures else ""))
    return 1 if failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return exit_status(lambda: plan_and_run(args))
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume (finished runs are in {args.csv})", file=sys.stderr)
        return 130


if __name__ == "__main__":
    run_cli(main)
