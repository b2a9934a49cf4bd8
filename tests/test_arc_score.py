"""ARC scores during training (training/arc_score.py, training/best_checkpoint.py): the scorer on hand-planned
answers, the best checkpoint by pass@2, and a tiny ARC run that logs the scores at each evaluation."""
import json
import os

import numpy as np
import pytest
import torch

from puzzle_tools import arc_vote
from training import run_folder
from training.arc_score import ArcScorer, ArcScores
from training.best_checkpoint import BestCheckpoint
from training.distributed import DistributedContext
from training.loop import run_training

from tiny_runs import make_config, read_metrics
from tool_datasets import EVALUATION_PUZZLES, build_arc, encode_answer, grid, identifier_names, load_set

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))
ARC_FIGURES = {"arc/pass@1", "arc/pass@2", "arc/prize_score"}


@pytest.fixture(scope="module")
def arc_dataset(tmp_path_factory):
    return build_arc(tmp_path_factory.mktemp("arc_score"))


def test_scorer_votes_an_evaluations_outputs(arc_dataset):
    # Every test example answered right, except d4 (empty canvases) and c3's second test input (c3's first).
    names = identifier_names(arc_dataset)
    test = load_set(arc_dataset, "test")
    preds = np.zeros_like(test["inputs"])
    identifiers = np.repeat(test["puzzle_identifiers"], np.diff(test["puzzle_indices"]))
    for puzzle, identifier in enumerate(test["puzzle_identifiers"]):
        name = names[identifier]
        original = name.split("_")[0]
        for test_index, example in enumerate(range(test["puzzle_indices"][puzzle], test["puzzle_indices"][puzzle + 1])):
            answer = EVALUATION_PUZZLES[original][0 if original == "c3" else test_index][1]
            if original != "d4":
                preds[example] = encode_answer(grid(answer), name)
    outputs = {"inputs": torch.from_numpy(test["inputs"]), "puzzle_identifiers": torch.from_numpy(identifiers),
               "preds": torch.from_numpy(preds), "q_halt_logits": torch.zeros(len(preds))}
    scores = ArcScorer(arc_dataset).score(outputs)
    # solved: a1 b2 e5 of 5; the prize counts c3's first test input: (1 + 1 + 1/2 + 0 + 1) / 5.
    assert scores == ArcScores(pass_at_1=pytest.approx(0.6), pass_at_2=pytest.approx(0.6), prize_score=pytest.approx(0.7))
    assert ArcScorer.for_dataset(os.path.dirname(arc_dataset)) is None  # no test_puzzles.json: not ARC


def test_best_checkpoint_keeps_the_highest_pass_at_2_and_carries_over_a_resume(tmp_path):
    best = BestCheckpoint(str(tmp_path), resumed=False)
    weights = {"w": torch.zeros(2)}
    considered = []
    for step, pass_at_2 in [(1, 0.2), (2, 0.2), (3, 0.4), (4, 0.3)]:
        weights = {"w": torch.full((2,), float(step))}
        considered.append(best.consider(step, {"arc/pass@1": 0.1, "arc/pass@2": pass_at_2}, lambda: weights))
    assert considered == [True, False, True, False]  # ties keep the earlier weights
    assert run_folder.read_best_record(str(tmp_path)) == {"step": 3, "arc/pass@1": 0.1, "arc/pass@2": 0.4}
    assert torch.equal(run_folder.read_weights(str(tmp_path / "step_best"))["w"], torch.full((2,), 3.0))
    resumed = BestCheckpoint(str(tmp_path), resumed=True)
    assert not resumed.consider(5, {"arc/pass@2": 0.4}, lambda: weights)
    assert BestCheckpoint(str(tmp_path), resumed=False).consider(5, {"arc/pass@2": 0.0}, lambda: weights)


@pytest.mark.parametrize("record", ['{"step": 3}', '{"step": 3, "arc/pass@2": "0.4"}', '{"step": 3, "arc/pass@2": null}'])
def test_a_best_record_without_its_score_is_refused(tmp_path, record):
    # Without its pass@2, any later evaluation would replace step_best, better or not.
    (tmp_path / "best.json").write_text(record)
    with pytest.raises(run_folder.RunFolderError) as error:
        BestCheckpoint(str(tmp_path), resumed=True)
    assert str(error.value).startswith(f"{tmp_path / 'best.json'}: expected the number 'arc/pass@2' of step_best")


@pytest.mark.slow
def test_a_resume_with_a_damaged_best_record_stops_before_writing(arc_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "run"
    tiny = ["arch.halt_max_steps=1", "arch.hidden_size=16", "log_interval=100", "eval_interval=2"]
    run_training(make_config(arc_dataset, f"checkpoint_path={run_dir}", "epochs=2", *tiny), CPU)
    (run_dir / "best.json").write_bytes(b"\xff\xfe\x00{")
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    with pytest.raises(run_folder.RunFolderError, match="best.json"):
        run_training(make_config(arc_dataset, f"resume={run_dir}", "epochs=4", *tiny), CPU)
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before  # no resume row, no config


@pytest.mark.slow
def test_a_tiny_arc_run_logs_its_scores_at_each_evaluation_and_keeps_the_best(arc_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "run"
    config = make_config(arc_dataset, f"checkpoint_path={run_dir}", "epochs=4", "eval_interval=2",
                         "arch.halt_max_steps=1", "arch.hidden_size=16", "log_interval=100",
                         "eval_save_outputs=[inputs,puzzle_identifiers,preds,q_halt_logits]")
    run_training(config, CPU)
    evaluations = [row for row in read_metrics(run_dir) if "all/accuracy" in row]
    assert len(evaluations) == 2 and all(ARC_FIGURES <= set(row) for row in evaluations)
    for row in evaluations:  # the scores puzzle_tools/arc_vote.py gives the evaluation's saved predictions
        voted = arc_vote.vote(arc_dataset, str(run_dir / f"step_{row['step']}_all_preds"), [1, 2])
        assert (row["arc/pass@1"], row["arc/pass@2"], row["arc/prize_score"]) == (
            voted["pass@1"], voted["pass@2"], voted["arc_prize_score"])
    best_row = max(evaluations, key=lambda row: (row["arc/pass@2"], -row["step"]))
    with open(run_dir / "best.json") as f:
        assert json.load(f) == {"step": best_row["step"], **{name: best_row[name] for name in ARC_FIGURES}}
    best, that_step = (run_folder.read_weights(str(run_dir / name)) for name in ("step_best", f"step_{best_row['step']}"))
    assert best.keys() == that_step.keys() and all(torch.equal(best[k], that_step[k]) for k in best)
