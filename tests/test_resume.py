"""Resume where the run lives: config checks, deliberate changes, finished and extended runs, no accidental
overwrite, preemption by signal, and resume with another number of processes."""
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.config_validation import ConfigError
from pretrain import hydra_quoted
from training.distributed import DistributedContext
from training.loop import run_training
from training.preemption import TrainingInterrupted
from training.resume import compare_configs

from conftest import REPO_ROOT
from tiny_runs import (ENV, TINY_OVERRIDES, make_config, pretrain_with_fault, read_metrics, run_pretrain, torchrun,
                       train_losses, write_tiny_dataset)

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory):
    """An uninterrupted 4-epoch run (24 steps, evaluations at 12 and 24) and its losses."""
    run_dir = str(tmp_path_factory.mktemp("runs") / "full")
    run_training(make_config(tiny_dataset, f"checkpoint_path={run_dir}", "checkpoint_every_eval=true"), CPU)
    return run_dir, train_losses(read_metrics(run_dir))


def interrupt_at(monkeypatch, step, signum=signal.SIGTERM):
    """Send this process `signum` during training step `step`, as a scheduler would."""
    import training.loop as loop
    real_step = loop.train_step

    def step_then_signal(state, *args, **kwargs):
        result = real_step(state, *args, **kwargs)
        if state.progress.step == step:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(loop, "train_step", step_then_signal)


@pytest.mark.slow
def test_signal_saves_the_state_and_resume_in_place_equals_the_uninterrupted_run(
        tiny_dataset, tmp_path, monkeypatch, finished_run):
    _, uninterrupted = finished_run
    run_dir = str(tmp_path / "run")
    interrupt_at(monkeypatch, 7)
    with pytest.raises(TrainingInterrupted) as stopped:
        run_training(make_config(tiny_dataset, f"checkpoint_path={run_dir}"), CPU)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    message = str(stopped.value)
    assert "\n" not in message and "stopped by SIGTERM at step 7" in message
    assert f"the training state is in {os.path.join(run_dir, 'train_state.pt')!r}" in message
    monkeypatch.undo()

    # resume= alone continues in the same folder: no new folder, one row per step, the resume recorded.
    config = make_config(tiny_dataset, f"resume={run_dir}")
    assert config.checkpoint_path == run_dir
    run_training(config, CPU)
    rows = read_metrics(run_dir)
    losses = train_losses(rows)
    assert sorted(losses) == list(range(1, 25))
    assert [row["step"] for row in rows if "train/lm_loss" in row] == list(range(1, 25))  # no duplicates
    resumes = [row for row in rows if row.get("event") == "resume"]
    assert [(row["step"], row["processes"], row["changed"]) for row in resumes] == [(7, [1, 1], {})]
    for step, loss in losses.items():
        assert loss == pytest.approx(uninterrupted[step], abs=1e-6), step
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_changed_arithmetic_is_refused_with_both_values(tiny_dataset, finished_run):
    run_dir, _ = finished_run
    with pytest.raises(ConfigError) as error:
        run_training(make_config(tiny_dataset, f"resume={run_dir}", "lr=3e-3", "seed=1", "arch.L_cycles=3"), CPU)
    message = str(error.value)
    assert "\n" not in message
    assert "lr: saved 0.001, now 0.003" in message and "seed: saved 0, now 1" in message
    assert "arch.L_cycles: saved 2, now 3" in message
    assert "resume_allow_changes=[arch.L_cycles,lr,seed]" in message


def test_other_dataset_contents_are_refused(tmp_path, finished_run):
    run_dir, _ = finished_run
    other = write_tiny_dataset(str(tmp_path / "other"))
    labels = os.path.join(other, "train", "all__labels.npy")
    np.save(labels, np.load(labels)[::-1].copy())  # same shapes, other contents
    with pytest.raises(ConfigError, match=r"data_path: saved '.* \(contents \w+\)', now '.* \(contents \w+\)'"):
        run_training(make_config(other, f"resume={run_dir}", "epochs=6"), CPU)


def test_a_finished_run_says_so(tiny_dataset, finished_run, capsys):
    run_dir, _ = finished_run
    before = read_metrics(run_dir)
    assert run_training(make_config(tiny_dataset, f"resume={run_dir}"), CPU) is None
    assert "already finished (step 24, 4 epochs)" in capsys.readouterr().out
    assert read_metrics(run_dir) == before


