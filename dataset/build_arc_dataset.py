"""Build an ARC dataset (ARC-AGI-1, ARC-AGI-2, ConceptARC) in the puzzle dataset format.

Reproduces the reference ARC builder draw for draw: one `np.random.seed(seed)`, then every random choice
from numpy's global generator in the reference's order (puzzle shuffles, augmentation trials, then the
per-puzzle kept-in-place example and canvas offsets while writing).

Inputs, one of:
  --dataset-dirs DIR ...   folders of subfolders (`training`, `evaluation`, ...) of `<id>.json` puzzles
                           with "train" and "test" lists of {"input", "output"} (ARC-AGI repository layout;
                           the reference default).
  --preset arc-1 | arc-2   the published subsets from the --arc-data folder: arc-1 = ARC-AGI-1 training +
                           evaluation + ConceptARC (subsets training, evaluation, concept), arc-2 = ARC-AGI-2
                           (training2, evaluation2). Explicit flags override the preset's values.
  --subsets S ...          chosen subsets from the --arc-data folder.
  --input-file-prefix P --subsets S ...
                           challenge/solution pairs `P_<S>_challenges.json` + `P_<S>_solutions.json`
                           anywhere; each subset acts as a subfolder named S.

The --arc-data folder (default `data/arc-prize` under the working directory, or the environment variable
HRM_ARC_DATA when set; the flag wins over both) holds ARC Prize-format pairs
`arc-agi_<subset>_challenges.json` (puzzle id -> "train" pairs and "test" inputs) and
`arc-agi_<subset>_solutions.json` (puzzle id -> list of test outputs). Its files come from the public
repositories ARC-AGI (github.com/fchollet/ARC-AGI), ARC-AGI-2 (github.com/arcprize/ARC-AGI-2) and
ConceptARC (github.com/victorvikram/ConceptARC); on an online machine `--download` fetches the three and
writes every missing file of the folder (existing files are kept), then builds if a preset or subsets are
given. It names each puzzle after its file (without `.json`) and lists a subset's ids in sorted order,
the order of the ARC Prize files for training, evaluation, training2 and evaluation2. ARC Prize-format
copies of the concept subset list its ids in an arbitrary (file system) order; as the builder shuffles in
load order, a dataset built from such a copy differs from one built from downloaded files, though both
hold the same puzzles and each is reproducible. ConceptARC's `<concept>Minimal.json` warm-up puzzles are
left out, as in those copies (16 concepts x 10 puzzles).

`--puzzle-ids ID ...` builds only the named puzzles and `--limit N` only the first N of each subset (both
may be given), e.g. a tiny real ARC set for a quick try; the chosen puzzles must include some of the test
subset.

Puzzles of the subfolder named `--test-set-name` send their test pairs to the test split and their
demonstrations to train; every other puzzle goes to train whole (demonstrations, then test pairs).
A subset whose solutions file is missing (only with --input-file-prefix) has unknown test outputs: its test
pairs are left out of the splits (with a warning) but still listed, inputs only, in `test_puzzles.json`.

Besides the usual folder layout, `test_puzzles.json` at the dataset root maps every original puzzle with
test pairs to its demonstrations and test pairs as plain lists, for voting and scoring later.
"""
import argparse
import fnmatch
import glob
import http.client
import io
import json
import os
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from command_line import OneLineArgumentParser, run_cli
from dataset.atomic_file import write_text
from dataset.common import DatasetBuildError, atomic_output_dir, dihedral_transform, seed_argument
from dataset.format import (ARC_COLOUR_OFFSET, ARC_END_TOKEN, ARC_GRID_SIZE, ARC_PAD_TOKEN, ARC_SEQ_LEN,
                            ARC_VOCAB_SIZE, TEST_PUZZLES_FILE, PuzzleDatasetMetadata, arc_grid_fault, save_identifiers,
                            save_split, split_file)
from dataset.text_file import read_json

NUM_DIHEDRAL = 8
AUGMENT_TRIES_PER_VERSION = 5

SPLITS = ("train", "test")
TRAIN_DESTINATION = ("train", "all")
TEST_DESTINATION = ("test", "all")

DEFAULT_DATASET_DIRS = ["dataset/raw-data/ARC-AGI/data", "dataset/raw-data/ConceptARC/corpus"]
DEFAULT_OUTPUT_DIR = "data/arc-aug-1000"
DEFAULT_TEST_SET_NAME = "evaluation"
DEFAULT_ARC_DATA = "data/arc-prize"
ARC_DATA_ENV = "HRM_ARC_DATA"
ARC_FILE_PREFIX = "arc-agi"  # files are <folder>/arc-agi_<subset>_{challenges,solutions}.json
PRESETS = {
    "arc-1": dict(subsets=["training", "evaluation", "concept"], test_set_name="evaluation",
                  output_dir="data/arc-aug-1000"),
    "arc-2": dict(subsets=["training2", "evaluation2"], test_set_name="evaluation2",
                  output_dir="data/arc-2-aug-1000"),
}

