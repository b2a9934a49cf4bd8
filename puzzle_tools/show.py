"""Print one example of a dataset split as text grids: its input, its label and, given prediction files, its
prediction with the wrong cells marked.

    python puzzle_tools/show.py --dataset data/sudoku-extreme-full --predictions RUN/step_N_all_preds --index 12

Grids follow the task as the HTML viewer does: Sudoku digits (`.` blank), maze characters `# SGo` (wall,
open, start, goal, path), ARC colour digits of the grid cropped from its canvas (as stored, i.e. in its
augmented version's frame), or else the raw tokens. `_` is a cell without a value (padding). Each cell is
followed by a mark: `!` after a wrong cell of the prediction.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

import numpy as np

from command_line import OneLineArgumentParser, exit_status, run_cli
from dataset.format import loss_labels
from puzzle_tools.dataset_reader import read_named_split
from puzzle_tools.grids import Task, cell_symbol, decode_example
from puzzle_tools.predictions import load_predictions
from puzzle_tools.tool_io import ToolInputError

WRONG_MARK = "!"


def text_grid(task: Task, grid: np.ndarray, wrong: Optional[np.ndarray] = None) -> str:
    """Rows of cell symbols, each followed by WRONG_MARK where `wrong` is set, else a space. Every row keeps
    the grid's width (a maze's open cells are spaces); the last mark column is left out when it is blank."""
    if grid.size == 0:
        return "(empty grid)"
    wrong = np.zeros(grid.shape, dtype=bool) if wrong is None else wrong
    symbols = [[cell_symbol(task, int(value)) for value in row] for row in grid]
    width = max(len(symbol) for row in symbols for symbol in row)
    rows = ["".join(symbol.rjust(width) + (WRONG_MARK if wrong[r, c] else " ") for c, symbol in enumerate(row))
            for r, row in enumerate(symbols)]
    return "\n".join(rows if wrong[:, -1].any() else [row[:-1] for row in rows])


def describe_example(dataset_dir: str, split_name: str, set_name: Optional[str], index: int,
                     prediction_prefix: Optional[str]) -> str:
    split = read_named_split(dataset_dir, split_name)
    set_name = set_name or split.metadata.sets[0]
    if set_name not in split.sets:
        raise ToolInputError(f"{dataset_dir}/{split_name}/dataset.json: no set {set_name!r} "
                             f"(sets: {', '.join(split.sets)})")
    puzzle_set = split.sets[set_name]
    if not 0 <= index < puzzle_set.num_examples:
        raise ToolInputError(f"--index {index}: {puzzle_set.paths['inputs']} holds examples "
                             f"0..{puzzle_set.num_examples - 1}")
    task = split.task
    puzzle = puzzle_set.puzzle_of(index)
    identifier = int(puzzle_set.puzzle_identifiers[puzzle])
    input_tokens = puzzle_set.inputs[index]
    prediction_row, predictions = -1, None
    if prediction_prefix is not None:
        predictions = load_predictions(prediction_prefix, split.metadata.blank_identifier_id, split.metadata.pad_id,
                                   seq_len=split.metadata.seq_len)
        (prediction_row,) = predictions.find_rows([identifier], input_tokens[None])
    example = decode_example(task, input_tokens, loss_labels(puzzle_set.labels[index], split.metadata),
                             predictions.preds[prediction_row] if prediction_row >= 0 else None)
    lines: List[str] = [
        f"{split_name}/{set_name} example {index} of {puzzle_set.num_examples}: puzzle {puzzle}, identifier "
        f"{identifier} ({split.identifier_name(identifier)}), {task.kind} task",
        "input:", text_grid(task, example.input),
        "label:", text_grid(task, example.label)]
    if prediction_row >= 0:
        shape_note = "" if example.prediction.shape == example.label.shape else \
            f", shape {example.prediction.shape} vs label {example.label.shape}"
        wrong = int(example.wrong.sum())
        lines += [f"prediction: {wrong} wrong cell{'' if wrong == 1 else 's'} (marked {WRONG_MARK}){shape_note}, halting "
                  f"probability {predictions.halt_probabilities[prediction_row]:.3f}",
                  text_grid(task, example.prediction, example.wrong)]
    elif predictions is not None:
        lines.append(f"prediction: none in {prediction_prefix} for this example")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    summary, _, details = __doc__.partition("\n\n")
    parser = OneLineArgumentParser(description=summary, epilog=details,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, metavar="DIR", help="dataset folder")
    parser.add_argument("--split", default="test", help="split (default %(default)s)")
    parser.add_argument("--set", dest="set_name", metavar="SET",
                        help="set of the split (default: its first, usually `all`)")
    parser.add_argument("--index", type=int, required=True, metavar="I", help="example index within the set")
    parser.add_argument("--predictions", metavar="PREFIX",
                        help="prediction files PREFIX.<rank> saved by evaluate.py (or one file); default: none")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: print(describe_example(args.dataset, args.split, args.set_name, args.index,
                                                       args.predictions)))


if __name__ == "__main__":
    run_cli(main)
