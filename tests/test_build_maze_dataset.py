"""Maze generator and maze dataset builder: unique shortest paths, determinism, conversion, input errors."""
import collections
import json
import os

import numpy as np
import pytest

import command_line
from dataset import build_maze_dataset, maze_generator
from dataset.common import inverse_dihedral_transform, write_puzzle_csv
from dataset_scripts import run_builder_script

# A 3x3 maze by hand: S down, right, down to G.
TINY_QUESTION = "S# " + "  #" + "#G "
TINY_ANSWER = "S# " + "oo#" + "#G "


def bfs_layers(rows, source):
    """Distance from `source` to every open cell and the exact number of shortest paths to it."""
    side = len(rows)
    distance, paths = {source: 0}, {source: 1}
    queue = collections.deque([source])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if not (0 <= nr < side and 0 <= nc < side) or rows[nr][nc] == "#":
                continue
            if (nr, nc) not in distance:
                distance[(nr, nc)] = distance[(r, c)] + 1
                paths[(nr, nc)] = 0
                queue.append((nr, nc))
            if distance[(nr, nc)] == distance[(r, c)] + 1:
                paths[(nr, nc)] += paths[(r, c)]
    return distance, paths


def check_unique_shortest_path(maze, min_path_length):
    side = int(round(len(maze["question"]) ** 0.5))
    question = [maze["question"][r * side:(r + 1) * side] for r in range(side)]
    answer = [maze["answer"][r * side:(r + 1) * side] for r in range(side)]
    cells = [(r, c) for r in range(side) for c in range(side)]
    start, = [p for p in cells if question[p[0]][p[1]] == "S"]
    goal, = [p for p in cells if question[p[0]][p[1]] == "G"]
    from_start, paths = bfs_layers(question, start)
    from_goal, _ = bfs_layers(question, goal)
    length = from_start[goal] + 1
    assert paths[goal] == 1, "the shortest path must be the only one"
    assert length == maze["rating"] > min_path_length
    # With a unique shortest path, the cells on some shortest path are exactly that path.
    on_shortest = {p for p in from_start if from_start[p] + from_goal.get(p, -10 ** 6) == length - 1}
    marked = {p for p in cells if answer[p[0]][p[1]] == "o"}
    assert marked | {start, goal} == on_shortest and len(on_shortest) == length
    assert [answer[r][c] for r, c in (start, goal)] == ["S", "G"]
    assert all(answer[r][c] == question[r][c] for r, c in cells if (r, c) not in marked)
    return question, from_start


def test_generated_mazes_have_one_long_shortest_path():
    for i in range(4):
        check_unique_shortest_path(maze_generator.generate_maze(15, 30, f"test/{i}"), 30)


def test_full_size_maze_is_hard_connected_and_has_loops():
    maze = maze_generator.generate_maze(30, 110, "test/full")
    question, from_start = check_unique_shortest_path(maze, 110)
    open_cells = [(r, c) for r in range(30) for c in range(30) if question[r][c] != "#"]
    assert len(from_start) == len(open_cells), "every open cell is reachable"
    edges = sum(((r + 1, c) in from_start) + ((r, c + 1) in from_start) for r, c in open_cells)
    assert edges > len(open_cells) - 1, "loops were added to the spanning tree"
    assert 0.35 < maze["question"].count("#") / 900 < 0.55


def test_generation_does_not_depend_on_worker_count():
    one = maze_generator.generate_mazes(6, 11, 20, seed=7, split="train", workers=1)
    two = maze_generator.generate_mazes(6, 11, 20, seed=7, split="train", workers=2)
    assert one == two
    assert len({m["question"] for m in one}) == 6
    assert one != maze_generator.generate_mazes(6, 11, 20, seed=8, split="train", workers=1)


def test_generation_skips_duplicates_and_fails_when_too_few_mazes_exist():
    mazes = maze_generator.generate_mazes(10, 3, 0, seed=0, split="train")
    assert len({m["question"] for m in mazes}) == 10
    with pytest.raises(maze_generator.MazeGenerationError, match="distinct"):
        maze_generator.generate_mazes(500, 3, 0, seed=0, split="train")


def run_cli(argv, capsys):
    """Run the builder like the command line; return (exit status, stderr)."""
    try:
        command_line.run_cli(lambda: build_maze_dataset.main(argv))
        status = 0
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