ARCHIVE_URL = "https://github.com/{repository}/archive/refs/heads/{branch}.zip"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class PuzzleRepository:
    """A public repository of per-puzzle JSON files and where its puzzles land in the --arc-data folder."""
    repository: str  # owner/name on GitHub
    branch: str
    # Path pattern of the puzzle files inside the repository ("*" stands for one path component) -> subset.
    subsets: Dict[str, str]
    # Puzzle ids ending in this are left out (ConceptARC's warm-up puzzles, absent from its ARC Prize-format
    # subset).
    left_out_suffix: Optional[str] = None


PUZZLE_REPOSITORIES = (
    PuzzleRepository("fchollet/ARC-AGI", "master",
                     {"data/training/*.json": "training", "data/evaluation/*.json": "evaluation"}),
    PuzzleRepository("arcprize/ARC-AGI-2", "main",
                     {"data/training/*.json": "training2", "data/evaluation/*.json": "evaluation2"}),
    PuzzleRepository("victorvikram/ConceptARC", "main", {"corpus/*/*.json": "concept"}, left_out_suffix="Minimal"),
)
ARC_DATA_SOURCES = ("the public repositories ARC-AGI (github.com/fchollet/ARC-AGI), ARC-AGI-2 "
                    "(github.com/arcprize/ARC-AGI-2) and ConceptARC (github.com/victorvikram/ConceptARC)")

Pair = Tuple[np.ndarray, np.ndarray]
Destination = Tuple[str, str]  # (split, set)


@dataclass
class SourcePuzzle:
    name: str
    origin: str  # where it came from, for messages
    demos: List[Pair]
    tests: List[Tuple[np.ndarray, Optional[np.ndarray]]]  # output None when unknown


@dataclass
class AugmentedPuzzle:
    name: str
    examples: Dict[Destination, List[Pair]]
    versions: List[Tuple[int, np.ndarray]]  # (dihedral id, colour map); versions[0] is the original

    def version_name(self, index: int) -> str:
        if index == 0:
            return self.name
        transform_id, colour_map = self.versions[index]
        return f"{self.name}_t{transform_id}_{''.join(str(c) for c in colour_map)}"


# ---------------------------------------------------------------------------------------------------------
# Reading puzzles

def parse_grid(grid, where: str) -> np.ndarray:
    fault = arc_grid_fault(grid)
    if fault:
        raise DatasetBuildError(f"{where}: {fault}")
    return np.array(grid, dtype=np.uint8)


def parse_puzzle(data, default_name: str, where: str, test_outputs: Optional[list] = None) -> SourcePuzzle:
    """Check and convert one puzzle; test outputs come from `test_outputs` when given, else from the pairs."""
    if not isinstance(data, dict) or not isinstance(data.get("train"), list) or not isinstance(data.get("test"), list):
        raise DatasetBuildError(f"{where}: a puzzle needs \"train\" and \"test\" lists")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise DatasetBuildError(f"{where}: \"name\" must be a non-empty string")
    if not data["train"] and not data["test"]:
        raise DatasetBuildError(f"{where}: the puzzle has no pairs (its \"train\" and \"test\" lists are empty)")
    if test_outputs is not None and len(test_outputs) != len(data["test"]):
        raise DatasetBuildError(f"{where}: {len(test_outputs)} solutions for {len(data['test'])} test inputs")

    def example(kind: str, index: int) -> dict:
        entry = data[kind][index]
        if not isinstance(entry, dict) or "input" not in entry:
            raise DatasetBuildError(f"{where}, {kind} example {index}: needs an \"input\" grid")
        return entry

    demos = []
    for index in range(len(data["train"])):
        entry = example("train", index)
        if "output" not in entry:
            raise DatasetBuildError(f"{where}, train example {index}: needs an \"output\" grid")
        demos.append((parse_grid(entry["input"], f"{where}, train example {index} input"),
                      parse_grid(entry["output"], f"{where}, train example {index} output")))
    tests = []
    for index in range(len(data["test"])):
        entry = example("test", index)
        output = test_outputs[index] if test_outputs is not None else entry.get("output")
        tests.append((parse_grid(entry["input"], f"{where}, test example {index} input"),
                      None if output is None else parse_grid(output, f"{where}, test example {index} output")))
    return SourcePuzzle(name, where, demos, tests)


