"""Writing a file so that no reader ever sees half of it: under a temporary name beside it, then renamed
into place; or, for logs that grow, appended whole or not at all. The one implementation; run folders, the
builders and the tools all write through it."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from command_line import UserError


class FileWriteError(UserError):
    """A file cannot be written (read-only folder, full disk, a path under a file); the message names it."""


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    detail = str(error).strip()
    return detail.splitlines()[0] if detail else type(error).__name__


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path to write; it replaces `path` (its folder created if need be) only if the block
    succeeds. A failure leaves the previous `path`, if any, untouched and no temporary file behind."""
    tmp_path = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield tmp_path
        os.replace(tmp_path, path)
    # torch.save reports a failed write (a full disk) as a RuntimeError of its zip writer, not an OSError.
    except (OSError, RuntimeError) as e:
        raise FileWriteError(f"cannot write {path}: {_reason(e)}") from None
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp_path, open(tmp_path, "w", encoding="utf-8") as f:
        f.write(text)


def append_text(path: str, text: str, sync: bool = False) -> None:
    """Append `text` to `path` (created if need be), then fsync it if `sync`. A failed write (a full disk)
    or an interrupt cuts the file back to its previous end, so a reader never finds half a record."""
    data = memoryview(text.encode("utf-8"))
    try:
        with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to flush after a failure
            end = f.seek(0, os.SEEK_END)
            try:
                while data:
                    data = data[f.write(data):]
                if sync:
                    os.fsync(f.fileno())
            except BaseException:
                f.truncate(end)
                raise
    except OSError as e:
        raise FileWriteError(f"cannot write {path}: {_reason(e)}") from None