def write_source(folder, train_rows, test_rows):
    os.makedirs(folder, exist_ok=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        write_puzzle_csv(os.path.join(folder, f"{split}.csv"),
                         [dict(source="test", question=q, answer=a, rating=r) for q, a, r in rows])
    return str(folder)


def small_mazes(count, seed):
    mazes = maze_generator.generate_mazes(count, 9, 10, seed=seed, split="train")
    return [(m["question"], m["answer"], m["rating"]) for m in mazes]


def tokens(text):
    """Token grid of a maze string, by the reference's character map."""
    side = int(round(len(text) ** 0.5))
    return np.array(["# SGo".index(ch) + 1 for ch in text], dtype=np.uint8).reshape(side, side)


def load(folder, split):
    arrays = {f: np.load(os.path.join(folder, split, f"all__{f}.npy"))
              for f in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")}
    with open(os.path.join(folder, split, "dataset.json")) as f:
        return arrays, json.load(f)


def test_defaults_are_the_reference_release_ones():
    args = build_maze_dataset.parse_args([])
    assert (args.source_repo, args.output_dir, args.subsample_size, args.aug) == (
        "sapientinc/maze-30x30-hard-1k", "data/maze-30x30-hard-1k", None, False)


def test_token_mapping_and_metadata(tmp_path, capsys):
    source = write_source(tmp_path / "src", [(TINY_QUESTION, TINY_ANSWER, 4)], [(TINY_QUESTION, TINY_ANSWER, 4)])
    out = str(tmp_path / "out")
    assert run_cli(["--source-csv", source, "--output-dir", out], capsys)[0] == 0
    arrays, metadata = load(out, "test")
    assert arrays["inputs"].tolist() == [[3, 1, 2, 2, 2, 1, 1, 4, 2]]
    assert arrays["labels"].tolist() == [[3, 1, 2, 5, 5, 1, 1, 4, 2]]
    assert metadata == dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=9,
                            num_puzzle_identifiers=1, total_groups=1, mean_puzzle_examples=1.0, sets=["all"])
    with open(os.path.join(out, "identifiers.json")) as f:
        assert json.load(f) == ["<blank>"]


def test_build_from_csv_with_and_without_aug(tmp_path, capsys):
    train, test = small_mazes(3, seed=1), small_mazes(2, seed=2)
    source = write_source(tmp_path / "src", train, test)
    plain, augmented = str(tmp_path / "plain"), str(tmp_path / "aug")
    assert run_cli(["--source-csv", source, "--output-dir", plain], capsys)[0] == 0
    status, _ = run_cli(["--source-csv", source, "--output-dir", augmented, "--aug"], capsys)
    assert status == 0

    arrays, metadata = load(plain, "train")
    assert arrays["inputs"].shape == (3, 81) and metadata["total_groups"] == 3
    assert arrays["group_indices"].tolist() == [0, 1, 2, 3]

    arrays, metadata = load(augmented, "train")
    assert arrays["inputs"].shape == (24, 81) and metadata["total_groups"] == 3
    assert arrays["group_indices"].tolist() == [0, 8, 16, 24]
    assert arrays["puzzle_indices"].tolist() == list(range(25))
    assert arrays["puzzle_identifiers"].tolist() == [0] * 24
    for maze, (question, answer, _) in enumerate(train):
        versions = set()
        for transform in range(8):
            row = maze * 8 + transform
            grid = arrays["inputs"][row].reshape(9, 9)
            versions.add(grid.tobytes())
            assert np.array_equal(inverse_dihedral_transform(grid, transform), tokens(question))
            assert np.array_equal(inverse_dihedral_transform(arrays["labels"][row].reshape(9, 9), transform),
                                  tokens(answer))
        assert len(versions) == 8

    test_arrays, test_metadata = load(augmented, "test")
    assert test_arrays["inputs"].shape == (2, 81) and test_metadata["total_groups"] == 2, "test is never augmented"


def test_subsample_draws_train_mazes_without_replacement(tmp_path, capsys):
    train = small_mazes(5, seed=3)
    source = write_source(tmp_path / "src", train, train[:1])
    out = str(tmp_path / "out")
    argv = ["--source-csv", source, "--output-dir", out, "--subsample-size", "2", "--seed", "5"]
    assert run_cli(argv, capsys)[0] == 0
    np.random.seed(5)
    expected = np.random.choice(5, size=2, replace=False)
    inputs = load(out, "train")[0]["inputs"]
    for row, index in zip(inputs, expected):
        assert np.array_equal(row, tokens(train[index][0]).reshape(-1))
    assert load(out, "test")[0]["inputs"].shape == (1, 81)


def test_generated_build_runs_as_script_and_rebuilds_from_its_csv(tmp_path):
    out, rebuilt = str(tmp_path / "gen"), str(tmp_path / "rebuilt")
    result = run_builder_script("build_maze_dataset.py", "--generate-train", "3", "--generate-test", "2",
                                "--grid-size", "11", "--min-path-length", "20", "--workers", "2", "--output-dir", out)
    assert result.returncode == 0, result.stderr
    assert "train: 3 examples, 3 puzzles, 3 groups" in result.stdout and out in result.stdout
    with open(os.path.join(out, "source_csv", "train.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "source,question,answer,rating" and all(line.startswith("generated,") for line in lines[1:])

    build_maze_dataset.main(["--source-csv", os.path.join(out, "source_csv"), "--output-dir", rebuilt])
    for split in ("train", "test"):
        for field, array in load(out, split)[0].items():
            assert np.array_equal(array, load(rebuilt, split)[0][field])


def bad_rows(tmp_path, question, answer, split="train"):
    good = [(TINY_QUESTION, TINY_ANSWER, 4)]
    rows = {"train": good, "test": good, split: good + [(question, answer, 4)]}
    return write_source(tmp_path / "src", rows["train"], rows["test"])


@pytest.mark.parametrize("question, answer, split, expected", [
    ("S# " + "  #" + "#G", "S# " + "oo#" + "#G", "train", "train.csv, row 3: 8 characters is not a square"),
    ("S# " + "  #" + "#Gx", "S# " + "oo#" + "#Gx", "test", "test.csv, row 3: question has character 'x'"),
    ("S# " + " S#" + "#G ", "S# " + "oS#" + "#G ", "train", "train.csv, row 3: question has 2 'S' cells"),
    ("S# " + "  #" + "# G", "S# " + "  #" + "#G ", "train", "train.csv, row 3: answer has 'G' at cell (2, 1)"),
    ("S# " + "  #" + "#G ", "So " + "oo#" + "#G ", "test", "test.csv, row 3: answer has 'o' at cell (0, 1)"),
    ("S" + " " * 14 + "G", "S" + " " * 14 + "G", "train", "train.csv, row 3: 4x4 maze, but row 2 is 3x3"),
])
def test_malformed_csv_is_a_one_line_error_and_leaves_no_folder(tmp_path, capsys, question, answer, split,
                                                                 expected):
    source = bad_rows(tmp_path, question, answer, split)
    out = tmp_path / "out"
    status, err = run_cli(["--source-csv", source, "--output-dir", str(out)], capsys)
    assert status == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_missing_split_file_is_an_error(tmp_path, capsys):
    source = write_source(tmp_path / "src", [(TINY_QUESTION, TINY_ANSWER, 4)], [])
    os.remove(os.path.join(source, "test.csv"))
    status, err = run_cli(["--source-csv", source, "--output-dir", str(tmp_path / "out")], capsys)
    assert status == 2 and "test.csv: file not found" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--grid-size", "2"], "--grid-size must be 3..30, got 2"),
    (["--grid-size", "31"], "--grid-size must be 3..30, got 31"),
    (["--grid-size", "3", "--min-path-length", "7"], "--min-path-length must be 0..6"),
    (["--grid-size", "9", "--min-path-length", "47"], "lower the minimum path length"),
    (["--source-csv", "somewhere"], "--source-csv and --generate-train/--generate-test are alternatives"),
    (["--generate-test", "0"], "--generate-test must be at least 1"),
])
def test_impossible_generation_settings_are_errors(tmp_path, capsys, flags, expected):
    argv = ["--generate-train", "2", "--generate-test", "2", "--workers", "1",
            "--output-dir", str(tmp_path / "out")]
    status, err = run_cli(argv + flags, capsys)
    assert status == 2 and expected in err.splitlines()[-1] and err.splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out").exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_generator_flags_need_generation(tmp_path, capsys):
    status, err = run_cli(["--grid-size", "11", "--output-dir", str(tmp_path / "out")], capsys)
    assert status == 2 and "--grid-size only applies with --generate-train" in err


def test_offline_hub_download_suggests_other_sources(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable\nsecond line")

    monkeypatch.setattr(build_maze_dataset, "hf_hub_download", offline)
    status, err = run_cli(["--output-dir", str(tmp_path / "out"), "--source-repo", "someone/mazes"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "someone/mazes" in err and "--source-csv" in err and "--generate-train" in err
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    source = write_source(tmp_path / "src", [(TINY_QUESTION, TINY_ANSWER, 4)], [(TINY_QUESTION, TINY_ANSWER, 4)])
    out = str(tmp_path / "out")
    assert run_cli(["--source-csv", source, "--output-dir", out], capsys)[0] == 0
    status, err = run_cli(["--source-csv", source, "--output-dir", out], capsys)
    assert status == 2 and "--overwrite" in err
    assert run_cli(["--source-csv", source, "--output-dir", out, "--overwrite"], capsys)[0] == 0