def load_puzzle_folders(dataset_dir: str) -> List[Tuple[str, List[SourcePuzzle]]]:
    """Subfolders of `dataset_dir` in name order, each with its `<id>.json` puzzles in file-name order."""
    if not os.path.isdir(dataset_dir):
        raise DatasetBuildError(f"{dataset_dir}: dataset folder not found")
    subfolders = sorted(entry.name for entry in os.scandir(dataset_dir) if entry.is_dir())
    loaded = []
    for subfolder in subfolders:
        puzzles = []
        for path in sorted(glob.glob(os.path.join(dataset_dir, subfolder, "*.json"))):
            stem = os.path.splitext(os.path.basename(path))[0]
            puzzles.append(parse_puzzle(read_json(path, DatasetBuildError), stem, path))
        loaded.append((subfolder, puzzles))
    if not any(puzzles for _, puzzles in loaded):
        hint = ("; it holds puzzle files itself: give its parent folder"
                if glob.glob(os.path.join(glob.escape(dataset_dir), "*.json")) else "")
        raise DatasetBuildError(f"{dataset_dir}: no subfolder of <id>.json puzzles (a --dataset-dirs folder holds "
                                f"subsets, such as training/ and evaluation/){hint}")
    return loaded


def load_challenge_files(prefix: str, subsets: List[str]) -> List[Tuple[str, List[SourcePuzzle]]]:
    """Each subset's challenges (in file key order) with test outputs from its solutions file."""
    loaded = []
    for subset in subsets:
        challenges_path = f"{prefix}_{subset}_challenges.json"
        solutions_path = f"{prefix}_{subset}_solutions.json"
        challenges = read_json(challenges_path, DatasetBuildError)
        if not isinstance(challenges, dict):
            raise DatasetBuildError(f"{challenges_path}: must map puzzle ids to puzzles")
        solutions = None
        if os.path.exists(solutions_path):
            solutions = read_json(solutions_path, DatasetBuildError)
            if not isinstance(solutions, dict):
                raise DatasetBuildError(f"{solutions_path}: must map puzzle ids to lists of test outputs")
        else:
            tqdm.write(f"warning: {solutions_path} not found; test pairs of subset {subset!r} without an "
                       f"output are left out of the splits", file=sys.stderr)
        puzzles = []
        for puzzle_id, data in challenges.items():
            test_outputs = None
            if solutions is not None:
                if not isinstance(solutions.get(puzzle_id), list):
                    raise DatasetBuildError(f"{solutions_path}: no list of test outputs for puzzle {puzzle_id}")
                test_outputs = solutions[puzzle_id]
            puzzles.append(parse_puzzle(data, puzzle_id, f"{challenges_path}, puzzle {puzzle_id}", test_outputs))
        loaded.append((subset, puzzles))
    return loaded


def arc_data_file(arc_data: str, subset: str, kind: str) -> str:
    """Path of a subset's `challenges` or `solutions` file in the --arc-data folder."""
    return os.path.join(arc_data, f"{ARC_FILE_PREFIX}_{subset}_{kind}.json")


def check_arc_data(arc_data: str, subsets: List[str]) -> None:
    """Stop, saying where to get the files, when the --arc-data folder or a subset's file is missing."""
    problem = None
    if not os.path.isdir(arc_data):
        problem = "not found"
    else:
        missing = [os.path.basename(arc_data_file(arc_data, subset, kind)) for subset in subsets
                   for kind in ("challenges", "solutions") if not os.path.isfile(arc_data_file(arc_data, subset, kind))]
        if missing:
            problem = f"has no {', '.join(missing)}"
    if problem:
        raise DatasetBuildError(
            f"ARC data folder {os.path.abspath(arc_data)} {problem} (choose the folder with --arc-data DIR or "
            f"{ARC_DATA_ENV}); its {ARC_FILE_PREFIX}_<subset>_{{challenges,solutions}}.json files come from "
            f"{ARC_DATA_SOURCES}: run with --download on an online machine to fetch and convert them")


def select_puzzles(sources: List[Tuple[str, List[SourcePuzzle]]], puzzle_ids: Optional[List[str]],
                   limit: Optional[int], test_set_name: str) -> List[Tuple[str, List[SourcePuzzle]]]:
    """The puzzles named in `puzzle_ids` (every one when None), then the first `limit` of each subset in load
    order (all when None); subsets left empty are dropped. A named puzzle missing from the inputs, or a
    choice that leaves out every puzzle of the test subset, is an error."""
    had_test_subset = any(subset == test_set_name and puzzles for subset, puzzles in sources)
    if puzzle_ids is not None:
        known = {puzzle.name for _, puzzles in sources for puzzle in puzzles}
        unknown = [puzzle_id for puzzle_id in dict.fromkeys(puzzle_ids) if puzzle_id not in known]
        if unknown:
            raise DatasetBuildError(f"--puzzle-ids: no puzzle {', '.join(unknown)} in the inputs "
                                    f"(subsets {', '.join(subset for subset, _ in sources)})")
        chosen = set(puzzle_ids)
        sources = [(subset, [puzzle for puzzle in puzzles if puzzle.name in chosen]) for subset, puzzles in sources]
    if limit is not None:
        sources = [(subset, puzzles[:limit]) for subset, puzzles in sources]
    selected = [(subset, puzzles) for subset, puzzles in sources if puzzles]
    if had_test_subset and not any(subset == test_set_name for subset, _ in selected):
        raise DatasetBuildError(f"the chosen puzzles hold none of subset {test_set_name!r}, whose test pairs form "
                                f"the test split; choose some of its puzzles too")
    return selected


