"""How the puzzle tools fail and write: bad input is a ToolInputError (one `error: ...` line and exit status
2, by command_line's convention), and every output file appears whole or not at all."""
from __future__ import annotations

import os
from typing import Callable

from command_line import UserError
from training.checkpointing import RunFolderError, atomic_path


class ToolInputError(UserError, ValueError):
    """A missing or malformed input (folder, file, key, value); the message names it. Still a ValueError for
    callers that catch bad values."""


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)` for a file beside `path`, then rename it into place (the run folders'
    atomic write), so no reader ever sees half a file; an unwritable path is a ToolInputError."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path) as temporary:
            write(temporary)
    except OSError as e:
        raise ToolInputError(f"{path}: cannot write ({e.strerror or e})") from None
    except RunFolderError as e:
        raise ToolInputError(str(e)) from None


def write_text_atomically(path: str, text: str) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)
