"""A dataset split as the tools show and score it: dataset/format.py's checked split, with the task its tokens
encode and the names of its puzzle identifiers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

from dataset.format import IDENTIFIERS_FILE, DatasetSplit, read_identifiers, read_split
from puzzle_tools.grids import Task, detect_task
from puzzle_tools.tool_io import ToolInputError


@dataclass
class NamedSplit(DatasetSplit):
    task: Task
    identifier_names: List[str]  # identifier id -> name (`<blank>` for the blank id)

    def identifier_name(self, identifier: int) -> str:
        if not 0 <= identifier < len(self.identifier_names):
            raise ToolInputError(f"{os.path.join(self.dataset_dir, IDENTIFIERS_FILE)}: no puzzle identifier "
                                 f"{identifier} (it lists {len(self.identifier_names)})")
        return self.identifier_names[identifier]


def read_named_split(dataset_dir: str, split: str) -> NamedSplit:
    """`<dataset_dir>/<split>` with its task and `identifiers.json`; a bad file is a DatasetFormatError."""
    data = read_split(dataset_dir, split)
    return NamedSplit(data.dataset_dir, data.split, data.metadata, data.sets, detect_task(data.metadata),
                      read_identifiers(dataset_dir))
