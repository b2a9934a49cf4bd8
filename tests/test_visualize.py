"""The HTML puzzle viewer (puzzle_tools/visualize.py): the data embedded in the page for Sudoku, maze and
ARC datasets with and without predictions, its sampling limits, and the page as Chromium renders it."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from puzzle_tools import visualize
from tool_datasets import (DEMOS, EVALUATION_PUZZLES, MAZE, build_arc, grid, identifier_names, load_set,
                           save_label_predictions, sudoku_examples, write_maze, write_sudoku, write_token_dataset)

# Sudoku predictions: example -> {flat cell: predicted token}; examples 4 and 5 get none.
SUDOKU_PREDICTED = {0: {3: 2, 40: 2, 80: 2}, 1: {}, 2: {10: 2}, 3: {}}
SUDOKU_WRONG = {0: [[0, 3], [4, 4], [8, 8]], 1: [], 2: [[1, 1]], 3: []}
WRONG_B2_CELL = (0, 1)  # a wrong colour (9, token 11) in b2's original version's prediction


def page_data(html):
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def write_page(capsys, *argv):
    """Run the viewer; returns (exit code, the page's HTML or None, stderr lines)."""
    out = argv[argv.index("--out") + 1]
    code = visualize.main(list(argv))
    captured = capsys.readouterr()
    html = open(out, encoding="utf-8").read() if code == 0 else None
    if code == 0:
        assert captured.out.strip() == json.dumps(os.path.abspath(out))
    return code, html, captured.err.strip().splitlines()


@pytest.fixture(scope="module")
def sudoku_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("sudoku_page")
    dataset_dir = write_sudoku(root)
    # A wrong token that differs from the label in every planted cell: the label's token + 1, wrapped.
    labels = load_set(dataset_dir, "test")["labels"]
    predicted = {example: {cell: 2 + (labels[example, cell] - 1) % 9 for cell in cells}
                 for example, cells in SUDOKU_PREDICTED.items()}
    save_label_predictions(str(root / "preds"), dataset_dir, predicted)
    out = str(root / "report.html")
    assert visualize.main(["--dataset", dataset_dir, "--predictions", str(root / "preds"), "--out", out]) == 0
    return dataset_dir, out


@pytest.fixture(scope="module")
def arc_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc_page")
    dataset_dir = build_arc(root)
    test = load_set(dataset_dir, "test")
    examples = np.repeat(np.arange(len(test["puzzle_identifiers"])), np.diff(test["puzzle_indices"]))
    names = identifier_names(dataset_dir)
    b2_original = int(np.flatnonzero(np.array(names)[test["puzzle_identifiers"][examples]] == "b2")[0])
    predicted = {example: {} for example in range(len(examples))}
    predicted[b2_original] = {WRONG_B2_CELL[0] * 30 + WRONG_B2_CELL[1]: 11}
    save_label_predictions(str(root / "preds"), dataset_dir, predicted)
    out = str(root / "report.html")
    assert visualize.main(["--dataset", dataset_dir, "--predictions", str(root / "preds"), "--out", out]) == 0
    return dataset_dir, out


@pytest.fixture(scope="module")
def arc_page_with_empty_crops(tmp_path_factory):
    """An ARC page whose a1 predictions crop to empty grids in 3 of its 4 versions (pad at the top-left
    cell), so the empty crop wins a1's vote; its fourth version is right."""
    root = tmp_path_factory.mktemp("arc_empty_page")
    dataset_dir = build_arc(root)
    test = load_set(dataset_dir, "test")
    names = np.array(identifier_names(dataset_dir))
    example_names = names[np.repeat(test["puzzle_identifiers"], np.diff(test["puzzle_indices"]))]
    a1_examples = [e for e, name in enumerate(example_names) if name.split("_")[0] == "a1"]
    predicted = {example: {} for example in range(len(example_names))}
    predicted.update({example: {0: 0} for example in a1_examples[:3]})
    save_label_predictions(str(root / "preds"), dataset_dir, predicted)
    out = str(root / "report.html")
    assert visualize.main(["--dataset", dataset_dir, "--predictions", str(root / "preds"), "--out", out]) == 0
    return dataset_dir, out


def test_empty_crops_on_the_arc_page(arc_page_with_empty_crops):
    _, out = arc_page_with_empty_crops
    a1 = {p["name"]: p for p in page_data(open(out, encoding="utf-8").read())["sets"]["all"]["puzzles"]}["a1"]
    (answers,) = a1["answers"]
    assert [(a["grid"], a["votes"], a["exact"]) for a in answers] == [
        ([], 3, False), (grid(EVALUATION_PUZZLES["a1"][0][1]).tolist(), 1, True)]
    assert a1["solved"] is True  # pass@2: the right answer is the second candidate
    original = a1["examples"][0]
    assert original["identifier"] == "a1" and original["prediction"] == [] and original["wrong"] == []
    assert original["exact"] is False


def test_sudoku_page_data(sudoku_page):
    dataset_dir, out = sudoku_page
    html = open(out, encoding="utf-8").read()
    report = page_data(html)
    assert report["task"] == {"kind": "sudoku", "rows": 9, "cols": 9} and report["split"] == "test"
    assert report["predictions"]["rows"] == 4
    puzzles = report["sets"]["all"]["puzzles"]
    assert [p["name"] for p in puzzles] == [f"puzzle {i}" for i in range(6)]
    assert [p["solved"] for p in puzzles] == [False, True, False, True, None, None]
    inputs, labels = sudoku_examples(6, seed=0)
    for index, puzzle in enumerate(puzzles):
        (example,) = puzzle["examples"]
        assert example["input"] == (inputs[index] - 1).reshape(9, 9).tolist()  # 0 blank, 1..9 digits
        assert example["label"] == (labels[index] - 1).reshape(9, 9).tolist()
        if index in SUDOKU_WRONG:
            assert example["wrong"] == SUDOKU_WRONG[index] and example["halt_probability"] == 0.5
            prediction = np.array(example["prediction"])
            assert (prediction != np.array(example["label"])).sum() == len(SUDOKU_WRONG[index])
        else:
            assert "prediction" not in example
    # Self-contained: nothing is loaded from elsewhere.
    assert not re.search(r"https?:|<link|src=|@import|url\(", html)


def test_maze_page_data_without_predictions(tmp_path, capsys):
    dataset_dir = write_maze(tmp_path)
    code, html, err = write_page(capsys, "--dataset", dataset_dir, "--out", str(tmp_path / "maze.html"))
    assert code == 0
    report = page_data(html)
    assert report["task"] == {"kind": "maze", "rows": 7, "cols": 7} and report["predictions"] is None
    first = report["sets"]["all"]["puzzles"][0]["examples"][0]
    assert ["".join("# SGo"[v] for v in row) for row in first["input"]] == MAZE
    assert first["label"][1] == [0, 2, 4, 4, 4, 4, 0]  # the path "#Soooo#"
    assert "prediction" not in first and report["sets"]["all"]["puzzles"][0]["solved"] is None


def test_arc_page_groups_versions_and_shows_votes(arc_page):
    _, out = arc_page
    report = page_data(open(out, encoding="utf-8").read())
    assert report["task"]["kind"] == "arc"
    puzzles = {p["name"]: p for p in report["sets"]["all"]["puzzles"]}
    assert sorted(puzzles) == sorted(EVALUATION_PUZZLES)
    b2 = puzzles["b2"]
    assert b2["versions"] == 4 and len(b2["examples"]) == 4
    assert b2["demonstrations"] == [{"input": grid(i).tolist(), "output": grid(o).tolist()} for i, o in DEMOS]
    assert b2["tests"] == [{"input": grid(i).tolist(), "output": grid(o).tolist()} for i, o in EVALUATION_PUZZLES["b2"]]
    original = b2["examples"][0]
    assert original["identifier"] == "b2"  # the original version comes first, in the original frame
    assert original["input"] == grid(EVALUATION_PUZZLES["b2"][0][0]).tolist()
    assert original["wrong"] == [list(WRONG_B2_CELL)] and original["exact"] is False
    assert all(example["exact"] for example in b2["examples"][1:])
    # Votes: 3 versions right, the original's wrong answer second; b2 still counts as solved (2 attempts).
    (answers,) = b2["answers"]
    assert [(a["votes"], a["exact"], a["wrong"]) for a in answers] == [(3, True, []), (1, False, [list(WRONG_B2_CELL)])]
    assert b2["solved"] is True
    assert puzzles["c3"]["answers"][1][0]["grid"] == grid(EVALUATION_PUZZLES["c3"][1][1]).tolist()


def test_sampling_is_seeded_and_bounded(tmp_path, capsys):
    inputs, labels = sudoku_examples(40, seed=1)
    dataset_dir = write_token_dataset(tmp_path, "sudoku40", inputs, labels, vocab_size=11)
    pages = {}
    for seed in (3, 3, 4):
        out = str(tmp_path / f"seed{seed}.html")
        code, html, _ = write_page(capsys, "--dataset", dataset_dir, "--max-puzzles", "5", "--seed", str(seed),
                                   "--out", out)
        assert code == 0
        names = [p["name"] for p in page_data(html)["sets"]["all"]["puzzles"]]
        assert len(names) == 5 and names == sorted(names, key=lambda n: int(n.split()[1]))
        pages.setdefault(seed, []).append(names)
    assert pages[3][0] == pages[3][1] and pages[3][0] != pages[4][0]


def test_arc_examples_limit(tmp_path, capsys):
    dataset_dir = build_arc(tmp_path)
    capsys.readouterr()  # the builder's summary
    code, html, _ = write_page(capsys, "--dataset", dataset_dir, "--max-puzzles", "2", "--max-examples", "2",
                               "--out", str(tmp_path / "arc.html"))
    assert code == 0
    puzzles = page_data(html)["sets"]["all"]["puzzles"]
    assert len(puzzles) == 2
    for puzzle in puzzles:
        assert len(puzzle["examples"]) == 2 and puzzle["examples"][0]["identifier"] == puzzle["name"]
        assert "answers" not in puzzle and puzzle["solved"] is None


def test_bad_input_is_one_error_line(tmp_path, capsys):
    code, _, err = write_page(capsys, "--dataset", str(tmp_path / "absent"), "--out", str(tmp_path / "x.html"))
    assert code == 2 and err == [f"error: {tmp_path / 'absent'}: dataset folder not found"]
    dataset_dir = write_maze(tmp_path)
    code, _, err = write_page(capsys, "--dataset", dataset_dir, "--predictions", str(tmp_path / "none"),
                              "--out", str(tmp_path / "x.html"))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'none'}: no prediction files")
    assert not os.path.exists(tmp_path / "x.html")


