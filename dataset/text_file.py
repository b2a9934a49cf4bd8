"""Reading the text files that users and runs hand over (JSON, YAML, CSV and JSON lines): decoded as UTF-8
and parsed in one place, so that bytes in another encoding, binary data or broken syntax are one UserError
naming the file, never a traceback. The reading counterpart of atomic_file.py.

A leading byte-order mark is accepted: spreadsheet programs write one before UTF-8 CSV.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterator, List, Type

import yaml

from command_line import UserError

UTF8 = "utf-8-sig"  # UTF-8, with or without a byte-order mark
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


class FileReadError(UserError, ValueError):
    """A text file that cannot be read, is not UTF-8 or does not parse; the message names the file."""


ErrorType = Type[UserError]


def _not_utf8(path: str, error: ErrorType) -> UserError:
    with open(path, "rb") as f:
        start = f.read(2)
    found = "UTF-16 text" if start in UTF16_MARKS else "bytes that are not UTF-8"
    return error(f"{path}: holds {found}; save it as UTF-8")


def _check_file(path: str, error: ErrorType) -> None:
    if not os.path.isfile(path):
        raise error(f"{path}: file not found")


def read_text(path: str, error: ErrorType = FileReadError) -> str:
    """The file's text; a missing, unreadable or non-UTF-8 file raises `error` naming it."""
    _check_file(path, error)
    try:
        with open(path, encoding=UTF8) as f:
            return f.read()
    except UnicodeDecodeError:
        raise _not_utf8(path, error) from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None


def read_json(path: str, error: ErrorType = FileReadError) -> Any:
    text = read_text(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def read_yaml(path: str, error: ErrorType = FileReadError) -> Any:
    text = read_text(path, error)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def _text_lines(lines: Iterator[str], path: str, error: ErrorType) -> Iterator[str]:
    for line in lines:
        if "\x00" in line:  # the csv module reads NUL bytes as text
            raise error(f"{path}: holds NUL bytes, so it is not a CSV text file")
        yield line


def csv_rows(path: str, error: ErrorType = FileReadError) -> Iterator[List[str]]:
    """The fields of each row of a CSV file, header included, read as it is consumed (source CSVs
    hold millions of rows); a row that cannot be decoded or parsed raises `error` naming the file."""
    _check_file(path, error)
    try:
        with open(path, newline="", encoding=UTF8) as f:
            yield from csv.reader(_text_lines(f, path, error))
    except UnicodeDecodeError:
        raise _not_utf8(path, error) from None
    except csv.Error as e:  # a field past the csv module's size limit (binary data), say
        raise error(f"{path}: not a CSV file ({e})") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
