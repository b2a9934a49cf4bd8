"""Tests of the puzzle dataset loader on small hand-built dataset folders."""
import json
import os
import types

import numpy as np
import pytest
import torch

import dataset.puzzle_dataset as puzzle_dataset
from dataset.format import (DatasetFormatError, IGNORE_LABEL_ID, PuzzleDatasetMetadata, read_split, save_identifiers,
                            save_split)
from dataset.puzzle_dataset import PuzzleDataset, PuzzleDatasetConfig, create_dataloader

SEQ_LEN = 5
PAD_ID = 0
IGNORE_LABEL = 0  # stored label value that the loader maps to -100
BLANK_IDENTIFIER = 0

# Examples per puzzle, puzzles grouped: ARC-like (several examples, several augmented versions per group)
# and Sudoku-like (one example per puzzle, an original and two augmentations per group).
TRAIN_GROUPS = {
    "arc": [[3, 1], [2], [4, 2, 1], [1, 1], [5], [2, 3], [1], [3, 2], [2, 2], [1, 4], [6], [2]],
    "sudoku": [[1, 1, 1]] * 12,
}
TEST_GROUPS = {"arc": [[3], [1], [4], [2]]}  # 10 examples


def make_set(groups, first_identifier, token_dtype):
    """Arrays of one set. Example i has inputs[i, 0] = i + 1 (so it can be found again, and never equals the
    pad) and labels (i + j) % 3 (so a third of them are the ignore label); puzzle p has identifier
    first_identifier + p."""
    puzzle_sizes = [size for group in groups for size in group]
    num_examples = sum(puzzle_sizes)
    inputs = np.tile(np.arange(1, num_examples + 1)[:, None], (1, SEQ_LEN))
    labels = (np.arange(num_examples)[:, None] + np.arange(SEQ_LEN)[None, :]) % 3
    return {
        "inputs": inputs.astype(token_dtype),
        "labels": labels.astype(token_dtype),
        "puzzle_identifiers": first_identifier + np.arange(len(puzzle_sizes)),
        "puzzle_indices": np.concatenate([[0], np.cumsum(puzzle_sizes)]),
        "group_indices": np.concatenate([[0], np.cumsum([len(group) for group in groups])]),
    }