def check_unique_names(sources: List[Tuple[str, List[SourcePuzzle]]]) -> None:
    # Two puzzles sharing a name would share identifiers and clash in test_puzzles.json.
    seen = {}
    for _, puzzles in sources:
        for puzzle in puzzles:
            if puzzle.name in seen:
                raise DatasetBuildError(f"puzzle name {puzzle.name!r} is used by both {seen[puzzle.name]} "
                                        f"and {puzzle.origin}")
            seen[puzzle.name] = puzzle.origin


# ---------------------------------------------------------------------------------------------------------
# Downloading the --arc-data folder

def fetch_archive(url: str) -> bytes:
    """The bytes at `url` (https or file), with a progress bar; any failure is one DatasetBuildError."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            size = response.headers.get("Content-Length")
            chunks = []
            with tqdm(total=int(size) if size else None, unit="B", unit_scale=True, desc="download") as progress:
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    progress.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:  # offline, refused, HTTP error, timeout, cut connection
        reason = " ".join(str(getattr(e, "reason", None) or e).split())
        raise DatasetBuildError(f"could not download {url} ({type(e).__name__}: {reason}); on a machine without "
                                f"internet, copy the ARC Prize-format files in by hand") from None
    return b"".join(chunks)


def archive_puzzle(member: str, repository: PuzzleRepository) -> Optional[Tuple[str, str]]:
    """(subset, puzzle id) of an archive member that is one of the repository's puzzles, else None."""
    # GitHub archives hold the repository under one top folder, `<name>-<branch>/`.
    parts = member.split("/")[1:]
    for pattern, subset in repository.subsets.items():
        pattern_parts = pattern.split("/")
        if len(parts) == len(pattern_parts) and all(fnmatch.fnmatchcase(part, pattern_part)
                                                    for part, pattern_part in zip(parts, pattern_parts)):
            puzzle_id = parts[-1][:-len(".json")]
            if repository.left_out_suffix and puzzle_id.endswith(repository.left_out_suffix):
                return None
            return subset, puzzle_id
    return None


def convert_archive(archive: bytes, repository: PuzzleRepository, url: str) -> Dict[str, Tuple[dict, dict]]:
    """subset -> (challenges, solutions) in the ARC Prize format, puzzle ids in sorted order."""
    try:
        archive_file = zipfile.ZipFile(io.BytesIO(archive))
    except zipfile.BadZipFile:
        raise DatasetBuildError(f"{url}: not a zip archive") from None
    puzzles: Dict[str, Dict[str, dict]] = {subset: {} for subset in repository.subsets.values()}
    with archive_file:
        for member in archive_file.namelist():
            found = archive_puzzle(member, repository)
            if found is None:
                continue
            subset, puzzle_id = found
            where = f"{url}, {member}"
            try:
                data = json.loads(archive_file.read(member))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DatasetBuildError(f"{where}: not valid JSON ({e})") from None
            puzzle = parse_puzzle(data, puzzle_id, where)  # checks every grid
            if any(output is None for _, output in puzzle.tests):
                raise DatasetBuildError(f"{where}: a test pair has no \"output\"")
            if puzzle_id in puzzles[subset]:
                raise DatasetBuildError(f"{where}: puzzle id {puzzle_id} appears twice in subset {subset}")
            puzzles[subset][puzzle_id] = data
    converted = {}
    for pattern, subset in repository.subsets.items():
        if not puzzles[subset]:
            raise DatasetBuildError(f"{url}: no puzzle files match {pattern}")
        ordered = sorted(puzzles[subset].items())
        challenges = {puzzle_id: {"train": [{"input": pair["input"], "output": pair["output"]}
                                            for pair in data["train"]],
                                  "test": [{"input": pair["input"]} for pair in data["test"]]}
                      for puzzle_id, data in ordered}
        solutions = {puzzle_id: [pair["output"] for pair in data["test"]] for puzzle_id, data in ordered}
        converted[subset] = (challenges, solutions)
    return converted


