"""The one command-line convention of every script: a mistake the user can fix is a UserError, reported as
one `error: ...` line with exit status 2, never a traceback; the argument parser's mistakes look the same.

This module imports nothing of the project, so every layer (models, dataset, training, the tools and the
scripts) may raise its errors and parse its arguments with it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Optional

USER_ERROR_EXIT_CODE = 2  # argparse's status for bad usage


class UserError(Exception):
    """A mistake the user can fix: a missing or malformed file, key, value or flag; the message names it, on
    one line. Each layer subclasses it for its own inputs (ConfigError, DatasetFormatError, ...)."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder that the command line or the config names does not exist (still a
    FileNotFoundError for callers that catch that)."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """Command-line mistakes as one `error:` line and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_EXIT_CODE, f"error: {message}\n")


def exit_status(run: Callable[[], Optional[int]]) -> int:
    """Run a command's work: its status (0 when it returns None), or USER_ERROR_EXIT_CODE after one `error:`
    line when it raises a UserError."""
    try:
        status = run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return status or 0


def flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


os.register_at_fork(before=flush_standard_streams)


def run_cli(main: Callable[[], Optional[int]]) -> NoReturn:
    """Entry point of every script: exit with main's status, or with one `error:` line and status 2 on a
    UserError (the argument parser exits the same way on its own).

    Output redirected to a file, as on a cluster, is written line by line, and nothing is pending when a
    process forks: a child that inherits unwritten output writes it a second time when it exits."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    sys.exit(exit_status(main))
