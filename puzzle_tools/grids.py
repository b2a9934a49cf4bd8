"""Decode puzzle token sequences into grids, one way for every tool: which task a dataset holds and the token
layouts of Sudoku, maze and ARC (the ARC canvas crop and undoing a version's augmentation are
dataset/arc_versions.py's, offered here too)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from dataset.arc_versions import ArcVersion, crop_arc_canvas, parse_arc_version, to_original_frame
from dataset.format import (ARC_COLOUR_OFFSET, ARC_GRID_SIZE, ARC_SEQ_LEN, ARC_VOCAB_SIZE,
                            MAZE_CHARSET, MAZE_VOCAB_SIZE, SUDOKU_SEQ_LEN, SUDOKU_SIDE, SUDOKU_VOCAB_SIZE,
                            PuzzleDatasetMetadata)

SUDOKU, MAZE, ARC, GENERIC = "sudoku", "maze", "arc", "generic"

# A decoded cell without a value: padding, or a label cell the loss ignores.
EMPTY = -1

# Colours 0..9 as the ARC testing interface draws them.
ARC_PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")

# Re-exported: the tools decode ARC grids through this module.
__all__ = ["ArcVersion", "crop_arc_canvas", "parse_arc_version", "to_original_frame"]


@dataclass(frozen=True)
class Task:
    """What a dataset's sequences are and the grid shape they decode to (for ARC, the canvas)."""
    kind: str  # SUDOKU, MAZE, ARC or GENERIC
    rows: int
    cols: int


def detect_task(metadata: PuzzleDatasetMetadata) -> Task:
    """The task of a dataset split from its vocabulary and sequence length (the builders' layouts)."""
    side = math.isqrt(metadata.seq_len)
    square = side * side == metadata.seq_len
    if metadata.vocab_size == SUDOKU_VOCAB_SIZE and metadata.seq_len == SUDOKU_SEQ_LEN:
        return Task(SUDOKU, SUDOKU_SIDE, SUDOKU_SIDE)
    if metadata.vocab_size == MAZE_VOCAB_SIZE and square:
        return Task(MAZE, side, side)
    if metadata.vocab_size == ARC_VOCAB_SIZE and metadata.seq_len == ARC_SEQ_LEN:
        return Task(ARC, ARC_GRID_SIZE, ARC_GRID_SIZE)
    # Any other layout is shown as its raw tokens, square when the length allows.
    return Task(GENERIC, side, side) if square else Task(GENERIC, 1, metadata.seq_len)


def arc_grid_origin(input_tokens: np.ndarray) -> Tuple[int, int]:
    """Top-left canvas cell of the grid an ARC input holds (training examples are shifted on the canvas;
    an example's label sits at its input's offset). (0, 0) when the input holds no colour."""
    canvas = np.asarray(input_tokens).reshape(ARC_GRID_SIZE, ARC_GRID_SIZE)
    rows, cols = np.nonzero(canvas >= ARC_COLOUR_OFFSET)
    return (int(rows.min()), int(cols.min())) if len(rows) else (0, 0)


def decode_tokens(task: Task, tokens: np.ndarray, origin: Tuple[int, int] = (0, 0)) -> np.ndarray:
    """One sequence's tokens as a grid of cell values (integers, EMPTY where there is none).

    Sudoku: 0 blank, 1..9 digits. Maze: index into `# SGo`. ARC: the colours of the grid cropped at
    `origin`. Generic: the tokens. Labels should carry IGNORE_LABEL_ID (negative) on unlabelled cells.
    """
    tokens = np.asarray(tokens).astype(np.int32)
    if task.kind == ARC:
        return crop_arc_canvas(tokens, origin)
    grid = tokens.reshape(task.rows, task.cols)
    if task.kind == GENERIC:
        return np.where(grid < 0, EMPTY, grid)
    # Sudoku and maze: token 0 is padding, so token t holds value t - 1.
    return np.where(grid <= 0, EMPTY, grid - 1)


def wrong_cells(prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Bool mask over the prediction grid: cells outside the label's shape, or differing from a labelled
    cell. (An ARC prediction may be cropped to another shape than its label.)"""
    wrong = np.ones(prediction.shape, dtype=bool)
    rows, cols = min(prediction.shape[0], label.shape[0]), min(prediction.shape[1], label.shape[1])
    overlap_label = label[:rows, :cols]
    wrong[:rows, :cols] = (overlap_label != EMPTY) & (prediction[:rows, :cols] != overlap_label)
    return wrong


def is_exact(prediction: np.ndarray, label: np.ndarray) -> bool:
    return prediction.shape == label.shape and not wrong_cells(prediction, label).any()


@dataclass
class DecodedExample:
    """An example's grids, with its prediction's wrong cells when it has a prediction."""
    input: np.ndarray
    label: np.ndarray
    prediction: Optional[np.ndarray] = None
    wrong: Optional[np.ndarray] = None  # bool mask over the prediction

    @property
    def exact(self) -> bool:
        return is_exact(self.prediction, self.label)


def decode_example(task: Task, input_tokens: np.ndarray, label_tokens: np.ndarray,
                   prediction_tokens: Optional[np.ndarray] = None) -> DecodedExample:
    """Decode an example in its stored frame; labels carry IGNORE_LABEL_ID on unlabelled cells."""
    # ARC training examples sit anywhere on the canvas; label and prediction share the input's place.
    origin = arc_grid_origin(input_tokens) if task.kind == ARC else (0, 0)
    example = DecodedExample(decode_tokens(task, input_tokens, origin), decode_tokens(task, label_tokens, origin))
    if prediction_tokens is not None:
        example.prediction = decode_tokens(task, prediction_tokens, origin)
        example.wrong = wrong_cells(example.prediction, example.label)
    return example


def cell_symbol(task: Task, value: int) -> str:
    """Text of one decoded cell: Sudoku `.` for a blank, maze characters, ARC and generic numbers."""
    if value == EMPTY:
        return "_"
    if task.kind == SUDOKU:
        return "." if value == 0 else str(value)
    if task.kind == MAZE:
        return MAZE_CHARSET[value] if value < len(MAZE_CHARSET) else "?"
    return str(value)
