"""evaluate.py on an ARC dataset: predictions saved by default (argmax tokens, no padding rows) and
`--arc-vote` scoring them after the evaluation, `--submission` writing the ARC Prize file in the same step."""
import json
import os

import numpy as np
import pytest
import torch

import evaluate
from puzzle_tools.arc_vote import is_submittable
from training import run_folder
from training.distributed import DistributedContext
from training.loop import run_training

from tiny_runs import make_config
from tool_datasets import EVALUATION_PUZZLES, build_arc

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


def test_arc_evaluation_saves_predictions_and_votes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = build_arc(tmp_path)
    run_dir = tmp_path / "run"
    # Two epochs: one epoch of these 13 examples fills no batch of 16, and a run of no step is refused.
    run_training(make_config(data, f"checkpoint_path={run_dir}", "epochs=2", "eval_interval=2",
                             "arch.halt_max_steps=1"), CPU)
    weights = run_folder.latest_weights_path(str(run_dir))
    assert os.path.basename(weights) == "step_1"  # the last step, not step_best
    capsys.readouterr()
    submission_path = tmp_path / "out" / "submission.json"
    assert evaluate.main(["--checkpoint", weights, "--arc-vote", "--vote-k", "1", "2",
                          "--submission", str(submission_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"all", "arc_vote"}
    vote = printed["arc_vote"]
    assert set(vote) >= {"pass@1", "pass@2"} and 0 <= vote["pass@1"] <= vote["pass@2"] <= 1
    # The submission, written in the same step: every test input of every puzzle, two valid grids each.
    submission = json.loads(submission_path.read_text())
    assert {name: len(tests) for name, tests in submission.items()} == \
        {name: len(tests) for name, tests in EVALUATION_PUZZLES.items()}
    assert all(set(test) == {"attempt_1", "attempt_2"} and all(is_submittable(np.array(grid)) for grid in test.values())
               for tests in submission.values() for test in tests)

    saved = torch.load(f"{weights}_all_preds.0", weights_only=True)
    test_examples = len(np.load(os.path.join(data, "test", "all__inputs.npy")))
    assert test_examples % 16 != 0  # so the last batch of 16 is padded
    assert set(saved) == {"inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits"}
    assert saved["preds"].dtype == torch.uint8 and saved["preds"].shape == (test_examples, 900)
    assert len(saved["inputs"]) == test_examples  # the padded rows of the last batch are left out


def test_submission_needs_arc_vote(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.parse_args(["--checkpoint", str(tmp_path / "step_1"), "--submission", str(tmp_path / "s.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --submission needs --arc-vote"
