"""Build the Sudoku dataset folder (reference format) from official CSVs, the Hugging Face release or the
offline generator. The defaults are the reference's: every puzzle of the release, no augmentation, into
data/sudoku-extreme-full.

    python dataset/build_sudoku_dataset.py                             # download --source-repo, all puzzles
    python dataset/build_sudoku_dataset.py --output-dir data/sudoku-extreme-1k-aug-1000 \
        --subsample-size 1000 --num-aug 1000                           # the published 1000-puzzle set
    python dataset/build_sudoku_dataset.py --source-csv DIR            # DIR/train.csv and DIR/test.csv
    python dataset/build_sudoku_dataset.py --generate-train 1000 --generate-test 1000 --min-difficulty 1
"""
from __future__ import annotations

import argparse
import os
import time

import huggingface_hub
import numpy as np
from tqdm import tqdm

from command_line import OneLineArgumentParser, run_cli
from dataset import sudoku_generator
from dataset.common import DatasetBuildError, atomic_output_dir, read_puzzle_csv, seed_argument, write_puzzle_csv
from dataset.format import SUDOKU_SEQ_LEN, SUDOKU_VOCAB_SIZE, PuzzleDatasetMetadata, save_identifiers, save_split

SPLITS = ("train", "test")
# Character -> cell value (0 blank, 1..9 digit); -1 marks characters that may not appear.
CELL_VALUE = np.full(256, -1, dtype=np.int16)
CELL_VALUE[ord(".")] = 0
CELL_VALUE[ord("0")] = 0
CELL_VALUE[ord("1"):ord("9") + 1] = np.arange(1, 10)


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="data/sudoku-extreme-full",
                        help="dataset folder to write (default %(default)s)")
    parser.add_argument("--subsample-size", type=int, default=None,
                        help="keep this many train puzzles, drawn without replacement (default, or 0: keep all)")
    parser.add_argument("--min-difficulty", type=int, default=None,
                        help="drop puzzles rated below this (and, when generating, keep drawing until enough pass); "
                             "default: keep all")
    parser.add_argument("--num-aug", type=int, default=0,
                        help="shuffled copies added to each train puzzle (default %(default)s)")
    parser.add_argument("--seed", type=seed_argument, default=42, help="numpy global seed for subsampling and shuffles; "
                                                             "also seeds the generator")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--source-repo", default="sapientinc/sudoku-extreme",
                        help="Hugging Face dataset to download train.csv and test.csv from (the default source)")
    parser.add_argument("--source-csv", default=None,
                        help="folder holding train.csv and test.csv (source,question,answer,rating) to use "
                             "instead of downloading")
    parser.add_argument("--generate-train", type=int, default=None,
                        help="generate this many train puzzles offline instead (needs --generate-test)")
    parser.add_argument("--generate-test", type=int, default=None,
                        help="generate this many test puzzles offline instead (needs --generate-train)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="generator processes")
    parser.add_argument("--max-tries-per-puzzle", type=int, default=100,
                        help="generator gives up after this many candidates per wanted puzzle")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    generating = args.generate_train is not None or args.generate_test is not None
    if generating and (args.generate_train is None or args.generate_test is None):
        raise DatasetBuildError("--generate-train and --generate-test go together; give both")
    if generating and args.source_csv is not None:
        raise DatasetBuildError("--source-csv and --generate-train/--generate-test are two sources; pick one")
    for flag, value, low in (("--generate-train", args.generate_train, 1), ("--generate-test", args.generate_test, 1),
                             ("--workers", args.workers, 1), ("--max-tries-per-puzzle", args.max_tries_per_puzzle, 1),
                             ("--subsample-size", args.subsample_size, 0), ("--num-aug", args.num_aug, 0)):
        if value is not None and value < low:
            raise DatasetBuildError(f"{flag} must be at least {low}, got {value}")


def fetch_from_hub(repo_id: str, split: str) -> str:
    try:
        return huggingface_hub.hf_hub_download(repo_id, f"{split}.csv", repo_type="dataset")
    except Exception as e:  # offline, unknown repo, missing file: all end the build the same way
        raise DatasetBuildError(
            f"could not download {split}.csv from Hugging Face dataset {repo_id} ({type(e).__name__}); "
            f"use --source-csv DIR or the offline generator (--generate-train N --generate-test M)") from None


def first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def load_split(path: str, min_difficulty) -> tuple:
    """Read one CSV into question and answer boards [N, 9, 9] (uint8, 0 blank) and check every row.

    Rows rated below `min_difficulty` are dropped after the checks."""
    rows = read_puzzle_csv(path, row_length=SUDOKU_SEQ_LEN)
    if not rows:
        raise DatasetBuildError(f"{path}: no puzzles")
    boards = {}
    for field in ("question", "answer"):
        text = "".join(row[field] for row in rows).encode("ascii", errors="replace")  # one byte per character
        values = CELL_VALUE[np.frombuffer(text, dtype=np.uint8)].reshape(len(rows), SUDOKU_SEQ_LEN)
        bad = values < 0
        if bad.any():
            index = first_bad(bad.any(axis=1))
            position = int(np.flatnonzero(bad[index])[0])
            raise DatasetBuildError(f"{path}, row {index + 2}: unknown character {rows[index][field][position]!r} "
                                    f"in {field} at position {position}; expected digits 0-9 or '.'")
        boards[field] = values.astype(np.uint8).reshape(len(rows), 9, 9)
    questions, answers = boards["question"], boards["answer"]

    # The answer must be a solved grid (every row, column and box holds 1..9) that keeps the question's clues.
    boxes = answers.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
    digits = np.arange(1, 10, dtype=np.uint8)
    unsolved = np.zeros(len(rows), dtype=bool)
    for units in (answers, answers.transpose(0, 2, 1), boxes):
        unsolved |= np.any(np.sort(units, axis=2) != digits, axis=(1, 2))
    if unsolved.any():
        raise DatasetBuildError(f"{path}, row {first_bad(unsolved) + 2}: answer is not a solved Sudoku grid")
    clashing = np.any((questions != 0) & (questions != answers), axis=(1, 2))
    if clashing.any():
        raise DatasetBuildError(f"{path}, row {first_bad(clashing) + 2}: answer disagrees with a clue of the question")

    if min_difficulty is not None:
        keep = np.array([row["rating"] >= min_difficulty for row in rows])
        if not keep.any():
            raise DatasetBuildError(f"{path}: no puzzle is rated at least --min-difficulty {min_difficulty}")
        questions, answers = questions[keep], answers[keep]
    return questions, answers


def shuffle_sudoku(board: np.ndarray, solution: np.ndarray) -> tuple:
    """One validity-preserving shuffle of a 9x9 puzzle and its solution, drawing from numpy's global RNG in
    the reference order: digits, transpose, bands, rows per band, stacks, columns per stack."""
    digit_map = np.concatenate([[0], np.random.permutation(np.arange(1, 10))]).astype(np.uint8)  # blank stays 0
    transpose = np.random.rand() < 0.5
    row_order = np.concatenate([band * 3 + np.random.permutation(3) for band in np.random.permutation(3)])
    col_order = np.concatenate([stack * 3 + np.random.permutation(3) for stack in np.random.permutation(3)])

    # New cell (r, c) takes old cell (row_order[r], col_order[c]) of the board, transposed if drawn so.
    if transpose:
        source_cell = col_order[None, :] * 9 + row_order[:, None]
    else:
        source_cell = row_order[:, None] * 9 + col_order[None, :]
    return digit_map[board.reshape(-1)[source_cell]], digit_map[solution.reshape(-1)[source_cell]]


def convert_split(questions: np.ndarray, answers: np.ndarray, num_aug: int, desc: str) -> dict:
    """Each original puzzle and its `num_aug` shuffles: one example per puzzle, one group per original.
    Tokens are cell value + 1 (blank 1), leaving 0 for padding."""
    versions = 1 + num_aug
    num_puzzles = len(questions) * versions
    inputs = np.empty((num_puzzles, SUDOKU_SEQ_LEN), dtype=np.uint8)
    labels = np.empty((num_puzzles, SUDOKU_SEQ_LEN), dtype=np.uint8)
    position = 0
    for question, answer in zip(tqdm(questions, desc=desc, unit="puzzle"), answers):
        inputs[position], labels[position] = question.reshape(-1), answer.reshape(-1)
        for i in range(1, versions):
            board, solution = shuffle_sudoku(question, answer)
            inputs[position + i], labels[position + i] = board.reshape(-1), solution.reshape(-1)
        position += versions
    return dict(inputs=inputs + 1, labels=labels + 1,
                puzzle_identifiers=np.zeros(num_puzzles, dtype=np.int32),
                puzzle_indices=np.arange(num_puzzles + 1, dtype=np.int32),
                group_indices=np.arange(0, num_puzzles + 1, versions, dtype=np.int32))


def sudoku_metadata(num_groups: int) -> PuzzleDatasetMetadata:
    return PuzzleDatasetMetadata(seq_len=SUDOKU_SEQ_LEN, vocab_size=SUDOKU_VOCAB_SIZE, pad_id=0, ignore_label_id=0,
                                 blank_identifier_id=0, num_puzzle_identifiers=1, total_groups=num_groups,
                                 mean_puzzle_examples=1, sets=["all"])


def build(args: argparse.Namespace) -> None:
    check_args(args)
    with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as out_dir:
        if args.generate_train is not None:
            # Written beside the dataset, so `--source-csv <out>/source_csv` rebuilds it.
            source_dir = os.path.join(out_dir, "source_csv")
            os.makedirs(source_dir)
            start = time.time()
            for stream, (split, count) in enumerate(zip(SPLITS, (args.generate_train, args.generate_test))):
                rows = sudoku_generator.generate_puzzles(
                    count, args.seed, stream, args.min_difficulty, args.workers,
                    max_tries=count * args.max_tries_per_puzzle, split=split)
                write_puzzle_csv(os.path.join(source_dir, f"{split}.csv"), rows)
            print(f"generated {args.generate_train} train and {args.generate_test} test puzzles "
                  f"in {time.time() - start:.1f} s")
            sources = {split: os.path.join(source_dir, f"{split}.csv") for split in SPLITS}
        elif args.source_csv is not None:
            if not os.path.isdir(args.source_csv):
                raise DatasetBuildError(f"--source-csv {args.source_csv}: folder not found")
            sources = {split: os.path.join(args.source_csv, f"{split}.csv") for split in SPLITS}
        else:
            sources = {split: fetch_from_hub(args.source_repo, split) for split in SPLITS}

        boards = {split: load_split(path, args.min_difficulty) for split, path in sources.items()}
        np.random.seed(args.seed)
        summary = []
        for split in SPLITS:
            questions, answers = boards[split]
            num_aug = 0
            if split == "train":
                subsample = args.subsample_size or None
                if subsample is not None and subsample < len(questions):
                    chosen = np.random.choice(len(questions), size=subsample, replace=False)
                    questions, answers = questions[chosen], answers[chosen]
                num_aug = args.num_aug
            arrays = convert_split(questions, answers, num_aug, desc=split)
            save_split(out_dir, split, sudoku_metadata(len(questions)), {"all": arrays})
            summary.append(f"{split}: {len(arrays['inputs'])} examples, {len(arrays['puzzle_identifiers'])} puzzles, "
                           f"{len(questions)} groups")
        save_identifiers(out_dir, ["<blank>"])
    print(f"{'; '.join(summary)}; 1 identifier; wrote {os.path.abspath(args.output_dir)}")


def main(argv=None) -> None:
    build(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
