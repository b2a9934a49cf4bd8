"""Tiny dataset folders and prediction files for the tests of puzzle_tools: ARC built by the real builder
from hand-made puzzles, Sudoku and maze written in the dataset format, predictions in both file formats."""
import json
import os

import numpy as np
import torch

from dataset import build_arc_dataset as arc
from dataset.common import dihedral_transform
from dataset.format import IGNORE_LABEL_ID, PuzzleDatasetMetadata, save_identifiers, save_split

ARC_NUM_AUG = 3  # 4 versions of each puzzle


def grid(rows):
    """A grid from strings of colour digits, e.g. grid(["012", "340"])."""
    return np.array([[int(c) for c in row] for row in rows], dtype=np.uint8)


def arc_puzzle(name, demos, tests):
    """A builder SourcePuzzle from lists of (input, output) grids written as digit strings."""
    data = {"train": [{"input": grid(i).tolist(), "output": grid(o).tolist()} for i, o in demos],
            "test": [{"input": grid(i).tolist(), "output": grid(o).tolist()} for i, o in tests]}
    return arc.parse_puzzle(data, name, name)


# Evaluation puzzles (their test pairs form the test split) and one training puzzle (train split only).
# Every grid uses several colours and no symmetry, so the builder finds distinct versions quickly.
DEMOS = [(["123", "405"], ["321", "504"]), (["6701", "2030"], ["1076", "0302"])]
EVALUATION_PUZZLES = {
    "a1": [(["120", "034"], ["021", "430"])],
    "b2": [(["5610", "0072"], ["0165", "2700"])],
    "c3": [(["89", "10"], ["98", "01"]), (["3400", "0156"], ["0043", "6510"])],  # two test inputs
    "d4": [(["712", "300"], ["217", "003"])],
    "e5": [(["2340", "5006"], ["0432", "6005"])],
}
TRAINING_PUZZLE = ("t0", [(["135", "246"], ["531", "642"])])


def build_arc(root, seed=0):
    """Build the tiny ARC dataset at `root/arc` with the real builder; returns its folder."""
    evaluation = [arc_puzzle(name, DEMOS, tests) for name, tests in EVALUATION_PUZZLES.items()]
    training = [arc_puzzle(TRAINING_PUZZLE[0], DEMOS, TRAINING_PUZZLE[1])]
    output_dir = os.path.join(str(root), "arc")
    arc.build([("evaluation", evaluation), ("training", training)], output_dir, "evaluation", seed, ARC_NUM_AUG)
    return output_dir


def load_set(dataset_dir, split, set_name="all"):
    return {field: np.load(os.path.join(dataset_dir, split, f"{set_name}__{field}.npy"))
            for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices")}


def identifier_names(dataset_dir):
    with open(os.path.join(dataset_dir, "identifiers.json")) as f:
        return json.load(f)


def augment_grid(original, version_name):
    """A grid of the original puzzle as the version named `version_name` holds it (the builder's naming
    `<puzzle>_t<id>_<colour map>`): colours mapped, then the dihedral transform."""
    if "_t" not in version_name:
        return original
    transform, colours = version_name.rsplit("_", 2)[1:]
    colour_map = np.array([int(c) for c in colours], dtype=np.uint8)
    return dihedral_transform(colour_map[original], int(transform[1:]))


def encode_answer(original, version_name):
    """Canvas tokens [900] of an answer given in the original frame, for the version `version_name`."""
    augmented = np.ascontiguousarray(augment_grid(original, version_name))
    return arc.encode_grids(augmented[None], np.zeros((1, 2), dtype=np.int64))[0]


def halt_logit(probability):
    return float(np.log(probability / (1 - probability)))


def save_ours(path, inputs, labels, puzzle_identifiers, preds, q_halt_logits):
    """One rank file in our format (argmax `preds`, no padding rows)."""
    torch.save({"inputs": torch.as_tensor(np.asarray(inputs), dtype=torch.int32),
                "labels": torch.as_tensor(np.asarray(labels), dtype=torch.int32),
                "puzzle_identifiers": torch.as_tensor(np.asarray(puzzle_identifiers), dtype=torch.int32),
                "preds": torch.as_tensor(np.asarray(preds), dtype=torch.uint8),
                "q_halt_logits": torch.as_tensor(np.asarray(q_halt_logits), dtype=torch.float32)}, path)


def save_reference(path, inputs, labels, puzzle_identifiers, preds, q_halt_logits, vocab_size, num_padding, seed):
    """One rank file in the reference's format: `logits` whose argmax is `preds`, plus padding rows (blank
    identifier, pad inputs, ignored labels, random logits) at the end, as its last batch has them."""
    rng = np.random.default_rng(seed)
    preds = np.asarray(preds)
    logits = rng.normal(size=preds.shape + (vocab_size,)).astype(np.float32)
    np.put_along_axis(logits, preds[..., None].astype(np.int64), 10.0, axis=-1)
    seq_len = preds.shape[1]
    padding_inputs = np.zeros((num_padding, seq_len))
    torch.save({"inputs": torch.as_tensor(np.concatenate([inputs, padding_inputs]), dtype=torch.int32),
                "labels": torch.as_tensor(np.concatenate([labels, np.full((num_padding, seq_len), IGNORE_LABEL_ID)]),
                                          dtype=torch.int32),
                "puzzle_identifiers": torch.as_tensor(np.concatenate([puzzle_identifiers, np.zeros(num_padding)]),
                                                      dtype=torch.int32),
                "logits": torch.as_tensor(np.concatenate(
                    [logits, rng.normal(size=(num_padding, seq_len, vocab_size)).astype(np.float32)])),
                "q_halt_logits": torch.as_tensor(np.concatenate([q_halt_logits, rng.normal(size=num_padding)]),
                                                 dtype=torch.float32)}, path)


def write_token_dataset(root, name, inputs, labels, vocab_size, split="test"):
    """A one-set split of single-example puzzles (the Sudoku and maze layout) with one `<blank>` identifier."""
    dataset_dir = os.path.join(str(root), name)
    num_examples, seq_len = inputs.shape
    metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
                                     seq_len=seq_len, num_puzzle_identifiers=1, total_groups=num_examples,
                                     mean_puzzle_examples=1, sets=["all"])
    save_split(dataset_dir, split, metadata, {"all": dict(
        inputs=inputs.astype(np.uint8), labels=labels.astype(np.uint8),
        puzzle_identifiers=np.zeros(num_examples, dtype=np.int32),
        puzzle_indices=np.arange(num_examples + 1, dtype=np.int32),
        group_indices=np.arange(num_examples + 1, dtype=np.int32))})
    save_identifiers(dataset_dir, ["<blank>"])
    return dataset_dir


