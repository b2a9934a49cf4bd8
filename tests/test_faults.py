"""Faults and bad input: every case ends in one `error:` line (or a clean result), never a traceback, and
loses no file; `kill -9` at random moments, during checkpoint writes too, never changes the final weights."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import evaluate
from dataset.common import atomic_output_dir
from dataset.format import DatasetFormatError, PuzzleDatasetMetadata, save_identifiers, save_split
from dataset.puzzle_dataset import create_dataloader
from models import build_model
from training.distributed import DistributedContext
from training.loop import run_training

from conftest import REPO_ROOT
from full_disk import filling_the_disk
from tiny_runs import (ENV, TINY_OVERRIDES, make_config, pretrain_in_process, pretrain_with_fault, read_metrics,
                       run_pretrain, train_losses, write_tiny_dataset)

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


def snapshot(folder):
    """Every file under `folder` with its bytes, to prove nothing was lost or changed."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


# ---------------------------------------------------------------------------------------------------------
# Damaged dataset folders: one line naming the file and the rule, when the dataset is opened.

def damage_shape(folder):
    np.save(folder / "train" / "all__inputs.npy", np.ones((96, 11), dtype=np.uint8))


def damage_truncate(folder):
    path = folder / "train" / "all__labels.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damage_order(folder):
    indices = np.arange(97, dtype=np.int32)
    indices[5], indices[6] = indices[6], indices[5]
    np.save(folder / "train" / "all__puzzle_indices.npy", indices)


def damage_token(folder):
    inputs = np.load(folder / "train" / "all__inputs.npy")
    inputs[40, 3] = 6  # vocab_size is 6
    np.save(folder / "train" / "all__inputs.npy", inputs)


def damage_identifier(folder):
    identifiers = np.load(folder / "train" / "all__puzzle_identifiers.npy")
    identifiers[7] = 4  # num_puzzle_identifiers is 4
    np.save(folder / "train" / "all__puzzle_identifiers.npy", identifiers)


def damage_groups(folder):
    np.save(folder / "train" / "all__group_indices.npy", np.arange(90, dtype=np.int32))


def damage_rows(folder):
    np.save(folder / "train" / "all__labels.npy", np.ones((95, 12), dtype=np.uint8))


@pytest.mark.parametrize("damage, file, rule", [
    (damage_shape, "all__inputs.npy", r"shape \(96, 11\) does not match \[examples, seq_len=12\]"),
    (damage_truncate, "all__labels.npy", "cannot read the array"),
    (damage_order, "all__puzzle_indices.npy", "must increase strictly, but entry 6 is 5 after 6"),
    (damage_token, "all__inputs.npy", r"tokens must lie in 0..5 \(vocab_size\), found 1..6"),
    (damage_identifier, "all__puzzle_identifiers.npy", r"identifiers must lie in 0..3 \(num_puzzle_identifiers\)"),
    (damage_groups, "all__group_indices.npy", r"must run from 0 to 96 \(the puzzles\), got 0 to 89"),
    (damage_rows, "all__labels.npy", "95 rows but inputs has 96"),
])
def test_a_damaged_dataset_is_one_line_naming_file_and_rule(tmp_path, damage, file, rule):
    folder = tmp_path / "data"
    write_tiny_dataset(str(folder))
    damage(folder)
    with pytest.raises(DatasetFormatError) as error:
        create_dataloader(str(folder), "train", seed=0, global_batch_size=16, test_set_mode=False, epochs_per_iter=1,
                          rank=0, world_size=1)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(folder / "train" / file) + ": ")
    assert re.search(rule, message), message


def test_training_on_a_damaged_dataset_stops_before_any_step(tmp_path):
    folder = tmp_path / "data"
    write_tiny_dataset(str(folder))
    damage_token(folder)
    with pytest.raises(Exception) as error:
        run_training(make_config(str(folder), f"checkpoint_path={tmp_path / 'run'}"), CPU)
    assert type(error.value).__name__ == "ConfigError" and "all__inputs.npy: tokens must lie" in str(error.value)
    assert not os.path.exists(tmp_path / "run" / "train_state.pt")