def write_dataset(root, ignore_label_id=IGNORE_LABEL):
    """A dataset folder with a train split (sets `arc`, uint8 tokens, and `sudoku`, int64) and a test split."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    num_identifiers = 1
    for split, set_groups in (("train", TRAIN_GROUPS), ("test", TEST_GROUPS)):
        sets = {}
        for set_name, groups in set_groups.items():
            token_dtype = np.uint8 if set_name == "arc" else np.int64
            sets[set_name] = make_set(groups, num_identifiers, token_dtype)
            num_identifiers += len(sets[set_name]["puzzle_identifiers"])
        num_groups = sum(len(groups) for groups in set_groups.values())
        num_puzzles = sum(len(group) for groups in set_groups.values() for group in groups)
        num_examples = sum(sum(group) for groups in set_groups.values() for group in groups)
        metadata = PuzzleDatasetMetadata(
            pad_id=PAD_ID, ignore_label_id=ignore_label_id, blank_identifier_id=BLANK_IDENTIFIER, vocab_size=64,
            seq_len=SEQ_LEN, num_puzzle_identifiers=0, total_groups=num_groups,
            mean_puzzle_examples=num_examples / num_puzzles, sets=list(set_groups))
        save_split(root, split, metadata, sets)
    for split in ("train", "test"):  # identifiers are counted over both splits
        path = os.path.join(root, split, "dataset.json")
        with open(path) as f:
            stored = json.load(f)
        stored["num_puzzle_identifiers"] = num_identifiers
        with open(path, "w") as f:
            json.dump(stored, f)
    save_identifiers(root, ["<blank>"] + [f"puzzle{i}" for i in range(1, num_identifiers)])
    return root


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("puzzles"))


def open_split(dataset_dir, split="train", seed=3, global_batch_size=4, test_set_mode=False, epochs_per_iter=1,
               rank=0, num_replicas=1, max_examples=None):
    config = PuzzleDatasetConfig(seed=seed, dataset_path=dataset_dir, global_batch_size=global_batch_size,
                                 test_set_mode=test_set_mode, epochs_per_iter=epochs_per_iter, rank=rank,
                                 num_replicas=num_replicas, max_examples=max_examples)
    return PuzzleDataset(config, split=split)


def stored_arrays(dataset_dir, split, set_name):
    return {field: np.load(os.path.join(dataset_dir, split, f"{set_name}__{field}.npy"))
            for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}


def batches_of(dataset, set_name):
    return [batch for name, batch, _ in dataset if name == set_name]


def example_ids(batch):
    """Stored example index of each row (inputs[:, 0] - 1); padding rows give -1."""
    return batch["inputs"][:, 0].numpy().astype(np.int64) - 1


def puzzle_of_examples(arrays, examples):
    return np.searchsorted(arrays["puzzle_indices"], examples, side="right") - 1


def group_of_puzzles(arrays, puzzles):
    return np.searchsorted(arrays["group_indices"], puzzles, side="right") - 1


def expected_labels(labels):
    labels = labels.astype(np.int32)
    return np.where(labels == IGNORE_LABEL, IGNORE_LABEL_ID, labels)


def test_format_round_trip(dataset_dir):
    dataset = open_split(dataset_dir, "train", global_batch_size=64, test_set_mode=True)
    with open(os.path.join(dataset_dir, "train", "dataset.json")) as f:
        assert dataset.metadata == PuzzleDatasetMetadata(**json.load(f))
    assert dataset.metadata.sets == ["arc", "sudoku"]
    yielded = list(dataset)
    assert [name for name, _, _ in yielded] == ["arc", "sudoku"]
    for set_name, batch, effective_size in yielded:
        arrays = stored_arrays(dataset_dir, "train", set_name)
        num_examples = len(arrays["inputs"])
        assert effective_size == num_examples
        for field in ("inputs", "labels", "puzzle_identifiers"):
            assert batch[field].dtype == torch.int32
        assert np.array_equal(batch["inputs"][:num_examples].numpy(), arrays["inputs"])
        assert np.array_equal(batch["labels"][:num_examples].numpy(), expected_labels(arrays["labels"]))
        identifier_per_example = np.repeat(arrays["puzzle_identifiers"], np.diff(arrays["puzzle_indices"]))
        assert np.array_equal(batch["puzzle_identifiers"][:num_examples].numpy(), identifier_per_example)


@pytest.mark.parametrize("set_name", ["arc", "sudoku"])
def test_each_group_once_per_epoch(dataset_dir, set_name):
    # With a global batch of one, every group taken is one batch and nothing is dropped.
    arrays = stored_arrays(dataset_dir, "train", set_name)
    num_groups = len(arrays["group_indices"]) - 1
    dataset = open_split(dataset_dir, global_batch_size=1, epochs_per_iter=2)
    batches = batches_of(dataset, set_name)
    assert len(batches) == 2 * num_groups
    groups = group_of_puzzles(arrays, [batch["puzzle_identifiers"][0].item() - arrays["puzzle_identifiers"][0]
                                       for batch in batches])
    for epoch in range(2):
        assert sorted(groups[epoch * num_groups:(epoch + 1) * num_groups]) == list(range(num_groups))
    assert groups[:num_groups].tolist() != groups[num_groups:].tolist()  # each epoch shuffles anew


@pytest.mark.parametrize("global_batch_size", [4, 5])
def test_batch_rows_come_from_one_puzzle_per_draw(dataset_dir, global_batch_size):
    arrays = stored_arrays(dataset_dir, "train", "arc")
    sizes = np.diff(arrays["puzzle_indices"])
    batches = batches_of(open_split(dataset_dir, global_batch_size=global_batch_size, seed=11), "arc")
    assert len(batches) >= 4
    for batch in batches:
        examples = example_ids(batch)
        puzzles = batch["puzzle_identifiers"].numpy() - arrays["puzzle_identifiers"][0]
        assert np.array_equal(puzzle_of_examples(arrays, examples), puzzles)  # identifier matches the example
        assert len(set(examples.tolist())) == len(examples)  # no example twice
        # One contiguous run per puzzle drawn; every run but the last holds the whole puzzle.
        run_starts = np.flatnonzero(np.diff(puzzles)) + 1
        runs = np.split(puzzles, run_starts)
        assert len({run[0] for run in runs}) == len(runs)
        for run in runs[:-1]:
            assert len(run) == sizes[run[0]]
        assert len(runs[-1]) <= sizes[runs[-1][0]]


def test_drop_last_short_batch(dataset_dir):
    # Sudoku set: 12 groups of one-example puzzles, so 12 examples per epoch; batches of 5 give 2 full ones
    # and a dropped one of 2, two epochs per pass give 4 full batches and a dropped one of 4.
    for epochs_per_iter, expected_batches in ((1, 2), (2, 4)):
        dataset = open_split(dataset_dir, global_batch_size=5, epochs_per_iter=epochs_per_iter)
        yielded = [item for item in dataset if item[0] == "sudoku"]
        assert len(yielded) == expected_batches
        assert all(effective_size == 5 for _, _, effective_size in yielded)
        assert all(batch["inputs"].shape == (5, SEQ_LEN) for _, batch, _ in yielded)


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_rank_slices_partition_global_batch(dataset_dir, num_replicas):
    def run(rank, replicas):
        return list(open_split(dataset_dir, global_batch_size=6, epochs_per_iter=2, rank=rank,
                               num_replicas=replicas))

    whole = run(0, 1)
    per_rank = [run(rank, num_replicas) for rank in range(num_replicas)]
    assert all(len(rank_items) == len(whole) for rank_items in per_rank)
    for step, (set_name, global_batch, effective_size) in enumerate(whole):
        for rank_items in per_rank:
            assert rank_items[step][0] == set_name and rank_items[step][2] == effective_size == 6
            assert rank_items[step][1]["inputs"].shape == (6 // num_replicas, SEQ_LEN)
        for field in ("inputs", "labels", "puzzle_identifiers"):
            joined = torch.cat([rank_items[step][1][field] for rank_items in per_rank])
            assert torch.equal(joined, global_batch[field])


def test_test_mode_padding_and_ignore_label(dataset_dir):
    arrays = stored_arrays(dataset_dir, "test", "arc")
    # 10 examples, global batch 9 over 3 ranks: a full batch, then one example on rank 0 and nothing else.
    per_rank = [list(open_split(dataset_dir, "test", global_batch_size=9, test_set_mode=True, rank=rank,
                                num_replicas=3))
                for rank in range(3)]
    for rank_items in per_rank:
        assert [(name, size) for name, _, size in rank_items] == [("arc", 9), ("arc", 1)]
    last_rank0 = per_rank[0][1][1]
    assert np.array_equal(last_rank0["inputs"][0].numpy(), arrays["inputs"][9])
    assert last_rank0["labels"][0].tolist() == [IGNORE_LABEL_ID, 1, 2, IGNORE_LABEL_ID, 1]  # (9 + j) % 3
    assert last_rank0["puzzle_identifiers"][0].item() == arrays["puzzle_identifiers"][3]
    assert torch.all(last_rank0["inputs"][1:] == PAD_ID)
    assert torch.all(last_rank0["labels"][1:] == IGNORE_LABEL_ID)
    assert torch.all(last_rank0["puzzle_identifiers"][1:] == BLANK_IDENTIFIER)
    for rank in (1, 2):  # fully padded batches keep the local shape
        padded = per_rank[rank][1][1]
        assert padded["inputs"].shape == (3, SEQ_LEN)
        assert torch.all(padded["inputs"] == PAD_ID) and torch.all(padded["labels"] == IGNORE_LABEL_ID)
        assert torch.all(padded["puzzle_identifiers"] == BLANK_IDENTIFIER)


def test_no_ignore_label_keeps_labels(tmp_path):
    dataset_dir = write_dataset(tmp_path / "data", ignore_label_id=None)
    arrays = stored_arrays(dataset_dir, "test", "arc")
    (_, batch, _), = open_split(dataset_dir, "test", global_batch_size=12, test_set_mode=True)
    assert np.array_equal(batch["labels"][:10].numpy(), arrays["labels"])
    assert torch.all(batch["labels"][10:] == IGNORE_LABEL_ID)  # padding is still ignored


@pytest.mark.parametrize("global_batch_size,num_replicas", [(4, 2), (6, 3), (3, 1)])
def test_test_mode_covers_every_example_once(dataset_dir, global_batch_size, num_replicas):
    for split, set_groups in (("train", TRAIN_GROUPS), ("test", TEST_GROUPS)):
        for set_name in set_groups:
            arrays = stored_arrays(dataset_dir, split, set_name)
            seen, identifiers = [], []
            for rank in range(num_replicas):
                for batch in batches_of(open_split(dataset_dir, split, global_batch_size=global_batch_size,
                                                   test_set_mode=True, rank=rank, num_replicas=num_replicas),
                                        set_name):
                    real = example_ids(batch) >= 0
                    seen.extend(example_ids(batch)[real].tolist())
                    identifiers.extend(batch["puzzle_identifiers"].numpy()[real].tolist())
            order = np.argsort(seen)
            assert np.array_equal(np.array(seen)[order], np.arange(len(arrays["inputs"])))
            puzzles = puzzle_of_examples(arrays, np.arange(len(arrays["inputs"])))
            assert np.array_equal(np.array(identifiers)[order], arrays["puzzle_identifiers"][puzzles])


@pytest.mark.parametrize("global_batch_size,num_replicas", [(4, 2), (3, 1)])
def test_a_test_pass_of_max_examples_walks_the_same_seeded_sample_each_time(dataset_dir, global_batch_size,
                                                                             num_replicas):
    # The train split in test mode: two sets (48 and 36 examples), so the sample spans sets.
    arrays = {name: stored_arrays(dataset_dir, "train", name) for name in TRAIN_GROUPS}
    assert [len(arrays[name]["inputs"]) for name in TRAIN_GROUPS] == [48, 36]

    def walked(seed, passes=1):
        seen = {name: [] for name in TRAIN_GROUPS}
        for rank in range(num_replicas):
            loader = open_split(dataset_dir, "train", seed=seed, global_batch_size=global_batch_size,
                                test_set_mode=True, rank=rank, num_replicas=num_replicas, max_examples=7)
            for _ in range(passes):
                for name, batch, _ in loader:
                    examples = example_ids(batch)
                    real = examples >= 0
                    seen[name].extend(examples[real].tolist())
                    # Each row is its stored example, with its puzzle's identifier: the metrics stay exact.
                    assert np.array_equal(batch["labels"].numpy()[real],
                                          expected_labels(arrays[name]["labels"][examples[real]]))
                    puzzles = puzzle_of_examples(arrays[name], examples[real])
                    assert np.array_equal(batch["puzzle_identifiers"].numpy()[real],
                                          arrays[name]["puzzle_identifiers"][puzzles])
        return {name: sorted(examples) for name, examples in seen.items()}

    sample = walked(seed=3)
    assert sum(len(examples) for examples in sample.values()) == 7
    assert all(len(set(examples)) == len(examples) for examples in sample.values())
    expected = puzzle_dataset.sample_test_examples([48, 36], 7, seed=3)
    assert {name: examples.tolist() for name, examples in zip(TRAIN_GROUPS, expected)} == sample
    # The same examples on every pass (every evaluation of a run), and another sample for another seed.
    assert walked(seed=3, passes=2) == {name: sorted(examples * 2) for name, examples in sample.items()}
    assert walked(seed=4) != sample


def test_a_sample_of_at_least_the_whole_split_is_the_whole_split():
    assert [a.tolist() for a in puzzle_dataset.sample_test_examples([2, 3], 5, seed=0)] == [[0, 1], [0, 1, 2]]
    assert [a.tolist() for a in puzzle_dataset.sample_test_examples([2, 3], None, seed=0)] == [[0, 1], [0, 1, 2]]


def test_max_examples_is_for_test_passes_only(dataset_dir):
    with pytest.raises(ValueError, match="only for test passes"):
        open_split(dataset_dir, max_examples=4)


def as_lists(items):
    return [(name, {k: v.tolist() for k, v in batch.items()}, size) for name, batch, size in items]


def test_round_counter_changes_order_but_seed_reproduces_it(dataset_dir):
    dataset = open_split(dataset_dir, seed=5)
    first, second = as_lists(dataset), as_lists(dataset)
    assert dataset.iters == 4  # two sets, two passes
    assert first != second
    assert as_lists(open_split(dataset_dir, seed=5)) == first
    assert as_lists(open_split(dataset_dir, seed=6)) != first


def reference_row_puzzles(seed, iters, arrays, epochs_per_iter, global_batch_size):
    """Puzzle index of every row of every full batch, from the reference's Philox call sequence: the
    permutations, then one integer per group taken."""
    rng = np.random.Generator(np.random.Philox(seed=seed + iters))
    num_groups = len(arrays["group_indices"]) - 1
    group_order = np.concatenate([rng.permutation(num_groups) for _ in range(epochs_per_iter)])
    batches, rows = [], []
    for group in group_order:
        puzzle = rng.integers(arrays["group_indices"][group], arrays["group_indices"][group + 1])
        puzzle_size = arrays["puzzle_indices"][puzzle + 1] - arrays["puzzle_indices"][puzzle]
        rows.extend([int(puzzle)] * int(min(puzzle_size, global_batch_size - len(rows))))
        if len(rows) == global_batch_size:
            batches.append(rows)
            rows = []
    return batches  # rows left over form the dropped short batch


@pytest.mark.parametrize("seed,epochs_per_iter,global_batch_size", [(0, 1, 4), (7, 2, 5), (123, 3, 7)])
def test_matches_reference_draw_sequence(dataset_dir, seed, epochs_per_iter, global_batch_size):
    dataset = open_split(dataset_dir, seed=seed, global_batch_size=global_batch_size, epochs_per_iter=epochs_per_iter)
    for round_index in range(2):
        yielded = list(dataset)
        for set_index, set_name in enumerate(["arc", "sudoku"]):
            arrays = stored_arrays(dataset_dir, "train", set_name)
            iters = round_index * 2 + set_index + 1
            expected = reference_row_puzzles(seed, iters, arrays, epochs_per_iter, global_batch_size)
            batches = [batch for name, batch, _ in yielded if name == set_name]
            assert len(batches) == len(expected)
            for batch, expected_puzzles in zip(batches, expected):
                puzzles = batch["puzzle_identifiers"].numpy() - arrays["puzzle_identifiers"][0]
                assert puzzles.tolist() == expected_puzzles
                assert puzzle_of_examples(arrays, example_ids(batch)).tolist() == expected_puzzles


def test_dataloader_worker_matches_main_process(dataset_dir):
    loader, metadata = create_dataloader(dataset_dir, "train", seed=9, global_batch_size=4, test_set_mode=False,
                                         epochs_per_iter=2, rank=0, world_size=2, pin_memory=False)
    assert metadata.sets == ["arc", "sudoku"]
    in_process = open_split(dataset_dir, seed=9, epochs_per_iter=2, rank=0, num_replicas=2)
    # Two passes: the persistent worker keeps its round counter, like the in-process object.
    for _ in range(2):
        from_worker = as_lists(loader)
        assert from_worker and from_worker == as_lists(in_process)
    test_loader, _ = create_dataloader(dataset_dir, "test", seed=9, global_batch_size=4, test_set_mode=True,
                                       epochs_per_iter=1, rank=1, world_size=2, pin_memory=False)
    in_process = open_split(dataset_dir, "test", global_batch_size=4, test_set_mode=True, rank=1, num_replicas=2)
    assert as_lists(test_loader) == as_lists(in_process)


def test_several_workers_refused(dataset_dir, monkeypatch):
    monkeypatch.setattr(puzzle_dataset, "get_worker_info", lambda: types.SimpleNamespace(num_workers=2))
    with pytest.raises(RuntimeError, match="at most one DataLoader worker"):
        next(iter(open_split(dataset_dir)))


def test_batch_size_not_divisible_by_replicas(dataset_dir):
    with pytest.raises(ValueError, match="global_batch_size 7 must be a positive multiple of num_replicas 2"):
        open_split(dataset_dir, global_batch_size=7, num_replicas=2)


def assert_format_error(dataset_dir, path, split="train"):
    with pytest.raises(DatasetFormatError) as error:
        open_split(dataset_dir, split)
    message = str(error.value)
    assert path in message and "\n" not in message


def test_missing_folders_and_files(tmp_path):
    assert_format_error(str(tmp_path / "absent"), str(tmp_path / "absent"))
    dataset_dir = write_dataset(tmp_path / "data")
    assert_format_error(dataset_dir, os.path.join(dataset_dir, "validation"), split="validation")
    array_path = os.path.join(dataset_dir, "test", "arc__group_indices.npy")
    os.remove(array_path)
    assert_format_error(dataset_dir, array_path, split="test")
    metadata_path = os.path.join(dataset_dir, "train", "dataset.json")
    os.remove(metadata_path)
    assert_format_error(dataset_dir, metadata_path)


@pytest.mark.parametrize("contents,detail", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "malformed metadata"),
    (None, "seq_len"),  # a field missing
])
def test_malformed_metadata(tmp_path, contents, detail):
    dataset_dir = write_dataset(tmp_path / "data")
    metadata_path = os.path.join(dataset_dir, "train", "dataset.json")
    if contents is None:
        with open(metadata_path) as f:
            stored = json.load(f)
        del stored["seq_len"]
        contents = json.dumps(stored)
    with open(metadata_path, "w") as f:
        f.write(contents)
    with pytest.raises(DatasetFormatError, match=detail) as error:
        open_split(dataset_dir)
    assert metadata_path in str(error.value) and "\n" not in str(error.value)


def yielded_batches(dataset_path, seed, batch, epochs, rounds):
    """Batches a training loader yields over `rounds` passes (one dataset object, as the persistent worker)."""
    dataset = PuzzleDataset(PuzzleDatasetConfig(seed=seed, dataset_path=dataset_path, global_batch_size=batch,
                                                test_set_mode=False, epochs_per_iter=epochs, rank=0, num_replicas=1))
    return sum(len(list(dataset)) for _ in range(rounds))


@pytest.mark.parametrize("chunk", [puzzle_dataset.REPLAY_CHUNK, 3])  # 3: the replay carries a batch across chunks
def test_train_batches_counts_what_the_passes_yield(dataset_dir, monkeypatch, chunk):
    # Sets `arc` (puzzle sizes vary) and `sudoku` (one example each); every pass ends in a short batch that is
    # dropped, of a size that depends on the draws.
    from dataset.puzzle_dataset import train_batches
    monkeypatch.setattr(puzzle_dataset, "REPLAY_CHUNK", chunk)
    metadata = read_split(dataset_dir, "train").metadata
    fewer_than_the_reference_count = False
    for seed, batch, epochs, rounds in ((0, 4, 1, 1), (3, 5, 3, 2), (7, 16, 2, 3), (1, 7, 1, 4)):
        yielded = yielded_batches(dataset_dir, seed, batch, epochs, rounds)
        assert train_batches(dataset_dir, "train", seed, batch, epochs, rounds) == yielded
        assert train_batches(dataset_dir, "train", seed, batch, epochs, rounds, at_most=yielded - 1) == yielded - 1
        assert train_batches(dataset_dir, "train", seed, batch, epochs, rounds, at_most=yielded + 5) == yielded
        # The reference's step count (examples over the batch size) overcounts the short batches dropped.
        reference_steps = int(rounds * epochs * metadata.total_groups * metadata.mean_puzzle_examples / batch)
        fewer_than_the_reference_count |= yielded < reference_steps
    assert fewer_than_the_reference_count
