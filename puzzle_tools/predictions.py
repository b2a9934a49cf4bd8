"""Read the prediction files an evaluation saves, `PREFIX.<rank>` (every rank found, or one named file),
into one typed structure.

Two formats, both a `torch.save`d dict of tensors with `inputs` [N, S], `labels` [N, S] (unlabelled cells
-100), `puzzle_identifiers` [N] and `q_halt_logits` [N] (a reader that needs only some of these says which):
  ours             `preds` [N, S]: the argmax token ids; padding rows already dropped.
  the reference's  `logits` [N, S, V] instead of `preds` (the argmax is taken here), padding rows included.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from puzzle_tools.tool_io import ToolInputError
from training.arc_score import halt_probabilities

# Saved beside the predictions; voting and the halting views need puzzle_identifiers and q_halt_logits, while
# scoring Sudoku needs only labels (`evaluate.py --save-outputs inputs,labels,preds`).
OPTIONAL_KEYS = ("labels", "puzzle_identifiers", "q_halt_logits")
VOTING_KEYS = ("puzzle_identifiers", "q_halt_logits")
OURS_PREDICTION_KEY = "preds"
REFERENCE_PREDICTION_KEY = "logits"
# Rows of reference logits reduced at once: a full ARC evaluation's logits are tens of gigabytes.
ARGMAX_CHUNK_ROWS = 4096


@dataclass
class Predictions:
    """Every rank's prediction rows, padding dropped, in rank order."""
    prefix: str  # as given: PREFIX of the rank files, or the one file
    files: List[str]
    rows_per_file: List[int]  # real rows of each file, in `files` order
    inputs: np.ndarray  # [N, S] input tokens
    preds: np.ndarray  # [N, S] predicted tokens
    # Each None when not saved:
    labels: Optional[np.ndarray]  # [N, S] label tokens, -100 on unlabelled cells
    puzzle_identifiers: Optional[np.ndarray]  # [N]
    q_halt_logits: Optional[np.ndarray]  # [N] float32

    def __len__(self) -> int:
        return len(self.preds)

    @property
    def halt_probabilities(self) -> np.ndarray:
        """sigmoid(q_halt_logits): the Q head's confidence that a row's answer is final."""
        return halt_probabilities(self.q_halt_logits)

    def source_of(self, row: int) -> Tuple[str, int]:
        """The file a row was read from and its position among that file's real (not padding) rows."""
        file = int(np.searchsorted(np.cumsum(self.rows_per_file), row, side="right"))
        return self.files[file], row - sum(self.rows_per_file[:file])

    def find_rows(self, puzzle_identifiers: Sequence[int], inputs: np.ndarray) -> np.ndarray:
        """For each queried example (its identifier and input tokens), the first prediction row with the same
        identifier and inputs, or -1. Rank files are not in dataset order, so rows are found by content."""
        wanted: Dict[Tuple[int, bytes], List[int]] = {}
        for query, (identifier, tokens) in enumerate(zip(puzzle_identifiers, inputs)):
            wanted.setdefault((int(identifier), row_key(tokens)), []).append(query)
        found = np.full(len(inputs), -1, dtype=np.int64)
        for row, (identifier, tokens) in enumerate(zip(self.puzzle_identifiers, self.inputs)):
            queries = wanted.pop((int(identifier), row_key(tokens)), None)
            if queries is not None:
                found[queries] = row
                if not wanted:
                    break
        return found


def row_key(tokens: np.ndarray) -> bytes:
    # One dtype, so the same tokens stored as uint8 or int32 give the same key.
    return np.ascontiguousarray(tokens, dtype=np.int32).tobytes()


def prediction_files(prefix: str) -> List[str]:
    """`PREFIX.<rank>` files in rank order; a PREFIX that is itself a file is read alone."""
    if os.path.isfile(prefix):
        return [prefix]
    ranked = []
    for path in glob.glob(f"{glob.escape(prefix)}.*"):
        rank = path[len(prefix) + 1:]
        if re.fullmatch(r"[0-9]+", rank):
            ranked.append((int(rank), path))
    if not ranked:
        raise ToolInputError(f"{prefix}: no prediction files (looked for {prefix}.0, {prefix}.1, ...)")
    return [path for _, path in sorted(ranked)]


def compact_tokens(tensor: torch.Tensor) -> np.ndarray:
    """Tokens as a small numpy integer type: full ARC evaluations hold hundreds of thousands of rows."""
    array = tensor.numpy()
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(dtype)
    return array.astype(np.int64)


def load_file(path: str, required_keys: Sequence[str]) -> Dict[str, torch.Tensor]:
    try:
        # mmap: the reference's logits need not fit in memory at once.
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch.load fails on a damaged file with many exception types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ToolInputError(f"{path}: not a prediction file saved by torch.save ({reason})") from None
    if not isinstance(content, dict):
        raise ToolInputError(f"{path}: holds a {type(content).__name__}, expected a dict of tensors")
    if OURS_PREDICTION_KEY not in content and REFERENCE_PREDICTION_KEY not in content:
        raise ToolInputError(f"{path}: no key {OURS_PREDICTION_KEY!r} (argmax token ids) or "
                             f"{REFERENCE_PREDICTION_KEY!r} (the reference's logits)")
    for key in ("inputs", *required_keys):
        if key not in content:
            raise ToolInputError(f"{path}: no key {key!r}")
    for key, value in content.items():
        if not isinstance(value, torch.Tensor):
            raise ToolInputError(f"{path}: {key!r} is a {type(value).__name__}, expected a tensor")
    return content


