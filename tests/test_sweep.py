"""puzzle_tools/sweep.py: grid expansion, CSV rows from a run folder, skip-and-resume, failures, parallel slots
(several runs per GPU), the device column, and a real tiny CPU sweep that is cut off and resumed."""
import collections
import csv
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO_ROOT
from dataset.format import PuzzleDatasetMetadata
from puzzle_tools import compare, sweep
from tiny_runs import TINY_OVERRIDES

GRID = ["--grid", "arch.routing.controller=none,hrm"]
EVAL_KEYS = ["all/exact_accuracy", "all/lm_loss"]


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_grid_expands_seed_major_with_readable_ids_and_the_routing_arch():
    grid = sweep.parse_grid(["arch.routing.controller=none,hrm", "arch.routing.topk=null,4"])
    specs = sweep.plan_runs(grid, [0, 1], ["data=sudoku"], "runs")
    assert [(s.config_id, s.seed) for s in specs] == [
        ("controller-none__topk-null", 0), ("controller-none__topk-4", 0),
        ("controller-hrm__topk-null", 0), ("controller-hrm__topk-4", 0),
        ("controller-none__topk-null", 1), ("controller-none__topk-4", 1),
        ("controller-hrm__topk-null", 1), ("controller-hrm__topk-4", 1)]
    assert specs[5].point == {"arch.routing.controller": "none", "arch.routing.topk": "4"}
    assert specs[5].overrides == ("arch=hrm_poh", "data=sudoku", "arch.routing.controller=none", "arch.routing.topk=4",
                                  "seed=1", "checkpoint_path=runs/controller-none__topk-4_seed1")
    # An arch chosen by the user is kept; training-side routing keys need no routed arch.
    assert sweep.plan_runs(grid, [0], ["arch=hrm_v1"], "runs")[0].overrides[0] == "arch=hrm_v1"
    lr_grid = sweep.parse_grid(["routing.controller_lr=1e-4,3e-4"])
    assert sweep.plan_runs(lr_grid, [0], [], "r")[0].overrides == (
        "routing.controller_lr=1e-4", "seed=0", "checkpoint_path=r/controller_lr-1e-4_seed0")
    # Last parts that clash give full keys; list values keep their commas; no grid is one "base" point.
    clash = sweep.parse_grid(["a.x=1,2", "b.x=[p,q]"])
    assert clash == {"a.x": ["1", "2"], "b.x": ["[p,q]"]}
    assert [s.config_id for s in sweep.plan_runs(clash, [0], [], "r")] == ["a.x-1__b.x-_p_q_", "a.x-2__b.x-_p_q_"]
    assert [s.config_id for s in sweep.plan_runs({}, [3], [], "r")] == ["base"]


