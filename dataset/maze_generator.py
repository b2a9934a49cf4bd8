"""Offline maze generator: square grids with one start, one goal and exactly one shortest path between them.

A maze is an N x N grid of characters: '#' wall, ' ' open, 'S' start, 'G' goal. Moves go between the four
neighbours of a cell; the grid's edge acts as a wall. The answer is the question with every cell of the
shortest path marked 'o', except S and G, which keep their letters.

Path length: the number of cells on the shortest S-G path, counting S and G (so the answer holds
length - 2 'o' cells). A maze is kept only when this length is strictly greater than `min_path_length`; the
reference's "hard" mazes use the filter length > 110.

Design. Room cells sit on a lattice of every second row and column, ceil(N/2) rooms a side. With odd N the
rooms reach all four edges; with even N the lattice's offset along each axis is drawn at random, so the
spare wall row (column) falls on either side.
1. A uniform random spanning tree of the rooms (Wilson's algorithm) opens the passage cell between the
   rooms it joins: a perfect maze, in which every two cells have exactly one path.
2. S is a random room and G a random room whose path from S is long enough.
3. Loops: closed passages (a fifth of the room count) are tried in random order; each stays open only if
   the S-G shortest path is still the tree path and still the only shortest one. The maze gains cycles and
   longer detours (about 47% walls at 30x30 instead of 50%) but never a shortcut or a tie, so the path
   length keeps the tree's distribution above the threshold.
Each maze comes from its own `random.Random(seed text)`, so a set of mazes is the same for any number of
worker processes.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import random
from typing import Dict, List, Optional, Sequence, Set, Tuple

from tqdm import tqdm

from command_line import UserError

WALL, OPEN, START, GOAL, PATH = "#", " ", "S", "G", "o"

MIN_GRID_SIZE, MAX_GRID_SIZE = 3, 30

# The reference's "hard" maze set: 30x30 mazes with a shortest path longer than 110 cells.
HARD_GRID_SIZE, HARD_MIN_PATH_LENGTH = 30, 110

# Closed passages tried as loop openings, per room of the lattice.
LOOP_TRIES_PER_ROOM = 0.2

# Whole mazes drawn for one slot before the settings are declared too hard to meet.
MAX_ATTEMPTS = 200

# New draws for one slot whose maze duplicates an earlier one, before giving up.
MAX_REDRAWS = 20


class MazeGenerationError(UserError):
    """The requested mazes could not be produced (settings too hard or too few distinct mazes)."""


def rooms_per_side(grid_size: int) -> int:
    return (grid_size + 1) // 2


def longest_possible_path(grid_size: int) -> int:
    """Cells on the longest path the room lattice allows: every room plus the passages between them."""
    rooms = rooms_per_side(grid_size) ** 2
    return 2 * rooms - 1


@functools.lru_cache(maxsize=None)
def grid_neighbours(side: int) -> Tuple[Tuple[int, ...], ...]:
    """For each flat cell index of a side x side grid, its 4-neighbours inside the grid."""
    table = []
    for cell in range(side * side):
        row, col = divmod(cell, side)
        around = []
        if row > 0:
            around.append(cell - side)
        if row < side - 1:
            around.append(cell + side)
        if col > 0:
            around.append(cell - 1)
        if col < side - 1:
            around.append(cell + 1)
        table.append(tuple(around))
    return tuple(table)


def breadth_first_search(is_open: Sequence[bool], side: int, start: int,
                         goal: Optional[int] = None) -> Tuple[List[int], List[int]]:
    """Distances (in moves, -1 unreached) from `start` over the open cells of a flat side x side grid, and
    the number of shortest paths to each cell, counted up to 2. Stops after the goal's layer if given."""
    neighbours = grid_neighbours(side)
    distance = [-1] * (side * side)
    paths = [0] * (side * side)
    distance[start], paths[start] = 0, 1
    frontier = [start]
    while frontier and (goal is None or distance[goal] < 0):
        next_frontier = []
        for cell in frontier:
            step = distance[cell] + 1
            for near in neighbours[cell]:
                if not is_open[near]:
                    continue
                if distance[near] < 0:
                    distance[near], paths[near] = step, paths[cell]
                    next_frontier.append(near)
                elif distance[near] == step:
                    paths[near] = min(2, paths[near] + paths[cell])
        frontier = next_frontier
    return distance, paths


def shortest_path(is_open: Sequence[bool], side: int, start: int, goal: int) -> Tuple[List[int], int]:
    """One shortest start-goal path over open cells (flat indices, start first) and the number of shortest
    paths, counted up to 2 (enough to tell unique from tied); ([], 0) when the goal cannot be reached."""
    distance, paths = breadth_first_search(is_open, side, start, goal)
    if distance[goal] < 0:
        return [], 0
    # Walk back from the goal through open cells one step closer to the start.
    neighbours = grid_neighbours(side)
    path = [goal]
    while path[-1] != start:
        cell = path[-1]
        path.append(next(near for near in neighbours[cell]
                         if is_open[near] and distance[near] == distance[cell] - 1))
    return path[::-1], paths[goal]


