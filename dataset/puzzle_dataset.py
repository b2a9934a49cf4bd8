"""Puzzle dataset loader: streams a dataset folder as (set name, batch, global batch size) tuples, with the
reference release's sampling order, rank slicing and padding."""
from __future__ import annotations

import os
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import pydantic
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from command_line import UserError
from dataset.common import DATASET_FIELDS, IGNORE_LABEL_ID, PuzzleDatasetMetadata, load_metadata

# Token arrays can be gigabytes (ARC with 1000 augmentations): memory-map them; the index arrays are small
# and read on every draw, so they are loaded fully.
MEMORY_MAPPED_FIELDS = ("inputs", "labels")


class DatasetFormatError(UserError, ValueError):
    """A dataset folder that is missing or not in the puzzle dataset format; the message names the path."""


class PuzzleDatasetConfig(pydantic.BaseModel):
    seed: int
    dataset_path: str
    global_batch_size: int
    test_set_mode: bool
    epochs_per_iter: int  # epochs of group order drawn per pass over the dataset
    rank: int
    num_replicas: int


def load_split_metadata(dataset_path: str, split: str) -> PuzzleDatasetMetadata:
    """Read `<dataset_path>/<split>/dataset.json`; a missing or malformed file is a DatasetFormatError."""
    split_dir = os.path.join(dataset_path, split)
    metadata_path = os.path.join(split_dir, "dataset.json")
    if not os.path.isdir(dataset_path):
        raise DatasetFormatError(f"{dataset_path}: dataset folder not found")
    if not os.path.isdir(split_dir):
        raise DatasetFormatError(f"{split_dir}: split folder not found")
    if not os.path.isfile(metadata_path):
        raise DatasetFormatError(f"{metadata_path}: file not found")
    try:
        return load_metadata(dataset_path, split)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "top level"
        raise DatasetFormatError(f"{metadata_path}: malformed metadata, {field}: {first['msg']}") from None
    except (ValueError, TypeError) as e:  # invalid JSON, or JSON that is not an object
        message = str(e).splitlines()[0]
        raise DatasetFormatError(f"{metadata_path}: malformed metadata, {message}") from None


# Token arrays up to this size are checked whole; larger ones (ARC with 1000 augmentations: gigabytes) at
# evenly spaced rows, so opening a dataset stays a bounded amount of work.
FULL_CHECK_BYTES = 64 << 20
SAMPLED_ROWS = 4096