def download_arc_data(arc_data: str) -> None:
    """Fill the --arc-data folder: fetch each repository with a subset file missing there and write the
    missing files. Existing files are never replaced."""
    if os.path.exists(arc_data) and not os.path.isdir(arc_data):
        raise DatasetBuildError(f"--arc-data {arc_data}: not a folder")
    try:
        os.makedirs(arc_data, exist_ok=True)
    except OSError as e:
        raise DatasetBuildError(f"--arc-data {arc_data}: cannot create the folder ({e.strerror})") from None
    for repository in PUZZLE_REPOSITORIES:
        paths = {subset: [arc_data_file(arc_data, subset, kind) for kind in ("challenges", "solutions")]
                 for subset in repository.subsets.values()}
        if all(os.path.exists(path) for subset_paths in paths.values() for path in subset_paths):
            print(f"{repository.repository}: all its files are in {arc_data}; not downloaded")
            continue
        url = ARCHIVE_URL.format(repository=repository.repository, branch=repository.branch)
        print(f"{repository.repository}: downloading {url}")
        converted = convert_archive(fetch_archive(url), repository, url)
        for subset, files in converted.items():
            for path, content in zip(paths[subset], files):
                if os.path.exists(path):
                    print(f"kept existing {path}")
                else:
                    write_text(path, json.dumps(content))
                    print(f"wrote {path} ({len(content)} puzzles)")


# ---------------------------------------------------------------------------------------------------------
# Augmentation

def dihedral_variants(grid: np.ndarray) -> List[np.ndarray]:
    """The grid under each of the 8 dihedral transforms, as contiguous arrays."""
    return [np.ascontiguousarray(dihedral_transform(grid, t)) for t in range(NUM_DIHEDRAL)]


def flatten_pairs(pairs: List[Pair], transform_id: int) -> Tuple[np.ndarray, list]:
    """All grids of `pairs` under one dihedral transform in one flat buffer (so a colour map applies in one
    step), with each pair's layout: (input shape bytes, input slice, label shape bytes, label slice)."""
    pieces, layout, start = [], [], 0
    for pair in pairs:
        pair_layout = []
        for grid in pair:
            grid = dihedral_transform(grid, transform_id)
            pieces.append(grid.ravel())
            pair_layout += [bytes(grid.shape), slice(start, start + grid.size)]
            start += grid.size
        layout.append(tuple(pair_layout))
    return np.concatenate(pieces), layout


def version_key(flat_grids: np.ndarray, layout: list, colour_map: np.ndarray) -> tuple:
    """Order-free key of a version's pairs: equal keys <=> the same multiset of (input, label) grids,
    shapes included (what the reference's sorted-hash duplicate test detects)."""
    data = colour_map[flat_grids].tobytes()
    return tuple(sorted(input_shape + data[input_slice] + label_shape + data[label_slice]
                        for input_shape, input_slice, label_shape, label_slice in layout))


def augment(name: str, pairs: List[Pair], num_aug: int) -> List[Tuple[int, np.ndarray]]:
    """The original plus up to `num_aug` distinct (dihedral id, colour map) versions of a puzzle."""
    identity = np.arange(10, dtype=np.uint8)
    versions = [(0, identity)]
    if num_aug == 0:
        return versions
    flattened = [flatten_pairs(pairs, t) for t in range(NUM_DIHEDRAL)]
    seen = {version_key(*flattened[0], identity)}
    for _ in range(AUGMENT_TRIES_PER_VERSION * num_aug):
        transform_id = np.random.randint(0, NUM_DIHEDRAL)
        # Colour 0 (the background) keeps its colour; 1..9 are permuted.
        colour_map = np.concatenate([np.zeros(1, dtype=np.uint8),
                                     np.random.permutation(np.arange(1, 10, dtype=np.uint8))])
        key = version_key(*flattened[transform_id], colour_map)
        if key not in seen:
            seen.add(key)
            versions.append((transform_id, colour_map))
        if len(versions) == num_aug + 1:
            break
    if len(versions) < num_aug + 1:
        tqdm.write(f"warning: puzzle {name}: only {len(versions)} distinct versions of {num_aug + 1} wanted",
                   file=sys.stderr)
    return versions


def convert_puzzle(puzzle: SourcePuzzle, test_destination: Destination, num_aug: int) -> AugmentedPuzzle:
    examples = {}
    examples.setdefault(TRAIN_DESTINATION, []).extend(puzzle.demos)
    examples.setdefault(test_destination, []).extend((i, o) for i, o in puzzle.tests if o is not None)
    # A destination without examples gets no puzzle (an empty puzzle has no place in the format).
    examples = {destination: pairs for destination, pairs in examples.items() if pairs}
    all_pairs = [pair for pairs in examples.values() for pair in pairs]
    return AugmentedPuzzle(puzzle.name, examples, augment(puzzle.name, all_pairs, num_aug))


# ---------------------------------------------------------------------------------------------------------
# Encoding

