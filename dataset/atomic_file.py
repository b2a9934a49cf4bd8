"""Writing a file so that no reader ever sees half of it: under a temporary name beside it, then renamed
into place. The one implementation; run folders, the builders and the tools all write through it."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from command_line import UserError


class FileWriteError(UserError):
    """A file cannot be written (read-only folder, full disk, a path under a file); the message names it."""


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path to write; it replaces `path` (its folder created if need be) only if the block
    succeeds. A failure leaves the previous `path`, if any, untouched and no temporary file behind."""
    tmp_path = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        raise FileWriteError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp_path, open(tmp_path, "w", encoding="utf-8") as f:
        f.write(text)
