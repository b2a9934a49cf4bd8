"""Out-of-distribution and data-regime variants of the puzzle datasets, written in the puzzle dataset format.

    python dataset/build_ood_dataset.py maze-size --train-sizes 10 14 --test-sizes 20 30 --train-count 1000 \\
        --test-count 200 --output-dir data/maze-ood
    python dataset/build_ood_dataset.py sudoku-givens --dataset data/sudoku-extreme-1k-aug-1000 \\
        --fractions 0 0.2 0.5 0.8 --max-puzzles 10000 --output-dir data/sudoku-givens
    python dataset/build_ood_dataset.py subsample --dataset data/sudoku-extreme-full \\
        --sizes 500 1000 2000 5000 10000 --output-dir data/sudoku-lowdata

maze-size (size extrapolation): mazes of the --train-sizes in the train split (set `all`) and of the
--test-sizes in the test split, one set per size (`size20`, `size30`), so an evaluation reports each size
(`size20/exact_accuracy`). Mazes come from dataset/maze_generator.py at their own size, with a shortest path
longer than --min-path-fraction of the longest path the size allows (default 110/449, the reference's "hard"
30x30 threshold, so every size is as hard relative to its size), and no maze appears twice. Each maze is
placed at a random offset in a --canvas-size square (default 30: seq_len 900, as the published maze set, so
one model serves every variant and the published data) and the rest of the canvas is filled with walls `#`.
Walls rather than the pad token: the generator's grid edge already acts as a wall, so a walled-in small maze
is itself a valid 30x30 maze with the same unique shortest path; pad tokens would be an input the 30x30 set
never shows (the test-size shift would then mix in a token shift), and padded labels are ignored, so the
model would never learn to keep them. The random offset keeps the open cells of small mazes spread over the
whole canvas, so a larger test maze needs no position the training never saw. Include a train size in
--test-sizes for an in-distribution reference.

sudoku-givens (observability stress): the test split of a Sudoku dataset with a fraction of each puzzle's
givens blanked, one set per fraction (`drop20` for 0.2; 0 gives the unchanged puzzles as `drop0`). The
labels stay the original solution, though a puzzle with givens removed may have other solutions too, which
`puzzle_tools/ood.py sudoku-score` counts as valid. round(fraction x givens) givens are removed per puzzle,
uniformly at random; the removals are nested (every given blanked at 0.2 is blanked at 0.5 too). The train split and
identifiers.json are carried over unchanged (hard links where the filesystem allows, else copies), so a run
can also train on the original puzzles and report every fraction at each evaluation.

subsample (low-data regime): one dataset folder per size, `<output-dir>/n<N>`, whose train split keeps N
groups of the source's train split, i.e. N original puzzles with all their augmentations; the subsets are
nested (n500 is part of n1000). The test split and the top-level files are carried over unchanged.

Evaluating a checkpoint on a variant (evaluate.py prints the metrics of every test set):

    python evaluate.py --checkpoint RUN/step_N --data-path data/maze-ood
    python evaluate.py --checkpoint RUN/step_N --data-path data/sudoku-givens --save-outputs inputs,labels,preds
    python puzzle_tools/ood.py sudoku-score --dataset data/sudoku-givens --predictions RUN/step_N_all_preds
    python pretrain.py data=sudoku data_path=data/sudoku-lowdata/n500     # low data: train on each subset

(`preds` is the argmax, far smaller than `logits`.) Bad input is one `error:` line naming the file, set or
flag, and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from typing import Dict, List, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from command_line import OneLineArgumentParser, exit_status, run_cli
from dataset import maze_generator
from dataset.common import DatasetBuildError, atomic_output_dir, seed_argument
from dataset.format import (MAZE_CHAR_TO_TOKEN, MAZE_VOCAB_SIZE, SUDOKU_BLANK, SUDOKU_SEQ_LEN, SUDOKU_VOCAB_SIZE,
                            DatasetSplit, PuzzleDatasetMetadata, PuzzleSet, read_metadata, read_split,
                            save_identifiers, save_split)

# The reference's "hard" mazes: a shortest path longer than 110 of the 449 cells a 30x30 path can hold.
HARD_PATH_FRACTION = (maze_generator.HARD_MIN_PATH_LENGTH
                      / maze_generator.longest_possible_path(maze_generator.HARD_GRID_SIZE))
VARIANT_FILE = "ood_variant.json"  # how a variant folder was made


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    maze = commands.add_parser("maze-size", help="train on smaller mazes, test on larger ones")
    maze.add_argument("--train-sizes", type=int, nargs="+", required=True, help="maze sides of the train split")
    maze.add_argument("--test-sizes", type=int, nargs="+", required=True, help="maze sides of the test sets")
    maze.add_argument("--train-count", type=int, default=1000, help="train mazes per size (default %(default)s)")
    maze.add_argument("--test-count", type=int, default=200, help="test mazes per size (default %(default)s)")
    maze.add_argument("--canvas-size", type=int, default=maze_generator.HARD_GRID_SIZE,
                      help="side of the grid every maze is placed in (default %(default)s: seq_len 900)")
    maze.add_argument("--min-path-fraction", type=float, default=HARD_PATH_FRACTION,
                      help="keep mazes whose shortest path is longer than this fraction of the longest possible "
                           "path at their size (default 110/449 = %(default).3f, the reference's hard mazes)")
    maze.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="generator processes; the mazes do not depend on it (default: CPU count)")

    givens = commands.add_parser("sudoku-givens", help="Sudoku test sets with a fraction of the givens removed")
    givens.add_argument("--dataset", required=True, help="a Sudoku dataset folder (dataset/build_sudoku_dataset.py)")
    givens.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5, 0.8],
                        help="fractions of each puzzle's givens to remove, one test set each (default 0.2 0.5 0.8)")
    givens.add_argument("--max-puzzles", type=int, default=None,
                        help="keep this many test puzzles, drawn at random (default: all)")

    subsample = commands.add_parser("subsample", help="training subsets of N puzzles (whole groups)")
    subsample.add_argument("--dataset", required=True, help="the dataset folder to subsample")
    subsample.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 5000, 10000],
                           help="train groups (original puzzles) per subset (default 500 1000 2000 5000 10000)")

    for command in (maze, givens, subsample):
        command.add_argument("--output-dir", required=True,
                             help="folder to write" + (" (one dataset folder per size inside)"
                                                       if command is subsample else ""))
        command.add_argument("--seed", type=seed_argument, default=42, help="seed of every random draw (default %(default)s)")
        command.add_argument("--overwrite", action="store_true", help="replace existing output folders")

    return parser.parse_args(argv)


def write_variant_file(out_dir: str, args: argparse.Namespace) -> None:
    with open(os.path.join(out_dir, VARIANT_FILE), "w") as f:
        json.dump(vars(args), f, indent=1)


def link_or_copy(source: str, target: str) -> None:
    """Hard link (no space used; builders replace files rather than edit them), else copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def carry_over(source_dir: str, target_dir: str, split: str) -> None:
    """Bring a split folder and the top-level files (identifiers.json, test_puzzles.json) over unchanged."""
    shutil.copytree(os.path.join(source_dir, split), os.path.join(target_dir, split), copy_function=link_or_copy)
    for name in os.listdir(source_dir):
        if os.path.isfile(os.path.join(source_dir, name)) and name != VARIANT_FILE:
            link_or_copy(os.path.join(source_dir, name), os.path.join(target_dir, name))