def test_predictions_of_another_dataset_are_refused_by_every_tool(tmp_path, capsys):
    from puzzle_tools import arc_vote, show
    sudoku, maze = write_sudoku(tmp_path / "s"), write_maze(tmp_path / "m")
    prefix = str(tmp_path / "sudoku_preds")
    save_label_predictions(prefix, sudoku, {0: {}, 1: {}}, num_files=1)
    message = (f"error: {prefix}: predictions of 81-token sequences, but the dataset's are 49 tokens long: "
               f"predictions of another dataset")
    code, _, err = write_page(capsys, "--dataset", maze, "--predictions", prefix, "--out", str(tmp_path / "x.html"))
    assert code == 2 and err == [message] and not os.path.exists(tmp_path / "x.html")
    assert show.main(["--dataset", maze, "--index", "0", "--predictions", prefix]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    arc = build_arc(tmp_path / "a")
    capsys.readouterr()  # the builder's progress
    assert arc_vote.main(["--dataset", arc, "--predictions", prefix]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message.replace("49 tokens", "900 tokens")]


# --- in a real browser ---------------------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1300,1000")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e \".[browser]\")")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("needs Chromium and its driver on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)
    yield driver
    driver.quit()


def count(driver, selector):
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector)


def click_puzzle(driver, name):
    (button,) = [b for b in driver.find_elements("css selector", ".puzzle-link") if b.text == name]
    button.click()


