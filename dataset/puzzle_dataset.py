"""Puzzle dataset loader: streams a dataset folder as (set name, batch, global batch size) tuples, with the
reference release's sampling order, rank slicing and padding."""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pydantic
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dataset.format import IGNORE_LABEL_ID, PuzzleDatasetMetadata, PuzzleSet, loss_labels, read_split


class PuzzleDatasetConfig(pydantic.BaseModel):
    seed: int
    dataset_path: str
    global_batch_size: int
    test_set_mode: bool
    epochs_per_iter: int  # epochs of group order drawn per pass over the dataset
    rank: int
    num_replicas: int
    max_examples: Optional[int] = None  # test passes: a fixed sample of this many examples (`sample_test_examples`)


# Groups of a training pass whose puzzle draws are replayed at once when counting its batches (bounds memory).
REPLAY_CHUNK = 1 << 20


def pass_order(seed: int, pass_number: int, num_groups: int, epochs: int) -> Tuple[np.random.Generator, np.ndarray]:
    """A training pass's order generator and the group order it draws first (`epochs` permutations).
    Passes are numbered from 1 over every set of every round, as the reference seeds them."""
    order_rng = np.random.Generator(np.random.Philox(seed=seed + pass_number))
    return order_rng, np.concatenate([order_rng.permutation(num_groups) for _ in range(epochs)])


def full_batches_of_pass(order_rng: np.random.Generator, group_order: np.ndarray, puzzle_set: PuzzleSet,
                         global_batch_size: int) -> int:
    """Full global batches one training pass yields, without its example draws: the puzzle drawn for each
    group (from `order_rng`, right after the order, as `draw_global_batch` draws it) gives the examples it
    adds; a batch closes at the group that fills it, and that group's surplus is dropped."""
    puzzle_sizes = np.diff(puzzle_set.puzzle_indices)
    batches, filled = 0, 0  # full batches so far; examples in the batch being filled
    for start in range(0, len(group_order), REPLAY_CHUNK):
        groups = group_order[start:start + REPLAY_CHUNK]
        puzzles = order_rng.integers(puzzle_set.group_indices[groups], puzzle_set.group_indices[groups + 1])
        ends = filled + np.cumsum(puzzle_sizes[puzzles])  # examples since the open batch began, per group
        batch_start = 0
        while (closing := int(np.searchsorted(ends, batch_start + global_batch_size))) < len(ends):
            batches, batch_start = batches + 1, int(ends[closing])
        filled = int(ends[-1]) - batch_start
    return batches


def train_batches(dataset_path: str, split: str, seed: int, global_batch_size: int, epochs_per_iter: int,
                  num_rounds: int, at_most: Optional[int] = None) -> int:
    """Full global batches the first `num_rounds` training passes over `split` yield (each round one pass
    over every set), counted up to `at_most`. When every puzzle of a set has the same number of examples s
    (Sudoku, mazes), each batch takes ceil(batch / s) groups; otherwise (ARC) each pass's draws are replayed."""
    sets = read_split(dataset_path, split).sets
    batches = 0
    for round_index in range(num_rounds):
        for set_index, puzzle_set in enumerate(sets.values()):
            if at_most is not None and batches >= at_most:
                return at_most
            puzzle_sizes = np.diff(puzzle_set.puzzle_indices)
            if len(puzzle_sizes) == 0:
                continue  # an empty set yields no batch
            if np.all(puzzle_sizes == puzzle_sizes[0]):
                batches += puzzle_set.num_groups * epochs_per_iter // -(-global_batch_size // int(puzzle_sizes[0]))
            else:
                order_rng, group_order = pass_order(seed, round_index * len(sets) + set_index + 1,
                                                    puzzle_set.num_groups, epochs_per_iter)
                batches += full_batches_of_pass(order_rng, group_order, puzzle_set, global_batch_size)
    return batches if at_most is None else min(batches, at_most)