def check_positive(flag: str, values: Sequence[int]) -> None:
    for value in values:
        if value < 1:
            raise DatasetBuildError(f"{flag} must be at least 1, got {value}")
    if len(set(values)) != len(values):
        raise DatasetBuildError(f"{flag}: a value is listed twice")


# --- maze-size ---------------------------------------------------------------------------------------------

def maze_min_path_length(size: int, fraction: float) -> int:
    return round(fraction * maze_generator.longest_possible_path(size))


def place_mazes(mazes: Sequence[Dict[str, object]], size: int, canvas: int, rng: np.random.Generator
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Token grids [n, canvas * canvas] of questions and answers, each maze at a random offset among walls."""
    wall = MAZE_CHAR_TO_TOKEN[ord(maze_generator.WALL)]
    grids = {field: np.full((len(mazes), canvas, canvas), wall, dtype=np.uint8) for field in ("question", "answer")}
    offsets = rng.integers(0, canvas - size + 1, (len(mazes), 2))
    for index, (maze, (row, col)) in enumerate(zip(mazes, offsets)):
        for field, grid in grids.items():
            chars = np.frombuffer(str(maze[field]).encode("ascii"), dtype=np.uint8)
            grid[index, row:row + size, col:col + size] = MAZE_CHAR_TO_TOKEN[chars].reshape(size, size)
    return grids["question"].reshape(len(mazes), -1), grids["answer"].reshape(len(mazes), -1)


def one_example_groups(inputs: np.ndarray, labels: np.ndarray) -> Dict[str, np.ndarray]:
    count = len(inputs)
    return dict(inputs=inputs, labels=labels, puzzle_identifiers=np.zeros(count, dtype=np.int32),
                puzzle_indices=np.arange(count + 1, dtype=np.int32), group_indices=np.arange(count + 1, dtype=np.int32))


def build_maze_size(args: argparse.Namespace) -> str:
    check_positive("--train-sizes", args.train_sizes)
    check_positive("--test-sizes", args.test_sizes)
    check_positive("--train-count", [args.train_count])
    check_positive("--test-count", [args.test_count])
    check_positive("--workers", [args.workers])
    largest = min(args.canvas_size, maze_generator.MAX_GRID_SIZE)
    for size in args.train_sizes + args.test_sizes:
        if not maze_generator.MIN_GRID_SIZE <= size <= largest:
            raise DatasetBuildError(f"maze size {size} must be {maze_generator.MIN_GRID_SIZE}..{largest} (the "
                                    f"generator's largest, and at most --canvas-size {args.canvas_size})")
    if not 0 <= args.min_path_fraction < 1:
        raise DatasetBuildError(f"--min-path-fraction must be in [0, 1), got {args.min_path_fraction}")

    seen: set = set()  # no maze twice, across sizes and splits
    rng = np.random.default_rng(args.seed)

    def mazes_of(split: str, size: int, count: int) -> Tuple[np.ndarray, np.ndarray]:
        try:
            mazes = maze_generator.generate_mazes(count, size, maze_min_path_length(size, args.min_path_fraction),
                                                  args.seed, f"{split}-{size}", workers=args.workers, avoid=seen)
        except maze_generator.MazeGenerationError as e:
            raise DatasetBuildError(f"{split} size {size}: {e}") from None
        return place_mazes(mazes, size, args.canvas_size, rng)

    def metadata(sets: List[str], groups: int) -> PuzzleDatasetMetadata:
        return PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0,
                                     vocab_size=MAZE_VOCAB_SIZE, seq_len=args.canvas_size ** 2,
                                     num_puzzle_identifiers=1, total_groups=groups, mean_puzzle_examples=1, sets=sets)

    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as out_dir:
        train = [mazes_of("train", size, args.train_count) for size in args.train_sizes]
        # Sizes interleaved by a seeded shuffle; the loader draws groups at random anyway.
        order = rng.permutation(args.train_count * len(args.train_sizes))
        inputs = np.concatenate([questions for questions, _ in train])[order]
        labels = np.concatenate([answers for _, answers in train])[order]
        save_split(out_dir, "train", metadata(["all"], len(inputs)), {"all": one_example_groups(inputs, labels)})
        test_sets = {f"size{size}": one_example_groups(*mazes_of("test", size, args.test_count))
                     for size in args.test_sizes}
        save_split(out_dir, "test", metadata(list(test_sets), args.test_count * len(test_sets)), test_sets)
        save_identifiers(out_dir, ["<blank>"])
        write_variant_file(out_dir, args)
    return (f"train: {len(inputs)} mazes of sizes {' '.join(map(str, args.train_sizes))}; test: "
            f"{', '.join(f'{name} {args.test_count}' for name in test_sets)}; {args.canvas_size}x{args.canvas_size} "
            f"canvas; wrote {os.path.abspath(args.output_dir)}")


# --- whole groups of a split -------------------------------------------------------------------------------

def only_set(split: DatasetSplit) -> PuzzleSet:
    if len(split.sets) != 1:
        raise DatasetBuildError(f"{os.path.join(split.dataset_dir, split.split)}: holds the sets "
                                f"{', '.join(split.metadata.sets)}; this command handles a split with one set")
    return next(iter(split.sets.values()))


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) without a Python loop."""
    lengths = ends - starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def select_groups(puzzle_set: PuzzleSet, groups: np.ndarray) -> Dict[str, np.ndarray]:
    """The given groups (ascending ids) with all their puzzles and examples, indices renumbered."""
    group_indices, puzzle_indices = puzzle_set.group_indices, puzzle_set.puzzle_indices
    puzzles = concat_ranges(group_indices[groups], group_indices[groups + 1])
    examples = concat_ranges(puzzle_indices[puzzles], puzzle_indices[puzzles + 1])
    puzzle_sizes = puzzle_indices[puzzles + 1] - puzzle_indices[puzzles]
    group_sizes = group_indices[groups + 1] - group_indices[groups]
    return dict(inputs=np.asarray(puzzle_set.inputs[examples]), labels=np.asarray(puzzle_set.labels[examples]),
                puzzle_identifiers=puzzle_set.puzzle_identifiers[puzzles],
                puzzle_indices=np.concatenate([[0], np.cumsum(puzzle_sizes)]),
                group_indices=np.concatenate([[0], np.cumsum(group_sizes)]))


# --- sudoku-givens -----------------------------------------------------------------------------------------

def check_sudoku(split: DatasetSplit) -> None:
    metadata = split.metadata
    if (metadata.seq_len, metadata.vocab_size) != (SUDOKU_SEQ_LEN, SUDOKU_VOCAB_SIZE):
        raise DatasetBuildError(f"{os.path.join(split.dataset_dir, split.split)}: not a Sudoku dataset (seq_len "
                                f"{metadata.seq_len}, vocab_size {metadata.vocab_size}; expected "
                                f"{SUDOKU_SEQ_LEN} and {SUDOKU_VOCAB_SIZE})")


def drop_set_name(fraction: float) -> str:
    return f"drop{fraction * 100:g}"


def remove_givens(inputs: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> List[np.ndarray]:
    """For each fraction, `inputs` with round(fraction x givens) givens per puzzle blanked. One random key per
    cell ranks each puzzle's givens, so the removals are nested across fractions."""
    given = inputs > SUDOKU_BLANK
    keys = np.where(given, rng.random(inputs.shape), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)  # position of each cell in its puzzle's key order
    counts = given.sum(axis=1, keepdims=True)
    variants = []
    for fraction in fractions:
        removed = rank < np.floor(fraction * counts + 0.5)  # round half up; non-givens rank after every given
        variants.append(np.where(removed, SUDOKU_BLANK, inputs).astype(inputs.dtype))
    return variants


def build_sudoku_givens(args: argparse.Namespace) -> str:
    for fraction in args.fractions:
        if not 0 <= fraction <= 1:
            raise DatasetBuildError(f"--fractions: {fraction} is not in [0, 1]")
    names = [drop_set_name(f) for f in args.fractions]
    if len(set(names)) != len(names):
        raise DatasetBuildError(f"--fractions {' '.join(map(str, args.fractions))}: two fractions give the same "
                                f"set name")
    if args.max_puzzles is not None:
        check_positive("--max-puzzles", [args.max_puzzles])
    split = read_split(args.dataset, "test")
    check_sudoku(split)
    puzzle_set = only_set(split)
    rng = np.random.default_rng(args.seed)
    groups = np.arange(puzzle_set.num_groups)
    if args.max_puzzles is not None and args.max_puzzles < len(groups):
        groups = np.sort(rng.choice(len(groups), args.max_puzzles, replace=False))
    kept = select_groups(puzzle_set, groups)
    variants = remove_givens(kept["inputs"], args.fractions, rng)
    test_sets = {name: dict(kept, inputs=inputs) for name, inputs in zip(names, variants)}
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as out_dir:
        carry_over(args.dataset, out_dir, "train")
        save_split(out_dir, "test",
                   split.metadata.model_copy(update=dict(sets=names, total_groups=len(groups) * len(names))), test_sets)
        write_variant_file(out_dir, args)
    return (f"test: {', '.join(names)} of {len(kept['inputs'])} puzzles each; train split carried over; "
            f"wrote {os.path.abspath(args.output_dir)}")


# --- subsample ---------------------------------------------------------------------------------------------

def build_subsample(args: argparse.Namespace) -> str:
    check_positive("--sizes", args.sizes)
    targets = [os.path.join(args.output_dir, f"n{size}") for size in args.sizes]
    for target in targets:
        if os.path.exists(target) and not args.overwrite:  # checked for all before any is written
            raise DatasetBuildError(f"output folder {os.path.abspath(target)} already exists; pass --overwrite "
                                    f"to replace it")
    split = read_split(args.dataset, "train")
    read_metadata(args.dataset, "test")  # the test split must exist to be carried over
    puzzle_set = only_set(split)
    available = puzzle_set.num_groups
    if max(args.sizes) > available:
        raise DatasetBuildError(f"--sizes {max(args.sizes)}: {os.path.join(args.dataset, 'train')} has only "
                                f"{available} groups (original puzzles)")
    # Prefixes of one permutation: every subset holds the smaller ones.
    order = np.random.default_rng(args.seed).permutation(available)
    written = []
    for size, target in zip(tqdm(args.sizes, desc="subsets", unit="subset"), targets):
        subset = select_groups(puzzle_set, np.sort(order[:size]))
        puzzles = len(subset["puzzle_identifiers"])
        subset_metadata = split.metadata.model_copy(update=dict(total_groups=size,
                                                          mean_puzzle_examples=len(subset["inputs"]) / puzzles))
        with atomic_output_dir(target, overwrite=args.overwrite) as out_dir:
            save_split(out_dir, "train", subset_metadata, {puzzle_set.name: subset})
            carry_over(args.dataset, out_dir, "test")
            write_variant_file(out_dir, args)
        written.append(f"n{size} ({puzzles} puzzles, {len(subset['inputs'])} examples)")
    return f"wrote {', '.join(written)} into {os.path.abspath(args.output_dir)}"


def run_command(args: argparse.Namespace) -> None:
    build = {"maze-size": build_maze_size, "sudoku-givens": build_sudoku_givens, "subsample": build_subsample}
    print(build[args.command](args))


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: run_command(args))


if __name__ == "__main__":
    run_cli(main)
