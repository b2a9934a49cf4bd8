"""How the puzzle tools fail: bad input is a ToolInputError, one `error: ...` line and exit status 2 by
command_line's convention."""
from __future__ import annotations

from command_line import UserError


class ToolInputError(UserError, ValueError):
    """A missing or malformed input (folder, file, key, value); the message names it. Still a ValueError for
    callers that catch bad values."""
