"""An ARC dataset's grids read back: the grid on a canvas of tokens, and the augmented versions' names and
how to undo their augmentation. The builder (build_arc_dataset.py) writes both; scoring and the tools read
them here."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from dataset.common import inverse_dihedral_transform
from dataset.format import ARC_COLOUR_OFFSET, ARC_GRID_SIZE, ARC_NUM_COLOURS

# Augmented ARC versions are named `<puzzle>_t<dihedral id>_<colour map>`, the colour map listing the new
# colour of each original colour 0..9; the original version has the bare puzzle name.
ARC_VERSION_NAME = re.compile(r"(?P<puzzle>.+)_t(?P<transform>[0-7])_(?P<colours>[0-9]{10})")




def crop_arc_canvas(tokens: np.ndarray, origin: Tuple[int, int] = (0, 0)) -> np.ndarray:
    """The colour grid (values 0..9) on an ARC canvas, as the reference ARC evaluation crops it.

    From `origin`, the grid is the largest rectangle whose rows each start with only colour tokens: going
    down row by row, the width shrinks to the row's run of leading colours, and the rectangle of largest
    area (the first one, on ties) wins. Pad, end markers and ignored labels all end a run. A canvas without
    a colour at `origin` gives a 0x0 grid.
    """
    canvas = np.asarray(tokens).reshape(ARC_GRID_SIZE, ARC_GRID_SIZE)[origin[0]:, origin[1]:].astype(np.int32)
    is_colour = (canvas >= ARC_COLOUR_OFFSET) & (canvas < ARC_COLOUR_OFFSET + ARC_NUM_COLOURS)
    # Leading colour run per row: the first non-colour's column, or the full width.
    leading_colours = np.where(is_colour.all(axis=1), canvas.shape[1], np.argmin(is_colour, axis=1))
    widths = np.minimum.accumulate(leading_colours)
    areas = np.arange(1, canvas.shape[0] + 1) * widths
    num_rows = int(np.argmax(areas)) + 1
    if areas[num_rows - 1] == 0:
        return np.zeros((0, 0), dtype=np.int32)
    return canvas[:num_rows, :widths[num_rows - 1]] - ARC_COLOUR_OFFSET


@dataclass(frozen=True)
class ArcVersion:
    """One augmented version of an ARC puzzle, parsed from its identifier name."""
    puzzle: str  # the original puzzle's name
    transform_id: int  # dihedral transform applied to every grid
    colour_map: Tuple[int, ...]  # colour_map[original colour] = colour in this version


def parse_arc_version(name: str) -> ArcVersion:
    match = ARC_VERSION_NAME.fullmatch(name)
    if match is None:
        return ArcVersion(name, 0, tuple(range(ARC_NUM_COLOURS)))
    return ArcVersion(match["puzzle"], int(match["transform"]), tuple(int(c) for c in match["colours"]))


def to_original_frame(grid: np.ndarray, version: ArcVersion) -> np.ndarray:
    """Undo a version's augmentation on one of its grids: colours back, then the dihedral transform."""
    original_colour = np.argsort(version.colour_map)
    return np.ascontiguousarray(inverse_dihedral_transform(original_colour[grid], version.transform_id))
