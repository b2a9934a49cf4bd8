"""Text view of one example (puzzle_tools/show.py) and the task detection and grid decoding all the puzzle
tools share (puzzle_tools/grids.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from dataset.format import IGNORE_LABEL_ID, PuzzleDatasetMetadata
from puzzle_tools import show
from puzzle_tools.grids import (ARC, EMPTY, GENERIC, MAZE, SUDOKU, Task, decode_example, decode_tokens, detect_task,
                                wrong_cells)
from tool_datasets import (DEMOS, MAZE as MAZE_ROWS, MAZE_SOLUTION, TRAINING_PUZZLE, build_arc, identifier_names,
                           load_set, maze_tokens, save_label_predictions, write_maze, write_token_dataset)


def metadata(vocab_size, seq_len):
    return PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
                                 seq_len=seq_len, num_puzzle_identifiers=1, total_groups=1, mean_puzzle_examples=1,
                                 sets=["all"])


def test_detect_task():
    assert detect_task(metadata(11, 81)) == Task(SUDOKU, 9, 9)
    assert detect_task(metadata(6, 900)) == Task(MAZE, 30, 30)
    assert detect_task(metadata(6, 49)) == Task(MAZE, 7, 7)
    assert detect_task(metadata(12, 900)) == Task(ARC, 30, 30)
    assert detect_task(metadata(40, 25)) == Task(GENERIC, 5, 5)
    assert detect_task(metadata(6, 10)) == Task(GENERIC, 1, 10)  # maze vocabulary, but not a square


def test_decode_tokens_per_task():
    sudoku = decode_tokens(Task(SUDOKU, 9, 9), np.arange(81) % 11)
    assert sudoku[0].tolist() == [EMPTY, 0, 1, 2, 3, 4, 5, 6, 7]  # pad, blank, digits
    maze = decode_tokens(Task(MAZE, 2, 3), np.array([1, 2, 3, 4, 5, 0]))
    assert maze.tolist() == [[0, 1, 2], [3, 4, EMPTY]]
    generic = decode_tokens(Task(GENERIC, 1, 4), np.array([0, 7, IGNORE_LABEL_ID, 39]))
    assert generic.tolist() == [[0, 7, EMPTY, 39]]


def test_wrong_cells_over_shapes():
    label = np.array([[1, 2], [3, EMPTY]])
    assert wrong_cells(np.array([[1, 0], [3, 9]]), label).tolist() == [[False, True], [False, False]]
    # A larger prediction: every cell outside the label is wrong.
    assert wrong_cells(np.array([[1, 2, 5]]), label).tolist() == [[False, False, True]]


def test_decode_example_crops_arc_at_the_inputs_place():
    canvas = np.zeros((30, 30), dtype=np.uint8)
    canvas[3:5, 6:8] = [[2, 3], [4, 5]]
    canvas[5, 6:8] = canvas[3:5, 8] = 1
    prediction = canvas.copy()
    prediction[4, 7] = 11
    example = decode_example(Task(ARC, 30, 30), canvas.reshape(-1), canvas.reshape(-1), prediction.reshape(-1))
    assert example.input.tolist() == example.label.tolist() == [[0, 1], [2, 3]]
    assert example.prediction.tolist() == [[0, 1], [2, 9]] and example.wrong.tolist() == [[False, False], [False, True]]
    assert not example.exact


def spaced(rows, wrong=()):
    """Rows of one-character symbols as show prints them: each followed by a space, or `!` when wrong; the
    last column's marks left out when none is wrong."""
    marked = ["".join(symbol + ("!" if (r, c) in wrong else " ") for c, symbol in enumerate(row))
              for r, row in enumerate(rows)]
    return marked if any(c == len(rows[0]) - 1 for _, c in wrong) else [row[:-1] for row in marked]


def run_show(capsys, *argv):
    code = show.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_maze_with_prediction(tmp_path, capsys):
    dataset_dir = write_maze(tmp_path)
    # Example 0's prediction misses the path at (1, 2) (open, token 2) and marks a wall at (0, 0) open.
    save_label_predictions(str(tmp_path / "preds"), dataset_dir, {0: {1 * 7 + 2: 2, 0: 2}, 1: {}})
    code, out, err = run_show(capsys, "--dataset", dataset_dir, "--predictions", str(tmp_path / "preds"),
                              "--index", "0")
    assert code == 0 and err == []
    predicted = [" " + MAZE_SOLUTION[0][1:], MAZE_SOLUTION[1][:2] + " " + MAZE_SOLUTION[1][3:]] + MAZE_SOLUTION[2:]
    assert out == (["test/all example 0 of 3: puzzle 0, identifier 0 (<blank>), maze task", "input:"]
                   + spaced(MAZE_ROWS) + ["label:"] + spaced(MAZE_SOLUTION)
                   + ["prediction: 2 wrong cells (marked !), halting probability 0.500"]
                   + spaced(predicted, wrong={(0, 0), (1, 2)}))