def predicted_tokens(content: Dict[str, torch.Tensor], path: str) -> torch.Tensor:
    if OURS_PREDICTION_KEY in content:
        return content[OURS_PREDICTION_KEY]
    logits = content[REFERENCE_PREDICTION_KEY]
    if logits.ndim != 3:
        raise ToolInputError(f"{path}: {REFERENCE_PREDICTION_KEY!r} has shape {tuple(logits.shape)}, "
                             f"expected [N, S, V]")
    preds = torch.empty(logits.shape[:2], dtype=torch.int64)
    for start in range(0, len(logits), ARGMAX_CHUNK_ROWS):
        preds[start:start + ARGMAX_CHUNK_ROWS] = logits[start:start + ARGMAX_CHUNK_ROWS].argmax(dim=-1)
    return preds


def read_rank_file(path: str, blank_identifier_id: int, pad_id: int,
                   required_keys: Sequence[str]) -> Dict[str, np.ndarray]:
    content = load_file(path, required_keys)
    preds = predicted_tokens(content, path)
    inputs = content["inputs"]
    if inputs.ndim != 2:
        raise ToolInputError(f"{path}: 'inputs' has shape {tuple(inputs.shape)}, expected [N, S]")
    expected_shapes = {"preds": tuple(inputs.shape), "labels": tuple(inputs.shape),
                       "puzzle_identifiers": (len(inputs),), "q_halt_logits": (len(inputs),)}
    tensors = {"preds": preds, **{key: content[key] for key in expected_shapes if key in content}}
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != expected_shapes[key]:
            shown_key = REFERENCE_PREDICTION_KEY if key == "preds" and OURS_PREDICTION_KEY not in content else key
            raise ToolInputError(f"{path}: {shown_key!r} has shape {tuple(tensor.shape)}, expected "
                                 f"{list(expected_shapes[key])} to match 'inputs' {list(inputs.shape)}")
    # Padding rows (the reference keeps them) have the blank identifier and all-pad inputs. The identifier
    # alone is not enough: Sudoku and maze puzzles all have the blank identifier.
    padding = (inputs == pad_id).all(dim=1)
    if "puzzle_identifiers" in content:
        padding &= content["puzzle_identifiers"] == blank_identifier_id
    real_rows = ~padding
    arrays = {"inputs": compact_tokens(inputs[real_rows]), "preds": compact_tokens(preds[real_rows])}
    if "labels" in content:
        arrays["labels"] = compact_tokens(content["labels"][real_rows])
    if "puzzle_identifiers" in content:
        arrays["puzzle_identifiers"] = content["puzzle_identifiers"][real_rows].numpy().astype(np.int64)
    if "q_halt_logits" in content:
        arrays["q_halt_logits"] = content["q_halt_logits"][real_rows].float().numpy()
    return arrays


def load_predictions(prefix: str, blank_identifier_id: int = 0, pad_id: int = 0,
                     required_keys: Sequence[str] = VOTING_KEYS, seq_len: Optional[int] = None) -> Predictions:
    """Read every rank file of `prefix`; each must hold `required_keys` (of OPTIONAL_KEYS) beside `inputs` and
    the predictions. `blank_identifier_id` and `pad_id` come from the dataset's `dataset.json` and tell the
    reference format's padding rows; its `seq_len`, when given, is the predictions' sequence length (other
    lengths are another dataset's predictions)."""
    files = prediction_files(prefix)
    per_file = [read_rank_file(path, blank_identifier_id, pad_id, required_keys) for path in files]
    saved_keys = [key for key in OPTIONAL_KEYS if key in per_file[0]]
    for key in OPTIONAL_KEYS:
        has_key = [key in arrays for arrays in per_file]
        if any(has_key) and not all(has_key):
            raise ToolInputError(f"{files[has_key.index(False)]}: no key {key!r} (other rank files have it)")
    lengths = {arrays["inputs"].shape[1] for arrays in per_file}
    if len(lengths) > 1:
        raise ToolInputError(f"{prefix}: rank files differ in sequence length ({sorted(lengths)})")
    if seq_len is not None and lengths != {seq_len}:
        raise ToolInputError(f"{prefix}: predictions of {lengths.pop()}-token sequences, but the dataset's are "
                             f"{seq_len} tokens long: predictions of another dataset")

    def joined(key: str) -> np.ndarray:
        return np.concatenate([arrays[key] for arrays in per_file])

    return Predictions(prefix=prefix, files=files, rows_per_file=[len(arrays["inputs"]) for arrays in per_file],
                       inputs=joined("inputs"), preds=joined("preds"),
                       **{key: joined(key) if key in saved_keys else None for key in OPTIONAL_KEYS})
