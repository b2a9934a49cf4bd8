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
from dataclasses import dataclass, field
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from command_line import OneLineArgumentParser, exit_status, run_cli
from dataset.format import ARC_GRID_SIZE, ARC_NUM_COLOURS, IDENTIFIERS_FILE, TEST_PUZZLES_FILE, read_test_puzzles
from puzzle_tools.dataset_reader import NamedSplit, read_named_split
from puzzle_tools.grids import ARC, ArcVersion, crop_arc_canvas, parse_arc_version, to_original_frame
from puzzle_tools.predictions import Predictions, load_predictions
from puzzle_tools.tool_io import ToolInputError
from training.run_folder import write_text

DEFAULT_KS = (1, 2, 10, 100, 1000)
TEST_SPLIT = "test"
ATTEMPTS = 2  # the ARC Prize scores two attempts per test input
NO_ANSWER = [[0]]  # the submission's attempt where no prediction exists

GridKey = Tuple[Tuple[int, ...], bytes]


def grid_key(grid) -> GridKey:
    grid = np.asarray(grid, dtype=np.int8)
    return grid.shape, grid.tobytes()


@dataclass
class Candidate:
    """One distinct answer to a test input, with the votes of the rows predicting it."""
    grid: np.ndarray
    votes: int = 0
    halt_probability_sum: float = 0.0

    @property
    def mean_halt_probability(self) -> float:
        return self.halt_probability_sum / self.votes


@dataclass
class TestInputAnswers:
    """A test input of an original puzzle: its expected output and the voted answers, best first."""
    expected: np.ndarray
    candidates: List[Candidate] = field(default_factory=list)

    def rank_of_expected(self) -> Optional[int]:
        """0-based rank of the expected output among the candidates; None when no candidate is it."""
        expected = grid_key(self.expected)
        return next((rank for rank, candidate in enumerate(self.candidates)
                     if grid_key(candidate.grid) == expected), None)


@dataclass
class VoteResult:
    tests: Dict[str, List[TestInputAnswers]]  # original puzzle -> its test inputs, in test order
    unmatched_predictions: int


def split_puzzle_names(split: NamedSplit) -> List[str]:
    """The original puzzles with a version in the split, sorted."""
    identifiers = np.unique(np.concatenate([s.puzzle_identifiers for s in split.sets.values()]))
    return sorted({parse_arc_version(split.identifier_name(int(i))).puzzle for i in identifiers})


def expected_test_outputs(dataset_dir: str, puzzle_names: Sequence[str]) -> Dict[str, List[Tuple[list, list]]]:
    """puzzle -> its test (input, output) grids from `test_puzzles.json`."""
    test_puzzles = read_test_puzzles(dataset_dir)
    pairs = {}
    for name in puzzle_names:
        if name not in test_puzzles:
            raise ToolInputError(f"{dataset_dir}/{TEST_PUZZLES_FILE}: no puzzle {name}, which the "
                                 f"{TEST_SPLIT} split holds")
        tests = test_puzzles[name]["test"]
        if not tests or any("output" not in pair for pair in tests):
            raise ToolInputError(f"{dataset_dir}/{TEST_PUZZLES_FILE}: puzzle {name} needs test pairs with an "
                                 f"\"output\"")
        pairs[name] = [(pair["input"], pair["output"]) for pair in tests]
    return pairs


def rank_answers(split: NamedSplit, predictions: Predictions,
                 puzzle_names: Optional[Collection[str]] = None) -> VoteResult:
    """Vote per test input of each original puzzle of the (test) split, or of `puzzle_names` only."""
    if split.task.kind != ARC:
        raise ToolInputError(f"{split.dataset_dir}: not an ARC dataset (vocab_size {split.metadata.vocab_size}, "
                             f"seq_len {split.metadata.seq_len})")
    all_names = split_puzzle_names(split)
    known_names = set(all_names)
    chosen_names = [name for name in all_names if puzzle_names is None or name in puzzle_names]
    test_pairs = expected_test_outputs(split.dataset_dir, chosen_names)
    # puzzle -> test input grid -> indices of the test inputs with that grid (rarely more than one).
    test_indices: Dict[str, Dict[GridKey, List[int]]] = {}
    for name, pairs in test_pairs.items():
        for index, (test_input, _) in enumerate(pairs):
            test_indices.setdefault(name, {}).setdefault(grid_key(test_input), []).append(index)
    votes: Dict[str, List[Dict[GridKey, Candidate]]] = {name: [{} for _ in pairs] for name, pairs in test_pairs.items()}

    foreign = (predictions.puzzle_identifiers < 0) | (predictions.puzzle_identifiers >= len(split.identifier_names))
    if foreign.any():
        raise ToolInputError(f"{predictions.prefix}: puzzle identifier {predictions.puzzle_identifiers[foreign][0]} "
                             f"is not in {os.path.join(split.dataset_dir, IDENTIFIERS_FILE)} "
                             f"({len(split.identifier_names)} identifiers); predictions of another dataset?")
    versions: Dict[int, ArcVersion] = {}
    halt_probabilities = predictions.halt_probabilities
    unmatched = 0
    for row in tqdm(range(len(predictions)), desc="vote", unit="row", mininterval=1.0):
        identifier = int(predictions.puzzle_identifiers[row])
        if identifier not in versions:
            versions[identifier] = parse_arc_version(split.identifier_name(identifier))
        version = versions[identifier]
        if version.puzzle not in test_indices:
            unmatched += version.puzzle not in known_names
            continue
        input_grid = to_original_frame(crop_arc_canvas(predictions.inputs[row]), version)
        indices = test_indices[version.puzzle].get(grid_key(input_grid))
        if indices is None:
            unmatched += 1
            continue
        answer = to_original_frame(crop_arc_canvas(predictions.preds[row]), version)
        for index in indices:
            candidate = votes[version.puzzle][index].setdefault(grid_key(answer), Candidate(answer))
            candidate.votes += 1
            candidate.halt_probability_sum += float(halt_probabilities[row])

    tests = {}
    for name, pairs in test_pairs.items():
        tests[name] = [
            TestInputAnswers(np.array(output), sorted(candidates.values(), reverse=True,
                                                      key=lambda c: (c.votes, c.mean_halt_probability)))
            for (_, output), candidates in zip(pairs, votes[name])]
    return VoteResult(tests, unmatched)


def score(result: VoteResult, ks: Sequence[int]) -> dict:
    """pass@K for each K, the ARC Prize score, the puzzle count and the puzzles without predictions."""
    solved = {k: 0 for k in ks}
    prize_total = 0.0
    for tests in result.tests.values():
        ranks = [test.rank_of_expected() for test in tests]
        for k in ks:
            solved[k] += all(rank is not None and rank < k for rank in ranks)
        prize_total += sum(rank is not None and rank < ATTEMPTS for rank in ranks) / len(tests)
    num_puzzles = len(result.tests)
    return {**{f"pass@{k}": solved[k] / num_puzzles for k in ks},
            "arc_prize_score": prize_total / num_puzzles,
            "num_puzzles": num_puzzles,
            "missing_puzzles": sorted(name for name, tests in result.tests.items()
                                      if not any(test.candidates for test in tests)),
            "unmatched_predictions": result.unmatched_predictions}


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
    predictions = load_predictions(prediction_prefix, split.metadata.blank_identifier_id, split.metadata.pad_id)
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
