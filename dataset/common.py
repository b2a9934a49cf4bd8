"""What the dataset builders share: their error type, dihedral transforms, CSV sources and the atomic folder
writer; the format they write is dataset/format.py's."""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import hashlib
import os
import shutil
import tempfile
from typing import Iterator, List, Optional, Sequence

import numpy as np

from command_line import UserError
from dataset.format import metadata_file
from dataset.text_file import csv_rows

# Dihedral transform ids: identity, rot90, rot180, rot270, flip left-right, flip up-down, transpose,
# anti-transpose. DIHEDRAL_INVERSE[t] undoes transform t.
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)

PUZZLE_CSV_HEADER = ("source", "question", "answer", "rating")


class DatasetBuildError(UserError):
    """Bad builder input or settings; the message names the file, row or flag at fault."""


# numpy's legacy seeding (np.random.seed, RandomState), which the reference builders use, takes 32 bits.
MAX_SEED = 2 ** 32 - 1


def seed_argument(text: str) -> int:
    """The `--seed` of a builder: an integer in 0..MAX_SEED, as every builder's random draws accept."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED} (2**32 - 1), got {seed}")
    return seed


def dihedral_transform(grid: np.ndarray, transform_id: int) -> np.ndarray:
    """Apply one of the 8 symmetries of the square to a 2-D grid."""
    if transform_id == 0:
        return grid
    if transform_id == 1:
        return np.rot90(grid, k=1)
    if transform_id == 2:
        return np.rot90(grid, k=2)
    if transform_id == 3:
        return np.rot90(grid, k=3)
    if transform_id == 4:
        return np.fliplr(grid)
    if transform_id == 5:
        return np.flipud(grid)
    if transform_id == 6:
        return grid.T
    if transform_id == 7:
        return np.fliplr(np.rot90(grid, k=1))
    raise ValueError(f"dihedral transform id must be 0..7, got {transform_id}")


def inverse_dihedral_transform(grid: np.ndarray, transform_id: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[transform_id])


def read_puzzle_csv(path: str, row_length: Optional[int] = None) -> List[dict]:
    """Read a `source,question,answer,rating` CSV (the official Sudoku and maze format).

    Returns one dict per row with `source`, `question`, `answer` and integer `rating`. A missing file,
    wrong header, wrong row length or unparsable rating raises DatasetBuildError naming file and row.
    """
    rows = []
    lines = csv_rows(path, DatasetBuildError)
    header = next(lines, None)
    if header is None or tuple(h.strip() for h in header) != PUZZLE_CSV_HEADER:
        raise DatasetBuildError(f"{path}: header must be {','.join(PUZZLE_CSV_HEADER)}, got {header}")
    for row_number, row in enumerate(lines, start=2):
        if len(row) != 4:
            raise DatasetBuildError(f"{path}, row {row_number}: expected 4 columns, got {len(row)}")
        source, question, answer, rating = row
        for name, text in (("question", question), ("answer", answer)):
            if row_length is not None and len(text) != row_length:
                raise DatasetBuildError(
                    f"{path}, row {row_number}: {name} has {len(text)} characters, expected {row_length}")
        if len(question) != len(answer):
            raise DatasetBuildError(f"{path}, row {row_number}: question and answer differ in length")
        try:
            rating_value = int(rating)
        except ValueError:
            raise DatasetBuildError(f"{path}, row {row_number}: rating {rating!r} is not an integer") from None
        rows.append(dict(source=source, question=question, answer=answer, rating=rating_value))
    return rows


def write_puzzle_csv(path: str, rows: Sequence[dict]) -> None:
    """Write rows (dicts with the four CSV columns) in the official format."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PUZZLE_CSV_HEADER)
        for row in rows:
            writer.writerow([row[k] for k in PUZZLE_CSV_HEADER])


