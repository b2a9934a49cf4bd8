"""Offline Sudoku source: random minimal puzzles with unique solutions, rated by a fixed backtracking search.

Boards are flat int8 arrays of 81 cells in row-major order, 0 for a blank and 1..9 for a digit.

Every search here is the same depth-first search (`search`):
- the cell to fill next is the blank cell with the fewest candidates (digits not yet used in its row,
  column or box); ties go to the lowest cell index (row-major order);
- the candidates of that cell are tried in a given digit order (increasing 1..9 for counting and rating,
  a random order per cell for drawing solved grids);
- a blank cell with no candidate is a dead end: the search takes back assignments until one can move on.

A puzzle's rating is the number of assignments this search (increasing digit order) takes back before it
reaches the first solution. Every assignment is either on the path to that solution or taken back, so
`rating = assignments made - blank cells`: a higher rating means more search nodes for the same puzzle
size, and 0 means the search never guessed wrong. A wrong guess is always followed by at least one more
assignment before its dead end (cells with one candidate are filled first), so ratings are 0 or >= 2.
"""
from __future__ import annotations

import multiprocessing
from typing import List, Optional

import numba
import numpy as np
from tqdm import tqdm

from dataset.common import DatasetBuildError

CELL_ROW = np.repeat(np.arange(9), 9)
CELL_COL = np.tile(np.arange(9), 9)
CELL_BOX = (CELL_ROW // 3) * 3 + CELL_COL // 3
# Number of set bits of every 9-bit candidate mask.
POPCOUNT = np.array([bin(mask).count("1") for mask in range(512)], dtype=np.int64)
ALL_DIGITS = 0x1FF

INCREASING_ORDER = np.tile(np.arange(1, 10, dtype=np.int8), (81, 1))

# Candidate puzzles are drawn in batches of this size per worker task (fewer round trips between processes).
BATCH_SIZE = 8


@numba.njit(cache=True)
def search(givens, digit_order, max_solutions):
    """Depth-first search described in the module docstring.

    Returns (solutions found, up to max_solutions; assignments taken back; first solution found).
    Givens that clash (a digit twice in a row, column or box) have no solution.
    """
    board = givens.copy()
    solution = givens.copy()
    row_used = np.zeros(9, np.int64)
    col_used = np.zeros(9, np.int64)
    box_used = np.zeros(9, np.int64)
    for cell in range(81):
        if board[cell] != 0:
            bit = 1 << (board[cell] - 1)
            r, c, b = CELL_ROW[cell], CELL_COL[cell], CELL_BOX[cell]
            if (row_used[r] | col_used[c] | box_used[b]) & bit:
                return 0, 0, solution
            row_used[r] |= bit
            col_used[c] |= bit
            box_used[b] |= bit

    stack_cell = np.empty(81, np.int64)
    stack_next = np.empty(81, np.int64)  # position in the cell's digit order to try next
    depth = 0
    num_solutions = 0
    taken_back = 0
    while True:
        # Choose the blank cell with the fewest candidates (first one on ties).
        best_cell = -1
        best_count = 10
        for cell in range(81):
            if board[cell] == 0:
                free = ALL_DIGITS & ~(row_used[CELL_ROW[cell]] | col_used[CELL_COL[cell]] | box_used[CELL_BOX[cell]])
                count = POPCOUNT[free]
                if count < best_count:
                    best_cell = cell
                    best_count = count
                    if count == 0:
                        break
        if best_cell < 0:
            num_solutions += 1
            if num_solutions == 1:
                solution[:] = board
            if num_solutions >= max_solutions:
                return num_solutions, taken_back, solution
        elif best_count > 0:
            stack_cell[depth] = best_cell
            stack_next[depth] = 0
            depth += 1

        # Move on: next untried candidate of the deepest cell, taking back assignments while none is left.
        while depth > 0:
            cell = stack_cell[depth - 1]
            r, c, b = CELL_ROW[cell], CELL_COL[cell], CELL_BOX[cell]
            if board[cell] != 0:
                bit = 1 << (board[cell] - 1)
                row_used[r] &= ~bit
                col_used[c] &= ~bit
                box_used[b] &= ~bit
                board[cell] = 0
                taken_back += 1
            free = ALL_DIGITS & ~(row_used[r] | col_used[c] | box_used[b])
            k = stack_next[depth - 1]
            while k < 9 and not (free >> (digit_order[cell, k] - 1)) & 1:
                k += 1
            if k < 9:
                digit = digit_order[cell, k]
                bit = 1 << (digit - 1)
                row_used[r] |= bit
                col_used[c] |= bit
                box_used[b] |= bit
                board[cell] = digit
                stack_next[depth - 1] = k + 1
                break
            depth -= 1
        if depth == 0:
            return num_solutions, taken_back, solution


@numba.njit(cache=True)
def carve_minimal_puzzle(solution, removal_order):
    """Blank the clues of a solved board one by one in `removal_order`, keeping each blank only while the
    solution stays unique. Blanking clues only adds solutions, so one pass leaves a minimal puzzle."""
    puzzle = solution.copy()
    for cell in removal_order:
        digit = puzzle[cell]
        puzzle[cell] = 0
        num_solutions, _, _ = search(puzzle, INCREASING_ORDER, 2)
        if num_solutions != 1:
            puzzle[cell] = digit
    return puzzle


def rate(puzzle: np.ndarray) -> int:
    """Assignments taken back by the increasing-order search before its first solution."""
    _, taken_back, _ = search(puzzle, INCREASING_ORDER, 1)
    return int(taken_back)


def count_solutions(puzzle: np.ndarray, limit: int = 2) -> int:
    num_solutions, _, _ = search(puzzle, INCREASING_ORDER, limit)
    return int(num_solutions)


def make_puzzle(seed: int, stream: int, index: int) -> dict:
    """Candidate puzzle number `index` of a stream (0 train, 1 test): its own RNG, so any worker gets
    the same puzzle. Returns a CSV row: source, question ('.' blanks), answer and rating."""
    rng = np.random.default_rng([seed, stream, index])
    random_order = rng.permuted(INCREASING_ORDER, axis=1)
    removal_order = rng.permutation(81)
    _, _, solution = search(np.zeros(81, np.int8), random_order, 1)
    puzzle = carve_minimal_puzzle(solution, removal_order)
    return dict(source="generated",
                question="".join(str(d) if d else "." for d in puzzle),
                answer="".join(str(d) for d in solution),
                rating=rate(puzzle))


def _make_batch(args) -> List[dict]:
    seed, stream, start, stop = args
    return [make_puzzle(seed, stream, index) for index in range(start, stop)]


def generate_puzzles(count: int, seed: int, stream: int, min_difficulty: Optional[int], workers: int,
                     max_tries: int, split: str = "generated") -> List[dict]:
    """The first `count` candidates of a stream (in index order) rated at least `min_difficulty`.

    Taking them in index order makes the result independent of `workers`. Raises DatasetBuildError when
    fewer than `count` of the first `max_tries` candidates pass.
    """
    batches = ((seed, stream, start, min(start + BATCH_SIZE, max_tries)) for start in range(0, max_tries, BATCH_SIZE))
    accepted: List[dict] = []
    tries = 0
    make_puzzle(seed, stream, 0)  # compile the search before any worker process starts
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_make_batch, batches) if pool else map(_make_batch, batches)
        with tqdm(total=count, desc=split, unit="puzzle") as progress:
            for batch in results:
                for row in batch:
                    tries += 1
                    progress.set_postfix(tries=tries, refresh=False)
                    if min_difficulty is None or row["rating"] >= min_difficulty:
                        accepted.append(row)
                        progress.update()
                        if len(accepted) == count:
                            return accepted
    finally:
        if pool:
            pool.terminate()
            pool.join()
    raise DatasetBuildError(
        f"--min-difficulty {min_difficulty}: only {len(accepted)} of {count} {split} puzzles reached it in "
        f"{max_tries} tries; lower --min-difficulty or raise --max-tries-per-puzzle")
