"""Vote over the predictions for an ARC dataset's augmented versions and score them, as the reference
release's ARC evaluation does: pass@K, the ARC Prize score, and an ARC Prize submission file.

    python puzzle_tools/arc_vote.py --dataset data/arc-aug-1000 --predictions RUN/step_N_all_preds \\
        --k 1 2 10 100 1000 --submission submission.json

Every prediction row is mapped back to its original puzzle: its identifier names the version
(`<puzzle>_t<dihedral id>_<colour map>`), the input and predicted grids are cropped from the 30x30 canvas,
and the version's colour permutation and dihedral transform are undone. The row's input then tells which
of the puzzle's test inputs it answers. The candidate answers of a test input are ranked by their number
of votes (rows predicting them), ties by their mean halting probability sigmoid(q_halt_logit). The
submission holds the best-ranked candidates that are valid ARC grids (an empty crop is not), `[[0]]` where
none is.

Prints JSON: `pass@K` (fraction of the test split's puzzles all of whose test inputs have their answer among
the top K candidates), `arc_prize_score` (per puzzle the fraction of test inputs answered within 2 attempts,
averaged over puzzles), `num_puzzles`, `missing_puzzles` (no prediction at all; they count as unsolved) and
`unmatched_predictions` (rows matching no test input of the split: a sign of predictions for another
dataset).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Collection, Dict, List, Optional, Sequence

import numpy as np

from command_line import OneLineArgumentParser, exit_status, run_cli
from dataset.format import ARC_GRID_SIZE, ARC_NUM_COLOURS, IDENTIFIERS_FILE
from puzzle_tools.dataset_reader import NamedSplit, read_named_split
from puzzle_tools.grids import ARC
from puzzle_tools.predictions import Predictions, load_predictions
from puzzle_tools.tool_io import ToolInputError
from training.arc_score import (ATTEMPTS, TEST_SPLIT, VoteResult, expected_test_outputs, original_puzzles, score,
                                vote as vote_rows)
from training.run_folder import write_text

DEFAULT_KS = (1, 2, 10, 100, 1000)
NO_ANSWER = [[0]]  # the submission's attempt where no prediction exists


def split_puzzle_names(split: NamedSplit) -> List[str]:
    """The original puzzles with a version in the split, sorted."""
    identifiers = np.unique(np.concatenate([s.puzzle_identifiers for s in split.sets.values()]))
    return original_puzzles(split.identifier_name(int(i)) for i in identifiers)


def rank_answers(split: NamedSplit, predictions: Predictions,
                 puzzle_names: Optional[Collection[str]] = None) -> VoteResult:
    """Vote per test input of each original puzzle of the (test) split, or of `puzzle_names` only."""
    if split.task.kind != ARC:
        raise ToolInputError(f"{split.dataset_dir}: not an ARC dataset (vocab_size {split.metadata.vocab_size}, "
                             f"seq_len {split.metadata.seq_len})")
    all_names = split_puzzle_names(split)
    chosen_names = [name for name in all_names if puzzle_names is None or name in puzzle_names]
    test_pairs = expected_test_outputs(split.dataset_dir, chosen_names)
    foreign = (predictions.puzzle_identifiers < 0) | (predictions.puzzle_identifiers >= len(split.identifier_names))
    if foreign.any():
        raise ToolInputError(f"{predictions.prefix}: puzzle identifier {predictions.puzzle_identifiers[foreign][0]} "
                             f"is not in {os.path.join(split.dataset_dir, IDENTIFIERS_FILE)} "
                             f"({len(split.identifier_names)} identifiers); predictions of another dataset?")
    return vote_rows(test_pairs, split.identifier_names, predictions.puzzle_identifiers, predictions.inputs,
                     predictions.preds, predictions.q_halt_logits, other_puzzles=set(all_names))


def is_submittable(grid: np.ndarray) -> bool:
    """Whether ARC Prize accepts the grid: 1-30 rows of equal length 1-30, colours 0-9. A crop is empty
    (0x0) when the predicted canvas holds no colour at its top-left cell."""
    return (grid.ndim == 2 and 1 <= grid.shape[0] <= ARC_GRID_SIZE and 1 <= grid.shape[1] <= ARC_GRID_SIZE
            and 0 <= grid.min() and grid.max() < ARC_NUM_COLOURS)


def submission(result: VoteResult) -> Dict[str, List[Dict[str, list]]]:
    """ARC Prize submission: puzzle -> per test input {"attempt_1": grid, "attempt_2": grid}, the best-ranked
    submittable candidates (pass@K still counts the others, as wrong answers)."""
    entries = {}
    for name, tests in sorted(result.tests.items()):
        entries[name] = []
        for test in tests:
            submittable = [candidate.grid for candidate in test.candidates if is_submittable(candidate.grid)]
            attempts = [grid.tolist() for grid in submittable[:ATTEMPTS]] or [NO_ANSWER]
            attempts += [attempts[0]] * (ATTEMPTS - len(attempts))  # a lone answer is tried twice
            entries[name].append({f"attempt_{number}": grid for number, grid in enumerate(attempts, start=1)})
    return entries


def vote_predictions(dataset_dir: str, prediction_prefix: str) -> VoteResult:
    split = read_named_split(dataset_dir, TEST_SPLIT)
    predictions = load_predictions(prediction_prefix, split.metadata.blank_identifier_id, split.metadata.pad_id,
                                   seq_len=split.metadata.seq_len)
    return rank_answers(split, predictions)


def vote(dataset_dir: str, prediction_prefix: str, ks: Sequence[int] = DEFAULT_KS,
         submission_path: Optional[str] = None) -> dict:
    """Scores of the prediction files `<prediction_prefix>.<rank>` on the dataset's test split (see score);
    with `submission_path`, the ARC Prize submission is written there too."""
    result = vote_predictions(dataset_dir, prediction_prefix)
    if submission_path:
        write_text(submission_path, json.dumps(submission(result)))
    return score(result, ks)


def parse_args(argv=None) -> argparse.Namespace:
    summary, _, details = __doc__.partition("\n\n")
    parser = OneLineArgumentParser(description=summary, epilog=details,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, metavar="DIR",
                        help="ARC dataset folder (its test split, identifiers.json and test_puzzles.json)")
    parser.add_argument("--predictions", required=True, metavar="PREFIX",
                        help="prediction files PREFIX.<rank> saved by evaluate.py (or one file)")
    parser.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS), metavar="K",
                        help=f"report pass@K for these K (default {' '.join(map(str, DEFAULT_KS))})")
    parser.add_argument("--submission", metavar="FILE", help="also write an ARC Prize submission.json here")
    args = parser.parse_args(argv)
    if any(k < 1 for k in args.k):
        parser.error(f"--k values must be at least 1, got {args.k}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    return exit_status(lambda: print(json.dumps(vote(args.dataset, args.predictions, args.k, args.submission),
                                                indent=2)))


if __name__ == "__main__":
    run_cli(main)