def is_dataset_folder(path: str) -> bool:
    """Whether `path` holds a puzzle dataset (a split with its dataset.json), as builders write them."""
    return any(os.path.isfile(metadata_file(path, split)) for split in ("train", "test"))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_build_folders(output_dir: str) -> None:
    """Delete temporary folders beside `output_dir` left by builds that were killed (their process is gone)."""
    prefix = f".{os.path.basename(output_dir)}.tmp-"
    parent = os.path.dirname(output_dir)
    for name in os.listdir(parent):
        pid = name[len(prefix):].split("-")[0]
        if name.startswith(prefix) and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _check_replaceable(output_dir: str, overwrite: bool) -> None:
    if not os.path.lexists(output_dir):
        return
    if not overwrite:
        raise DatasetBuildError(f"output folder {output_dir} already exists; pass --overwrite to replace it")
    if not os.path.isdir(output_dir) or os.path.islink(output_dir):
        raise DatasetBuildError(f"output path {output_dir} is not a folder; --overwrite replaces only a dataset folder")
    if os.listdir(output_dir) and not is_dataset_folder(output_dir):
        raise DatasetBuildError(f"output folder {output_dir} holds something other than a dataset; "
                                f"--overwrite replaces only an empty or a dataset folder, so nothing was changed")


@contextlib.contextmanager
def atomic_output_dir(output_dir: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside `output_dir`; move it into place only if the block succeeds.

    A failure (exception, Ctrl-C) removes the temporary folder, so no half-written dataset is left; a
    killed build's folder is removed by the next build of the same output. An existing `output_dir` is an
    error unless `overwrite` is set, and even then only an empty folder or a dataset folder is replaced.
    A folder that appears at `output_dir` during the build is never replaced: the new dataset is kept
    beside it and the error names both. Write failures (read-only folder, full disk) are DatasetBuildErrors.
    """
    output_dir = os.path.abspath(output_dir)
    existed = os.path.lexists(output_dir)
    _check_replaceable(output_dir, overwrite)
    parent = os.path.dirname(output_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_build_folders(output_dir)
        tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-{os.getpid()}-", dir=parent)
    except OSError as e:
        raise DatasetBuildError(f"cannot create a folder in {parent}: {e.strerror}") from None
    # mkdtemp makes the folder private (0700); a dataset gets the permissions `mkdir` would give it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_dir, 0o777 & ~umask)
    try:
        try:
            yield tmp_dir
        except OSError as e:
            raise DatasetBuildError(f"cannot write the dataset beside {output_dir}: "
                                    f"{e.strerror or e}") from None
        if os.path.lexists(output_dir) and not existed:
            kept = f"{output_dir}.new-{os.getpid()}"
            os.rename(tmp_dir, kept)
            raise DatasetBuildError(f"{output_dir} appeared while the dataset was being built and was left as it "
                                    f"is; the new dataset is in {kept}")
        if existed and os.path.lexists(output_dir):
            _check_replaceable(output_dir, overwrite)  # it may have changed during the build
            old_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=parent)
            os.rename(output_dir, os.path.join(old_dir, "previous"))
            os.rename(tmp_dir, output_dir)
            shutil.rmtree(old_dir)
        else:
            os.rename(tmp_dir, output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def dataset_fingerprint(dataset_dir: str, sample_bytes: int = 1 << 16) -> str:
    """A short hash that changes when a dataset folder's contents do: every split's metadata and identifiers,
    and each array's name, size, first and last `sample_bytes` (cheap even for multi-gigabyte arrays)."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(glob.escape(dataset_dir), "**", "*"), recursive=True)):
        name = os.path.relpath(path, dataset_dir)
        if name.endswith(".json"):
            with open(path, "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
        elif name.endswith(".npy"):
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(sample_bytes)
                f.seek(max(0, size - sample_bytes))
                tail = f.read(sample_bytes)
            digest.update(name.encode() + b"\0" + str(size).encode() + head + tail)
    return digest.hexdigest()[:16]
