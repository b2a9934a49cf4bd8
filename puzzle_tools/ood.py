"""Score Sudoku predictions on the out-of-distribution variants (dataset/build_ood_dataset.py writes them) or
on any Sudoku dataset: per test set, how many cells and grids match the original solution, and how many
predictions are valid solutions of the puzzle as shown.

    python evaluate.py --checkpoint RUN/step_N --data-path data/sudoku-givens --save-outputs inputs,labels,preds
    python puzzle_tools/ood.py sudoku-score --dataset data/sudoku-givens --predictions RUN/step_N_all_preds

sudoku-score reads the prediction files `PREFIX.<rank>` (puzzle_tools/predictions.py; they need `inputs`,
`labels` and `preds` or `logits`), matches each prediction to its example of --dataset's test split by
inputs and labels, and reports per set: token_accuracy (cells equal to the original solution),
exact_accuracy (whole grid equal to it) and valid_solution (a complete, valid Sudoku grid that keeps every
given shown in the input; a puzzle with givens removed may have other solutions than the original).
Bad input is one `error:` line naming the file, set or flag, and exit status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Dict, List, Tuple

import numpy as np

from command_line import OneLineArgumentParser, exit_status, run_cli
from dataset.format import (SUDOKU_BLANK, SUDOKU_SEQ_LEN, SUDOKU_SIDE, SUDOKU_VOCAB_SIZE, DatasetSplit, loss_labels,
                            read_split)
from puzzle_tools.grids import SUDOKU, detect_task
from puzzle_tools.predictions import Predictions, load_predictions
from puzzle_tools.tool_io import ToolInputError

TEST_SPLIT = "test"


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    score = commands.add_parser("sudoku-score", help="score Sudoku predictions against solutions and givens")
    score.add_argument("--dataset", required=True, help="the dataset folder the predictions were made on")
    score.add_argument("--predictions", required=True, metavar="PREFIX",
                       help="prefix of the prediction files PREFIX.<rank> (evaluate.py: RUN/step_N_all_preds)")
    score.add_argument("--json", action="store_true", help="print the scores as JSON")
    return parser.parse_args(argv)


def example_key(inputs: np.ndarray, labels: np.ndarray) -> bytes:
    """A 16-byte digest of one example, so the lookup of a large test split stays small in memory."""
    return hashlib.blake2b(inputs.astype(np.int16).tobytes() + labels.astype(np.int16).tobytes(),
                           digest_size=16).digest()


def assign_sets(split: DatasetSplit, predictions: Predictions) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(inputs, labels, predicted tokens) of each test set's predictions, found by their inputs and labels
    (the saved order interleaves ranks)."""
    split_dir = os.path.join(split.dataset_dir, split.split)
    remaining: Dict[bytes, List[str]] = {}  # example -> the sets holding it, one entry per copy
    for set_name, puzzle_set in split.sets.items():
        # As the loader hands labels to the model, and so to the prediction files.
        labels = loss_labels(puzzle_set.labels, split.metadata)
        for inputs_row, labels_row in zip(np.asarray(puzzle_set.inputs), labels):
            remaining.setdefault(example_key(inputs_row, labels_row), []).append(set_name)
    total = sum(len(names) for names in remaining.values())
    rows: Dict[str, List[int]] = {name: [] for name in split.metadata.sets}
    for row, (inputs, labels) in enumerate(zip(predictions.inputs, predictions.labels)):
        owners = remaining.get(example_key(inputs, labels))
        if not owners:
            path, file_row = predictions.source_of(row)
            raise ToolInputError(f"{path}, row {file_row}: its inputs and labels match no (further) example of "
                                 f"{split_dir}; were the predictions made on it?")
        rows[owners.pop()].append(row)
    covered = sum(len(r) for r in rows.values())
    if covered != total:
        raise ToolInputError(f"the predictions cover {covered} of the {total} examples of {split_dir}")
    tokens = [predictions.inputs, predictions.labels, predictions.preds]
    return {name: tuple(array[set_rows].astype(np.int64) for array in tokens)
            for name, set_rows in rows.items() if set_rows}


def valid_solutions(inputs: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Whether each predicted grid is a solved Sudoku (digits 1-9 once per row, column, box) keeping the givens."""
    grids = (predicted - 1).reshape(-1, SUDOKU_SIDE, SUDOKU_SIDE)
    boxes = grids.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, SUDOKU_SIDE, SUDOKU_SIDE)
    digits = np.arange(1, 10)
    solved = np.ones(len(grids), dtype=bool)
    for units in (grids, grids.transpose(0, 2, 1), boxes):
        solved &= np.all(np.sort(units, axis=2) == digits, axis=(1, 2))
    keeps_givens = np.all((inputs == SUDOKU_BLANK) | (predicted == inputs), axis=1)
    return solved & keeps_givens


def score_sudoku(dataset_dir: str, prediction_prefix: str) -> Dict[str, Dict[str, float]]:
    split = read_split(dataset_dir, TEST_SPLIT)
    metadata = split.metadata
    if detect_task(metadata).kind != SUDOKU:
        raise ToolInputError(f"{os.path.join(dataset_dir, TEST_SPLIT)}: not a Sudoku dataset (seq_len "
                             f"{metadata.seq_len}, vocab_size {metadata.vocab_size}; expected {SUDOKU_SEQ_LEN} and "
                             f"{SUDOKU_VOCAB_SIZE})")
    predictions = load_predictions(prediction_prefix, metadata.blank_identifier_id, metadata.pad_id,
                                   required_keys=("labels",), seq_len=metadata.seq_len)
    scores = {}
    for set_name, (inputs, labels, predicted) in assign_sets(split, predictions).items():
        correct = predicted == labels
        scores[set_name] = dict(examples=len(inputs), token_accuracy=float(correct.mean()),
                                exact_accuracy=float(correct.all(axis=1).mean()),
                                valid_solution=float(valid_solutions(inputs, predicted).mean()))
    return scores


def score_table(scores: Dict[str, Dict[str, float]]) -> str:
    lines = [f"{'set':<12}{'examples':>10}{'token_accuracy':>16}{'exact_accuracy':>16}{'valid_solution':>16}"]
    for set_name, s in scores.items():
        lines.append(f"{set_name:<12}{s['examples']:>10}{s['token_accuracy']:>16.4f}{s['exact_accuracy']:>16.4f}"
                     f"{s['valid_solution']:>16.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)

    def run() -> None:
        scores = score_sudoku(args.dataset, args.predictions)
        print(json.dumps(scores, indent=2) if args.json else score_table(scores))

    return exit_status(run)


if __name__ == "__main__":
    run_cli(main)