def test_deliberate_change_is_used_and_recorded_and_more_epochs_extend_the_run(tiny_dataset, finished_run, tmp_path):
    run_dir, uninterrupted = finished_run
    # Continue the finished run in another folder for 2 more epochs at another learning rate.
    target = str(tmp_path / "extended")
    config = make_config(tiny_dataset, f"resume={run_dir}", f"checkpoint_path={target}", "epochs=6", "lr=2e-3",
                         "resume_allow_changes=[lr]")
    run_training(config, CPU)
    rows = read_metrics(target)
    resume_row = [row for row in rows if row.get("event") == "resume"][0]
    assert resume_row["step"] == 24 and resume_row["changed"] == {"lr": [0.001, 0.002]}
    assert [row["train/lr"] for row in rows if row["step"] == 25 and "train/lr" in row] == [0.002]
    losses = train_losses(rows)
    assert sorted(losses) == list(range(1, 37))
    assert all(losses[step] == pytest.approx(uninterrupted[step], abs=1e-6) for step in range(1, 25))
    # Weights of steps before the resume stay in the source folder; the new folder gets those it trains.
    assert sorted(f for f in os.listdir(target) if f.startswith("step_")) == ["step_36"]
    # The source run is untouched.
    assert max(train_losses(read_metrics(run_dir))) == 24


def test_a_new_run_never_overwrites_an_old_one_by_accident(tiny_dataset, tmp_path):
    run_dir = str(tmp_path / "run")
    run_training(make_config(tiny_dataset, f"checkpoint_path={run_dir}", "epochs=2"), CPU)
    before = sorted(os.listdir(run_dir))
    with pytest.raises(ConfigError, match="already holds a run .*resume=.*overwrite_run=true"):
        run_training(make_config(tiny_dataset, f"checkpoint_path={run_dir}", "epochs=2"), CPU)
    assert sorted(os.listdir(run_dir)) == before
    (tmp_path / "run" / "notes.txt").write_text("mine")
    run_training(make_config(tiny_dataset, f"checkpoint_path={run_dir}", "epochs=2", "seed=3",
                             "overwrite_run=true"), CPU)
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows if "train/lm_loss" in row] == list(range(1, 13))  # only the new run
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # not a run file: kept


@pytest.mark.slow
def test_ctrl_c_of_a_real_process_is_one_line_and_resumable(tiny_dataset, tmp_path):
    run_dir = str(tmp_path / "run")
    args = [f"data_path={tiny_dataset}", f"checkpoint_path={run_dir}", *TINY_OVERRIDES, "epochs=400",
            "eval_interval=400", "log_interval=5"]
    process = subprocess.Popen(pretrain_with_fault("sigint-after-step", 12, args), cwd=REPO_ROOT, env=ENV, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGINT at step ") and "continue with: python pretrain.py " in last
    assert last.endswith(f"resume={hydra_quoted(run_dir)}'")
    assert "Traceback" not in stderr
    step = int(last.split("at step ")[1].split(";")[0])
    assert step == 12  # the step the SIGINT came after
    assert os.path.isfile(os.path.join(run_dir, "train_state.pt"))
    assert max(train_losses(read_metrics(run_dir))) == step


@pytest.mark.slow
def test_the_printed_resume_command_pasted_into_a_shell_finishes_the_run(tiny_dataset, tmp_path, finished_run):
    _, uninterrupted = finished_run
    run_dir = str(tmp_path / "runs with spaces" / "ünïcode 'run'")
    args = [f"data_path={tiny_dataset}", *TINY_OVERRIDES, "checkpoint_every_eval=true",
            f"checkpoint_path={hydra_quoted(run_dir)}"]
    stopped = subprocess.run(pretrain_with_fault("sigint-after-step", 5, args), cwd=REPO_ROOT, env=ENV, text=True,
                             capture_output=True, timeout=120)
    assert stopped.returncode == 130, stopped.stderr
    command = stopped.stderr.strip().splitlines()[-1].split("; continue with: ")[1]
    assert "lr=0.001" not in command and "lr=1e-3" in command  # the run's own overrides, as given
    pasted = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=ENV, text=True, capture_output=True,
                            timeout=120)
    assert pasted.returncode == 0, pasted.stderr
    assert f"run finished at step 24: {shlex.quote(run_dir)}" in pasted.stdout
    losses = train_losses(read_metrics(run_dir))
    assert sorted(losses) == list(range(1, 25))
    assert all(losses[step] == pytest.approx(uninterrupted[step], abs=1e-6) for step in losses)


def exact_resume_overrides(tiny_dataset):
    # Exploration draws differ per rank (seed + rank), so they are off for an exact comparison.
    return [f"data_path={tiny_dataset}", *TINY_OVERRIDES, "arch.halt_exploration_prob=0.0", "eval_interval=1"]


