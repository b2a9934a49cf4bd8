"""puzzle_tools/ood.py sudoku-score: accuracy and valid solutions of hand-made Sudoku predictions."""
import json
import os

import numpy as np
import pytest
import torch

from puzzle_tools import ood
from sudoku_folders import solved_grid, sudoku_arrays, write_sudoku


def one_line_error(capsys, argv, message):
    capsys.readouterr()  # progress bars of earlier commands
    assert ood.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


def swap_digits(grid, a, b):
    return np.where(grid == a, b, np.where(grid == b, a, grid))


def tokens(grid):
    return torch.tensor(grid.reshape(1, 81) + 1)


@pytest.fixture
def scored(tmp_path):
    """Hand-made predictions of two sets' four puzzles, in two rank files and in neither set order."""
    answer = solved_grid()
    clue_cells = np.zeros((9, 9), dtype=bool)
    clue_cells[::2, ::3] = True  # 15 givens; cells (0, 1) and (0, 2) stay blank
    question_a = np.where(clue_cells & (answer > 2), answer, 0)  # shows no 1 or 2
    question_b = np.where(clue_cells, answer, 0)  # shows a 1
    question_b2 = question_b.copy()
    question_b2[0, 0] = 0
    assert (question_b == 1).any() and not np.isin(question_a, [1, 2]).any()
    dataset = write_sudoku(tmp_path / "data", sudoku_arrays([question_a], [answer]), {
        "drop20": sudoku_arrays([question_a, swap_digits(question_a, 3, 4)], [answer, swap_digits(answer, 3, 4)]),
        "drop50": sudoku_arrays([question_b, question_b2], [answer, answer])})
    broken = answer.copy()
    broken[0, [1, 2]] = broken[0, [2, 1]]  # two blank cells of a row swapped: their columns repeat digits
    pad_inputs, pad_labels = torch.zeros(1, 81, dtype=torch.long), torch.full((1, 81), -100)
    # Rank 0: drop20's first puzzle solved exactly; drop50's first answered with 1 and 2 swapped (a valid grid,
    # 18 cells off, but the input shows a 1); a padding row.
    rank0 = dict(inputs=torch.cat([tokens(question_a), tokens(question_b), pad_inputs]),
                 labels=torch.cat([tokens(answer), tokens(answer), pad_labels]),
                 preds=torch.cat([tokens(answer), tokens(swap_digits(answer, 1, 2)), tokens(answer)]).to(torch.uint8))
    # Rank 1, as logits (one-hot at the predicted token): drop50's second puzzle answered `broken` (2 cells off),
    # drop20's second solved exactly.
    rank1_preds = torch.cat([tokens(broken), tokens(swap_digits(answer, 3, 4))])
    rank1 = dict(inputs=torch.cat([tokens(question_b2), tokens(swap_digits(question_a, 3, 4))]),
                 labels=torch.cat([tokens(answer), tokens(swap_digits(answer, 3, 4))]),
                 logits=torch.nn.functional.one_hot(rank1_preds, 11).float())
    prefix = str(tmp_path / "step_5_all_preds")
    torch.save(rank0, f"{prefix}.0")
    torch.save(rank1, f"{prefix}.1")
    return dataset, prefix


def test_sudoku_score_counts_accuracy_and_valid_solutions(scored, capsys):
    dataset, prefix = scored
    assert ood.main(["sudoku-score", "--dataset", dataset, "--predictions", prefix, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["drop20"] == {"examples": 2, "token_accuracy": 1.0, "exact_accuracy": 1.0, "valid_solution": 1.0}
    assert scores["drop50"] == pytest.approx({"examples": 2, "token_accuracy": (63 / 81 + 79 / 81) / 2,
                                              "exact_accuracy": 0.0, "valid_solution": 0.0})
    assert ood.main(["sudoku-score", "--dataset", dataset, "--predictions", prefix]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["set", "examples", "token_accuracy", "exact_accuracy", "valid_solution"]
    assert lines[1].split() == ["drop20", "2", "1.0000", "1.0000", "1.0000"]


def test_a_valid_other_solution_keeping_the_givens_counts_as_valid(scored, capsys):
    dataset, prefix = scored
    saved = torch.load(f"{prefix}.0", weights_only=True)
    saved["preds"][0] = torch.tensor(swap_digits(solved_grid(), 1, 2).reshape(81) + 1)  # question_a shows no 1, 2
    torch.save(saved, f"{prefix}.0")
    assert ood.main(["sudoku-score", "--dataset", dataset, "--predictions", prefix, "--json"]) == 0
    drop20 = json.loads(capsys.readouterr().out)["drop20"]
    assert drop20 == pytest.approx({"examples": 2, "token_accuracy": (63 / 81 + 1) / 2, "exact_accuracy": 0.5,
                                    "valid_solution": 1.0})


def test_sudoku_score_errors_name_the_file(scored, tmp_path, capsys):
    dataset, prefix = scored
    one_line_error(capsys, ["sudoku-score", "--dataset", dataset, "--predictions", str(tmp_path / "none")],
                   f"error: {tmp_path / 'none'}: no prediction files (looked for {tmp_path / 'none'}.0, "
                   f"{tmp_path / 'none'}.1, ...)")
    os.rename(f"{prefix}.1", str(tmp_path / "elsewhere"))
    one_line_error(capsys, ["sudoku-score", "--dataset", dataset, "--predictions", prefix],
                   f"error: the predictions cover 2 of the 4 examples of {dataset}/test")
    torch.save(dict(inputs=torch.ones(1, 81), labels=torch.ones(1, 81)), f"{prefix}.1")
    one_line_error(capsys, ["sudoku-score", "--dataset", dataset, "--predictions", prefix],
                   f"error: {prefix}.1: no key 'preds' (argmax token ids) or 'logits' (the reference's logits)")
    torch.save(dict(inputs=torch.ones(1, 81), labels=torch.ones(1, 81), preds=torch.ones(1, 81)), f"{prefix}.1")
    one_line_error(capsys, ["sudoku-score", "--dataset", dataset, "--predictions", prefix],
                   f"error: {prefix}.1, row 0: its inputs and labels match no (further) example of {dataset}/test; "
                   f"were the predictions made on it?")
