"""The on-disk puzzle dataset format, the one place that knows it: each task's token layout, the files of a
dataset folder, the writer the builders use and the checked reader everything else uses.

A dataset folder holds `identifiers.json` (identifier id -> name), for ARC `test_puzzles.json`, and one
folder per split with `dataset.json` (PuzzleDatasetMetadata) and, per set, the arrays `<set>__<field>.npy`
of DATASET_FIELDS, in the reference release's layout.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Type

import numpy as np
import pydantic

from command_line import UserError
from dataset.text_file import read_json

# --- token layouts ----------------------------------------------------------------------------------------

# Sudoku: 81 cells in row order; token 0 pads, 1 is a blank cell and digit d is d + 1.
SUDOKU_SIDE = 9
SUDOKU_SEQ_LEN = SUDOKU_SIDE * SUDOKU_SIDE
SUDOKU_BLANK = 1
SUDOKU_VOCAB_SIZE = 11  # pad + blank + 9 digits

# Maze: a square grid in row order; a character's token is its position in MAZE_CHARSET plus one, 0 pads.
MAZE_CHARSET = "# SGo"  # wall, open, start, goal, path
MAZE_CHAR_TO_TOKEN = np.zeros(256, dtype=np.uint8)
MAZE_CHAR_TO_TOKEN[[ord(c) for c in MAZE_CHARSET]] = np.arange(1, len(MAZE_CHARSET) + 1)
MAZE_VOCAB_SIZE = len(MAZE_CHARSET) + 1

# ARC: a grid drawn from the top-left of a 30x30 canvas, closed by end markers on its right and bottom.
ARC_GRID_SIZE = 30
ARC_SEQ_LEN = ARC_GRID_SIZE * ARC_GRID_SIZE
ARC_PAD_TOKEN = 0
ARC_END_TOKEN = 1
ARC_COLOUR_OFFSET = 2  # colour c is token c + 2
ARC_NUM_COLOURS = 10
ARC_VOCAB_SIZE = ARC_NUM_COLOURS + ARC_COLOUR_OFFSET

# --- files ------------------------------------------------------------------------------------------------

METADATA_FILE = "dataset.json"
IDENTIFIERS_FILE = "identifiers.json"
TEST_PUZZLES_FILE = "test_puzzles.json"

# Per-set array files of a split, in the reference's names (`<set>__<field>.npy`).
DATASET_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
# Token arrays can be gigabytes (ARC with 1000 augmentations): they are memory-mapped; the index arrays are
# small and read on every draw, so they are loaded whole.
TOKEN_FIELDS = ("inputs", "labels")

# Label value the losses skip (PyTorch's cross-entropy default); `ignore_label_id` maps to it at load.
IGNORE_LABEL_ID = -100

# Token arrays up to this size are checked whole; larger ones at evenly spaced rows, so opening a dataset
# stays a bounded amount of work.
FULL_CHECK_BYTES = 64 << 20
SAMPLED_ROWS = 4096


class DatasetFormatError(UserError, ValueError):
    """A dataset folder that is missing or not in the puzzle dataset format; the message names the path."""


def arc_grid_fault(grid) -> Optional[str]:
    """Why `grid` (nested lists, as ARC's JSON files hold them) is not an ARC grid of colours 0..9 with sides
    1..ARC_GRID_SIZE, or None when it is one."""
    try:
        array = np.array(grid)
    except ValueError:  # rows of different lengths
        return "grid rows have different lengths"
    if array.ndim != 2 or array.dtype.kind not in "iu":
        return "grid must be a 2-D list of integers"
    if not (1 <= array.shape[0] <= ARC_GRID_SIZE and 1 <= array.shape[1] <= ARC_GRID_SIZE):
        return f"grid is {array.shape[0]}x{array.shape[1]}, sides must be 1..{ARC_GRID_SIZE}"
    if array.min() < 0 or array.max() >= ARC_NUM_COLOURS:
        return f"grid values must be colours 0..{ARC_NUM_COLOURS - 1}, got {array.min()}..{array.max()}"
    return None


class PuzzleDatasetMetadata(pydantic.BaseModel):
    """Contents of `<split>/dataset.json`."""

    pad_id: int
    ignore_label_id: Optional[int]
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    sets: List[str]


def split_file(dataset_dir: str, split: str, set_name: str, field: str) -> str:
    """Path of one array file; builders may write large arrays there in place with `open_memmap`."""
    return os.path.join(dataset_dir, split, f"{set_name}__{field}.npy")


def metadata_file(dataset_dir: str, split: str) -> str:
    return os.path.join(dataset_dir, split, METADATA_FILE)


# --- writing ----------------------------------------------------------------------------------------------

def save_split(dataset_dir: str, split: str, metadata: PuzzleDatasetMetadata,
               sets: Dict[str, Dict[str, np.ndarray]]) -> None:
    """Write `<dataset_dir>/<split>/dataset.json` and each set's arrays after checking their layout."""
    if sorted(sets) != sorted(metadata.sets):
        raise ValueError(f"metadata sets {metadata.sets} differ from the arrays' sets {sorted(sets)}")
    os.makedirs(os.path.join(dataset_dir, split), exist_ok=True)
    for set_name, arrays in sets.items():
        if set(arrays) != set(DATASET_FIELDS):
            raise ValueError(f"set {set_name!r} must have fields {DATASET_FIELDS}, got {sorted(arrays)}")
        inputs, labels = arrays["inputs"], arrays["labels"]
        if inputs.ndim != 2 or inputs.shape != labels.shape or inputs.shape[1] != metadata.seq_len:
            raise ValueError(f"set {set_name!r}: inputs {inputs.shape} and labels {labels.shape} must be "
                             f"[N, {metadata.seq_len}]")
        puzzle_indices, group_indices = arrays["puzzle_indices"], arrays["group_indices"]
        if puzzle_indices[0] != 0 or puzzle_indices[-1] != len(inputs) or np.any(np.diff(puzzle_indices) <= 0):
            raise ValueError(f"set {set_name!r}: puzzle_indices must rise from 0 to {len(inputs)}")
        if group_indices[0] != 0 or group_indices[-1] != len(puzzle_indices) - 1 or np.any(np.diff(group_indices) <= 0):
            raise ValueError(f"set {set_name!r}: group_indices must rise from 0 to the puzzle count")
        if len(arrays["puzzle_identifiers"]) != len(puzzle_indices) - 1:
            raise ValueError(f"set {set_name!r}: one puzzle identifier per puzzle expected")
        for field in DATASET_FIELDS:
            array, path = arrays[field], split_file(dataset_dir, split, set_name, field)
            if isinstance(array, np.memmap) and os.path.abspath(array.filename) == os.path.abspath(path):
                array.flush()  # a large array the builder wrote in place (see split_file)
                continue
            if field not in TOKEN_FIELDS:
                array = np.asarray(array, dtype=np.int32)
            np.save(path, array)
    with open(metadata_file(dataset_dir, split), "w") as f:
        json.dump(metadata.model_dump(), f)


def save_identifiers(dataset_dir: str, names: Sequence[str]) -> None:
    """Write `identifiers.json`: identifier id -> name, `<blank>` for id 0."""
    with open(os.path.join(dataset_dir, IDENTIFIERS_FILE), "w") as f:
        json.dump(list(names), f)


# --- reading ----------------------------------------------------------------------------------------------

def read_metadata(dataset_dir: str, split: str) -> PuzzleDatasetMetadata:
    """Read `<dataset_dir>/<split>/dataset.json`; a missing or malformed file is a DatasetFormatError."""
    split_dir = os.path.join(dataset_dir, split)
    path = metadata_file(dataset_dir, split)
    if not os.path.isdir(dataset_dir):
        raise DatasetFormatError(f"{dataset_dir}: dataset folder not found")
    if not os.path.isdir(split_dir):
        raise DatasetFormatError(f"{split_dir}: split folder not found")
    if not os.path.isfile(path):
        raise DatasetFormatError(f"{path}: file not found")
    values = read_json(path, DatasetFormatError)
    if not isinstance(values, dict):
        raise DatasetFormatError(f"{path}: malformed metadata, expected a JSON object, got {type(values).__name__}")
    try:
        return PuzzleDatasetMetadata(**values)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "top level"
        raise DatasetFormatError(f"{path}: malformed metadata, {field}: {first['msg']}") from None


def read_identifiers(dataset_dir: str) -> List[str]:
    """`identifiers.json`: identifier id -> name (`<blank>` for the blank id)."""
    return read_identifier_list(os.path.join(dataset_dir, IDENTIFIERS_FILE))


def read_identifiers_if_present(dataset_dir: str) -> Optional[List[str]]:
    """`read_identifiers`, or None for a dataset folder without `identifiers.json`."""
    present = os.path.isfile(os.path.join(dataset_dir, IDENTIFIERS_FILE))
    return read_identifiers(dataset_dir) if present else None


def read_identifier_list(path: str, error: Type[UserError] = DatasetFormatError) -> List[str]:
    """An `identifiers.json` file anywhere (a dataset's, or the copy a run folder keeps); a fault raises `error`
    naming the file."""
    names = read_json(path, error)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise error(f"{path}: must be a list of identifier names")
    return names


def read_test_puzzles(dataset_dir: str) -> Dict[str, dict]:
    """`test_puzzles.json` of an ARC dataset: puzzle name -> {"train": [pairs], "test": [pairs]}, each pair
    {"input": grid, "output": grid} (a test output may be missing where it is unknown)."""
    path = os.path.join(dataset_dir, TEST_PUZZLES_FILE)
    puzzles = read_json(path, DatasetFormatError)
    if not isinstance(puzzles, dict):
        raise DatasetFormatError(f"{path}: must map puzzle names to puzzles")
    for name, puzzle in puzzles.items():
        if not (isinstance(puzzle, dict) and isinstance(puzzle.get("train"), list)
                and isinstance(puzzle.get("test"), list)
                and all(isinstance(pair, dict) and "input" in pair for pair in puzzle["train"] + puzzle["test"])):
            raise DatasetFormatError(f"{path}: puzzle {name} needs \"train\" and \"test\" lists of pairs with an "
                                     f"\"input\"")
        for kind in ("train", "test"):
            for index, pair in enumerate(puzzle[kind]):
                for side in ("input", "output"):
                    fault = arc_grid_fault(pair[side]) if side in pair else None
                    if fault:
                        raise DatasetFormatError(f"{path}: puzzle {name}, {kind} pair {index} {side}: {fault}")
    return puzzles


@dataclass
class PuzzleSet:
    """One set of a split: examples [N, seq_len] (memory-mapped) grouped into puzzles, puzzles into groups."""
    name: str
    paths: Dict[str, str]  # field -> its array file
    inputs: np.ndarray
    labels: np.ndarray  # as stored: unlabelled cells hold the split's ignore_label_id
    puzzle_identifiers: np.ndarray  # [puzzles]
    puzzle_indices: np.ndarray  # [puzzles + 1]: puzzle p holds examples puzzle_indices[p]..[p + 1] - 1
    group_indices: np.ndarray  # [groups + 1]: group g holds puzzles group_indices[g]..[g + 1] - 1

    @property
    def num_examples(self) -> int:
        return len(self.inputs)

    @property
    def num_puzzles(self) -> int:
        return len(self.puzzle_identifiers)

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1

    def puzzle_of(self, example: int) -> int:
        return int(np.searchsorted(self.puzzle_indices, example, side="right") - 1)

    def examples_of(self, puzzle: int) -> range:
        return range(int(self.puzzle_indices[puzzle]), int(self.puzzle_indices[puzzle + 1]))

    def arrays(self) -> Dict[str, np.ndarray]:
        """The five arrays by field name, as save_split takes them."""
        return {field: getattr(self, field) for field in DATASET_FIELDS}


@dataclass
class DatasetSplit:
    """One split of a dataset folder: its metadata and every set's arrays, checked against each other."""
    dataset_dir: str
    split: str
    metadata: PuzzleDatasetMetadata
    sets: Dict[str, PuzzleSet]


def loss_labels(stored_labels: np.ndarray, metadata: PuzzleDatasetMetadata) -> np.ndarray:
    """An int32 copy of stored labels with unlabelled cells as IGNORE_LABEL_ID, as the model is trained on them
    (and the saved predictions hold them). The copy leaves a read-only memory map untouched."""
    labels = stored_labels.astype(np.int32)
    if metadata.ignore_label_id is not None:
        labels[labels == metadata.ignore_label_id] = IGNORE_LABEL_ID
    return labels


def _open_array(path: str, memory_mapped: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if memory_mapped else None)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as e:  # truncated data or a damaged header
        raise DatasetFormatError(f"{path}: cannot read the array ({str(e).splitlines()[0]})") from None


def _checked_rows(array: np.ndarray) -> np.ndarray:
    if array.nbytes <= FULL_CHECK_BYTES:
        return np.asarray(array)
    return np.asarray(array[np.linspace(0, len(array) - 1, SAMPLED_ROWS).astype(np.int64)])


def _check_index_array(path: str, indices: np.ndarray, end: int, what: str) -> None:
    if indices.ndim != 1 or len(indices) < 1:
        raise DatasetFormatError(f"{path}: must be a 1-D array starting at 0, got shape {indices.shape}")
    if indices[0] != 0 or indices[-1] != end:
        raise DatasetFormatError(f"{path}: must run from 0 to {end} ({what}), got {indices[0]} to {indices[-1]}")
    if np.any(np.diff(indices) <= 0):
        position = int(np.argmax(np.diff(indices) <= 0))
        raise DatasetFormatError(f"{path}: must increase strictly, but entry {position + 1} is {indices[position + 1]} "
                                 f"after {indices[position]}")


def check_set(puzzle_set: PuzzleSet, metadata: PuzzleDatasetMetadata) -> None:
    """Check one set's arrays against `dataset.json`: shapes, index arrays that increase and end where they
    should, tokens below `vocab_size` and identifiers below `num_puzzle_identifiers`. Each failure is one
    DatasetFormatError naming the file and the rule."""
    paths, inputs, labels = puzzle_set.paths, puzzle_set.inputs, puzzle_set.labels
    for field in TOKEN_FIELDS:
        array = getattr(puzzle_set, field)
        if array.ndim != 2 or array.shape[1] != metadata.seq_len:
            raise DatasetFormatError(f"{paths[field]}: shape {array.shape} does not match "
                                     f"[examples, seq_len={metadata.seq_len}] of dataset.json")
    if len(labels) != len(inputs):
        raise DatasetFormatError(f"{paths['labels']}: {len(labels)} rows but inputs has {len(inputs)}")
    identifiers = puzzle_set.puzzle_identifiers
    num_puzzles = len(identifiers)
    if identifiers.ndim != 1:
        raise DatasetFormatError(f"{paths['puzzle_identifiers']}: must be 1-D, got shape {identifiers.shape}")
    _check_index_array(paths["puzzle_indices"], puzzle_set.puzzle_indices, len(inputs), "the examples")
    if len(puzzle_set.puzzle_indices) != num_puzzles + 1:
        raise DatasetFormatError(f"{paths['puzzle_indices']}: {len(puzzle_set.puzzle_indices) - 1} puzzles, but "
                                 f"puzzle_identifiers has {num_puzzles}")
    _check_index_array(paths["group_indices"], puzzle_set.group_indices, num_puzzles, "the puzzles")
    if num_puzzles and (identifiers.min() < 0 or identifiers.max() >= metadata.num_puzzle_identifiers):
        raise DatasetFormatError(f"{paths['puzzle_identifiers']}: identifiers must lie in 0..{metadata.num_puzzle_identifiers - 1}"
                                 f" (num_puzzle_identifiers), found {identifiers.min()}..{identifiers.max()}")
    for field in TOKEN_FIELDS:
        rows = _checked_rows(getattr(puzzle_set, field))
        if rows.size == 0:
            continue
        allowed_low = min(0, metadata.ignore_label_id or 0) if field == "labels" else 0
        low, high = rows.min(), rows.max()
        if low < allowed_low or high >= metadata.vocab_size:
            raise DatasetFormatError(f"{paths[field]}: tokens must lie in 0..{metadata.vocab_size - 1} (vocab_size), "
                                     f"found {low}..{high}")


def read_split(dataset_dir: str, split: str) -> DatasetSplit:
    """The metadata and every set of `<dataset_dir>/<split>`, token arrays memory-mapped and index arrays in
    memory, checked against each other (check_set); any fault is one DatasetFormatError naming the file."""
    metadata = read_metadata(dataset_dir, split)
    sets = {}
    for set_name in metadata.sets:
        paths = {field: split_file(dataset_dir, split, set_name, field) for field in DATASET_FIELDS}
        arrays = {field: _open_array(path, memory_mapped=field in TOKEN_FIELDS) for field, path in paths.items()}
        sets[set_name] = PuzzleSet(set_name, paths, **arrays)
        check_set(sets[set_name], metadata)
    return DatasetSplit(dataset_dir, split, metadata, sets)
