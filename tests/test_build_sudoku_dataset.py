"""Sudoku builder and generator: shuffles, end-to-end builds, generator quality checked by an independent
solver, determinism, and one-line errors that leave no output folder."""
import csv
import json
import os

import huggingface_hub
import numpy as np
import pytest

from command_line import run_cli
from dataset import build_sudoku_dataset as builder
from dataset import sudoku_generator as generator
from dataset_scripts import run_builder_script

# Hand-checked rating 2. Every blank starts with two candidates; the first of them, (0,0) with {3, 9},
# tries 3: row 0 then leaves (0,4) and (0,7) only 8, so (0,4) = 8 and (0,7) has no candidate. Both
# assignments are taken back, 9 goes in, and the remaining 15 blanks follow one candidate at a time.
HAND_PUZZLE = ".412.57.67526.914..86417.5219.752.6457.16429.624893571.6.5214.7415376.2.237948615"
HAND_SOLUTION = "941235786752689143386417952198752364573164298624893571869521437415376829237948615"
# Hand-checked rating 0: a solved grid with its main diagonal blank, each blank the only one of its row.
SOLVED_GRID = "".join(str((r * 3 + r // 3 + c) % 9 + 1) for r in range(9) for c in range(9))
DIAGONAL_PUZZLE = "".join("." if i % 10 == 0 else ch for i, ch in enumerate(SOLVED_GRID))
# A generated minimal puzzle (rating 110), blanks written as '0' to cover that spelling.
MINIMAL_PUZZLE = "4..9.1........7....9.58...7....1.2.9..1...6....98.3..5......7.2.....8.51....6584.".replace(".", "0")
MINIMAL_SOLUTION = "478931526152647398396582417735416289821759634649823175583194762264378951917265843"

TRAIN_ROWS = [("hand", HAND_PUZZLE, HAND_SOLUTION, 2), ("diag", DIAGONAL_PUZZLE, SOLVED_GRID, 0),
              ("min", MINIMAL_PUZZLE, MINIMAL_SOLUTION, 110)]
TEST_ROWS = [("min", MINIMAL_PUZZLE, MINIMAL_SOLUTION, 110), ("hand", HAND_PUZZLE, HAND_SOLUTION, 2)]


# ---- independent reference solver (plain Python, sets of used digits) ----

def peers_used(board, cell):
    r, c = divmod(cell, 9)
    box = [(r // 3 * 3 + i) * 9 + c // 3 * 3 + j for i in range(3) for j in range(3)]
    return {board[r * 9 + j] for j in range(9)} | {board[i * 9 + c] for i in range(9)} | {board[k] for k in box}


def candidates(board, cell):
    used = peers_used(board, cell)
    return [d for d in range(1, 10) if d not in used]


def solutions(board, limit=2):
    """Up to `limit` solutions of a board (list of 81 ints), by trying every digit of the tightest cell."""
    board = list(board)
    found = []

    def walk():
        blanks = [c for c in range(81) if board[c] == 0]
        if not blanks:
            found.append(list(board))
            return
        cell = min(blanks, key=lambda c: len(candidates(board, c)))
        for d in candidates(board, cell):
            board[cell] = d
            walk()
            board[cell] = 0
            if len(found) >= limit:
                return

    walk()
    return found


def documented_search(board):
    """The rating search as documented: fewest candidates, lowest index on ties, digits increasing.
    Returns (assignments made, assignments taken back) up to the first solution."""
    board = list(board)
    made = taken_back = 0

    def walk():
        nonlocal made, taken_back
        blanks = [c for c in range(81) if board[c] == 0]
        if not blanks:
            return True
        cell = min(blanks, key=lambda c: (len(candidates(board, c)), c))
        for d in candidates(board, cell):
            board[cell] = d
            made += 1
            if walk():
                return True
            board[cell] = 0
            taken_back += 1
        return False

    assert walk()
    return made, taken_back


def cells(text):
    return [0 if ch in ".0" else int(ch) for ch in text]


def is_solved_grid(grid):
    grid = np.asarray(grid).reshape(9, 9)
    boxes = grid.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    return all(sorted(unit) == list(range(1, 10)) for units in (grid, grid.T, boxes) for unit in units)


# ---- helpers ----

def write_csvs(folder, train_rows=TRAIN_ROWS, test_rows=TEST_ROWS):
    os.makedirs(folder, exist_ok=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        if rows is None:
            continue
        with open(os.path.join(folder, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["source", "question", "answer", "rating"])
            writer.writerows(rows)
    return str(folder)


def load(out_dir, split):
    arrays = {field: np.load(os.path.join(out_dir, split, f"all__{field}.npy"))
              for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}
    with open(os.path.join(out_dir, split, "dataset.json")) as f:
        return arrays, json.load(f)


def tokens(text):
    return np.array(cells(text)) + 1


def expect_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: builder.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, err
    return err


def assert_nothing_written(tmp_path, out_dir, keep=("src",)):
    assert not os.path.exists(out_dir)
    assert sorted(os.listdir(tmp_path)) == sorted(k for k in keep if os.path.exists(tmp_path / k))


# ---- shuffles ----

def reference_shuffle(board, solution):
    """The shuffle as the specification words it, drawing numpy's global RNG in the same order."""
    digit_map = np.pad(np.random.permutation(np.arange(1, 10)), (1, 0))
    transpose = np.random.rand() < 0.5
    row_perm = [band * 3 + row for band in np.random.permutation(3) for row in np.random.permutation(3)]
    col_perm = [stack * 3 + col for stack in np.random.permutation(3) for col in np.random.permutation(3)]
    mapping = [row_perm[i // 9] * 9 + col_perm[i % 9] for i in range(81)]
    return tuple(digit_map[(x.T if transpose else x).flatten()[mapping]].reshape(9, 9) for x in (board, solution))


def test_shuffle_keeps_puzzle_valid_and_matches_reference_order():
    board = np.array(cells(MINIMAL_PUZZLE), dtype=np.uint8).reshape(9, 9)
    solution = np.array(cells(MINIMAL_SOLUTION), dtype=np.uint8).reshape(9, 9)
    seen = set()
    for seed in range(10):
        np.random.seed(seed)
        new_board, new_solution = builder.shuffle_sudoku(board, solution)
        assert is_solved_grid(new_solution)
        clues = new_board != 0
        assert clues.sum() == (board != 0).sum()
        assert np.array_equal(new_board[clues], new_solution[clues])
        if seed < 3:  # the independent solver is slow; a few suffice
            assert solutions(new_board.reshape(-1).tolist()) == [new_solution.reshape(-1).tolist()]
        seen.add(new_board.tobytes())

        np.random.seed(seed)
        expected_board, expected_solution = reference_shuffle(board, solution)
        assert np.array_equal(new_board, expected_board) and np.array_equal(new_solution, expected_solution)
    assert len(seen) == 10


# ---- end-to-end builds from CSV ----

def test_defaults_are_the_reference_release_ones():
    args = builder.parse_args([])
    assert (args.source_repo, args.output_dir, args.subsample_size, args.min_difficulty, args.num_aug) == (
        "sapientinc/sudoku-extreme", "data/sudoku-extreme-full", None, None, 0)


def test_default_build_keeps_every_puzzle_unaugmented(tmp_path):
    src = write_csvs(tmp_path / "src")
    out = str(tmp_path / "out")
    builder.main(["--source-csv", src, "--output-dir", out])
    train, train_meta = load(out, "train")
    assert np.array_equal(train["inputs"], [tokens(q) for _, q, _, _ in TRAIN_ROWS])
    assert np.array_equal(train["group_indices"], [0, 1, 2, 3]) and train_meta["total_groups"] == 3


def test_build_from_csv_arrays_metadata_and_groups(tmp_path, capsys):
    src = write_csvs(tmp_path / "src")
    out = str(tmp_path / "out")
    builder.main(["--source-csv", src, "--output-dir", out, "--num-aug", "2", "--subsample-size", "0"])
    assert "train: 9 examples, 9 puzzles, 3 groups; test: 2 examples, 2 puzzles, 2 groups" in capsys.readouterr().out

    train, train_meta = load(out, "train")
    assert train["inputs"].shape == train["labels"].shape == (9, 81)
    assert np.array_equal(train["puzzle_indices"], np.arange(10))
    assert np.array_equal(train["group_indices"], [0, 3, 6, 9])
    assert np.array_equal(train["puzzle_identifiers"], np.zeros(9))
    for group, (_, question, answer, _) in enumerate(TRAIN_ROWS):
        first = 3 * group
        assert np.array_equal(train["inputs"][first], tokens(question))  # the original comes first
        assert np.array_equal(train["labels"][first], tokens(answer))
        for i in range(first + 1, first + 3):  # then its shuffles
            assert not np.array_equal(train["inputs"][i], train["inputs"][first])
            assert (train["inputs"][i] == 1).sum() == (train["inputs"][first] == 1).sum()
    for inp, label in zip(train["inputs"], train["labels"]):
        assert is_solved_grid(label - 1)
        assert np.all((inp == 1) | (inp == label))
    assert train_meta == dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=81,
                              num_puzzle_identifiers=1, total_groups=3, mean_puzzle_examples=1.0, sets=["all"])

    test, test_meta = load(out, "test")  # never augmented
    assert np.array_equal(test["inputs"], [tokens(q) for _, q, _, _ in TEST_ROWS])
    assert np.array_equal(test["labels"], [tokens(a) for _, _, a, _ in TEST_ROWS])
    assert np.array_equal(test["group_indices"], [0, 1, 2]) and np.array_equal(test["puzzle_indices"], [0, 1, 2])
    assert test_meta["total_groups"] == 2
    with open(os.path.join(out, "identifiers.json")) as f:
        assert json.load(f) == ["<blank>"]


def test_subsample_seed_and_min_difficulty(tmp_path):
    src = write_csvs(tmp_path / "src")
    out_a, out_b, out_c = (str(tmp_path / name) for name in ("a", "b", "c"))
    builder.main(["--source-csv", src, "--output-dir", out_a, "--num-aug", "1", "--subsample-size", "2"])
    builder.main(["--source-csv", src, "--output-dir", out_b, "--num-aug", "1", "--subsample-size", "2"])
    train_a, _ = load(out_a, "train")
    train_b, _ = load(out_b, "train")
    for field in train_a:
        assert np.array_equal(train_a[field], train_b[field])  # same seed, same dataset
    np.random.seed(42)
    chosen = np.random.choice(3, size=2, replace=False)
    assert np.array_equal(train_a["inputs"][[0, 2]], [tokens(TRAIN_ROWS[i][1]) for i in chosen])
    assert len(load(out_a, "test")[0]["inputs"]) == 2  # the test split is never subsampled

    builder.main(["--source-csv", src, "--output-dir", out_c, "--num-aug", "0", "--min-difficulty", "100"])
    train_c, meta_c = load(out_c, "train")
    assert np.array_equal(train_c["inputs"], [tokens(MINIMAL_PUZZLE)]) and meta_c["total_groups"] == 1
    assert np.array_equal(load(out_c, "test")[0]["inputs"], [tokens(MINIMAL_PUZZLE)])


# ---- malformed input ----

def bad_rows(question=HAND_PUZZLE, answer=HAND_SOLUTION):
    return TRAIN_ROWS[:2] + [("bad", question, answer, 5)]


@pytest.mark.parametrize("rows, fragments", [
    (bad_rows(question=HAND_PUZZLE[:80]), ["train.csv, row 4", "80 characters"]),
    (bad_rows(question=HAND_PUZZLE[:40] + "x" + HAND_PUZZLE[41:]), ["train.csv, row 4", "unknown character 'x'"]),
    (bad_rows(answer=HAND_SOLUTION[:80] + "1"), ["train.csv, row 4", "not a solved Sudoku grid"]),
    (bad_rows(answer=HAND_PUZZLE.replace(".", "0")), ["train.csv, row 4", "not a solved Sudoku grid"]),
    (bad_rows(question="2" + HAND_PUZZLE[1:]), ["train.csv, row 4", "disagrees with a clue"]),
], ids=["row-length", "unknown-char", "broken-answer", "blank-answer", "clue-mismatch"])
def test_malformed_rows_are_one_line_errors(tmp_path, capsys, rows, fragments):
    src = write_csvs(tmp_path / "src", train_rows=rows)
    out = str(tmp_path / "out")
    expect_error(capsys, ["--source-csv", src, "--output-dir", out], *fragments)
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("encoding, fragment", [
    ("utf-16", "holds UTF-16 text; save it as UTF-8"),
    ("latin-1", "holds bytes that are not UTF-8; save it as UTF-8"),
    ("utf-8-sig", None),  # a spreadsheet's UTF-8 with a byte-order mark builds as plain UTF-8
])
def test_csv_bytes_in_other_encodings(tmp_path, capsys, encoding, fragment):
    src = write_csvs(tmp_path / "src", train_rows=[("caf\xe9", *TRAIN_ROWS[0][1:]), *TRAIN_ROWS[1:]])
    train = os.path.join(src, "train.csv")
    with open(train, encoding="utf-8", newline="") as f:
        text = f.read()
    with open(train, "w", encoding=encoding, newline="") as f:
        f.write(text)
    out = str(tmp_path / "out")
    if fragment is None:
        builder.main(["--source-csv", src, "--output-dir", out])
        assert os.path.isdir(out)
        return
    expect_error(capsys, ["--source-csv", src, "--output-dir", out], f"{train}: {fragment}")
    assert_nothing_written(tmp_path, out)


def test_missing_source_folder_and_split_file(tmp_path, capsys):
    out = str(tmp_path / "out")
    expect_error(capsys, ["--source-csv", str(tmp_path / "nowhere"), "--output-dir", out], "--source-csv", "nowhere")
    src = write_csvs(tmp_path / "src", test_rows=None)
    expect_error(capsys, ["--source-csv", src, "--output-dir", out], "test.csv", "not found")
    assert_nothing_written(tmp_path, out)


def test_script_reports_errors_in_one_line(tmp_path):
    out = str(tmp_path / "out")
    result = run_builder_script("build_sudoku_dataset.py", "--source-csv", str(tmp_path / "nowhere"),
                                "--output-dir", out)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --source-csv {tmp_path / 'nowhere'}: folder not found"]
    assert not os.path.exists(out)


def test_offline_hub_error_points_to_offline_sources(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    out = str(tmp_path / "out")
    expect_error(capsys, ["--output-dir", out, "--source-repo", "someone/sudoku"], "someone/sudoku",
                 "--source-csv", "--generate-train")
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("argv, fragment", [
    (["--generate-train", "2"], "--generate-test"),
    (["--generate-train", "2", "--generate-test", "2", "--source-csv", "x"], "pick one"),
    (["--generate-train", "0", "--generate-test", "2"], "--generate-train must be at least 1"),
    (["--num-aug", "-1"], "--num-aug"),
])
def test_bad_flags(tmp_path, capsys, argv, fragment):
    out = str(tmp_path / "out")
    expect_error(capsys, argv + ["--output-dir", out], fragment)
    assert_nothing_written(tmp_path, out)


# ---- generator ----

def test_search_ratings_on_hand_checked_puzzles():
    for puzzle, solution, rating in ((HAND_PUZZLE, HAND_SOLUTION, 2), (DIAGONAL_PUZZLE, SOLVED_GRID, 0)):
        board = np.array(cells(puzzle), dtype=np.int8)
        assert generator.rate(board) == rating
        assert documented_search(cells(puzzle)) == (puzzle.count(".") + rating, rating)
        assert generator.count_solutions(board) == 1
        assert "".join(map(str, generator.search(board, generator.INCREASING_ORDER, 1)[2])) == solution
    two_solutions = np.array(cells(SOLVED_GRID), dtype=np.int8)
    two_solutions[(two_solutions == 1) | (two_solutions == 2)] = 0  # swapping 1 and 2 gives a second grid
    assert generator.count_solutions(two_solutions) == 2
    clash = np.array(cells(DIAGONAL_PUZZLE), dtype=np.int8)
    clash[0] = 2  # 2 already sits in row 0
    assert generator.count_solutions(clash) == 0


@pytest.mark.slow
def test_generated_puzzles_are_unique_minimal_and_rated():
    rows = generator.generate_puzzles(3, seed=1, stream=0, min_difficulty=1, workers=1, max_tries=300)
    for row in rows:
        puzzle, answer = cells(row["question"]), cells(row["answer"])
        assert row["source"] == "generated" and row["rating"] >= 1
        assert solutions(puzzle) == [answer]
        made, taken_back = documented_search(puzzle)
        assert row["rating"] == taken_back and made == puzzle.count(0) + taken_back  # rating <=> nodes explored
    puzzle = cells(rows[0]["question"])
    for cell in [c for c in range(81) if puzzle[c]]:  # minimal: every clue is needed
        fewer = list(puzzle)
        fewer[cell] = 0
        assert len(solutions(fewer)) == 2


def test_generation_independent_of_worker_count():
    kwargs = dict(seed=5, stream=1, min_difficulty=3, max_tries=300)
    one = generator.generate_puzzles(5, workers=1, **kwargs)
    two = generator.generate_puzzles(5, workers=2, **kwargs)
    assert one == two
    assert all(row["rating"] >= 3 for row in one)
    assert one != generator.generate_puzzles(5, workers=1, **{**kwargs, "stream": 0})


def test_build_from_generator_then_rebuild_from_its_csv(tmp_path, capsys):
    out, rebuilt = str(tmp_path / "gen"), str(tmp_path / "rebuilt")
    settings = ["--num-aug", "2", "--min-difficulty", "1", "--seed", "7"]
    builder.main(["--generate-train", "3", "--generate-test", "2", "--workers", "2", "--output-dir", out] + settings)
    for split, count in (("train", 3), ("test", 2)):
        with open(os.path.join(out, "source_csv", f"{split}.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == count and all(r["source"] == "generated" and int(r["rating"]) >= 1 for r in rows)
    builder.main(["--source-csv", os.path.join(out, "source_csv"), "--output-dir", rebuilt] + settings)
    for split in ("train", "test"):
        generated, generated_meta = load(out, split)
        again, again_meta = load(rebuilt, split)
        assert generated_meta == again_meta
        for field in generated:
            assert np.array_equal(generated[field], again[field])
    assert load(out, "train")[1]["total_groups"] == 3 and len(load(out, "train")[0]["inputs"]) == 9


def test_unreachable_difficulty_is_an_error(tmp_path, capsys):
    out = str(tmp_path / "out")
    expect_error(capsys, ["--generate-train", "2", "--generate-test", "1", "--min-difficulty", "1000000",
                          "--max-tries-per-puzzle", "4", "--workers", "1", "--output-dir", out],
                 "--min-difficulty 1000000", "0 of 2 train puzzles", "8 tries")
    assert_nothing_written(tmp_path, out)