def grid_cells(grid_rows):
    return sum(len(row) for row in grid_rows)


def test_sudoku_page_in_chromium(browser, sudoku_page, tmp_path):
    _, out = sudoku_page
    browser.get("file://" + out)
    # Input, label and prediction of puzzle 0: 3 x 81 cells, its 3 wrong cells marked, givens shaded.
    assert count(browser, "#puzzle .cell") == 3 * 81
    assert count(browser, "#puzzle .cell.wrong") == 3
    givens = int((sudoku_examples(6, seed=0)[0][0] > 1).sum())
    assert count(browser, "#puzzle .cell.given") == 3 * givens
    assert count(browser, ".puzzle-link.unsolved") == 2 and count(browser, ".puzzle-link.solved") == 2
    click_puzzle(browser, "puzzle 2")
    assert count(browser, "#puzzle .cell") == 3 * 81 and count(browser, "#puzzle .cell.wrong") == 1
    click_puzzle(browser, "puzzle 4")  # no prediction: input and label only
    assert count(browser, "#puzzle .cell") == 2 * 81 and count(browser, "#puzzle .cell.wrong") == 0
    screenshot = tmp_path / "sudoku.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arc_page_in_chromium(browser, arc_page, tmp_path):
    _, out = arc_page
    report = page_data(open(out, encoding="utf-8").read())
    browser.get("file://" + out)
    assert browser.get_log("browser") == []  # no script errors
    for name in ("a1", "b2"):
        click_puzzle(browser, name)
        (puzzle,) = [p for p in report["sets"]["all"]["puzzles"] if p["name"] == name]
        expected_cells = (sum(grid_cells(pair["input"]) + grid_cells(pair["output"])
                              for pair in puzzle["demonstrations"] + puzzle["tests"])
                          + sum(grid_cells(answer["grid"]) for answers in puzzle["answers"] for answer in answers)
                          + sum(grid_cells(e["input"]) + grid_cells(e["label"]) + grid_cells(e["prediction"])
                                for e in puzzle["examples"]))
        assert count(browser, "#puzzle .cell") == expected_cells
        # b2: its original version's prediction and the second voted answer each have one wrong cell.
        assert count(browser, "#puzzle .cell.wrong") == (2 if name == "b2" else 0)
    first_cell = browser.find_element("css selector", "#puzzle .grid.arc .cell")
    colour = puzzle["demonstrations"][0]["input"][0][0]  # b2's, shown last
    palette_rgb = tuple(int(report["palette"][colour][i:i + 2], 16) for i in (1, 3, 5))
    assert first_cell.value_of_css_property("background-color") in (f"rgb{palette_rgb}", f"rgba{palette_rgb + (1,)}")
    assert browser.save_screenshot(str(tmp_path / "arc.png"))


def test_empty_crops_named_in_chromium(browser, arc_page_with_empty_crops):
    _, out = arc_page_with_empty_crops
    browser.get("file://" + out)
    assert browser.get_log("browser") == []
    click_puzzle(browser, "a1")
    captions = [c.text for c in browser.find_elements("css selector", "#puzzle .caption")]
    no_grid = "no grid: the top-left cell holds no colour"
    assert "candidate 1, " + no_grid + ": 3 votes, mean halt p 0.5" in captions
    assert "candidate 2, right: 1 vote, mean halt p 0.5" in captions
    # The examples shown: the original version's (and any other empty one's) prediction has no grid.
    assert "prediction: " + no_grid + ", halt p 0.5" in captions
    assert not any("0x0" in caption or "(empty)" in caption for caption in captions)
