"""A full disk, for tests: writes fail past a size limit as they fail when the disk fills (a short write, then
an error), through the process's file-size limit (RLIMIT_FSIZE, its SIGXFSZ ignored)."""
import contextlib
import os
import resource
import signal


@contextlib.contextmanager
def disk_full_after(size):
    """Within the block, a write past byte `size` of any file fails (EFBIG, as a full disk gives ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


def filling_the_disk(write, path_argument, room=16):
    """`write` as it runs when the disk has `room` bytes left past the end of the file it writes (its
    positional argument `path_argument`). Only the write itself runs under the limit: the test's own output
    files (pytest's capture) may already be larger."""
    def write_on_a_full_disk(*args, **kwargs):
        path = args[path_argument]
        end = os.path.getsize(path) if os.path.exists(path) else 0
        with disk_full_after(end + room):
            return write(*args, **kwargs)
    return write_on_a_full_disk
