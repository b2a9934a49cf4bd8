"""dataset/build_ood_dataset.py: maze size extrapolation sets, Sudoku givens removal and low-data subsets, each on
tiny inputs with exact properties."""
import json
import os

import numpy as np
import pytest

from dataset import build_ood_dataset as ood
from dataset import maze_generator
from dataset.common import atomic_output_dir
from dataset.format import PuzzleDatasetMetadata, read_metadata, save_identifiers, save_split
from dataset_scripts import run_builder_script
from sudoku_folders import load_set, solved_grid, sudoku_arrays, write_sudoku

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5  # maze tokens: position in "# SGo" plus one


def one_line_error(capsys, argv, message):
    capsys.readouterr()  # progress bars of earlier commands
    assert ood.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


# --- maze-size ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def maze_ood(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("maze") / "maze-ood")
    assert ood.main(["maze-size", "--train-sizes", "5", "7", "--test-sizes", "7", "9", "--train-count", "12",
                     "--test-count", "6", "--output-dir", out, "--workers", "1", "--seed", "3"]) == 0
    return out


def test_maze_size_sets_sizes_and_metadata(maze_ood):
    train, test = read_metadata(maze_ood, "train"), read_metadata(maze_ood, "test")
    assert (train.seq_len, train.vocab_size, train.pad_id, train.ignore_label_id) == (900, 6, 0, 0)
    assert (train.sets, train.total_groups, test.sets, test.total_groups) == (["all"], 24, ["size7", "size9"], 12)
    assert test.seq_len == 900 and test.vocab_size == 6
    arrays = load_set(maze_ood, "train", "all")
    assert arrays["inputs"].shape == arrays["labels"].shape == (24, 900)
    assert arrays["group_indices"].tolist() == arrays["puzzle_indices"].tolist() == list(range(25))
    with open(os.path.join(maze_ood, "identifiers.json")) as f:
        assert json.load(f) == ["<blank>"]


def open_box(grid):
    """Rows and columns spanned by a grid's non-wall cells."""
    rows, cols = np.nonzero(grid != WALL)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_maze_size_places_each_maze_among_walls_with_its_unique_shortest_path(maze_ood):
    seen, corners = set(), {}
    sizes = {("train", "all"): (5, 7), ("test", "size7"): (7,), ("test", "size9"): (9,)}
    for (split, set_name), allowed in sizes.items():
        arrays = load_set(maze_ood, split, set_name)
        for question, answer in zip(arrays["inputs"], arrays["labels"]):
            seen.add(question.tobytes())
            grid = question.reshape(30, 30)
            top, bottom, left, right = open_box(grid)
            # The open cells fit the window of an allowed size (odd sizes open up to their edges); all else is wall.
            size = min(s for s in allowed if bottom - top <= s and right - left <= s)
            corners.setdefault((split, size), set()).add((top, left))
            assert set(np.unique(question)) <= {WALL, OPEN, START, GOAL}
            assert np.sum(question == START) == np.sum(question == GOAL) == 1
            # The label marks exactly the unique shortest S-G path, longer than the size's hard threshold.
            assert np.array_equal(np.where(answer == PATH, OPEN, answer), question)
            start, goal = int(np.argmax(question == START)), int(np.argmax(question == GOAL))
            path, count = maze_generator.shortest_path((question != WALL).tolist(), 30, start, goal)
            assert count == 1 and len(path) == np.sum(answer == PATH) + 2
            assert np.all(answer[path[1:-1]] == PATH)
            assert len(path) > round(110 / 449 * maze_generator.longest_possible_path(size))
    assert len(seen) == 36  # no maze twice, also across splits (size 7 is in both)
    assert len(corners[("train", 5)]) > 1 and len(corners[("train", 7)]) > 1  # random offsets


def test_maze_size_is_seeded_and_checks_its_flags(maze_ood, tmp_path, capsys):
    again = str(tmp_path / "again")
    assert ood.main(["maze-size", "--train-sizes", "5", "7", "--test-sizes", "7", "9", "--train-count", "12",
                     "--test-count", "6", "--output-dir", again, "--workers", "1", "--seed", "3"]) == 0
    for split, set_name in (("train", "all"), ("test", "size9")):
        for field in ("inputs", "labels"):
            assert np.array_equal(load_set(again, split, set_name)[field], load_set(maze_ood, split, set_name)[field])
    one_line_error(capsys, ["maze-size", "--train-sizes", "5", "--test-sizes", "12", "--canvas-size", "10",
                            "--output-dir", str(tmp_path / "x")],
                   "error: maze size 12 must be 3..10 (the generator's largest, and at most --canvas-size 10)")
    one_line_error(capsys, ["maze-size", "--train-sizes", "5", "5", "--test-sizes", "7", "--output-dir", again],
                   "error: --train-sizes: a value is listed twice")
    one_line_error(capsys, ["maze-size", "--train-sizes", "5", "--test-sizes", "7", "--train-count", "2",
                            "--test-count", "2", "--workers", "1", "--output-dir", again],
                   f"error: output folder {again} already exists; pass --overwrite to replace it")