def encode_grids(grids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Place same-shaped grids [B, rows, cols] on 30x30 canvases at top-left `offsets` [B, 2] -> [B, 900].

    Colours become tokens c+2 and an end marker fills the row below and the column right of the grid
    (the corner between them stays pad); markers falling off the canvas are dropped.
    """
    batch, num_rows, num_cols = grids.shape
    tile = np.zeros((batch, num_rows + 1, num_cols + 1), dtype=np.uint8)
    tile[:, :num_rows, :num_cols] = grids + ARC_COLOUR_OFFSET
    tile[:, num_rows, :num_cols] = ARC_END_TOKEN
    tile[:, :num_rows, num_cols] = ARC_END_TOKEN
    # Canvases with one spare row and column, which catch the markers of grids touching the edge.
    side = ARC_GRID_SIZE + 1
    canvas = np.full((batch, side, side), ARC_PAD_TOKEN, dtype=np.uint8)
    tile_positions = np.arange(num_rows + 1)[:, None] * side + np.arange(num_cols + 1)[None, :]
    tile_starts = np.arange(batch) * side * side + offsets[:, 0] * side + offsets[:, 1]
    canvas.reshape(-1)[tile_starts[:, None, None] + tile_positions] = tile
    return canvas[:, :ARC_GRID_SIZE, :ARC_GRID_SIZE].reshape(batch, ARC_SEQ_LEN)


def draw_offsets(example_variants: List[Tuple[List[np.ndarray], List[np.ndarray]]], transform_ids: np.ndarray,
                 translate: bool) -> np.ndarray:
    """Canvas offsets [versions, examples, 2] of one group, drawn in the reference's order.

    Per version: the index of the example kept at (0, 0), then (row, col) offsets of the others in example
    order. The kept index is drawn even where translation is off.
    """
    num_examples = len(example_variants)
    # room[t, e] = number of possible (row, col) offsets of example e under transform t.
    room = np.array([[[ARC_GRID_SIZE - max(inp[t].shape[axis], out[t].shape[axis]) + 1 for axis in (0, 1)]
                      for inp, out in example_variants] for t in range(NUM_DIHEDRAL)])
    shifted = [np.delete(np.arange(num_examples), kept) for kept in range(num_examples)]
    offsets = np.zeros((len(transform_ids), num_examples, 2), dtype=np.int64)
    for version, transform_id in enumerate(transform_ids):
        kept = np.random.randint(0, num_examples)
        if translate and num_examples > 1:
            # One vectorised draw takes the same values as per-offset draws in row-major order.
            offsets[version, shifted[kept]] = np.random.randint(0, room[transform_id, shifted[kept]])
    return offsets


def encode_group(puzzle: AugmentedPuzzle, pairs: List[Pair], translate: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Inputs and labels [versions * examples, 900] of every version of one puzzle's pairs, version-major."""
    num_examples = len(pairs)
    transform_ids = np.array([transform_id for transform_id, _ in puzzle.versions])
    colour_maps = np.stack([colour_map for _, colour_map in puzzle.versions])
    example_variants = [(dihedral_variants(inp), dihedral_variants(out)) for inp, out in pairs]
    offsets = draw_offsets(example_variants, transform_ids, translate)
    inputs = np.empty((len(transform_ids), num_examples, ARC_SEQ_LEN), dtype=np.uint8)
    labels = np.empty_like(inputs)
    # Colour maps commute with dihedral transforms, so each transform's versions are encoded in one batch.
    for transform_id in np.unique(transform_ids):
        versions = np.flatnonzero(transform_ids == transform_id)
        version_maps = colour_maps[versions]
        for example, (inp_variants, out_variants) in enumerate(example_variants):
            example_offsets = offsets[versions, example]
            inputs[versions, example] = encode_grids(version_maps[:, inp_variants[transform_id]], example_offsets)
            labels[versions, example] = encode_grids(version_maps[:, out_variants[transform_id]], example_offsets)
    return inputs.reshape(-1, ARC_SEQ_LEN), labels.reshape(-1, ARC_SEQ_LEN)


# ---------------------------------------------------------------------------------------------------------
# Writing

def assign_identifiers(groups: Dict[str, Dict[str, list]]) -> Dict[str, int]:
    """Identifier ids in order of first appearance over splits, sets, groups and versions; 0 is blank."""
    identifiers = {"<blank>": 0}
    for split in SPLITS:
        for set_groups in groups.get(split, {}).values():
            for puzzle, _ in set_groups:
                for version in range(len(puzzle.versions)):
                    identifiers.setdefault(puzzle.version_name(version), len(identifiers))
    return identifiers


def write_split(dataset_dir: str, split: str, set_groups: Dict[str, list], identifiers: Dict[str, int]) -> str:
    """Encode and save one split; returns its summary."""
    # Token arrays are memory-mapped at their final paths: the full presets hold several GB.
    os.makedirs(os.path.join(dataset_dir, split))
    translate = split == "train"
    arrays, split_identifiers = {}, set()
    total_examples = total_puzzles = total_groups = 0
    for set_name, groups in set_groups.items():
        num_rows = sum(len(puzzle.versions) * len(pairs) for puzzle, pairs in groups)
        inputs, labels = (open_memmap(split_file(dataset_dir, split, set_name, field), "w+", np.uint8,
                                      (num_rows, ARC_SEQ_LEN)) for field in ("inputs", "labels"))
        puzzle_indices, group_indices, puzzle_identifiers = [0], [0], []
        for puzzle, pairs in tqdm(groups, desc=f"encode {split}/{set_name}", unit="group"):
            first_row = puzzle_indices[-1]
            group_inputs, group_labels = encode_group(puzzle, pairs, translate)
            inputs[first_row:first_row + len(group_inputs)] = group_inputs
            labels[first_row:first_row + len(group_labels)] = group_labels
            for version in range(len(puzzle.versions)):
                puzzle_indices.append(puzzle_indices[-1] + len(pairs))
                puzzle_identifiers.append(identifiers[puzzle.version_name(version)])
            group_indices.append(len(puzzle_identifiers))
        arrays[set_name] = dict(inputs=inputs, labels=labels,
                                puzzle_identifiers=np.array(puzzle_identifiers, dtype=np.int32),
                                puzzle_indices=np.array(puzzle_indices, dtype=np.int32),
                                group_indices=np.array(group_indices, dtype=np.int32))
        split_identifiers.update(puzzle_identifiers)
        total_examples += num_rows
        total_puzzles += len(puzzle_identifiers)
        total_groups += len(groups)
    metadata = PuzzleDatasetMetadata(
        pad_id=ARC_PAD_TOKEN, ignore_label_id=ARC_PAD_TOKEN, blank_identifier_id=0, vocab_size=ARC_VOCAB_SIZE,
        seq_len=ARC_SEQ_LEN, num_puzzle_identifiers=len(identifiers), total_groups=total_groups,
        mean_puzzle_examples=total_examples / total_puzzles, sets=list(set_groups))
    save_split(dataset_dir, split, metadata, arrays)
    return (f"{total_examples} examples, {total_puzzles} puzzles, {total_groups} groups, "
            f"{len(split_identifiers)} identifiers (of {len(identifiers)} with <blank>)")


def grid_pairs_to_json(pairs) -> list:
    return [{"input": inp.tolist(), **({} if out is None else {"output": out.tolist()})} for inp, out in pairs]


def save_test_puzzles(dataset_dir: str, sources: List[Tuple[str, List[SourcePuzzle]]]) -> None:
    test_puzzles = {puzzle.name: {"train": grid_pairs_to_json(puzzle.demos), "test": grid_pairs_to_json(puzzle.tests)}
                    for _, puzzles in sources for puzzle in puzzles if puzzle.tests}
    with open(os.path.join(dataset_dir, TEST_PUZZLES_FILE), "w") as f:
        json.dump(dict(sorted(test_puzzles.items())), f)


def build(sources: List[Tuple[str, List[SourcePuzzle]]], output_dir: str, test_set_name: str, seed: int,
          num_aug: int, overwrite: bool = False) -> None:
    """Convert loaded puzzles (subfolder name, puzzles in load order) into a dataset folder."""
    if num_aug < 0:
        raise DatasetBuildError(f"--num-aug must be >= 0, got {num_aug}")
    if not any(puzzles for _, puzzles in sources):
        raise DatasetBuildError("no puzzles found in the inputs")
    if not any(subfolder == test_set_name and puzzles for subfolder, puzzles in sources):
        # A train-only dataset, as the reference builds it; said, since a misspelt name gives one too.
        print(f"warning: no puzzles of the test subset {test_set_name!r} (--test-set-name) among the inputs "
              f"(subsets {', '.join(subfolder for subfolder, _ in sources)}): the dataset has no test split",
              file=sys.stderr)
    check_unique_names(sources)
    np.random.seed(seed)
    with atomic_output_dir(output_dir, overwrite) as dataset_dir:
        groups: Dict[str, Dict[str, list]] = {}
        for subfolder, puzzles in sources:
            unknown_tests = sum(output is None for puzzle in puzzles for _, output in puzzle.tests)
            if unknown_tests:
                tqdm.write(f"warning: {subfolder}: {unknown_tests} test pairs without an output are left out",
                           file=sys.stderr)
            test_destination = TEST_DESTINATION if subfolder == test_set_name else TRAIN_DESTINATION
            order = list(range(len(puzzles)))
            np.random.shuffle(order)
            for index in tqdm(order, desc=f"augment {subfolder}", unit="puzzle"):
                puzzle = convert_puzzle(puzzles[index], test_destination, num_aug)
                for (split, set_name), pairs in puzzle.examples.items():
                    groups.setdefault(split, {}).setdefault(set_name, []).append((puzzle, pairs))

        identifiers = assign_identifiers(groups)
        summaries = {split: write_split(dataset_dir, split, groups[split], identifiers)
                     for split in SPLITS if split in groups}
        save_identifiers(dataset_dir, list(identifiers))
        save_test_puzzles(dataset_dir, sources)
    for split, summary in summaries.items():
        print(f"{split}: {summary} -> {os.path.join(os.path.abspath(output_dir), split)}")


# ---------------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(__doc__.split("\n")[2:]))
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="arc-1: ARC-AGI-1 training+evaluation+ConceptARC (subsets training, evaluation, "
                             "concept); arc-2: ARC-AGI-2 (training2, evaluation2); both read from --arc-data. "
                             "Explicit flags override its values.")
    parser.add_argument("--arc-data", metavar="DIR",
                        help=f"folder of ARC Prize-format {ARC_FILE_PREFIX}_<subset>_{{challenges,solutions}}.json "
                             f"files read by --preset and --subsets (default: ${ARC_DATA_ENV} if set, else "
                             f"{DEFAULT_ARC_DATA})")
    parser.add_argument("--download", action="store_true",
                        help="first fetch ARC-AGI, ARC-AGI-2 and ConceptARC from GitHub and write the missing "
                             "files of --arc-data (existing files are kept); builds only with --preset or --subsets")
    parser.add_argument("--dataset-dirs", nargs="+",
                        help=f"folders of subfolders of <id>.json puzzles (default {' '.join(DEFAULT_DATASET_DIRS)})")
    parser.add_argument("--input-file-prefix",
                        help="read PREFIX_<subset>_challenges.json and PREFIX_<subset>_solutions.json instead of "
                             "the --arc-data folder")
    parser.add_argument("--subsets", nargs="+", help="subsets to read from --arc-data or --input-file-prefix")
    parser.add_argument("--test-set-name",
                        help=f"subfolder/subset whose test pairs form the test split (default {DEFAULT_TEST_SET_NAME})")
    parser.add_argument("--output-dir", help=f"dataset folder to write (default {DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--seed", type=seed_argument, default=42, help="numpy seed for shuffles and augmentation (default 42)")
    parser.add_argument("--num-aug", type=int, default=1000,
                        help="augmented versions per puzzle, 0 for none (default 1000)")
    parser.add_argument("--puzzle-ids", nargs="+", metavar="ID",
                        help="build only these puzzles (ids as the inputs name them), e.g. for a quick try")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="build only the first N puzzles of each subset (in the order read)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)

    if args.dataset_dirs and (args.preset or args.input_file_prefix or args.subsets or args.arc_data or args.download):
        raise DatasetBuildError("--dataset-dirs cannot be combined with --preset, --subsets, --input-file-prefix, "
                                "--arc-data or --download")
    if args.input_file_prefix and (args.arc_data or args.download):
        raise DatasetBuildError("--input-file-prefix names its files itself; --arc-data and --download do not apply")
    preset = PRESETS.get(args.preset, {})
    for key in ("subsets", "test_set_name", "output_dir"):
        if getattr(args, key) is None and key in preset:
            setattr(args, key, preset[key])
    if args.limit is not None and args.limit < 1:
        raise DatasetBuildError(f"--limit must be at least 1, got {args.limit}")
    if (args.puzzle_ids or args.limit) and args.download and not args.subsets:
        raise DatasetBuildError("--puzzle-ids and --limit choose what to build; with --download, give --preset or "
                                "--subsets too")
    if args.input_file_prefix and not args.subsets:
        raise DatasetBuildError("--input-file-prefix needs --subsets")
    if args.arc_data and not (args.subsets or args.download):
        raise DatasetBuildError("--arc-data is read by --preset or --subsets and filled by --download; "
                                "give one of them")
    # An empty variable counts as unset, like a missing one.
    args.arc_data = args.arc_data or os.environ.get(ARC_DATA_ENV) or DEFAULT_ARC_DATA
    if not args.subsets and not args.download:
        args.dataset_dirs = args.dataset_dirs or DEFAULT_DATASET_DIRS
    args.test_set_name = args.test_set_name or DEFAULT_TEST_SET_NAME
    args.output_dir = args.output_dir or DEFAULT_OUTPUT_DIR
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.download:
        download_arc_data(args.arc_data)
        if not args.subsets:
            return
    if args.dataset_dirs:
        sources = [source for dataset_dir in args.dataset_dirs for source in load_puzzle_folders(dataset_dir)]
    elif args.input_file_prefix:
        sources = load_challenge_files(args.input_file_prefix, args.subsets)
    else:
        check_arc_data(args.arc_data, args.subsets)
        sources = load_challenge_files(os.path.join(args.arc_data, ARC_FILE_PREFIX), args.subsets)
    if args.puzzle_ids or args.limit:
        sources = select_puzzles(sources, args.puzzle_ids, args.limit, args.test_set_name)
    build(sources, args.output_dir, args.test_set_name, args.seed, args.num_aug, args.overwrite)


if __name__ == "__main__":
    run_cli(main)