def test_large_token_arrays_are_checked_at_sampled_rows(tmp_path, monkeypatch):
    import dataset.format
    monkeypatch.setattr(dataset.format, "FULL_CHECK_BYTES", 64)  # the tiny arrays count as large
    monkeypatch.setattr(dataset.format, "SAMPLED_ROWS", 5)  # rows 0, 23 (23.75), 47, 71, 95
    folder = tmp_path / "data"
    write_tiny_dataset(str(folder))
    inputs = np.load(folder / "train" / "all__inputs.npy")
    inputs[47, 0] = 9
    np.save(folder / "train" / "all__inputs.npy", inputs)
    with pytest.raises(DatasetFormatError, match="found 1..9"):
        create_dataloader(str(folder), "train", seed=0, global_batch_size=16, test_set_mode=False, epochs_per_iter=1,
                          rank=0, world_size=1)


# ---------------------------------------------------------------------------------------------------------
# The run folder: every input is read before the first write, and a fault while writing is one line.

def test_a_damaged_input_read_at_start_up_leaves_no_file_behind(tmp_path, capsys):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    write_tiny_dataset(str(data))
    (data / "identifiers.json").write_bytes(b"\xff\xfe\x00[")
    status, err = pretrain_in_process([f"data_path={data}", *TINY_OVERRIDES, f"checkpoint_path={run_dir}"], capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith(f"error: {data / 'identifiers.json'}: "), err
    assert not run_dir.exists()  # no all_config.yaml of a run that never started


def test_a_run_file_that_cannot_be_cleared_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_tiny_dataset(str(tmp_path / "data"))
    (run_dir / "metrics.jsonl").mkdir(parents=True)  # a folder in its place: root ignores read-only folders
    status, err = pretrain_in_process([f"data_path={tmp_path / 'data'}", *TINY_OVERRIDES, f"checkpoint_path={run_dir}"],
                                      capsys)
    assert status == 2 and err == [f"error: cannot delete {run_dir / 'metrics.jsonl'} of the earlier run in {run_dir}: "
                                   f"Is a directory"], err
    assert sorted(os.listdir(run_dir)) == ["metrics.jsonl"]


def test_an_error_during_training_is_a_line_of_its_own_after_the_progress_bar(tiny_dataset, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "run"
    monkeypatch.setattr(torch, "save", filling_the_disk(torch.save, path_argument=1))  # from the first weights on
    status, err = pretrain_in_process([f"data_path={tiny_dataset}", *TINY_OVERRIDES, f"checkpoint_path={run_dir}"],
                                      capsys)
    assert status == 2 and err[-1].startswith(f"error: cannot write {run_dir / 'step_12'}: "), err
    assert [line for line in err if "error:" in line] == err[-1:]  # not on the bar's line


# ---------------------------------------------------------------------------------------------------------
# evaluate.py: bad checkpoints and arguments


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    """A finished run whose data_path is relative to the folder training ran in: <root>/data/tiny."""
    root = tmp_path_factory.mktemp("relative")
    write_tiny_dataset(str(root / "data" / "tiny"))
    with pytest.MonkeyPatch.context() as patch:  # the working directory and environment come back after
        patch.chdir(root)
        patch.setenv("WANDB_MODE", "disabled")
        run_training(make_config("data/tiny", "checkpoint_path=checkpoints/project/run", "epochs=2"), CPU)
    return root, root / "checkpoints" / "project" / "run"


def run_evaluate(capsys, *argv):
    try:
        code = evaluate.main(list(argv))
    except SystemExit as exit_:  # argparse mistakes
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def copy_run(run_dir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


@pytest.mark.parametrize("case, message", [
    ("garbage", "cannot be read"),
    ("truncated", "cannot be read"),
    ("other_architecture", "model.inner.H_init has shape (64,) in the checkpoint and (32,) in the model"),
    ("other_dataset", "model.inner.puzzle_emb.weights has shape (6, 16) in the checkpoint and (4, 16) in the model: "
                      "one row per puzzle identifier, so the checkpoint's dataset had 6 identifiers "
                      "(num_puzzle_identifiers) and this one has 4"),
    ("missing", "not found"),
])
def test_bad_checkpoints_are_one_line(relative_run, tmp_path, capsys, case, message, monkeypatch):
    root, run_dir = relative_run
    run = copy_run(run_dir, tmp_path)
    checkpoint = run / "step_12"
    if case == "garbage":
        checkpoint.write_bytes(os.urandom(2000))
    elif case == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:3000])
    elif case == "other_architecture":
        torch.manual_seed(0)
        config = make_config("unused", "arch.hidden_size=64", "arch.puzzle_emb_ndim=64")
        other = build_model(config.arch, batch_size=16, seq_len=12, vocab_size=6, num_puzzle_identifiers=4)
        torch.save(other.state_dict(), checkpoint)
    elif case == "other_dataset":  # the same architecture, trained on a dataset of 6 puzzle identifiers
        other = build_model(make_config("unused").arch, batch_size=16, seq_len=12, vocab_size=6,
                            num_puzzle_identifiers=6)
        torch.save(other.state_dict(), checkpoint)
    else:
        checkpoint = run / "step_99"
    before = snapshot(run)
    monkeypatch.chdir(root)
    code, out, err = run_evaluate(capsys, "--checkpoint", str(checkpoint))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert snapshot(run) == before


def test_train_state_is_a_checkpoint_and_a_run_evaluates_from_another_folder(relative_run, tmp_path, capsys,
                                                                            monkeypatch):
    root, run_dir = relative_run
    monkeypatch.chdir(tmp_path)  # not where training ran: data/tiny is found from the run folder's parents
    code, out, err = run_evaluate(capsys, "--checkpoint", str(run_dir / "train_state.pt"))
    code_step, out_step, _ = run_evaluate(capsys, "--checkpoint", str(run_dir / "step_12"))
    assert code == 0 and code_step == 0, err
    assert json.loads(out) == json.loads(out_step)


def test_a_run_whose_data_is_gone_names_the_paths_tried(relative_run, tmp_path, capsys, monkeypatch):
    _, run_dir = relative_run
    run = copy_run(run_dir, tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_evaluate(capsys, "--checkpoint", str(run / "step_12"))
    assert code == 2 and len(err) == 1
    assert "the run's data_path 'data/tiny' was not found (tried " in err[0] and "pass --data-path DIR" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--save-outputs", "inputs,logitz"], "--save-outputs: unknown output(s) logitz"),
    (["--global-batch-size", "0"], "--global-batch-size must be positive, got 0"),
    (["--global-batch-size", "many"], "argument --global-batch-size: invalid int value: 'many'"),
    (["checkpont=x"], "unrecognised argument 'checkpont=x'"),
])
def test_bad_arguments_are_one_line(relative_run, capsys, argv, message):
    _, run_dir = relative_run
    code, _, err = run_evaluate(capsys, "--checkpoint", str(run_dir / "step_12"), *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_a_dataset_of_another_task_is_one_line(relative_run, tmp_path, capsys, monkeypatch):
    root, run_dir = relative_run
    other = tmp_path / "other"
    with atomic_output_dir(str(other)) as out:
        metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=20,
                                         num_puzzle_identifiers=4, total_groups=4, mean_puzzle_examples=1, sets=["all"])
        arrays = dict(inputs=np.ones((4, 20), np.uint8), labels=np.ones((4, 20), np.uint8),
                      puzzle_identifiers=np.ones(4, np.int32), puzzle_indices=np.arange(5, dtype=np.int32),
                      group_indices=np.arange(5, dtype=np.int32))
        for split in ("train", "test"):
            save_split(out, split, metadata, {"all": arrays})
        save_identifiers(out, ["<blank>", "a", "b", "c"])
    monkeypatch.chdir(root)
    code, _, err = run_evaluate(capsys, "--checkpoint", str(run_dir / "step_12"), "--data-path", str(other))
    assert code == 2 and len(err) == 1 and "seq_len is 20, but the model was trained on 12" in err[0], err


