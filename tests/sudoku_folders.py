"""Hand-made Sudoku dataset folders in the dataset format, for the tests of the OOD builders and of the Sudoku
scorer."""
import os

import numpy as np

from dataset.common import atomic_output_dir
from dataset.format import DATASET_FIELDS, PuzzleDatasetMetadata, save_identifiers, save_split


def load_set(dataset_dir, split, set_name):
    return {field: np.load(os.path.join(dataset_dir, split, f"{set_name}__{field}.npy")) for field in DATASET_FIELDS}


def solved_grid(shift=0):
    """A valid solution (the classic pattern), digits relabelled by `shift`."""
    grid = np.array([[(r * 3 + r // 3 + c) % 9 for c in range(9)] for r in range(9)])
    return (grid + shift) % 9 + 1


def sudoku_arrays(questions, answers, versions=1):
    count = len(questions)
    return dict(inputs=np.stack(questions).reshape(count, 81).astype(np.uint8) + 1,
                labels=np.stack(answers).reshape(count, 81).astype(np.uint8) + 1,
                puzzle_identifiers=np.zeros(count, dtype=np.int32),
                puzzle_indices=np.arange(count + 1, dtype=np.int32),
                group_indices=np.arange(0, count + 1, versions, dtype=np.int32))


def write_sudoku(path, train, test_sets):
    with atomic_output_dir(str(path)) as out:
        for split, sets in (("train", {"all": train}), ("test", test_sets)):
            metadata = PuzzleDatasetMetadata(seq_len=81, vocab_size=11, pad_id=0, ignore_label_id=0,
                                             blank_identifier_id=0, num_puzzle_identifiers=1,
                                             total_groups=sum(len(a["group_indices"]) - 1 for a in sets.values()),
                                             mean_puzzle_examples=1, sets=list(sets))
            save_split(out, split, metadata, sets)
        save_identifiers(out, ["<blank>"])
    return str(path)