# --- Sudoku datasets -----------------------------------------------------------------------------------------

# Test puzzle i shows 25 + i givens (the first cells in a fixed random order).
GIVENS = [25 + i for i in range(8)]


@pytest.fixture(scope="module")
def sudoku(tmp_path_factory):
    rng = np.random.default_rng(0)
    answers = [solved_grid(i) for i in range(8)]
    questions = []
    for answer, givens in zip(answers, GIVENS):
        shown = np.zeros(81, dtype=bool)
        shown[rng.permutation(81)[:givens]] = True
        questions.append(np.where(shown.reshape(9, 9), answer, 0))
    train = sudoku_arrays([solved_grid(1) * 0] * 4, [solved_grid(1)] * 4, versions=2)
    return write_sudoku(tmp_path_factory.mktemp("sudoku") / "sudoku", train, {"all": sudoku_arrays(questions, answers)})


def test_sudoku_givens_removes_the_rounded_fraction_nested_and_keeps_labels(sudoku, tmp_path):
    out = str(tmp_path / "givens")
    assert ood.main(["sudoku-givens", "--dataset", sudoku, "--fractions", "0", "0.2", "0.5", "0.8",
                     "--output-dir", out]) == 0
    source = load_set(sudoku, "test", "all")
    metadata = read_metadata(out, "test")
    assert metadata.sets == ["drop0", "drop20", "drop50", "drop80"] and metadata.total_groups == 32
    sets = {name: load_set(out, "test", name) for name in metadata.sets}
    # round(fraction x givens), halves up: 25 givens -> 5, 13, 20; 26 -> 5, 13, 21; 32 -> 6, 16, 26.
    expected = {"drop0": [0] * 8, "drop20": [5, 5, 5, 6, 6, 6, 6, 6], "drop50": [13, 13, 14, 14, 15, 15, 16, 16],
                "drop80": [20, 21, 22, 22, 23, 24, 25, 26]}
    given = source["inputs"] > 1
    removed = {}
    for name, arrays in sets.items():
        assert np.array_equal(arrays["labels"], source["labels"])  # labels stay the original solution
        for field in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
            assert np.array_equal(arrays[field], source[field])
        inputs = arrays["inputs"]
        # Only givens are blanked; the givens kept show their original digits.
        assert np.all((inputs == source["inputs"]) | (given & (inputs == 1)))
        removed[name] = given & (inputs == 1)
        assert removed[name].sum(axis=1).tolist() == expected[name]
    assert np.all(removed["drop20"] <= removed["drop50"]) and np.all(removed["drop50"] <= removed["drop80"])
    # The train split and identifiers come over unchanged.
    for field in ("inputs", "labels", "group_indices"):
        assert np.array_equal(load_set(out, "train", "all")[field], load_set(sudoku, "train", "all")[field])
    assert read_metadata(out, "train") == read_metadata(sudoku, "train")
    assert os.path.isfile(os.path.join(out, "identifiers.json"))


def test_sudoku_givens_is_seeded_and_can_keep_fewer_puzzles(sudoku, tmp_path, capsys):
    def build(name, *extra):
        assert ood.main(["sudoku-givens", "--dataset", sudoku, "--fractions", "0.5", "--output-dir",
                         str(tmp_path / name), *extra]) == 0
        return load_set(str(tmp_path / name), "test", "drop50")

    first, same, other = build("a"), build("b"), build("c", "--seed", "1")
    assert np.array_equal(first["inputs"], same["inputs"]) and not np.array_equal(first["inputs"], other["inputs"])
    few = build("few", "--max-puzzles", "3")
    source_labels = [row.tobytes() for row in load_set(sudoku, "test", "all")["labels"]]
    positions = [source_labels.index(row.tobytes()) for row in few["labels"]]
    assert len(few["labels"]) == 3 and positions == sorted(set(positions))  # distinct puzzles, source order
    assert read_metadata(str(tmp_path / "few"), "test").total_groups == 3
    one_line_error(capsys, ["sudoku-givens", "--dataset", sudoku, "--fractions", "1.5", "--output-dir",
                            str(tmp_path / "x")], "error: --fractions: 1.5 is not in [0, 1]")
    one_line_error(capsys, ["sudoku-givens", "--dataset", sudoku, "--fractions", "0.2", "0.2000001",
                            "--output-dir", str(tmp_path / "x")],
                   "error: --fractions 0.2 0.2000001: two fractions give the same set name")


def test_sudoku_commands_refuse_other_datasets(maze_ood, tmp_path, capsys):
    one_line_error(capsys, ["sudoku-givens", "--dataset", maze_ood, "--output-dir", str(tmp_path / "x")],
                   f"error: {maze_ood}/test: not a Sudoku dataset (seq_len 900, vocab_size 6; "
                   f"expected 81 and 11)")
    one_line_error(capsys, ["sudoku-givens", "--dataset", str(tmp_path / "absent"),
                            "--output-dir", str(tmp_path / "x")],
                   f"error: {tmp_path / 'absent'}: dataset folder not found")


