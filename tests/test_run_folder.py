"""The run folder's files: train_state.pt of this version and of older ones, metrics.jsonl with a torn line, and
the lock that keeps a second run out."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from training.run_folder import (TRAIN_STATE_VERSION, RunFolderError, RunFolderLock, SavedTrainState, read_metrics,
                                 read_train_state, read_weights, write_train_state)
from training.train_state import TrainProgress

from conftest import REPO_ROOT
from tiny_runs import TINY_OVERRIDES, pretrain_in_process

WEIGHTS = {"model.inner.H_init": torch.arange(3.0)}


def saved_state(**changes):
    values = dict(model=WEIGHTS, optimizers=[{"state": {}, "param_groups": []}],
                  progress=TrainProgress(step=12, rounds_done=1, batches_done_in_round=0),
                  per_rank=[{"carry": None, "torch_rng": torch.get_rng_state(), "cuda_rng": None}] * 2,
                  config={"lr": 1e-4}, data_fingerprint="abc")
    return SavedTrainState(**dict(values, **changes))


def test_train_state_round_trips_with_its_version(tmp_path):
    path = write_train_state(str(tmp_path), saved_state())
    assert torch.load(path, weights_only=False)["version"] == TRAIN_STATE_VERSION
    loaded = read_train_state(path)
    assert loaded.version == TRAIN_STATE_VERSION and loaded.world_size == 2
    assert loaded.progress == TrainProgress(step=12, rounds_done=1, batches_done_in_round=0)
    assert loaded.config == {"lr": 1e-4} and loaded.data_fingerprint == "abc" and loaded.ema is None
    assert torch.equal(read_weights(path)["model.inner.H_init"], WEIGHTS["model.inner.H_init"])


def test_a_train_state_without_a_version_still_loads(tmp_path):
    # The layout before the version field: config and fingerprint under "run", the process count beside.
    path = tmp_path / "train_state.pt"
    per_rank = [{"carry": None, "torch_rng": torch.get_rng_state(), "cuda_rng": None}]
    torch.save({"model": WEIGHTS, "optimizers": [], "progress": {"step": 7, "rounds_done": 0, "batches_done_in_round": 7},
                "run": {"config": {"lr": 3e-4}, "data_fingerprint": "f00"}, "world_size": 1, "per_rank": per_rank,
                "ema": {"rate": 0.9}}, path)
    loaded = read_train_state(str(path))
    assert loaded.version == 0 and loaded.world_size == 1 and loaded.progress.step == 7
    assert loaded.config == {"lr": 3e-4} and loaded.data_fingerprint == "f00" and loaded.ema == {"rate": 0.9}


@pytest.mark.parametrize("version, controller, read_clip", [
    (1, "none", None), (1, "hrm", 1.0), (0, "none", None), (TRAIN_STATE_VERSION, "none", 1.0)])
def test_an_older_state_of_a_plain_model_reads_with_the_encoder_clip_it_ran_with(tmp_path, version, controller,
                                                                                 read_clip):
    # Before version 2, routing.encoder_clip (default 1.0) clipped only models with routing controllers.
    config = {"arch": {"routing": {"controller": controller}}, "routing": {"encoder_clip": 1.0, "controller_clip": 0.5}}
    path = write_train_state(str(tmp_path), saved_state(config=config))
    values = torch.load(path, weights_only=False)
    if version == 0:
        values["run"] = {"config": values.pop("config"), "data_fingerprint": values.pop("data_fingerprint")}
        values["world_size"] = 2
        del values["version"]
    else:
        values["version"] = version
    torch.save(values, path)
    loaded = read_train_state(path)
    assert loaded.config == {"arch": config["arch"], "routing": {"encoder_clip": read_clip, "controller_clip": 0.5}}
    assert loaded.version == version


def test_a_foreign_file_is_not_a_train_state(tmp_path):
    path = tmp_path / "train_state.pt"
    torch.save({"model": WEIGHTS}, path)
    with pytest.raises(RunFolderError, match="not a training state of this version .missing optimizers"):
        read_train_state(str(path))
    torch.save({"version": TRAIN_STATE_VERSION + 1}, path)
    with pytest.raises(RunFolderError, match="newer version"):
        read_train_state(str(path))


def test_metrics_reader_skips_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 10, "train/lm_loss": 1.5}, {"step": 20, "train/lm_loss": 1.25}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n" + '{"step": 30, "train/lm')
    assert read_metrics(str(path)) == rows
    path.write_text(json.dumps(rows[0]) + "\n" + '{"step": 30, "train/lm\n' + json.dumps(rows[1]) + "\n")
    with pytest.raises(RunFolderError, match=f"{os.path.basename(path)}, line 2: not valid JSON"):
        read_metrics(str(path))


HOLD_LOCK = """
import multiprocessing, sys, time
from training.run_folder import RunFolderLock
lock = RunFolderLock(sys.argv[1])
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))  # as a data-loader worker
worker.start()
print(worker.pid, flush=True)
time.sleep(120)
"""


def test_a_second_run_into_a_locked_run_folder_is_refused_naming_the_holder(tmp_path, tiny_dataset, capsys,
                                                                            monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = str(tmp_path / "run")
    with RunFolderLock(run_dir):
        status, lines = pretrain_in_process([f"data_path={tiny_dataset}", *TINY_OVERRIDES,
                                             f"checkpoint_path={run_dir}"], capsys)
        assert status == 2
        assert lines == [f"error: the run folder {run_dir} is in use by another run (process {os.getpid()} holds "
                         f"run.lock); wait for it to end, or choose another checkpoint_path"]
        assert os.listdir(run_dir) == ["run.lock"]  # the refused run wrote nothing
    assert not os.path.exists(run_dir)  # the lock made the folder and nothing else was written: both gone
    with RunFolderLock(run_dir):  # released: the next run may take it
        pass


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_does_not_block_even_while_its_workers_live(tmp_path):
    run_dir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, run_dir], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    worker = int(holder.stdout.readline())
    try:
        with pytest.raises(RunFolderError, match=f"process {holder.pid} holds run.lock"):
            RunFolderLock(run_dir)
        holder.kill()
        holder.wait()
        with open(os.path.join(run_dir, "run.lock")) as f:
            assert f.read().strip() == str(holder.pid)  # the killed holder's id is still written there
        os.kill(worker, 0)  # its forked worker still lives
        with RunFolderLock(run_dir) as lock:
            with open(lock.path) as f:
                assert f.read().strip() == str(os.getpid())
    finally:
        holder.kill()
        os.kill(worker, signal.SIGKILL)