@pytest.mark.parametrize("argv, message", [
    (["--grid", "arch.L_cycles"], "error: --grid 'arch.L_cycles': expected KEY=V1,V2,... with non-empty values"),
    (["--grid", "a=1,"], "error: --grid 'a=1,': expected KEY=V1,V2,... with non-empty values"),
    (["--grid", "seed=1,2"], "error: --grid seed: set per run by the sweep (use --seeds, --runs-dir)"),
    (["--grid", "a=1", "--grid", "a=2"], "error: --grid a: the key is given twice; list all its values in one --grid"),
    (["--grid", "a=1,1"], "error: --grid 'a=1,1': a value is listed twice"),
    (["--grid", "a=1", "--", "a=2"], "error: override 'a=2': a is also swept with --grid; give it in one place"),
    (["--", "checkpoint_path=x"],
     "error: override 'checkpoint_path=x': checkpoint_path is set per run by the sweep (use --seeds, --runs-dir)"),
    (["--", "data"], "error: override 'data': expected KEY=VALUE after --"),
    (["--seeds", "0", "0"], "error: --seeds 0 0: a seed is listed twice"),
    (["--gpus", "0,,1"], "error: --gpus '0,,1': expected distinct comma-separated GPU ids, e.g. 0,1"),
    (["--max-runs", "0"], "error: --max-runs must be at least 1, got 0"),
    (["--runs-per-gpu", "0"], "error: --runs-per-gpu must be at least 1, got 0"),
    (["--seeds", "0", "data=x"], "error: argument --seeds: invalid int value: 'data=x'"),  # forgot the --
    (["--seeds", "1", "-1"], "error: --seeds must be in 0..9223372036854775807 (2**63 - 1), got -1"),  # no run starts
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, argv, message):
    try:
        code = sweep.main(["--csv", str(tmp_path / "r.csv"), *argv])
    except SystemExit as e:  # argparse's own checks exit
        code = e.code
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not (tmp_path / "r.csv").exists()


class StubRuns:
    """Stands in for pretrain.py: writes a run folder with known metrics and records each launch."""

    def __init__(self, tmp_path, fail=(), sleep=0.0):
        self.data_path = tmp_path / "data"
        (self.data_path / "train").mkdir(parents=True)
        metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=9,
                                         num_puzzle_identifiers=1, total_groups=1, mean_puzzle_examples=1, sets=["all"])
        (self.data_path / "train" / "dataset.json").write_text(metadata.model_dump_json())
        self.fail = set(fail)  # (controller, seed) pairs exiting with an error
        self.sleep = sleep
        self.launched = []
        self.busy_gpus = set()
        self.lock = threading.Lock()
        self.clash = False

    def __call__(self, spec, gpu):
        with self.lock:
            self.clash |= gpu in self.busy_gpus
            self.busy_gpus.add(gpu)
            self.launched.append((spec.config_id, spec.seed, gpu))
        # The folder was cleared of any earlier attempt and holds only the sweep's marker.
        assert os.listdir(spec.run_dir) == [sweep.MARKER_FILE]
        time.sleep(self.sleep)
        controller = spec.point["arch.routing.controller"]
        rows = []
        for i in range(7):
            row = {"step": i + 1, "train/lm_loss": 2.0 - 0.1 * i,
                   "train/steps_per_second": [1, 10, 11, 12, 13, 14, 100][i]}
            if controller == "hrm":
                row.update({"train/routing/routing_entropy_mean_H": 0.1 * i,
                            "train/routing/routing_entropy_mean_L": 0.1 * i + 0.2,
                            "train/routing/head_herfindahl_H": 0.5, "train/routing/head_herfindahl_L": 0.7,
                            "train/routing/top1_share_H": 0.6, "train/routing/top1_share_L": 0.8,
                            "train/routing/n_H_updates_H": i, "train/routing/n_H_updates_L": 2 * i})
            if spec.seed == 1:  # the throughput keys newer runs log
                row.update({"train/tokens_per_second": 50.0 * row["train/steps_per_second"],
                            "train/peak_gpu_memory_gib": [1.0, 2.5, 2.0, 1.0, 1.0, 1.0, 1.0][i]})
            rows.append(row)
            if i == 3:
                rows.append({"step": 4, "all/exact_accuracy": 0.125, "all/lm_loss": 9.0})
        rows.append({"step": 7, "all/exact_accuracy": 0.5 + spec.seed / 10, "all/lm_loss": 1.5})
        with open(os.path.join(spec.run_dir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        with open(os.path.join(spec.run_dir, "all_config.yaml"), "w") as f:
            yaml.safe_dump({"global_batch_size": 4, "data_path": str(self.data_path)}, f)
        with self.lock:
            self.busy_gpus.discard(gpu)
        failed = (controller, spec.seed) in self.fail
        return sweep.RunOutcome(1 if failed else 0, 3.25, "RuntimeError: boom" if failed else "")


def fake_device_name(gpu):
    return "cpu" if gpu is None else f"GPU {gpu}"


def run_main(monkeypatch, stub, tmp_path, *extra):
    monkeypatch.setattr(sweep, "launch_run", stub)
    monkeypatch.setattr(sweep, "device_name", fake_device_name)
    return sweep.main(["--csv", str(tmp_path / "r.csv"), "--runs-dir", str(tmp_path / "runs"), *GRID,
                       "--seeds", "0", "1", *extra, "--", "data=x", "epochs=2"])


def test_rows_come_from_the_run_folder_and_a_cut_off_sweep_resumes(tmp_path, monkeypatch):
    stub = StubRuns(tmp_path)
    assert run_main(monkeypatch, stub, tmp_path, "--max-runs", "3") == 0
    assert [(c, s) for c, s, _ in stub.launched] == [
        ("controller-none", 0), ("controller-hrm", 0), ("controller-none", 1)]
    header, rows = read_csv(tmp_path / "r.csv")
    assert header == ["config_id", "seed", "arch.routing.controller", "train_time_s", "steps_per_s", "tokens_per_s",
                      "peak_gpu_mem_gib", "device", "routing_entropy", "head_concentration", "top1_share",
                      "n_H_updates", *EVAL_KEYS, "fixed_overrides", "run_dir"]
    assert [row["device"] for row in rows] == ["cpu"] * 3
    none0, hrm0, none1 = rows
    assert none0["config_id"] == "controller-none" and none0["arch.routing.controller"] == "none"
    assert none0["fixed_overrides"] == "data=x epochs=2"
    assert none0["run_dir"] == str(tmp_path / "runs" / "controller-none_seed0")
    assert float(none0["train_time_s"]) == 3.25
    assert float(none0["steps_per_s"]) == 12  # median of 1, 10, 11, 12, 13, 14, 100
    assert float(none0["tokens_per_s"]) == 12 * 4 * 9  # steps/s x global_batch_size x seq_len
    assert none0["peak_gpu_mem_gib"] == ""  # not logged
    assert [none0[c] for c in sweep.ROUTING_COLUMNS] == ["", "", "", ""]
    # The last evaluation row, not the one at step 4.
    assert float(none0["all/exact_accuracy"]) == 0.5 and float(none0["all/lm_loss"]) == 1.5
    # Last 5 train rows (i = 2..6): entropy (0.1 i + 0.1) -> 0.5; Herfindahl (0.5 + 0.7) / 2; top-1 (0.6 + 0.8) / 2;
    # slow updates i + 2 i summed over the levels -> 12.
    assert float(hrm0["routing_entropy"]) == pytest.approx(0.5)
    assert float(hrm0["head_concentration"]) == pytest.approx(0.6)
    assert float(hrm0["top1_share"]) == pytest.approx(0.7)
    assert float(hrm0["n_H_updates"]) == pytest.approx(12)
    assert float(none1["tokens_per_s"]) == 600 and float(none1["peak_gpu_mem_gib"]) == 2.5  # logged values win
    assert float(none1["all/exact_accuracy"]) == pytest.approx(0.6)

    assert run_main(monkeypatch, stub, tmp_path) == 0  # resumes: only the missing run
    assert [(c, s) for c, s, _ in stub.launched[3:]] == [("controller-hrm", 1)]
    assert run_main(monkeypatch, stub, tmp_path) == 0  # nothing left
    assert len(stub.launched) == 4
    _, rows = read_csv(tmp_path / "r.csv")
    assert sorted((r["config_id"], r["seed"]) for r in rows) == [
        ("controller-hrm", "0"), ("controller-hrm", "1"), ("controller-none", "0"), ("controller-none", "1")]
    with open(tmp_path / "runs" / "controller-hrm_seed1" / sweep.MARKER_FILE) as f:
        assert json.load(f)["status"] == "finished"


def test_a_failed_run_is_reported_and_recorded_not_appended_then_retried(tmp_path, monkeypatch, capsys):
    assert run_main(monkeypatch, StubRuns(tmp_path, fail={("hrm", 1)}), tmp_path) == 1
    captured = capsys.readouterr()
    run_dir = tmp_path / "runs" / "controller-hrm_seed1"
    assert (f"failed: controller-hrm seed 1 (exit status 1: RuntimeError: boom); logs in {run_dir}"
            in captured.err.splitlines())
    assert captured.out.strip().splitlines()[-1] == "sweep: 3 runs finished, 1 failed (controller-hrm seed 1)"
    with open(run_dir / sweep.MARKER_FILE) as f:
        marker = json.load(f)
    assert (marker["status"], marker["returncode"], marker["stderr_tail"]) == ("failed", 1, "RuntimeError: boom")
    assert len(read_csv(tmp_path / "r.csv")[1]) == 3

    retry = StubRuns(tmp_path / "retry")
    assert run_main(monkeypatch, retry, tmp_path) == 0  # the failed attempt's folder is cleared and rerun
    assert [(c, s) for c, s, _ in retry.launched] == [("controller-hrm", 1)]
    assert len(read_csv(tmp_path / "r.csv")[1]) == 4


def test_a_run_without_an_evaluation_is_a_failure(tmp_path, monkeypatch, capsys):
    launches = []

    def no_eval(spec, gpu):
        launches.append(spec.run_dir)
        with open(os.path.join(spec.run_dir, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 1, "train/lm_loss": 1.0}) + "\n")
        return sweep.RunOutcome(0, 1.0, "")

    assert run_main(monkeypatch, no_eval, tmp_path, "--max-runs", "1") == 1
    metrics = tmp_path / "runs" / "controller-none_seed0" / "metrics.jsonl"
    assert f"failed: controller-none seed 0 ({metrics} holds no evaluation row); logs in {metrics.parent}" in \
        capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()
    assert run_main(monkeypatch, no_eval, tmp_path, "--max-runs", "1") == 1
    assert len(launches) == 2  # marked failed, so trained again rather than taken as finished
    with open(metrics.parent / sweep.MARKER_FILE) as f:
        assert json.load(f)["status"] == "failed"


def test_an_incompatible_csv_or_a_foreign_run_folder_stops_before_any_run(tmp_path, monkeypatch, capsys):
    stub = StubRuns(tmp_path)
    (tmp_path / "r.csv").write_text("config_id,seed,arch.routing.T,train_time_s\nT-2,0,2,1.0\n")
    assert run_main(monkeypatch, stub, tmp_path) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'r.csv'}: its columns (config_id,seed,")
    assert lines[0].endswith("; use another --csv")

    (tmp_path / "r.csv").unlink()
    assert run_main(monkeypatch, stub, tmp_path, "--max-runs", "1") == 0
    capsys.readouterr()
    assert sweep.main(["--csv", str(tmp_path / "r.csv"), "--runs-dir", str(tmp_path / "runs"), *GRID, "--seeds", "0",
                       "--", "data=x", "epochs=3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'r.csv'}, row 2: written with the overrides 'data=x epochs=2', this sweep has "
        f"'data=x epochs=3'; use another --csv"]

    foreign = tmp_path / "runs" / "controller-hrm_seed0"
    foreign.mkdir()
    assert run_main(monkeypatch, stub, tmp_path) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: run folder {foreign} exists and was not started by this sweep (its sweep_run.json does not name "
        f"{tmp_path / 'r.csv'}); remove it or pass another --runs-dir"]
    assert len(stub.launched) == 1


def test_a_row_needing_new_columns_stops_the_sweep(tmp_path, monkeypatch, capsys):
    stub = StubRuns(tmp_path)
    assert run_main(monkeypatch, stub, tmp_path, "--max-runs", "1") == 0

    def extra_metric(spec, gpu):
        outcome = stub(spec, gpu)
        with open(os.path.join(spec.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": 8, "all/exact_accuracy": 0.5, "all/lm_loss": 1.0, "all/new": 1.0}) + "\n")
        return outcome

    assert run_main(monkeypatch, extra_metric, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {tmp_path / 'r.csv'}: its columns differ from what run "
                       f"{tmp_path / 'runs' / 'controller-hrm_seed0'} needs (first difference: all/new); "
                       f"use another --csv")
    assert len(read_csv(tmp_path / "r.csv")[1]) == 1


def test_parallel_runs_take_one_gpu_each(tmp_path, monkeypatch):
    stub = StubRuns(tmp_path, sleep=0.2)
    assert run_main(monkeypatch, stub, tmp_path, "--gpus", "3,5") == 0
    assert not stub.clash
    assert sorted(gpu for _, _, gpu in stub.launched) == ["3", "3", "5", "5"]
    assert len(read_csv(tmp_path / "r.csv")[1]) == 4


class OverlappingRuns(StubRuns):
    """StubRuns whose first `parties` runs each wait until all of them are running: the sweep passes only if it
    runs that many at once (a barrier broken by its timeout fails the run), with no timing luck involved. It
    also counts the runs each GPU holds at a time."""

    def __init__(self, tmp_path, parties):
        super().__init__(tmp_path)
        self.parties = parties
        self.barrier = threading.Barrier(parties, timeout=60)
        self.running, self.most = collections.Counter(), collections.Counter()
        self.arrived = 0

    def __call__(self, spec, gpu):
        with self.lock:
            waits = self.arrived < self.parties
            self.arrived += 1
            self.running[gpu] += 1
            self.most[gpu] = max(self.most[gpu], self.running[gpu])
        if waits:
            self.barrier.wait()
        try:
            return super().__call__(spec, gpu)
        finally:
            with self.lock:
                self.running[gpu] -= 1


@pytest.mark.parametrize("flags, slots", [(["--gpus", "3,5", "--runs-per-gpu", "2"], {"3": 2, "5": 2}),
                                          (["--runs-per-gpu", "2"], {None: 2})])
def test_runs_per_gpu_runs_that_many_at_once_on_each_gpu(tmp_path, monkeypatch, flags, slots):
    stub = OverlappingRuns(tmp_path, parties=sum(slots.values()))
    assert run_main(monkeypatch, stub, tmp_path, "--seeds", "0", "1", "2", *flags) == 0  # 6 runs
    assert stub.most == slots and stub.barrier.n_waiting == 0 and not stub.barrier.broken
    header, rows = read_csv(tmp_path / "r.csv")
    assert len(rows) == 6 and "device" in header
    for row in rows:
        with open(os.path.join(row["run_dir"], sweep.MARKER_FILE)) as f:
            marker = json.load(f)
        assert row["device"] == marker["device"] == fake_device_name(marker["gpu"])


def test_an_older_sweeps_csv_without_the_device_column_is_continued_without_it(tmp_path, monkeypatch):
    stub = StubRuns(tmp_path)
    assert run_main(monkeypatch, stub, tmp_path, "--max-runs", "1") == 0
    header, rows = read_csv(tmp_path / "r.csv")
    old_header = [column for column in header if column != "device"]
    with open(tmp_path / "r.csv", "w", newline="") as f:  # as an older sweep wrote it
        writer = csv.DictWriter(f, fieldnames=old_header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    assert run_main(monkeypatch, stub, tmp_path) == 0
    header, rows = read_csv(tmp_path / "r.csv")
    assert header == old_header and len(rows) == 4
    # compare.py reads it, as it reads the new ones.
    assert compare.main([str(tmp_path / "r.csv")] * 2 + ["--metric", "all/exact_accuracy",
                                                         "--baseline-filter", "arch.routing.controller=none",
                                                         "--treatment-filter", "arch.routing.controller=hrm"]) == 0


def test_the_device_is_asked_of_a_child_process_with_the_runs_gpu(monkeypatch):
    # A stand-in probe that names the GPU it was given; the real one prints torch.cuda.get_device_name() or "cpu".
    monkeypatch.setattr(sweep, "DEVICE_PROBE", "import os; print('GPU', os.environ.get('CUDA_VISIBLE_DEVICES'))")
    sweep.device_name.cache_clear()
    try:
        assert sweep.device_name("4") == "GPU 4"
        monkeypatch.setattr(sweep, "DEVICE_PROBE", "raise SystemExit(1)")
        assert sweep.device_name("4") == "GPU 4"  # asked once per GPU
        assert sweep.device_name("5") == ""  # a failed probe: the run itself will report what is wrong
    finally:
        sweep.device_name.cache_clear()


def test_the_launched_command_sets_wandb_off_and_the_gpu(tmp_path, monkeypatch):
    # A stand-in pretrain.py that prints its arguments and environment.
    script = tmp_path / "pretrain.py"
    script.write_text("import json, os, sys\nprint('starting', file=sys.stderr)\n"
                      "print(json.dumps([sys.argv[1:], os.environ.get('WANDB_MODE'), "
                      "os.environ.get('CUDA_VISIBLE_DEVICES')]))\nprint('error: bad\\r', file=sys.stderr)\n"
                      "sys.exit(2)\n")
    monkeypatch.setattr(sweep, "PRETRAIN", str(script))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    spec = sweep.plan_runs({}, [4], ["lr=1"], str(tmp_path / "runs"))[0]
    os.makedirs(spec.run_dir)
    outcome = sweep.launch_run(spec, "2")
    assert (outcome.returncode, outcome.stderr_tail) == (2, "error: bad")
    with open(os.path.join(spec.run_dir, sweep.STDOUT_LOG)) as f:
        assert json.loads(f.read()) == [["lr=1", "seed=4", f"checkpoint_path={spec.run_dir}"], "disabled", "2"]
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep.launch_run(spec, None)
    with open(os.path.join(spec.run_dir, sweep.STDOUT_LOG)) as f:
        assert json.loads(f.read())[1:] == ["offline", os.environ.get("CUDA_VISIBLE_DEVICES")]


# The tiny runs of the pipeline tests, two epochs long, with the routing controllers learning at once.
SWEEP_OVERRIDES = [*TINY_OVERRIDES, "epochs=2", "routing.warmup_epochs=0"]


@pytest.mark.slow
def test_a_tiny_cpu_sweep_cut_off_and_resumed_has_every_row_once(tiny_dataset, tmp_path):
    # One OpenMP thread per run: the resumed half runs two at a time (--gpus only sets CUDA_VISIBLE_DEVICES).
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WANDB_MODE", None)
    csv_path = tmp_path / "results.csv"

    def run(*extra):
        return subprocess.run([sys.executable, "puzzle_tools/sweep.py", "--csv", str(csv_path),
                               "--runs-dir", str(tmp_path / "runs"), "--grid", "arch.routing.controller=none,hrm",
                               "--seeds", "0", "1", *extra, "--", f"data_path={tiny_dataset}", *SWEEP_OVERRIDES],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)

    first = run("--max-runs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(read_csv(csv_path)[1]) == 1
    resumed = run("--gpus", "0,1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "1 already in" in resumed.stdout and "3 to run now" in resumed.stdout

    header, rows = read_csv(csv_path)
    assert sorted((r["config_id"], r["seed"]) for r in rows) == [
        ("controller-hrm", "0"), ("controller-hrm", "1"), ("controller-none", "0"), ("controller-none", "1")]
    assert {"all/exact_accuracy", "all/accuracy", "all/lm_loss", "all/steps", "all/q_halt_accuracy"} <= set(header)
    for row in rows:
        assert row["run_dir"] == str(tmp_path / "runs" / f"{row['config_id']}_seed{row['seed']}")
        assert float(row["train_time_s"]) > 0 and float(row["steps_per_s"]) > 0 and float(row["tokens_per_s"]) > 0
        if not torch.cuda.is_available():
            assert row["peak_gpu_mem_gib"] == ""
        assert 0 <= float(row["all/exact_accuracy"]) <= 1 and float(row["all/accuracy"]) > 0.5
        assert float(row["all/steps"]) == 3.0  # evaluation runs halt_max_steps
        assert row["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
        with open(os.path.join(row["run_dir"], "all_config.yaml")) as f:
            config = yaml.safe_load(f)
        # arch=hrm_poh was added for the routing key; "none" is the plain HRM.
        assert config["arch"]["routing"]["controller"] == row["arch.routing.controller"]
        assert config["seed"] == int(row["seed"])
        if row["arch.routing.controller"] == "none":
            assert [row[c] for c in sweep.ROUTING_COLUMNS] == ["", "", "", ""]
        else:
            # Two heads: entropy at most ln 2, Herfindahl and top-1 share at least 1/2.
            assert 0 < float(row["routing_entropy"]) <= np.log(2) + 1e-6
            assert 0.5 <= float(row["head_concentration"]) <= 1 and 0.5 <= float(row["top1_share"]) <= 1
            assert float(row["n_H_updates"]) > 0
    seed0 = {r["config_id"]: r for r in rows if r["seed"] == "0"}
    assert seed0["controller-none"]["all/lm_loss"] != seed0["controller-hrm"]["all/lm_loss"]

    again = run()
    assert again.returncode == 0 and "0 to run now" in again.stdout
    assert len(read_csv(csv_path)[1]) == 4


def test_a_csv_that_cannot_be_written_stops_the_sweep_before_the_first_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("kept")
    stub = StubRuns(tmp_path)
    monkeypatch.setattr(sweep, "launch_run", stub)
    csv_path = tmp_path / "a_file" / "r.csv"  # a path under a file: root ignores read-only permissions
    assert sweep.main(["--csv", str(csv_path), "--runs-dir", str(tmp_path / "runs"), *GRID, "--seeds", "0",
                       "--", "data=x"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: cannot write {csv_path}: Not a directory"]
    assert stub.launched == [] and not (tmp_path / "runs").exists()
    assert (tmp_path / "a_file").read_text() == "kept"


def test_a_row_that_cannot_be_written_is_recorded_on_rerun_without_training_again(tmp_path, monkeypatch, capsys):
    stub = StubRuns(tmp_path)
    assert run_main(monkeypatch, stub, tmp_path, "--max-runs", "1") == 0
    written = (tmp_path / "r.csv").read_bytes()
    real_append = sweep.append_text

    def disk_full_for_rows(path, text, sync=False):
        if text:  # the writability check appends nothing and still passes
            raise sweep.FileWriteError(f"cannot write {path}: No space left on device")
        real_append(path, text, sync)
    monkeypatch.setattr(sweep, "append_text", disk_full_for_rows)
    assert run_main(monkeypatch, stub, tmp_path, "--max-runs", "1") == 2
    run_dir = tmp_path / "runs" / "controller-hrm_seed0"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: cannot write {tmp_path / 'r.csv'}: No space left on device; the run in {run_dir} finished: rerun "
        f"the same command to record its row (the run is not trained again)")
    assert (tmp_path / "r.csv").read_bytes() == written and len(stub.launched) == 2

    monkeypatch.setattr(sweep, "append_text", real_append)
    assert run_main(monkeypatch, stub, tmp_path, "--max-runs", "1") == 0
    assert len(stub.launched) == 2  # the finished run was neither deleted nor trained again
    assert (run_dir / "metrics.jsonl").exists()
    _, rows = read_csv(tmp_path / "r.csv")
    assert [(r["config_id"], r["seed"], r["train_time_s"]) for r in rows] == [
        ("controller-none", "0", "3.25"), ("controller-hrm", "0", "3.25")]