def _open_array(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
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


def check_set_arrays(paths: Dict[str, str], metadata: PuzzleDatasetMetadata) -> None:
    """Check one set's arrays against `dataset.json` when a dataset is opened: readable files, shapes,
    index arrays that increase and end where they should, tokens below `vocab_size` and identifiers
    below `num_puzzle_identifiers`. Each failure is one DatasetFormatError naming the file and the rule."""
    arrays = {field: _open_array(path) for field, path in paths.items()}
    inputs, labels = arrays["inputs"], arrays["labels"]
    for field in ("inputs", "labels"):
        if arrays[field].ndim != 2 or arrays[field].shape[1] != metadata.seq_len:
            raise DatasetFormatError(f"{paths[field]}: shape {arrays[field].shape} does not match "
                                     f"[examples, seq_len={metadata.seq_len}] of dataset.json")
    if len(labels) != len(inputs):
        raise DatasetFormatError(f"{paths['labels']}: {len(labels)} rows but inputs has {len(inputs)}")
    puzzle_indices, group_indices = np.asarray(arrays["puzzle_indices"]), np.asarray(arrays["group_indices"])
    identifiers = np.asarray(arrays["puzzle_identifiers"])
    num_puzzles = len(identifiers)
    if identifiers.ndim != 1:
        raise DatasetFormatError(f"{paths['puzzle_identifiers']}: must be 1-D, got shape {identifiers.shape}")
    _check_index_array(paths["puzzle_indices"], puzzle_indices, len(inputs), "the examples")
    if len(puzzle_indices) != num_puzzles + 1:
        raise DatasetFormatError(f"{paths['puzzle_indices']}: {len(puzzle_indices) - 1} puzzles, but "
                                 f"puzzle_identifiers has {num_puzzles}")
    _check_index_array(paths["group_indices"], group_indices, num_puzzles, "the puzzles")
    if num_puzzles and (identifiers.min() < 0 or identifiers.max() >= metadata.num_puzzle_identifiers):
        raise DatasetFormatError(f"{paths['puzzle_identifiers']}: identifiers must lie in 0..{metadata.num_puzzle_identifiers - 1}"
                                 f" (num_puzzle_identifiers), found {identifiers.min()}..{identifiers.max()}")
    for field in ("inputs", "labels"):
        rows = _checked_rows(arrays[field])
        if rows.size == 0:
            continue
        allowed_low = min(0, metadata.ignore_label_id or 0) if field == "labels" else 0
        low, high = rows.min(), rows.max()
        if low < allowed_low or high >= metadata.vocab_size:
            raise DatasetFormatError(f"{paths[field]}: tokens must lie in 0..{metadata.vocab_size - 1} (vocab_size), "
                                     f"found {low}..{high}")


def batches_per_round(dataset_path: str, split: str, global_batch_size: int, epochs_per_iter: int) -> Optional[int]:
    """Full global batches one training pass over `split` yields, when it is fixed: when every puzzle of a
    set has the same number of examples s (Sudoku, mazes), each batch takes ceil(batch / s) groups.
    None when puzzle sizes vary (ARC), where the count depends on the random draws."""
    metadata = load_split_metadata(dataset_path, split)
    batches = 0
    for set_name in metadata.sets:
        puzzle_sizes = np.diff(np.load(os.path.join(dataset_path, split, f"{set_name}__puzzle_indices.npy")))
        num_groups = len(np.load(os.path.join(dataset_path, split, f"{set_name}__group_indices.npy"))) - 1
        if len(puzzle_sizes) == 0 or np.any(puzzle_sizes != puzzle_sizes[0]):
            return None
        groups_per_batch = -(-global_batch_size // int(puzzle_sizes[0]))
        batches += num_groups * epochs_per_iter // groups_per_batch
    return batches


def draw_global_batch(order_rng: np.random.Generator, subset_rng: np.random.Generator, group_order: np.ndarray,
                      position: int, puzzle_indices: np.ndarray, group_indices: np.ndarray,
                      global_batch_size: int) -> Tuple[int, np.ndarray, np.ndarray]:
    """Fill one global batch by walking `group_order` from `position`.

    Each group taken contributes one random puzzle (drawn from `order_rng`, as the reference does) and a
    random subset of that puzzle's examples (drawn from `subset_rng`, so the order stream never shifts).
    Returns the next position, the example indices and the puzzle index of each example; the batch is short
    only when the order ran out.
    """
    example_ids, puzzle_ids = [], []
    batch_size = 0
    while position < len(group_order) and batch_size < global_batch_size:
        group = group_order[position]
        position += 1
        puzzle = order_rng.integers(group_indices[group], group_indices[group + 1])
        puzzle_start = puzzle_indices[puzzle]
        puzzle_size = int(puzzle_indices[puzzle + 1] - puzzle_start)
        append_size = min(puzzle_size, global_batch_size - batch_size)
        # First append_size entries of a permutation: a subset without replacement, in random order.
        example_ids.append(puzzle_start + subset_rng.permutation(puzzle_size)[:append_size])
        puzzle_ids.append(np.full(append_size, puzzle))
        batch_size += append_size
    return position, np.concatenate(example_ids), np.concatenate(puzzle_ids)


class PuzzleDataset(IterableDataset):
    """One split of a dataset folder, yielding `(set_name, batch, global_effective_batch_size)`.

    `batch` holds int32 tensors `inputs` and `labels` [local_batch_size, seq_len] and `puzzle_identifiers`
    [local_batch_size] for this rank. Training passes sample groups in a seeded random order and drop the
    final short batch; test passes walk every example in order and pad the last batch.
    """

    def __init__(self, config: PuzzleDatasetConfig, split: str = "train", start_round: int = 0):
        """`start_round`: training passes over the whole dataset already made (a resumed run's rounds), so
        the next pass draws the order that round would have drawn."""
        super().__init__()
        if start_round < 0:
            raise ValueError(f"start_round must be >= 0, got {start_round}")
        if config.num_replicas < 1 or not 0 <= config.rank < config.num_replicas:
            raise ValueError(f"rank {config.rank} must lie in 0..num_replicas-1 (num_replicas {config.num_replicas})")
        if config.global_batch_size < 1 or config.global_batch_size % config.num_replicas != 0:
            raise ValueError(f"global_batch_size {config.global_batch_size} must be a positive multiple of "
                             f"num_replicas {config.num_replicas}")
        if config.epochs_per_iter < 1:
            raise ValueError(f"epochs_per_iter must be at least 1, got {config.epochs_per_iter}")
        self.config = config
        self.split = split
        self.local_batch_size = config.global_batch_size // config.num_replicas
        self.metadata = load_split_metadata(config.dataset_path, split)
        self.array_paths = {
            set_name: {field: os.path.join(config.dataset_path, split, f"{set_name}__{field}.npy")
                       for field in DATASET_FIELDS}
            for set_name in self.metadata.sets}
        # Checked here, not at the lazy load, so the error appears in the caller's process, not a worker's.
        for paths in self.array_paths.values():
            check_set_arrays(paths, self.metadata)
        self.arrays: Optional[Dict[str, Dict[str, np.ndarray]]] = None  # loaded on first iteration
        # Training passes so far (one per set), seeding each pass's order; it persists across passes of this
        # object (e.g. in a persistent DataLoader worker) so every round draws a new order.
        self.iters = start_round * len(self.metadata.sets)

    def _load_arrays(self) -> None:
        if self.arrays is not None:
            return
        self.arrays = {}
        for set_name, paths in self.array_paths.items():
            self.arrays[set_name] = {}
            for field, path in paths.items():
                try:
                    array = np.load(path, mmap_mode="r" if field in MEMORY_MAPPED_FIELDS else None)
                except (OSError, ValueError) as e:
                    raise DatasetFormatError(f"{path}: cannot read array ({str(e).splitlines()[0]})") from None
                self.arrays[set_name][field] = array

    def _collate(self, inputs: np.ndarray, labels: np.ndarray,
                 puzzle_identifiers: np.ndarray) -> Dict[str, torch.Tensor]:
        # astype copies, so the in-place label mapping never touches the read-only memory map.
        batch = {"inputs": inputs.astype(np.int32), "labels": labels.astype(np.int32),
                 "puzzle_identifiers": puzzle_identifiers.astype(np.int32)}
        if self.metadata.ignore_label_id is not None:
            batch["labels"][batch["labels"] == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        pad_size = self.local_batch_size - len(batch["puzzle_identifiers"])
        if pad_size > 0:
            pad_values = {"inputs": self.metadata.pad_id, "labels": IGNORE_LABEL_ID,
                          "puzzle_identifiers": self.metadata.blank_identifier_id}
            batch = {name: np.pad(array, [(0, pad_size)] + [(0, 0)] * (array.ndim - 1),
                                  constant_values=pad_values[name])
                     for name, array in batch.items()}
        return {name: torch.from_numpy(array) for name, array in batch.items()}

    def _iter_train(self) -> Iterator[Tuple[str, Dict[str, torch.Tensor], int]]:
        config = self.config
        rank_rows = slice(config.rank * self.local_batch_size, (config.rank + 1) * self.local_batch_size)
        for set_name, arrays in self.arrays.items():
            self.iters += 1
            order_rng = np.random.Generator(np.random.Philox(seed=config.seed + self.iters))
            subset_rng = np.random.default_rng([config.seed, self.iters])
            num_groups = len(arrays["group_indices"]) - 1
            group_order = np.concatenate([order_rng.permutation(num_groups) for _ in range(config.epochs_per_iter)])
            position = 0
            while position < len(group_order):
                position, example_ids, puzzle_ids = draw_global_batch(
                    order_rng, subset_rng, group_order, position, arrays["puzzle_indices"], arrays["group_indices"],
                    config.global_batch_size)
                if len(example_ids) < config.global_batch_size:
                    break  # drop the final short batch
                example_ids, puzzle_ids = example_ids[rank_rows], puzzle_ids[rank_rows]
                batch = self._collate(arrays["inputs"][example_ids], arrays["labels"][example_ids],
                                      arrays["puzzle_identifiers"][puzzle_ids])
                yield set_name, batch, config.global_batch_size

    def _iter_test(self) -> Iterator[Tuple[str, Dict[str, torch.Tensor], int]]:
        config = self.config
        for set_name, arrays in self.arrays.items():
            num_examples = len(arrays["inputs"])
            for start in range(0, num_examples, config.global_batch_size):
                end = min(start + config.global_batch_size, num_examples)
                local_start = start + config.rank * self.local_batch_size
                local_end = min(start + (config.rank + 1) * self.local_batch_size, end)  # may be <= local_start
                example_ids = np.arange(local_start, local_end)
                puzzle_ids = np.searchsorted(arrays["puzzle_indices"], example_ids, side="right") - 1
                batch = self._collate(arrays["inputs"][local_start:local_end], arrays["labels"][local_start:local_end],
                                      arrays["puzzle_identifiers"][puzzle_ids])
                yield set_name, batch, end - start

    def __iter__(self) -> Iterator[Tuple[str, Dict[str, torch.Tensor], int]]:
        worker = get_worker_info()
        if worker is not None and worker.num_workers != 1:
            raise RuntimeError(f"PuzzleDataset supports at most one DataLoader worker, got {worker.num_workers}: "
                               "each worker would yield the same batches")
        self._load_arrays()
        if self.config.test_set_mode:
            yield from self._iter_test()
        else:
            yield from self._iter_train()


def create_dataloader(dataset_path: str, split: str, *, seed: int, global_batch_size: int, test_set_mode: bool,
                      epochs_per_iter: int, rank: int, world_size: int, start_round: int = 0,
                      pin_memory: Optional[bool] = None) -> Tuple[DataLoader, PuzzleDatasetMetadata]:
    """A DataLoader over one split with one persistent worker (it keeps the round counter between passes).

    `start_round` is the number of training rounds (passes over the split) already done, for resume."""
    config = PuzzleDatasetConfig(seed=seed, dataset_path=dataset_path, global_batch_size=global_batch_size,
                                 test_set_mode=test_set_mode, epochs_per_iter=epochs_per_iter, rank=rank,
                                 num_replicas=world_size)
    dataset = PuzzleDataset(config, split=split, start_round=start_round)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    # The loader's own generator keeps its worker seeding off the global torch RNG, which training resumes
    # from a checkpoint: otherwise the first iteration after a resume would shift every later random draw.
    loader = DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=8, pin_memory=pin_memory,
                        persistent_workers=True, generator=torch.Generator().manual_seed(seed))
    return loader, dataset.metadata