def spanning_tree_maze(rng: random.Random, side: int, row_offset: int,
                       col_offset: int) -> Tuple[List[bool], List[int], List[int]]:
    """Open the rooms and the passages of a uniform random spanning tree (Wilson's algorithm).

    Returns the open-cell mask, the rooms and the still-closed passages (flat indices).
    """
    rows = range(row_offset, side, 2)
    cols = range(col_offset, side, 2)
    rooms = [r * side + c for r in rows for c in cols]
    room_neighbours = {}
    for room in rooms:
        row, col = divmod(room, side)
        around = ((row - 2, col), (row + 2, col), (row, col - 2), (row, col + 2))
        room_neighbours[room] = [r * side + c for r, c in around if 0 <= r < side and 0 <= c < side]
    is_open = [False] * (side * side)
    in_tree = {rng.choice(rooms)}
    next_room: Dict[int, int] = {}
    for room in rooms:
        # Random walk until the tree is hit; overwriting next_room erases the walk's loops.
        cell = room
        while cell not in in_tree:
            next_room[cell] = rng.choice(room_neighbours[cell])
            cell = next_room[cell]
        cell = room
        while cell not in in_tree:
            in_tree.add(cell)
            is_open[(cell + next_room[cell]) // 2] = True
            cell = next_room[cell]
    for room in rooms:
        is_open[room] = True
    closed_passages = sorted({(room + near) // 2 for room in rooms for near in room_neighbours[room]
                              if not is_open[(room + near) // 2]})
    return is_open, rooms, closed_passages


def generate_maze(grid_size: int, min_path_length: int, seed_text: str) -> Dict[str, object]:
    """One maze as a CSV row dict: question, answer, rating (= shortest path length in cells)."""
    rng = random.Random(seed_text)
    side = grid_size
    for _ in range(MAX_ATTEMPTS):
        row_offset = rng.randrange(2) if side % 2 == 0 else 0
        col_offset = rng.randrange(2) if side % 2 == 0 else 0
        is_open, rooms, closed_passages = spanning_tree_maze(rng, side, row_offset, col_offset)

        start = rng.choice(rooms)
        distance, _ = breadth_first_search(is_open, side, start)
        far_rooms = [room for room in rooms if distance[room] + 1 > min_path_length]
        if not far_rooms:
            continue
        goal = rng.choice(far_rooms)

        path_length = distance[goal] + 1
        loop_tries = round(LOOP_TRIES_PER_ROOM * len(rooms))
        for passage in rng.sample(closed_passages, min(loop_tries, len(closed_passages))):
            is_open[passage] = True
            path, count = shortest_path(is_open, side, start, goal)
            if count != 1 or len(path) != path_length:
                is_open[passage] = False

        path, _ = shortest_path(is_open, side, start, goal)
        question = [OPEN if cell_open else WALL for cell_open in is_open]
        question[start], question[goal] = START, GOAL
        answer = list(question)
        for cell in path[1:-1]:
            answer[cell] = PATH
        return dict(question="".join(question), answer="".join(answer), rating=len(path))
    raise MazeGenerationError(
        f"no {grid_size}x{grid_size} maze with a shortest path longer than {min_path_length} cells in "
        f"{MAX_ATTEMPTS} attempts; lower the minimum path length")


def _generate_from_task(task: Tuple[int, int, str]) -> Dict[str, object]:
    return generate_maze(*task)


def generate_mazes(count: int, grid_size: int, min_path_length: int, seed: int, split: str,
                   workers: int = 1, avoid: Optional[Set[str]] = None) -> List[Dict[str, object]]:
    """`count` distinct mazes for `split`, also distinct from the questions in `avoid` (which is updated).

    Slot i draws from the seed text "<seed>/<split>/<i>/<redraw>"; a slot whose maze repeats an earlier
    one is redrawn. Results depend only on the arguments, never on `workers`.
    """
    seen = avoid if avoid is not None else set()
    mazes: List[Optional[Dict[str, object]]] = [None] * count
    redraws = [0] * count
    pending = list(range(count))
    pool_or_none = multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext()
    with pool_or_none as pool, tqdm(total=count, desc=f"generating {split} mazes", unit="maze") as progress:
        while pending:
            tasks = [(grid_size, min_path_length, f"{seed}/{split}/{i}/{redraws[i]}") for i in pending]
            if pool is None:
                drawn = map(_generate_from_task, tasks)
            else:
                drawn = pool.imap(_generate_from_task, tasks, chunksize=max(1, len(tasks) // (8 * workers)))
            # Results arrive in slot order, so which slot counts as the repeat never depends on timing.
            still_pending = []
            for i, maze in zip(pending, drawn):
                if maze["question"] in seen:
                    redraws[i] += 1
                    if redraws[i] > MAX_REDRAWS:
                        raise MazeGenerationError(
                            f"could not find {count} distinct {grid_size}x{grid_size} {split} mazes with a "
                            f"shortest path longer than {min_path_length} cells; ask for fewer mazes or a "
                            f"larger grid")
                    still_pending.append(i)
                else:
                    seen.add(maze["question"])
                    mazes[i] = maze
                    progress.update(1)
            pending = still_pending
    return mazes
