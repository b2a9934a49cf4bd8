"""How the puzzle tools fail and write: bad input is one `error: ...` line and exit status 2, and every
output file appears whole or not at all."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn

from dataset.format import DatasetFormatError
from training.checkpointing import RunFolderError, atomic_path

INPUT_ERROR_EXIT_CODE = 2  # argparse's status for bad usage


class ToolInputError(ValueError):
    """A missing or malformed input (folder, file, key, value); the message names it. A ValueError, so a
    caller that reports bad values in one line (evaluate.py) reports these too."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """Command-line mistakes as one `error:` line and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(INPUT_ERROR_EXIT_CODE, f"error: {message}\n")


def exit_code_of(run: Callable[[], None]) -> int:
    """Run a tool's work: 0 when it succeeds, INPUT_ERROR_EXIT_CODE with one `error:` line on bad input."""
    try:
        run()
    except (ToolInputError, DatasetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return INPUT_ERROR_EXIT_CODE
    return 0


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