@pytest.fixture(scope="module")
def uninterrupted_losses(tiny_dataset, tmp_path_factory):
    """The training losses of one uninterrupted 2-epoch run, which every resume below must reproduce."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "whole"
    whole = run_pretrain([*exact_resume_overrides(tiny_dataset), "epochs=2", f"checkpoint_path={run_dir}"])
    assert whole.returncode == 0, whole.stderr[-2000:]
    return train_losses(read_metrics(run_dir))


@pytest.mark.slow
@pytest.mark.xdist_group("uninterrupted-run")  # one worker runs both, so the uninterrupted run is made once
@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_processes_equals_the_uninterrupted_run(tiny_dataset, tmp_path, first, second,
                                                                            uninterrupted_losses):
    common = exact_resume_overrides(tiny_dataset)

    def launcher(processes):
        return torchrun(processes) if processes > 1 else (sys.executable,)

    half = run_pretrain([*common, "epochs=1", f"checkpoint_path={tmp_path / 'run'}"], launcher=launcher(first))
    assert half.returncode == 0, half.stderr[-2000:]
    rest = run_pretrain([*common, "epochs=2", f"resume={tmp_path / 'run'}"], launcher=launcher(second))
    assert rest.returncode == 0, rest.stderr[-2000:]
    expected, resumed = uninterrupted_losses, train_losses(read_metrics(tmp_path / "run"))
    assert sorted(resumed) == sorted(expected) == list(range(1, 13))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], abs=1e-5), step
    rows = read_metrics(tmp_path / "run")
    assert [row["processes"] for row in rows if row.get("event") == "resume"] == [[first, second]]


def test_an_arch_saved_with_fewer_keys_is_the_same_typed_arch(tiny_dataset):
    # A saved run's arch holds the keys its config set; the running config's typed arch has every default.
    config = make_config(tiny_dataset, "checkpoint_path=unused")
    saved = config.model_dump()
    saved["arch"] = {key: value for key, value in saved["arch"].items()
                     if key not in ("rms_norm_eps", "rope_theta", "attention_backend", "routing")}
    assert compare_configs(saved, config, None, "unused") == {}
    saved["arch"]["rope_theta"] = 500.0
    with pytest.raises(ConfigError, match=r"arch.rope_theta: saved 500.0, now 10000.0"):
        compare_configs(saved, config, None, "unused")


@pytest.mark.parametrize("entry", ["lr_typo", "arch.hiden_size", "rout"])
def test_an_allowed_change_that_names_no_key_is_refused(tiny_dataset, entry):
    config = make_config(tiny_dataset, "checkpoint_path=unused", f"resume_allow_changes=[lr,{entry}]")
    with pytest.raises(ConfigError, match=rf"resume_allow_changes: '{entry}' names no config key"):
        compare_configs(config.model_dump(), config, None, "unused")
    allowed = make_config(tiny_dataset, "checkpoint_path=unused", "resume_allow_changes=[lr,routing,arch.hidden_size]")
    assert compare_configs(config.model_dump(), allowed, None, "unused") == {}


def test_a_config_saved_before_a_key_existed_compares_with_its_default(tiny_dataset):
    config = make_config(tiny_dataset, "checkpoint_path=unused")
    saved = {key: value for key, value in config.model_dump().items() if key not in ("freeze_weights", "ema")}
    assert compare_configs(saved, config, None, "unused") == {}
    with pytest.raises(ConfigError, match=r"freeze_weights: saved False, now True"):
        compare_configs(saved, make_config(tiny_dataset, "checkpoint_path=unused", "freeze_weights=true"), None, "unused")


@pytest.mark.parametrize("change, arch, misfit", [
    (["arch.hidden_size=64", "resume_allow_changes=[arch.hidden_size]"], "hrm_v1",
     r"\(arch\.hidden_size: saved 32, now 64\): model\.\S+ has shape \(32,\) saved, \(64,\) now"),
    (["resume_allow_changes=[arch]"], "hrm_poh",
     r"\(arch\.routing\.controller: saved 'none', now 'hrm'[^)]*\): model\.inner\.\S+router\S+ is new in this model"),
])
def test_an_allowed_architecture_change_whose_weights_cannot_carry_over_is_one_line(
        tiny_dataset, finished_run, change, arch, misfit):
    run_dir, _ = finished_run
    before = read_metrics(run_dir)
    refusal = "^resume: the saved weights cannot carry over to this architecture "
    with pytest.raises(ConfigError, match=refusal + misfit):
        run_training(make_config(tiny_dataset, f"resume={run_dir}", "epochs=6", *change, arch=arch), CPU)
    assert read_metrics(run_dir) == before


@pytest.mark.parametrize("key", ["plots=true", "fast_path=false", "log_interval=3", "project_name=renamed"])
def test_keys_that_change_nothing_the_run_computes_change_freely_on_resume(tiny_dataset, finished_run, key, capsys):
    run_dir, _ = finished_run
    assert run_training(make_config(tiny_dataset, f"resume={run_dir}", key), CPU) is None  # finished: says so
    assert "already finished" in capsys.readouterr().out