# --- subsample -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """ARC-like: 10 groups of 1-3 puzzles of 1-3 examples each, every example distinct."""
    rng = np.random.default_rng(1)
    puzzles_per_group = rng.integers(1, 4, 10)
    examples_per_puzzle = rng.integers(1, 4, puzzles_per_group.sum())
    count = examples_per_puzzle.sum()
    labels = np.arange(count, dtype=np.uint8)[:, None].repeat(4, 1)  # example i is labelled i
    train = dict(inputs=labels + 100, labels=labels,
                 puzzle_identifiers=np.arange(1, len(examples_per_puzzle) + 1, dtype=np.int32),
                 puzzle_indices=np.concatenate([[0], np.cumsum(examples_per_puzzle)]).astype(np.int32),
                 group_indices=np.concatenate([[0], np.cumsum(puzzles_per_group)]).astype(np.int32))
    test = dict(inputs=labels[:5] + 200, labels=labels[:5], puzzle_identifiers=np.arange(1, 6, dtype=np.int32),
                puzzle_indices=np.arange(6, dtype=np.int32), group_indices=np.arange(6, dtype=np.int32))
    path = str(tmp_path_factory.mktemp("grouped") / "grouped")
    with atomic_output_dir(path) as out:
        for split, arrays, groups in (("train", train, 10), ("test", test, 5)):
            metadata = PuzzleDatasetMetadata(seq_len=4, vocab_size=256, pad_id=0, ignore_label_id=None,
                                             blank_identifier_id=0, num_puzzle_identifiers=len(examples_per_puzzle) + 1,
                                             total_groups=groups, mean_puzzle_examples=1.5, sets=["all"])
            save_split(out, split, metadata, {"all": arrays})
        save_identifiers(out, ["<blank>"] + [f"p{i}" for i in range(len(examples_per_puzzle))])
        with open(os.path.join(out, "test_puzzles.json"), "w") as f:
            json.dump({"p0": []}, f)
    return path


def groups_of(arrays):
    """Each group as a tuple of its puzzles, each puzzle (identifier, example labels)."""
    gi, pi = arrays["group_indices"], arrays["puzzle_indices"]
    return [tuple((int(arrays["puzzle_identifiers"][p]), tuple(arrays["labels"][pi[p]:pi[p + 1], 0].tolist()))
                  for p in range(gi[g], gi[g + 1])) for g in range(len(gi) - 1)]


def test_subsample_keeps_whole_groups_nested_and_the_test_split(grouped, tmp_path):
    out = str(tmp_path / "low")
    assert ood.main(["subsample", "--dataset", grouped, "--sizes", "3", "6", "--output-dir", out]) == 0
    assert sorted(os.listdir(out)) == ["n3", "n6"]
    source = groups_of(load_set(grouped, "train", "all"))
    kept = {}
    for size in (3, 6):
        folder = os.path.join(out, f"n{size}")
        arrays = load_set(folder, "train", "all")
        kept[size] = groups_of(arrays)
        assert len(kept[size]) == size and len(set(kept[size])) == size
        # Whole groups, in their source order, with every puzzle and example.
        assert [source.index(group) for group in kept[size]] == sorted(source.index(g) for g in kept[size])
        assert np.array_equal(arrays["inputs"], arrays["labels"] + 100)  # inputs travelled with their labels
        metadata = read_metadata(folder, "train")
        assert metadata.total_groups == size
        assert metadata.mean_puzzle_examples == pytest.approx(len(arrays["inputs"]) / len(arrays["puzzle_identifiers"]))
        for field in ("inputs", "labels", "puzzle_indices"):
            assert np.array_equal(load_set(folder, "test", "all")[field], load_set(grouped, "test", "all")[field])
        assert read_metadata(folder, "test") == read_metadata(grouped, "test")
        assert sorted(f for f in os.listdir(folder) if f.endswith(".json")) == [
            "identifiers.json", "ood_variant.json", "test_puzzles.json"]
    assert set(kept[3]) <= set(kept[6])  # nested


def test_subsample_refuses_more_groups_than_there_are(grouped, tmp_path, capsys):
    one_line_error(capsys, ["subsample", "--dataset", grouped, "--sizes", "3", "11", "--output-dir", str(tmp_path)],
                   f"error: --sizes 11: {grouped}/train has only 10 groups (original puzzles)")
    assert os.listdir(tmp_path) == []


def test_usage_mistakes_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ood.main(["maze-size", "--train-sizes", "5"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: the following arguments are required: --test-sizes, --output-dir"]


def test_the_command_line_prints_one_error_line(tmp_path):
    result = run_builder_script("build_ood_dataset.py", "subsample", "--dataset", str(tmp_path / "absent"),
                                "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'absent'}: dataset folder not found"]