@pytest.mark.parametrize("fault", ["folder_in_the_way", "full_disk"])
def test_predictions_that_cannot_be_written_keep_the_metrics_and_the_previous_file(relative_run, tmp_path, capsys,
                                                                                   monkeypatch, fault):
    root, run_dir = relative_run
    run, step = copy_run(run_dir, tmp_path), 12
    monkeypatch.chdir(root)
    predictions = run / f"step_{step}_all_preds.0"
    if fault == "folder_in_the_way":
        predictions.mkdir()  # root ignores read-only permissions: a folder in the file's place stands for them
        reason = "Is a directory"
    else:
        predictions.write_bytes(b"previous predictions")
        monkeypatch.setattr(torch, "save", filling_the_disk(torch.save, path_argument=1))
        reason = "unexpected pos"  # torch.save's RuntimeError on a failed write
    code, out, err = run_evaluate(capsys, "--checkpoint", str(run / f"step_{step}"), "--save-predictions")
    assert code == 2
    assert set(json.loads(out)) == {"all"}  # printed before the predictions were written
    assert len(err) == 1 and err[0].startswith(f"error: cannot write {predictions}: ") and reason in err[0], err
    assert predictions.is_dir() if fault == "folder_in_the_way" else predictions.read_bytes() == b"previous predictions"
    assert not [name for name in os.listdir(run) if name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------------------
# pretrain.py and the builders as users run them


@pytest.mark.slow
def test_command_line_faults_are_one_line_and_lose_nothing(tiny_dataset, tmp_path):
    (tmp_path / "a_file").write_text("x")
    garbage = tmp_path / "garbage_run"
    garbage.mkdir()
    (garbage / "train_state.pt").write_bytes(os.urandom(500))
    (garbage / "metrics.jsonl").write_text('{"step": 1}\n')
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("mine")
    cases = [
        (["pretrain.py", f"data_path={tiny_dataset}", f"resume={garbage}"], "cannot be read as a training state"),
        (["pretrain.py", f"data_path={tiny_dataset}", f"resume={tmp_path / 'absent'}"], "no training state at"),
        (["pretrain.py", f"data_path={tiny_dataset}", f"checkpoint_path={tmp_path / 'a_file' / 'run'}",
          *TINY_OVERRIDES], "cannot create the run folder"),
        (["pretrain.py", f"data_path={tiny_dataset}", "epochs=10", "eval_interval=3"],
         "eval_interval (3) must divide epochs (10)"),
        (["pretrain.py", f"data_path={tiny_dataset}", "eval_save_outputs=[logitz]"], "unknown output(s) logitz"),
        (["dataset/build_maze_dataset.py", "--generate-train", "4", "--generate-test", "2", "--grid-size", "6", "--min-path-length", "5",
          "--output-dir", str(notes), "--overwrite"], "holds something other than a dataset"),
        (["dataset/build_maze_dataset.py", "--generate-train", "4", "--generate-test", "2", "--grid-size", "6", "--min-path-length", "5",
          "--output-dir", str(tmp_path / "a_file" / "maze")], "cannot create a folder in"),
    ]
    before = snapshot(tmp_path)
    env = dict(ENV, PYTHONPATH=REPO_ROOT)
    for argv, message in cases:
        result = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (argv, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (argv, lines)
        assert len(lines[0]) < 400, lines[0]
        assert snapshot(tmp_path) == before, argv


# ---------------------------------------------------------------------------------------------------------
# kill -9 at random moments


@pytest.mark.slow
def test_kill_9_at_random_moments_never_changes_the_final_weights(tiny_dataset, tmp_path):
    common = [f"data_path={tiny_dataset}", *TINY_OVERRIDES, "checkpoint_interval=1", "checkpoint_every_eval=true"]
    whole = run_pretrain([*common, f"checkpoint_path={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = torch.load(tmp_path / "whole" / "step_24", weights_only=True)
    expected_losses = train_losses(read_metrics(tmp_path / "whole"))

    rng = np.random.default_rng(0)
    caught_mid_write = 0
    for trial in range(3):
        run_dir = tmp_path / f"trial{trial}"
        kills = 0
        while not (run_dir / "step_24").exists():
            args = [*common, f"resume={run_dir}"] if (run_dir / "train_state.pt").exists() else \
                [*common, f"checkpoint_path={run_dir}", "overwrite_run=true"]
            if trial == 0 and kills < 2:
                # Killed while its 5th training-state write is half done (the first process at step 5, the
                # resumed one 5 steps after the resume).
                process = subprocess.Popen(pretrain_with_fault("kill-mid-state-write", 5, args), cwd=REPO_ROOT,
                                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                _, stderr = process.communicate(timeout=300)
                assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
                caught_mid_write += (run_dir / "train_state.pt.tmp").exists()
                kills += 1
                continue
            process = subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=REPO_ROOT, env=ENV,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if trial > 0 and kills < 2:
                # At random times after start-up (imports take a few seconds, training about as long again).
                try:
                    process.wait(timeout=rng.uniform(2.0, 9.0))
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
            _, stderr = process.communicate(timeout=300)
            assert process.returncode in (0, -signal.SIGKILL), stderr.decode()[-2000:]
        final = torch.load(run_dir / "step_24", weights_only=True)
        assert set(final) == set(expected)
        for key in expected:
            assert torch.equal(final[key], expected[key]), (trial, key)
        rows = read_metrics(run_dir)
        steps = [row["step"] for row in rows if "train/lm_loss" in row]
        assert steps == sorted(set(steps)), (trial, steps)  # each step once, in order
        for step, loss in train_losses(rows).items():
            assert loss == pytest.approx(expected_losses[step], abs=1e-6)
    assert caught_mid_write == 2  # both kills of trial 0 left a half-written train_state.pt.tmp behind
