"""evaluate.py on an ema=true run: its train state is evaluated with the weight average, as step_N holds it."""
import json
import os
import shutil

import pytest
import torch

import evaluate
from tiny_runs import make_config, write_tiny_dataset
from training.distributed import DistributedContext
from training.loop import run_training
from training.run_folder import read_train_state

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    write_tiny_dataset(str(root / "data" / "tiny"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("WANDB_MODE", "disabled")
        run_training(make_config(str(root / "data" / "tiny"), f"checkpoint_path={root / 'run'}", "epochs=2",
                                 "ema=true", "ema_rate=0.9"), CPU)
    step = max(int(name[len("step_"):]) for name in os.listdir(root / "run") if name.startswith("step_")
               and name[len("step_"):].isdigit())
    return root / "run", step


def run_evaluate(capsys, *argv):
    code = evaluate.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@pytest.mark.slow
def test_the_train_state_of_an_ema_run_is_evaluated_with_the_weight_average(ema_run, tmp_path, capsys):
    run_dir, step = ema_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    code, out, err = run_evaluate(capsys, "--checkpoint", str(run / "train_state.pt"), "--save-outputs", "preds")
    assert code == 0, err
    assert f"evaluating the weight average (ema) of {run / 'train_state.pt'}, as step_N files hold it" in err
    assert f"saved preds to {run / f'step_{step}_all_preds'}.<rank> (1 file(s))" in err
    code_step, out_step, _ = run_evaluate(capsys, "--checkpoint", str(run / f"step_{step}"))
    assert code_step == 0 and json.loads(out) == json.loads(out_step)

    # The trained (not averaged) weights evaluate differently, so the comparison above can fail.
    torch.save(read_train_state(str(run / "train_state.pt")).model, run / "step_999")
    _, out_trained, _ = run_evaluate(capsys, "--checkpoint", str(run / "step_999"))
    assert json.loads(out_trained) != json.loads(out_step)