def sample_test_examples(set_sizes: Sequence[int], max_examples: Optional[int], seed: int) -> List[np.ndarray]:
    """The examples a test pass walks, per set: all of them, or a sample of `max_examples` of the split's
    examples (all when it has no more), the same for the same `seed`; each set's in order."""
    total = sum(set_sizes)
    if max_examples is None or max_examples >= total:
        return [np.arange(size) for size in set_sizes]
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_examples, replace=False))
    starts = np.cumsum([0, *set_sizes])
    return [chosen[(chosen >= start) & (chosen < end)] - start for start, end in zip(starts[:-1], starts[1:])]


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
    final short batch; test passes walk every example (or a fixed sample of them) in order and pad the last
    batch.
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
        if config.max_examples is not None and not (config.test_set_mode and config.max_examples > 0):
            raise ValueError(f"max_examples ({config.max_examples}) must be positive, and only for test passes")
        self.config = config
        self.split = split
        self.local_batch_size = config.global_batch_size // config.num_replicas
        # Read (and so checked) here, in the caller's process, so a bad dataset is reported there rather than in
        # a worker; the arrays are opened again in the worker on first iteration.
        self.metadata = read_split(config.dataset_path, split).metadata
        self.sets: Optional[Dict[str, PuzzleSet]] = None  # opened on first iteration
        # Training passes so far (one per set), seeding each pass's order; it persists across passes of this
        # object (e.g. in a persistent DataLoader worker) so every round draws a new order.
        self.iters = start_round * len(self.metadata.sets)

    def _collate(self, inputs: np.ndarray, labels: np.ndarray,
                 puzzle_identifiers: np.ndarray) -> Dict[str, torch.Tensor]:
        batch = {"inputs": inputs.astype(np.int32), "labels": loss_labels(labels, self.metadata),
                 "puzzle_identifiers": puzzle_identifiers.astype(np.int32)}
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
        for set_name, puzzle_set in self.sets.items():
            self.iters += 1
            order_rng, group_order = pass_order(config.seed, self.iters, puzzle_set.num_groups, config.epochs_per_iter)
            subset_rng = np.random.default_rng([config.seed, self.iters])
            position = 0
            while position < len(group_order):
                position, example_ids, puzzle_ids = draw_global_batch(
                    order_rng, subset_rng, group_order, position, puzzle_set.puzzle_indices, puzzle_set.group_indices,
                    config.global_batch_size)
                if len(example_ids) < config.global_batch_size:
                    break  # drop the final short batch
                example_ids, puzzle_ids = example_ids[rank_rows], puzzle_ids[rank_rows]
                batch = self._collate(puzzle_set.inputs[example_ids], puzzle_set.labels[example_ids],
                                      puzzle_set.puzzle_identifiers[puzzle_ids])
                yield set_name, batch, config.global_batch_size

    def _iter_test(self) -> Iterator[Tuple[str, Dict[str, torch.Tensor], int]]:
        config = self.config
        walked = sample_test_examples([len(puzzle_set.inputs) for puzzle_set in self.sets.values()],
                                      config.max_examples, config.seed)
        for (set_name, puzzle_set), set_examples in zip(self.sets.items(), walked):
            num_examples = len(set_examples)
            for start in range(0, num_examples, config.global_batch_size):
                end = min(start + config.global_batch_size, num_examples)
                local_start = start + config.rank * self.local_batch_size
                local_end = min(start + (config.rank + 1) * self.local_batch_size, end)  # may be <= local_start
                example_ids = set_examples[local_start:local_end]
                puzzle_ids = np.searchsorted(puzzle_set.puzzle_indices, example_ids, side="right") - 1
                batch = self._collate(puzzle_set.inputs[example_ids], puzzle_set.labels[example_ids],
                                      puzzle_set.puzzle_identifiers[puzzle_ids])
                yield set_name, batch, end - start

    def __iter__(self) -> Iterator[Tuple[str, Dict[str, torch.Tensor], int]]:
        worker = get_worker_info()
        if worker is not None and worker.num_workers != 1:
            raise RuntimeError(f"PuzzleDataset supports at most one DataLoader worker, got {worker.num_workers}: "
                               "each worker would yield the same batches")
        if self.sets is None:
            self.sets = read_split(self.config.dataset_path, self.split).sets
        if self.config.test_set_mode:
            yield from self._iter_test()
        else:
            yield from self._iter_train()


def create_dataloader(dataset_path: str, split: str, *, seed: int, global_batch_size: int, test_set_mode: bool,
                      epochs_per_iter: int, rank: int, world_size: int, start_round: int = 0,
                      pin_memory: Optional[bool] = None,
                      max_examples: Optional[int] = None) -> Tuple[DataLoader, PuzzleDatasetMetadata]:
    """A DataLoader over one split with one persistent worker (it keeps the round counter between passes).

    `start_round` is the number of training rounds (passes over the split) already done, for resume;
    `max_examples`: a test pass walks only a fixed sample of that many examples (seeded by `seed`)."""
    config = PuzzleDatasetConfig(seed=seed, dataset_path=dataset_path, global_batch_size=global_batch_size,
                                 test_set_mode=test_set_mode, epochs_per_iter=epochs_per_iter, rank=rank,
                                 num_replicas=world_size, max_examples=max_examples)
    dataset = PuzzleDataset(config, split=split, start_round=start_round)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    # The loader's own generator keeps its worker seeding off the global torch RNG, which training resumes
    # from a checkpoint: otherwise the first iteration after a resume would shift every later random draw.
    loader = DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=8, pin_memory=pin_memory,
                        persistent_workers=True, generator=torch.Generator().manual_seed(seed))
    return loader, dataset.metadata
