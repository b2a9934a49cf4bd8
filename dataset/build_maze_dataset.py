"""Build the maze dataset folder from the official CSVs, local CSVs, or mazes generated offline.

Sources (pick one):
  --generate-train N --generate-test M   generate mazes offline (dataset/maze_generator.py); the CSVs are
                                         kept in <output-dir>/source_csv so --source-csv can rebuild them
  --source-csv DIR                       DIR/train.csv and DIR/test.csv in the official format
  (neither)                              download train.csv and test.csv of the Hugging Face dataset
                                         --source-repo
Each maze is one group; with --aug a train maze's 8 dihedral transforms are 8 puzzles of its group.
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np
from huggingface_hub import hf_hub_download
from tqdm import tqdm

from command_line import OneLineArgumentParser, run_cli
from dataset import maze_generator
from dataset.common import (DatasetBuildError, atomic_output_dir, dihedral_transform, read_puzzle_csv, seed_argument,
                            write_puzzle_csv)
from dataset.format import (MAZE_CHAR_TO_TOKEN, MAZE_CHARSET, MAZE_VOCAB_SIZE, PuzzleDatasetMetadata, save_identifiers,
                            save_split)

SPLITS = ("train", "test")


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="data/maze-30x30-hard-1k",
                        help="dataset folder to write (default %(default)s)")
    parser.add_argument("--subsample-size", type=int, default=None,
                        help="keep this many train mazes, drawn without replacement (default: all)")
    parser.add_argument("--aug", action="store_true",
                        help="add the 8 dihedral transforms of each train maze to its group")
    parser.add_argument("--source-repo", default="sapientinc/maze-30x30-hard-1k",
                        help="Hugging Face dataset holding train.csv and test.csv (default %(default)s)")
    parser.add_argument("--seed", type=seed_argument, default=42,
                        help="seed of the train subsample and of generation (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--source-csv", metavar="DIR",
                        help="read DIR/train.csv and DIR/test.csv (source,question,answer,rating) instead")
    generation = parser.add_argument_group(
        "offline generation",
        "Path length = cells on the shortest S-G path, S and G included. A generated maze has exactly one\n"
        "shortest path, longer than --min-path-length (the reference's 'hard' mazes: length > 110). The\n"
        "answer marks its cells 'o' (S and G keep their letters); rating = path length.")
    generation.add_argument("--generate-train", type=int, metavar="N", help="generate N train mazes")
    generation.add_argument("--generate-test", type=int, metavar="M", help="generate M test mazes")
    generation.add_argument("--grid-size", type=int,
                            help=f"side of the square grid, {maze_generator.MIN_GRID_SIZE}.."
                                 f"{maze_generator.MAX_GRID_SIZE} (default {maze_generator.HARD_GRID_SIZE})")
    generation.add_argument("--min-path-length", type=int,
                            help=f"keep mazes whose shortest path has more than this many cells "
                                 f"(default {maze_generator.HARD_MIN_PATH_LENGTH})")
    generation.add_argument("--workers", type=int,
                            help="generator processes; the mazes do not depend on it (default: CPU count)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject contradictory or unsatisfiable flags before any work; fill in the generator's defaults."""
    if args.subsample_size is not None and args.subsample_size < 1:
        raise DatasetBuildError(f"--subsample-size must be at least 1, got {args.subsample_size}")
    generating = args.generate_train is not None or args.generate_test is not None
    if not generating:
        for flag, value in (("--grid-size", args.grid_size), ("--min-path-length", args.min_path_length),
                            ("--workers", args.workers)):
            if value is not None:
                raise DatasetBuildError(f"{flag} only applies with --generate-train and --generate-test")
        return
    if args.source_csv is not None:
        raise DatasetBuildError("--source-csv and --generate-train/--generate-test are alternatives; pass one")
    for flag, value in (("--generate-train", args.generate_train), ("--generate-test", args.generate_test)):
        if value is None or value < 1:
            raise DatasetBuildError(f"{flag} must be at least 1 when generating, got {value}")
    args.grid_size = maze_generator.HARD_GRID_SIZE if args.grid_size is None else args.grid_size
    args.min_path_length = maze_generator.HARD_MIN_PATH_LENGTH if args.min_path_length is None else args.min_path_length
    args.workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    if not maze_generator.MIN_GRID_SIZE <= args.grid_size <= maze_generator.MAX_GRID_SIZE:
        raise DatasetBuildError(f"--grid-size must be {maze_generator.MIN_GRID_SIZE}.."
                                f"{maze_generator.MAX_GRID_SIZE}, got {args.grid_size}")
    longest = maze_generator.longest_possible_path(args.grid_size)
    if not 0 <= args.min_path_length < longest:
        raise DatasetBuildError(
            f"--min-path-length must be 0..{longest - 1}: a path in a {args.grid_size}x{args.grid_size} "
            f"maze holds at most {longest} cells, got {args.min_path_length}")
    if args.workers < 1:
        raise DatasetBuildError(f"--workers must be at least 1, got {args.workers}")


def generate_source_csv(args: argparse.Namespace, csv_dir: str) -> None:
    """Write generated train.csv and test.csv into csv_dir; no maze appears twice across the splits."""
    os.makedirs(csv_dir)
    seen = set()
    for split, count in (("train", args.generate_train), ("test", args.generate_test)):
        try:
            mazes = maze_generator.generate_mazes(count, args.grid_size, args.min_path_length, args.seed, split,
                                                  workers=args.workers, avoid=seen)
        except maze_generator.MazeGenerationError as e:
            raise DatasetBuildError(f"--grid-size {args.grid_size}, --min-path-length {args.min_path_length}: "
                                    f"{e}") from None
        rows = [dict(source="generated", **maze) for maze in mazes]
        write_puzzle_csv(os.path.join(csv_dir, f"{split}.csv"), rows)