def test_maze_rows_keep_the_grid_width(tmp_path, capsys):
    # No border walls: rows end in open cells (spaces), which must not be trimmed.
    rows, solution = ["S  ", "## ", "G  "], ["Soo", "##o", "Goo"]
    dataset_dir = write_token_dataset(tmp_path, "maze", maze_tokens(rows)[None], maze_tokens(solution)[None],
                                      vocab_size=6)
    for wrong_cell, wrong in ((None, ()), (2, {(0, 2)})):  # a wrong last column keeps its mark column
        predicted = {0: {} if wrong_cell is None else {wrong_cell: 2}}
        save_label_predictions(str(tmp_path / "preds"), dataset_dir, predicted, num_files=1)
        code, out, _ = run_show(capsys, "--dataset", dataset_dir, "--predictions", str(tmp_path / "preds"),
                                "--index", "0")
        assert code == 0
        assert out[2:5] == spaced(rows) == ["S    ", "# #  ", "G    "]
        prediction = [solution[0][:2] + " ", *solution[1:]] if wrong else solution
        assert out[-3:] == spaced(prediction, wrong)
        for grid_lines in (out[2:5], out[6:9], out[-3:]):
            assert len({len(line) for line in grid_lines}) == 1, out


def test_no_prediction_for_the_example(tmp_path, capsys):
    dataset_dir = write_maze(tmp_path)
    save_label_predictions(str(tmp_path / "preds"), dataset_dir, {1: {}})
    code, out, _ = run_show(capsys, "--dataset", dataset_dir, "--predictions", str(tmp_path / "preds"), "--index", "2")
    assert code == 0 and out[-1] == f"prediction: none in {tmp_path / 'preds'} for this example"


def test_sudoku_digits_and_blanks(tmp_path, capsys):
    solution = np.array([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)])
    question = solution.copy()
    question[0, :3] = 0
    dataset_dir = write_token_dataset(tmp_path, "sudoku", (question.reshape(1, 81) + 1), solution.reshape(1, 81) + 1,
                                      vocab_size=11)
    save_label_predictions(str(tmp_path / "preds"), dataset_dir, {0: {0: 10}})  # digit 9 where 1 belongs
    code, out, _ = run_show(capsys, "--dataset", dataset_dir, "--predictions", str(tmp_path / "preds"), "--index", "0")
    assert code == 0
    assert out[1:3] == ["input:", ". . . 4 5 6 7 8 9"]
    assert out[11:13] == ["label:", "1 2 3 4 5 6 7 8 9"]
    assert out[21:23] == ["prediction: 1 wrong cell (marked !), halting probability 0.500", "9!2 3 4 5 6 7 8 9"]
    assert len(out) == 31 and out[-1] == "9 1 2 3 4 5 6 7 8"


def test_arc_training_example_is_cropped_where_it_sits(tmp_path, capsys):
    dataset_dir = build_arc(tmp_path)
    capsys.readouterr()  # the builder's summary
    names = identifier_names(dataset_dir)
    train = load_set(dataset_dir, "train")
    # The training puzzle's original version: demonstrations, then its test pair (train split, shifted).
    puzzle = int(np.flatnonzero(np.array(names)[train["puzzle_identifiers"]] == TRAINING_PUZZLE[0])[0])
    first = int(train["puzzle_indices"][puzzle])
    pairs = DEMOS + TRAINING_PUZZLE[1]
    for offset, (input_rows, output_rows) in enumerate(pairs):
        code, out, _ = run_show(capsys, "--dataset", dataset_dir, "--split", "train", "--index", str(first + offset))
        assert code == 0
        assert out[0] == (f"train/all example {first + offset} of {len(train['inputs'])}: puzzle {puzzle}, "
                          f"identifier {names.index(TRAINING_PUZZLE[0])} ({TRAINING_PUZZLE[0]}), arc task")
        assert out[1:] == ["input:"] + spaced(input_rows) + ["label:"] + spaced(output_rows)
    # At least one of them was shifted on the canvas (else the crop origin would be untested).
    rows = train["inputs"][first:first + len(pairs)].reshape(-1, 30, 30)
    assert any(np.nonzero(canvas >= 2)[0].min() > 0 or np.nonzero(canvas >= 2)[1].min() > 0 for canvas in rows)


def test_bad_input_is_one_error_line(tmp_path, capsys):
    dataset_dir = write_maze(tmp_path)
    code, _, err = run_show(capsys, "--dataset", dataset_dir, "--index", "3")
    assert code == 2 and err == [f"error: --index 3: {dataset_dir}/test/all__inputs.npy holds examples 0..2"]
    code, _, err = run_show(capsys, "--dataset", dataset_dir, "--set", "other", "--index", "0")
    assert code == 2 and err == [f"error: {dataset_dir}/test/dataset.json: no set 'other' (sets: all)"]
    code, _, err = run_show(capsys, "--dataset", dataset_dir, "--split", "train", "--index", "0")
    assert code == 2 and err == [f"error: {dataset_dir}/train: split folder not found"]


@pytest.mark.slow
def test_runs_as_a_script(tmp_path):
    """`python puzzle_tools/show.py` as users run it (a fresh interpreter importing torch: several seconds)."""
    dataset_dir = write_maze(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))}
    script = os.path.join(REPO_ROOT, "puzzle_tools", "show.py")
    done = subprocess.run([sys.executable, script, "--dataset", dataset_dir, "--index", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[1] == "input:"
    done = subprocess.run([sys.executable, script, "--dataset", str(tmp_path / "absent"), "--index", "1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == f"error: {tmp_path / 'absent'}: dataset folder not found\n"
