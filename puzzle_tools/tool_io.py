"""How the puzzle tools fail and write: bad input is one `error: ...` line and exit status 2, and every
output file appears whole or not at all."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable, NoReturn

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
    except ToolInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return INPUT_ERROR_EXIT_CODE
    return 0


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)` for a file beside `path`, then rename it into place, so no reader ever
    sees half a file; on failure `path` is untouched. An unwritable path is a ToolInputError."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        os.close(handle)
    except OSError as e:
        raise ToolInputError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        write(temporary)
        # mkstemp creates the file readable by its owner only; give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except OSError as e:
        raise ToolInputError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomically(path: str, text: str) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)
