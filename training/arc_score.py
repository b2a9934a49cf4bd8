"""ARC scores as the reference release's ARC evaluation computes them: the predictions for a puzzle's
augmented versions vote per test input, then pass@K and the ARC Prize score. Training scores each
evaluation with it; puzzle_tools/arc_vote.py scores saved predictions and writes submissions with it.

Every prediction row is mapped back to its original puzzle: its identifier names the version
(`<puzzle>_t<dihedral id>_<colour map>`), the input and predicted grids are cropped from the 30x30 canvas,
and the version's colour permutation and dihedral transform are undone. The row's input then tells which
of the puzzle's test inputs it answers. The candidate answers of a test input are ranked by their number
of votes (rows predicting them), ties by their mean halting probability sigmoid(q_halt_logit).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Collection, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from dataset.arc_versions import ArcVersion, crop_arc_canvas, parse_arc_version, to_original_frame
from dataset.format import (IDENTIFIERS_FILE, TEST_PUZZLES_FILE, DatasetFormatError, read_identifiers, read_split,
                            read_test_puzzles)

TEST_SPLIT = "test"
ATTEMPTS = 2  # the ARC Prize scores two attempts per test input
# What voting needs of each prediction row (evaluation outputs of these names).
VOTING_OUTPUTS = ("inputs", "puzzle_identifiers", "preds", "q_halt_logits")

GridKey = Tuple[Tuple[int, ...], bytes]
TestPairs = Dict[str, List[Tuple[list, list]]]  # puzzle -> its test (input, output) grids


def grid_key(grid) -> GridKey:
    grid = np.asarray(grid, dtype=np.int8)
    return grid.shape, grid.tobytes()


def halt_probabilities(q_halt_logits: np.ndarray) -> np.ndarray:
    """sigmoid(q_halt_logits): the Q head's confidence that a row's answer is final."""
    return 1.0 / (1.0 + np.exp(-q_halt_logits.astype(np.float64)))


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


def original_puzzles(version_names: Iterable[str]) -> List[str]:
    """The original puzzles of these versions' names, sorted."""
    return sorted({parse_arc_version(name).puzzle for name in version_names})


def expected_test_outputs(dataset_dir: str, puzzle_names: Sequence[str]) -> TestPairs:
    """puzzle -> its test (input, output) grids from `test_puzzles.json`."""
    test_puzzles = read_test_puzzles(dataset_dir)
    pairs = {}
    for name in puzzle_names:
        if name not in test_puzzles:
            raise DatasetFormatError(f"{dataset_dir}/{TEST_PUZZLES_FILE}: no puzzle {name}, which the "
                                     f"{TEST_SPLIT} split holds")
        tests = test_puzzles[name]["test"]
        if not tests or any("output" not in pair for pair in tests):
            raise DatasetFormatError(f"{dataset_dir}/{TEST_PUZZLES_FILE}: puzzle {name} needs test pairs with an "
                                     f"\"output\"")
        pairs[name] = [(pair["input"], pair["output"]) for pair in tests]
    return pairs


def vote(test_pairs: TestPairs, identifier_names: Sequence[str], puzzle_identifiers: np.ndarray,
         inputs: np.ndarray, preds: np.ndarray, q_halt_logits: np.ndarray,
         other_puzzles: Collection[str] = ()) -> VoteResult:
    """Vote per test input of each puzzle of `test_pairs` with the prediction rows (identifiers [N] below
    len(identifier_names), input and predicted canvases [N, 900], halting logits [N]). Rows of puzzles in
    neither `test_pairs` nor `other_puzzles` (the split's puzzles left out) count as unmatched."""
    # puzzle -> test input grid -> indices of the test inputs with that grid (rarely more than one).
    test_indices: Dict[str, Dict[GridKey, List[int]]] = {}
    for name, pairs in test_pairs.items():
        for index, (test_input, _) in enumerate(pairs):
            test_indices.setdefault(name, {}).setdefault(grid_key(test_input), []).append(index)
    votes: Dict[str, List[Dict[GridKey, Candidate]]] = {name: [{} for _ in pairs] for name, pairs in test_pairs.items()}

    versions: Dict[int, ArcVersion] = {}
    probabilities = halt_probabilities(q_halt_logits)
    unmatched = 0
    for row in tqdm(range(len(preds)), desc="vote", unit="row", mininterval=1.0):
        identifier = int(puzzle_identifiers[row])
        if identifier not in versions:
            versions[identifier] = parse_arc_version(identifier_names[identifier])
        version = versions[identifier]
        if version.puzzle not in test_indices:
            unmatched += version.puzzle not in other_puzzles
            continue
        input_grid = to_original_frame(crop_arc_canvas(inputs[row]), version)
        indices = test_indices[version.puzzle].get(grid_key(input_grid))
        if indices is None:
            unmatched += 1
            continue
        answer = to_original_frame(crop_arc_canvas(preds[row]), version)
        for index in indices:
            candidate = votes[version.puzzle][index].setdefault(grid_key(answer), Candidate(answer))
            candidate.votes += 1
            candidate.halt_probability_sum += float(probabilities[row])

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


@dataclass
class ArcScores:
    """An evaluation's ARC figures (fractions of the test split's puzzles; see score())."""
    pass_at_1: float
    pass_at_2: float
    prize_score: float

    def figures(self) -> Dict[str, float]:
        """By the names the figures are logged under (after `arc/`)."""
        return {"pass@1": self.pass_at_1, "pass@2": self.pass_at_2, "prize_score": self.prize_score}


class ArcScorer:
    """Scores a run's evaluations on an ARC dataset's test split, whose puzzles and answers it reads once."""

    def __init__(self, dataset_dir: str):
        self.identifier_names = read_identifiers(dataset_dir)
        split = read_split(dataset_dir, TEST_SPLIT)
        identifiers = np.unique(np.concatenate([s.puzzle_identifiers for s in split.sets.values()]))
        if len(identifiers) and identifiers[-1] >= len(self.identifier_names):
            raise DatasetFormatError(f"{os.path.join(dataset_dir, IDENTIFIERS_FILE)}: lists "
                                     f"{len(self.identifier_names)} identifiers, but the {TEST_SPLIT} split uses "
                                     f"identifier {identifiers[-1]}")
        puzzles = original_puzzles(self.identifier_names[i] for i in identifiers)
        self.test_pairs = expected_test_outputs(dataset_dir, puzzles)

    @classmethod
    def for_dataset(cls, dataset_dir: str) -> Optional["ArcScorer"]:
        """A scorer for an ARC dataset (one with test_puzzles.json), None for other tasks."""
        return cls(dataset_dir) if os.path.isfile(os.path.join(dataset_dir, TEST_PUZZLES_FILE)) else None

    def score(self, outputs: Dict[str, torch.Tensor]) -> ArcScores:
        """The scores of an evaluation's VOTING_OUTPUTS rows (every process's, padding left out)."""
        result = vote(self.test_pairs, self.identifier_names, outputs["puzzle_identifiers"].numpy(),
                      outputs["inputs"].numpy(), outputs["preds"].numpy(), outputs["q_halt_logits"].float().numpy())
        scores = score(result, [1, 2])
        return ArcScores(scores["pass@1"], scores["pass@2"], scores["arc_prize_score"])
