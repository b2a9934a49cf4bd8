"""Read one split of a puzzle dataset folder for the tools: its metadata and task, identifier names, each
set's examples (memory-mapped), and the original ARC puzzles of `test_puzzles.json`."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from dataset.common import DATASET_FIELDS, IGNORE_LABEL_ID, PuzzleDatasetMetadata, split_file
from dataset.puzzle_dataset import DatasetFormatError, load_split_metadata
from puzzle_tools.grids import Task, detect_task
from puzzle_tools.tool_io import ToolInputError

IDENTIFIERS_FILE = "identifiers.json"
TEST_PUZZLES_FILE = "test_puzzles.json"


@dataclass
class PuzzleSet:
    """One set of a split: examples [N, seq_len] (memory-mapped) grouped into puzzles."""
    name: str
    inputs_path: str
    inputs: np.ndarray
    stored_labels: np.ndarray  # as on disk: unlabelled cells hold the split's ignore_label_id
    puzzle_identifiers: np.ndarray  # [puzzles]
    puzzle_indices: np.ndarray  # [puzzles + 1]: puzzle p holds examples puzzle_indices[p]..[p + 1] - 1

    @property
    def num_examples(self) -> int:
        return len(self.inputs)

    @property
    def num_puzzles(self) -> int:
        return len(self.puzzle_identifiers)

    def puzzle_of(self, example: int) -> int:
        return int(np.searchsorted(self.puzzle_indices, example, side="right") - 1)

    def examples_of(self, puzzle: int) -> range:
        return range(int(self.puzzle_indices[puzzle]), int(self.puzzle_indices[puzzle + 1]))


@dataclass
class DatasetSplit:
    dataset_dir: str
    split: str
    metadata: PuzzleDatasetMetadata
    task: Task
    identifier_names: List[str]  # identifier id -> name (`<blank>` for the blank id)
    sets: Dict[str, PuzzleSet]

    def labels(self, puzzle_set: PuzzleSet, examples: Sequence[int]) -> np.ndarray:
        """Labels of some examples with unlabelled cells as IGNORE_LABEL_ID, as the loader and the saved
        predictions hold them."""
        labels = np.asarray(puzzle_set.stored_labels[np.asarray(examples)]).astype(np.int16)
        if self.metadata.ignore_label_id is not None:
            labels[labels == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        return labels

    def identifier_name(self, identifier: int) -> str:
        if not 0 <= identifier < len(self.identifier_names):
            raise ToolInputError(f"{os.path.join(self.dataset_dir, IDENTIFIERS_FILE)}: no puzzle identifier "
                                 f"{identifier} (it lists {len(self.identifier_names)})")
        return self.identifier_names[identifier]


def read_json_file(path: str):
    if not os.path.isfile(path):
        raise ToolInputError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToolInputError(f"{path}: not valid JSON ({e})") from None


def load_array(path: str, mmap: bool) -> np.ndarray:
    if not os.path.isfile(path):
        raise ToolInputError(f"{path}: file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:
        raise ToolInputError(f"{path}: cannot read array ({str(e).splitlines()[0]})") from None


def read_split(dataset_dir: str, split: str) -> DatasetSplit:
    """Metadata, identifier names and the arrays of every set of `<dataset_dir>/<split>`."""
    try:
        metadata = load_split_metadata(dataset_dir, split)
    except DatasetFormatError as e:
        raise ToolInputError(str(e)) from None
    identifiers_path = os.path.join(dataset_dir, IDENTIFIERS_FILE)
    identifier_names = read_json_file(identifiers_path)
    if not isinstance(identifier_names, list) or not all(isinstance(name, str) for name in identifier_names):
        raise ToolInputError(f"{identifiers_path}: must be a list of identifier names")
    sets = {}
    for set_name in metadata.sets:
        paths = {field: split_file(dataset_dir, split, set_name, field) for field in DATASET_FIELDS}
        # Token arrays can be gigabytes (ARC with 1000 versions per puzzle): memory-map them.
        inputs, labels = load_array(paths["inputs"], mmap=True), load_array(paths["labels"], mmap=True)
        for field, array in (("inputs", inputs), ("labels", labels)):
            if array.ndim != 2 or array.shape[1] != metadata.seq_len or len(array) != len(inputs):
                raise ToolInputError(f"{paths[field]}: shape {array.shape}, expected [{len(inputs)}, "
                                     f"{metadata.seq_len}] (seq_len of dataset.json)")
        puzzle_indices = load_array(paths["puzzle_indices"], mmap=False)
        puzzle_identifiers = load_array(paths["puzzle_identifiers"], mmap=False)
        if len(puzzle_indices) != len(puzzle_identifiers) + 1 or puzzle_indices[-1] != len(inputs):
            raise ToolInputError(f"{paths['puzzle_indices']}: does not split the {len(inputs)} examples into "
                                 f"{len(puzzle_identifiers)} puzzles")
        sets[set_name] = PuzzleSet(set_name, paths["inputs"], inputs, labels, puzzle_identifiers, puzzle_indices)
    return DatasetSplit(dataset_dir, split, metadata, detect_task(metadata), identifier_names, sets)


def read_test_puzzles(dataset_dir: str) -> Dict[str, dict]:
    """`test_puzzles.json` of an ARC dataset: puzzle name -> {"train": [pairs], "test": [pairs]}, each pair
    {"input": grid, "output": grid} (a test output may be missing where it is unknown)."""
    path = os.path.join(dataset_dir, TEST_PUZZLES_FILE)
    puzzles = read_json_file(path)
    if not isinstance(puzzles, dict):
        raise ToolInputError(f"{path}: must map puzzle names to puzzles")
    for name, puzzle in puzzles.items():
        if not (isinstance(puzzle, dict) and isinstance(puzzle.get("train"), list)
                and isinstance(puzzle.get("test"), list)
                and all(isinstance(pair, dict) and "input" in pair for pair in puzzle["train"] + puzzle["test"])):
            raise ToolInputError(f"{path}: puzzle {name} needs \"train\" and \"test\" lists of pairs with an "
                                 f"\"input\"")
    return puzzles