def sudoku_examples(num_puzzles, seed):
    """Valid solved Sudokus (digit relabellings of one pattern) with 40 cells blanked, as
    token arrays [num_puzzles, 81]: inputs (blank 1, digit d -> d + 1) and labels."""
    rng = np.random.default_rng(seed)
    base = np.array([[(3 * (r % 3) + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)])
    inputs, labels = [], []
    for _ in range(num_puzzles):
        digits = np.concatenate([[0], rng.permutation(9) + 1])
        solution = digits[base]
        question = solution.copy().reshape(-1)
        question[rng.choice(81, size=40, replace=False)] = 0
        inputs.append(question + 1)
        labels.append(solution.reshape(-1) + 1)
    return np.array(inputs), np.array(labels)


def write_sudoku(root, num_puzzles=6, seed=0):
    inputs, labels = sudoku_examples(num_puzzles, seed)
    return write_token_dataset(root, "sudoku", inputs, labels, vocab_size=11)


MAZE = ["#######",
        "#S    #",
        "# ### #",
        "#   # #",
        "### # #",
        "#    G#",
        "#######"]
MAZE_SOLUTION = ["#######",
                 "#Soooo#",
                 "# ###o#",
                 "#   #o#",
                 "### #o#",
                 "#    G#",
                 "#######"]


def maze_tokens(rows):
    return np.array(["# SGo".index(c) + 1 for c in "".join(rows)])


def write_maze(root, num_puzzles=3):
    """Copies of one 7x7 maze, each flipped differently, as single-example puzzles."""
    question, answer = maze_tokens(MAZE).reshape(7, 7), maze_tokens(MAZE_SOLUTION).reshape(7, 7)
    inputs = np.stack([dihedral_transform(question, t).reshape(-1) for t in range(num_puzzles)])
    labels = np.stack([dihedral_transform(answer, t).reshape(-1) for t in range(num_puzzles)])
    return write_token_dataset(root, "maze", inputs, labels, vocab_size=6)


def save_label_predictions(prefix, dataset_dir, predicted, num_files=2, split="test"):
    """Prediction files (our format) for the examples of `predicted`, {example: {flat cell: token}}: each
    prediction copies its label but for the given cells. Rows go round-robin into `num_files` rank files,
    the last example first (rank files are not in dataset order)."""
    arrays = load_set(dataset_dir, split)
    examples = sorted(predicted, reverse=True)
    inputs, labels = arrays["inputs"][examples].astype(np.int32), arrays["labels"][examples].astype(np.int32)
    preds = labels.copy()
    for row, example in enumerate(examples):
        for cell, token in predicted[example].items():
            preds[row, cell] = token
    identifiers = np.repeat(arrays["puzzle_identifiers"], np.diff(arrays["puzzle_indices"]))[examples]
    labels[labels == 0] = IGNORE_LABEL_ID
    for rank in range(num_files):
        rows = slice(rank, None, num_files)
        save_ours(f"{prefix}.{rank}", inputs[rows], labels[rows], identifiers[rows], preds[rows],
                  np.zeros(len(examples))[rows])