def download_source_csv(repo_id: str, split: str) -> str:
    try:
        return hf_hub_download(repo_id, f"{split}.csv", repo_type="dataset")
    except Exception as e:  # offline, unknown repo, no access: all end the same way
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise DatasetBuildError(
            f"could not download {split}.csv of Hugging Face dataset {repo_id} ({type(e).__name__}: {reason}); "
            f"pass --source-csv DIR with train.csv and test.csv, or generate mazes offline with "
            f"--generate-train N --generate-test M") from None


def maze_side(path: str, row_number: int, question: str, answer: str) -> int:
    """Check one official-format row and return its grid side."""
    where = f"{path}, row {row_number}"
    side = math.isqrt(len(question))
    if side * side != len(question) or side == 0:
        raise DatasetBuildError(f"{where}: {len(question)} characters is not a square grid")
    for name, text in (("question", question), ("answer", answer)):
        unknown = sorted(set(text) - set(MAZE_CHARSET))
        if unknown:
            raise DatasetBuildError(f"{where}: {name} has character {unknown[0]!r}, expected one of {MAZE_CHARSET!r}")
    for mark in "SG":
        if question.count(mark) != 1:
            raise DatasetBuildError(f"{where}: question has {question.count(mark)} {mark!r} cells, expected one")
    if "o" in question:
        raise DatasetBuildError(f"{where}: question has path marks 'o'; only the answer may")
    for cell, (asked, solved) in enumerate(zip(question, answer)):
        if (solved == "o" and asked != " ") or (solved != "o" and solved != asked):
            row, col = divmod(cell, side)
            raise DatasetBuildError(f"{where}: answer has {solved!r} at cell ({row}, {col}) where the question "
                                    f"has {asked!r}; the answer may only mark open cells 'o'")
    return side


def load_split(path: str) -> tuple:
    """Token grids [n, side, side] of a split's questions and answers, after checking every row."""
    rows = read_puzzle_csv(path)
    if not rows:
        raise DatasetBuildError(f"{path}: no mazes")
    side = None
    for row_number, row in enumerate(rows, start=2):
        row_side = maze_side(path, row_number, row["question"], row["answer"])
        if side is not None and row_side != side:
            raise DatasetBuildError(f"{path}, row {row_number}: {row_side}x{row_side} maze, but row 2 is "
                                    f"{side}x{side}")
        side = row_side

    def to_tokens(field):
        chars = np.frombuffer("".join(row[field] for row in rows).encode("ascii"), dtype=np.uint8)
        return MAZE_CHAR_TO_TOKEN[chars].reshape(len(rows), side, side)

    return to_tokens("question"), to_tokens("answer")


def convert_split(questions: np.ndarray, answers: np.ndarray, transforms: int) -> dict:
    """One group per maze, holding one single-example puzzle per dihedral transform."""
    inputs, labels = [], []
    for question, answer in zip(tqdm(questions, desc="converting", unit="maze"), answers):
        for transform_id in range(transforms):
            inputs.append(dihedral_transform(question, transform_id).reshape(-1))
            labels.append(dihedral_transform(answer, transform_id).reshape(-1))
    puzzles = len(inputs)
    return dict(inputs=np.stack(inputs), labels=np.stack(labels),
                puzzle_identifiers=np.zeros(puzzles, dtype=np.int32),
                puzzle_indices=np.arange(puzzles + 1, dtype=np.int32),
                group_indices=np.arange(0, puzzles + 1, transforms, dtype=np.int32))


def main(argv=None) -> None:
    args = parse_args(argv)
    check_args(args)
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as work_dir:
        if args.generate_train is not None:
            csv_dir = os.path.join(work_dir, "source_csv")
            generate_source_csv(args, csv_dir)
            csv_paths = {split: os.path.join(csv_dir, f"{split}.csv") for split in SPLITS}
        elif args.source_csv is not None:
            csv_paths = {split: os.path.join(args.source_csv, f"{split}.csv") for split in SPLITS}
        else:
            csv_paths = {split: download_source_csv(args.source_repo, split) for split in SPLITS}

        grids = {split: load_split(csv_paths[split]) for split in SPLITS}
        train_side, test_side = grids["train"][0].shape[1], grids["test"][0].shape[1]
        if train_side != test_side:
            raise DatasetBuildError(f"{csv_paths['test']}: {test_side}x{test_side} mazes, but "
                                    f"{csv_paths['train']} has {train_side}x{train_side}")

        questions, answers = grids["train"]
        if args.subsample_size is not None and args.subsample_size < len(questions):
            rng = np.random.RandomState(args.seed)
            chosen = rng.choice(len(questions), size=args.subsample_size, replace=False)
            grids["train"] = questions[chosen], answers[chosen]

        summary = []
        for split in SPLITS:
            transforms = 8 if split == "train" and args.aug else 1
            arrays = convert_split(*grids[split], transforms)
            groups = len(arrays["group_indices"]) - 1
            metadata = PuzzleDatasetMetadata(
                pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=MAZE_VOCAB_SIZE,
                seq_len=train_side * train_side, num_puzzle_identifiers=1, total_groups=groups,
                mean_puzzle_examples=1, sets=["all"])
            save_split(work_dir, split, metadata, {"all": arrays})
            summary.append(f"{split}: {len(arrays['inputs'])} examples, {len(arrays['puzzle_identifiers'])} "
                           f"puzzles, {groups} groups")
        save_identifiers(work_dir, ["<blank>"])
    print(f"{train_side}x{train_side} mazes; {'; '.join(summary)}; 1 identifier; "
          f"wrote {os.path.abspath(args.output_dir)}")


if __name__ == "__main__":
    run_cli(main)
