"""How the puzzle tools fail: bad input is one `error: ...` line and exit status 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from dataset.format import DatasetFormatError
from training.run_folder import FileWriteError, RunFolderError

INPUT_ERROR_EXIT_CODE = 2  # argparse's status for bad usage


class ToolInputError(ValueError):
    """A missing or malformed input (folder, file, key, value); the message names it. A ValueError, so a
    caller that reports bad values in one line (evaluate.py) reports these too."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """Command-line mistakes as one `error:` line and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(INPUT_ERROR_EXIT_CODE, f"error: {message}\n")


def exit_code_of(run: Callable[[], None]) -> int:
    """Run a tool's work: 0 when it succeeds, INPUT_ERROR_EXIT_CODE with one `error:` line on bad input or
    an unwritable output."""
    try:
        run()
    except (ToolInputError, RunFolderError, FileWriteError, DatasetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return INPUT_ERROR_EXIT_CODE
    return 0
