"""Write one self-contained HTML page for browsing a dataset split's puzzles, with predictions beside their
labels.

    python puzzle_tools/visualize.py --dataset data/arc-aug-1000 --predictions RUN/step_N_all_preds --out report.html

The page needs no server and loads nothing from elsewhere: styles, script and data are all inside it. Pick a
set, then a puzzle from its list. The task is read from the dataset (vocab_size and seq_len): Sudoku digits
with the givens shaded, mazes with walls, start, goal and path, ARC grids in the ARC palette, grouped by
original puzzle with its demonstrations and test pairs, or else the raw token grids. With predictions, each
prediction stands beside its label with its wrong cells outlined, and each ARC test input shows its two
best voted answers (see arc_vote.py). Big datasets stay small on the page: at most --max-puzzles puzzles per
set, drawn with --seed, and at most --max-examples examples per puzzle.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from command_line import OneLineArgumentParser, exit_status, run_cli
from dataset.format import PuzzleSet, loss_labels, read_test_puzzles
from puzzle_tools.arc_vote import ATTEMPTS, TEST_SPLIT, VoteResult, rank_answers
from puzzle_tools.dataset_reader import NamedSplit, read_named_split
from puzzle_tools.grids import ARC, ARC_PALETTE, decode_example, is_exact, parse_arc_version, wrong_cells
from puzzle_tools.predictions import Predictions, load_predictions
from training.run_folder import write_text

DEFAULT_MAX_PUZZLES = 200
DEFAULT_MAX_EXAMPLES = 4
DEFAULT_SEED = 0
DEFAULT_OUT = "report.html"


class ReportBuilder:
    """Collects the page's data: sampled puzzles of each set, decoded, with predictions where found."""

    def __init__(self, split: NamedSplit, predictions: Optional[Predictions], max_puzzles: int,
                 max_examples: int, seed: int):
        self.split, self.task, self.predictions = split, split.task, predictions
        self.max_puzzles, self.max_examples = max_puzzles, max_examples
        self.rng = np.random.default_rng(seed)

    def sample(self, count: int, limit: int) -> List[int]:
        """Up to `limit` of range(count), drawn without replacement, in order."""
        if count <= limit:
            return list(range(count))
        return sorted(self.rng.choice(count, size=limit, replace=False).tolist())

    def prediction_rows(self, puzzle_set: PuzzleSet, examples: List[int]) -> np.ndarray:
        """Row of each example in the prediction files, -1 where it has none."""
        if self.predictions is None:
            return np.full(len(examples), -1)
        identifiers = puzzle_set.puzzle_identifiers[[puzzle_set.puzzle_of(e) for e in examples]]
        return self.predictions.find_rows(identifiers, puzzle_set.inputs[examples])

    def examples(self, puzzle_set: PuzzleSet, examples: List[int]) -> List[dict]:
        """Decoded input, label and (where found) prediction of each example, in its stored frame."""
        labels = loss_labels(puzzle_set.labels[np.asarray(examples)], self.split.metadata)
        entries = []
        for example_index, label_tokens, row in zip(examples, labels, self.prediction_rows(puzzle_set, examples)):
            example = decode_example(self.task, puzzle_set.inputs[example_index], label_tokens,
                                     self.predictions.preds[row] if row >= 0 else None)
            identifier = int(puzzle_set.puzzle_identifiers[puzzle_set.puzzle_of(example_index)])
            entry = {"index": example_index, "identifier": self.split.identifier_name(identifier),
                     "input": example.input.tolist(), "label": example.label.tolist()}
            if row >= 0:
                entry.update(prediction=example.prediction.tolist(), wrong=np.argwhere(example.wrong).tolist(),
                             exact=example.exact,
                             halt_probability=round(float(self.predictions.halt_probabilities[row]), 4))
            entries.append(entry)
        return entries

    def token_puzzles(self, puzzle_set: PuzzleSet) -> List[dict]:
        """Sudoku, maze and generic sets: one entry per dataset puzzle."""
        puzzles = []
        for puzzle in tqdm(self.sample(puzzle_set.num_puzzles, self.max_puzzles), desc=puzzle_set.name,
                           unit="puzzle", mininterval=1.0):
            examples = list(puzzle_set.examples_of(puzzle))[:self.max_examples]
            entries = self.examples(puzzle_set, examples)
            predicted = [entry for entry in entries if "prediction" in entry]
            puzzles.append({"name": f"puzzle {puzzle}", "examples": entries,
                            "solved": all(entry["exact"] for entry in predicted) if predicted else None})
        return puzzles

    def arc_puzzles(self, puzzle_set: PuzzleSet, test_puzzles: Dict[str, dict]) -> Tuple[List[dict], int]:
        """ARC sets: one entry per original puzzle, with its demonstrations, test pairs, voted answers and
        a few of its versions' examples (the original version first); and how many originals the set has."""
        versions_of: Dict[str, List[int]] = {}
        for puzzle, identifier in enumerate(puzzle_set.puzzle_identifiers):
            versions_of.setdefault(parse_arc_version(self.split.identifier_name(int(identifier))).puzzle,
                                   []).append(puzzle)
        names = sorted(versions_of)
        chosen = [names[i] for i in self.sample(len(names), self.max_puzzles)]
        votes = self.votes(chosen)
        puzzles = []
        for name in tqdm(chosen, desc=puzzle_set.name, unit="puzzle", mininterval=1.0):
            # The builder lists a puzzle's original version first; the others are drawn at random.
            versions = versions_of[name]
            shown = [versions[0]] + self.rng.permutation(versions[1:]).tolist()
            examples = [e for puzzle in shown for e in puzzle_set.examples_of(puzzle)][:self.max_examples]
            original = test_puzzles.get(name, {"train": [], "test": []})
            entry = {"name": name, "versions": len(versions), "examples": self.examples(puzzle_set, examples),
                     "demonstrations": original["train"], "tests": original["test"], "solved": None}
            if votes is not None and name in votes.tests:
                entry["answers"] = [[{"grid": c.grid.tolist(), "votes": c.votes,
                                      "halt_probability": round(c.mean_halt_probability, 4),
                                      "wrong": np.argwhere(wrong_cells(c.grid, test.expected)).tolist(),
                                      "exact": is_exact(c.grid, test.expected)}
                                     for c in test.candidates[:ATTEMPTS]] for test in votes.tests[name]]
                entry["solved"] = all(any(answer["exact"] for answer in answers) for answers in entry["answers"])
            puzzles.append(entry)
        return puzzles, len(names)

    def votes(self, puzzle_names: List[str]) -> Optional[VoteResult]:
        # Votes are over the evaluation's test split only, where test_puzzles.json holds the answers.
        if self.predictions is None or self.split.split != TEST_SPLIT:
            return None
        return rank_answers(self.split, self.predictions, puzzle_names)

    def build(self) -> dict:
        test_puzzles = read_test_puzzles(self.split.dataset_dir) if self.task.kind == ARC else {}
        sets = {}
        for name, puzzle_set in self.split.sets.items():
            # ARC counts original puzzles (each holds its augmented versions); the other tasks count puzzles.
            puzzles, num_puzzles = (self.arc_puzzles(puzzle_set, test_puzzles) if self.task.kind == ARC
                                    else (self.token_puzzles(puzzle_set), puzzle_set.num_puzzles))
            sets[name] = {"num_examples": puzzle_set.num_examples, "num_puzzles": num_puzzles, "puzzles": puzzles}
        return {"dataset": os.path.abspath(self.split.dataset_dir), "split": self.split.split,
                "task": {"kind": self.task.kind, "rows": self.task.rows, "cols": self.task.cols},
                "palette": list(ARC_PALETTE),
                "predictions": None if self.predictions is None else {
                    "prefix": self.predictions.prefix, "rows": len(self.predictions)},
                "sets": sets}


def render_html(report: dict) -> str:
    # `<` escaped inside the JSON, so no name in the data can end the script element early.
    return PAGE_TEMPLATE.replace("{{DATA}}", json.dumps(report, separators=(",", ":")).replace("<", "\\u003c"))


PAGE_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>puzzles</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; display: flex; height: 100vh; color: #222; }
#sidebar { width: 270px; overflow: auto; border-right: 1px solid #ccc; padding: 8px; box-sizing: border-box; }
#main { flex: 1; overflow: auto; padding: 12px 16px; }
h1 { font-size: 16px; margin: 0 0 6px; word-break: break-all; }
h2 { font-size: 15px; margin: 14px 0 4px; }
.summary { font-size: 12px; color: #555; margin-bottom: 8px; }
button { font: inherit; font-size: 12px; cursor: pointer; }
.set-button.active, .puzzle-link.active { background: #cde; }
#puzzle-list { list-style: none; padding: 0; margin: 6px 0; }
.puzzle-link { width: 100%; text-align: left; border: 1px solid #ddd; background: #fff; margin: 1px 0; }
.puzzle-link.solved::after { content: " \\2713"; color: #1a7f1a; }
.puzzle-link.unsolved::after { content: " \\2717"; color: #c00; }
.pager { font-size: 12px; display: flex; gap: 6px; align-items: center; }
.pair { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; margin: 4px 0 10px; }
.figure { display: inline-block; }
.caption { font-size: 11px; color: #555; margin-bottom: 2px; }
.grid { --cell: 18px; display: inline-grid; gap: 1px; background: #999; border: 1px solid #999; }
.grid.sudoku { --cell: 26px; }
.grid.maze { --cell: 12px; }
.cell { width: var(--cell); height: var(--cell); display: flex; align-items: center; justify-content: center;
        font-size: calc(var(--cell) * 0.6); background: #fff; box-sizing: border-box; }
.cell.empty { background: repeating-linear-gradient(45deg, #eee, #eee 3px, #fff 3px, #fff 6px); }
.sudoku .cell.given { background: #e4e4e4; font-weight: bold; }
.sudoku .cell.box-right { border-right: 2px solid #555; }
.sudoku .cell.box-bottom { border-bottom: 2px solid #555; }
.sudoku .cell.wrong { color: #c00; background: #ffd8d8; }
.maze .cell.wall { background: #333; }
.maze .cell.start { background: #2a9d2a; }
.maze .cell.goal { background: #d62828; }
.maze .cell.path { background: #f4c430; }
.generic .cell { font-size: 10px; }
.cell.wrong { outline: 2px solid #ff00aa; outline-offset: -2px; }
.verdict-exact { color: #1a7f1a; }
.verdict-wrong { color: #c00; }
</style>
</head>
<body>
<nav id="sidebar">
  <h1 id="title"></h1>
  <div class="summary" id="summary"></div>
  <div id="sets"></div>
  <div class="pager"><button id="previous-page">&lsaquo;</button><span id="page-label"></span>
    <button id="next-page">&rsaquo;</button></div>
  <ul id="puzzle-list"></ul>
</nav>
<main id="main"><div id="puzzle"></div></main>
<script type="application/json" id="report-data">{{DATA}}</script>
<script>
"use strict";
const report = JSON.parse(document.getElementById("report-data").textContent);
const PAGE_SIZE = 50;
const MAZE_CLASSES = ["wall", "open", "start", "goal", "path"];
const EMPTY = -1;
// What an ARC prediction without a colour at the canvas's top-left cell crops to: an empty grid.
const NO_GRID = "no grid: the top-left cell holds no colour";
const setNames = Object.keys(report.sets);
const state = {set: setNames[0], page: 0, puzzle: 0};

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One grid of decoded cell values; `wrong` lists [row, col] cells to mark, `givens` is the Sudoku input.
function gridElement(grid, wrong, givens) {
  const kind = report.task.kind;
  const rows = grid.length, cols = rows ? grid[0].length : 0;
  const node = element("div", "grid " + kind);
  node.style.gridTemplateColumns = "repeat(" + cols + ", var(--cell))";
  const wrongCells = new Set((wrong || []).map(([r, c]) => r * cols + c));
  grid.forEach((row, r) => row.forEach((value, c) => {
    const cell = element("div", "cell");
    if (value === EMPTY) {
      cell.classList.add("empty");
    } else if (kind === "sudoku") {
      cell.textContent = value === 0 ? "" : String(value);
      if (givens && givens[r][c] > 0) cell.classList.add("given");
    } else if (kind === "maze") {
      cell.classList.add(MAZE_CLASSES[value] || "empty");
    } else if (kind === "arc") {
      cell.style.background = report.palette[value];
    } else {
      cell.textContent = String(value);
    }
    if (kind === "sudoku" && c % 3 === 2 && c < cols - 1) cell.classList.add("box-right");
    if (kind === "sudoku" && r % 3 === 2 && r < rows - 1) cell.classList.add("box-bottom");
    if (wrongCells.has(r * cols + c)) cell.classList.add("wrong");
    node.appendChild(cell);
  }));
  return node;
}

function figure(caption, grid, wrong, givens) {
  const node = element("div", "figure");
  node.appendChild(element("div", "caption", caption));
  node.appendChild(gridElement(grid, wrong, givens));
  return node;
}

function verdict(exact) {
  return exact ? "right" : "wrong";
}

function count(number, noun) {
  return number + " " + noun + (number === 1 ? "" : "s");
}

function exampleRow(example, withVersion) {
  const row = element("div", "pair");
  const givens = report.task.kind === "sudoku" ? example.input : null;
  const where = "example " + example.index + (withVersion ? " (" + example.identifier + ")" : "");
  row.appendChild(figure(where + ": input", example.input, null, givens));
  row.appendChild(figure("label", example.label, null, givens));
  if (example.prediction) {
    const halt = ", halt p " + example.halt_probability;
    const shape = grid => grid.length + "x" + grid[0].length;
    const size = !example.prediction.length || shape(example.prediction) === shape(example.label) ? "" :
        ", size " + shape(example.prediction) + " instead of " + shape(example.label);
    const caption = example.prediction.length ?
        "prediction, " + verdict(example.exact) + ", " + count(example.wrong.length, "wrong cell") + size + halt :
        "prediction: " + NO_GRID + halt;
    row.appendChild(figure(caption, example.prediction, example.wrong, givens));
  }
  return row;
}

function renderArc(puzzle, container) {
  if (puzzle.demonstrations.length) container.appendChild(element("h2", "", "Demonstrations"));
  puzzle.demonstrations.forEach((pair, index) => {
    const row = element("div", "pair");
    row.appendChild(figure("demonstration " + index + ": input", pair.input));
    row.appendChild(figure("output", pair.output));
    container.appendChild(row);
  });
  if (puzzle.tests.length) container.appendChild(element("h2", "", "Test inputs"));
  puzzle.tests.forEach((pair, index) => {
    const row = element("div", "pair");
    row.appendChild(figure("test " + index + ": input", pair.input));
    if (pair.output) row.appendChild(figure("expected output", pair.output));
    const answers = puzzle.answers ? puzzle.answers[index] : null;
    if (answers) {
      if (!answers.length) row.appendChild(element("div", "caption", "no prediction"));
      // Candidates as pass@K ranks them; the submission skips empty ones (arc_vote.py).
      answers.forEach((answer, rank) => row.appendChild(figure(
          "candidate " + (rank + 1) + ", " + (answer.grid.length ? verdict(answer.exact) : NO_GRID) + ": " +
          count(answer.votes, "vote") + ", mean halt p " + answer.halt_probability, answer.grid, answer.wrong)));
    }
    container.appendChild(row);
  });
  container.appendChild(element("h2", "", "Examples of " + puzzle.versions + " versions (as stored)"));
  puzzle.examples.forEach(example => container.appendChild(exampleRow(example, true)));
}

function renderPuzzle() {
  const container = document.getElementById("puzzle");
  container.replaceChildren();
  const puzzles = report.sets[state.set].puzzles;
  if (!puzzles.length) return;
  const puzzle = puzzles[state.puzzle];
  const heading = element("h2", "", state.set + " / " + puzzle.name);
  if (puzzle.solved !== null) {
    heading.appendChild(element("span", puzzle.solved ? "verdict-exact" : "verdict-wrong",
                                puzzle.solved ? " (solved)" : " (not solved)"));
  }
  container.appendChild(heading);
  if (report.task.kind === "arc") {
    renderArc(puzzle, container);
  } else {
    puzzle.examples.forEach(example => container.appendChild(exampleRow(example, false)));
  }
}

function renderList() {
  const puzzles = report.sets[state.set].puzzles;
  const pages = Math.max(1, Math.ceil(puzzles.length / PAGE_SIZE));
  document.getElementById("page-label").textContent = "page " + (state.page + 1) + " of " + pages;
  const list = document.getElementById("puzzle-list");
  list.replaceChildren();
  puzzles.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE).forEach((puzzle, offset) => {
    const index = state.page * PAGE_SIZE + offset;
    const button = element("button", "puzzle-link", puzzle.name);
    if (puzzle.solved !== null) button.classList.add(puzzle.solved ? "solved" : "unsolved");
    if (index === state.puzzle) button.classList.add("active");
    button.addEventListener("click", () => { state.puzzle = index; renderList(); renderPuzzle(); });
    const item = element("li");
    item.appendChild(button);
    list.appendChild(item);
  });
}

function renderSets() {
  const sets = document.getElementById("sets");
  sets.replaceChildren();
  setNames.forEach(name => {
    const info = report.sets[name];
    const button = element("button", "set-button" + (name === state.set ? " active" : ""),
                           name + " (" + info.puzzles.length + " of " + info.num_puzzles + " puzzles shown)");
    button.addEventListener("click", () => {
      Object.assign(state, {set: name, page: 0, puzzle: 0});
      renderSets(); renderList(); renderPuzzle();
    });
    sets.appendChild(button);
  });
}

function turnPage(step) {
  const pages = Math.ceil(report.sets[state.set].puzzles.length / PAGE_SIZE);
  const page = state.page + step;
  if (page < 0 || page >= pages) return;
  state.page = page;
  renderList();
}

document.title = report.dataset.split("/").pop() + " / " + report.split;
document.getElementById("title").textContent = document.title;
document.getElementById("summary").textContent = report.task.kind + " task; " +
    (report.predictions ? report.predictions.rows + " prediction rows from " + report.predictions.prefix
                        : "no predictions");
document.getElementById("previous-page").addEventListener("click", () => turnPage(-1));
document.getElementById("next-page").addEventListener("click", () => turnPage(1));
renderSets();
renderList();
renderPuzzle();
</script>
</body>
</html>
"""


def parse_args(argv=None) -> argparse.Namespace:
    summary, _, details = __doc__.partition("\n\n")
    parser = OneLineArgumentParser(description=summary, epilog=details,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, metavar="DIR", help="dataset folder")
    parser.add_argument("--predictions", metavar="PREFIX",
                        help="prediction files PREFIX.<rank> saved by evaluate.py (or one file); default: none")
    parser.add_argument("--split", default=TEST_SPLIT, help="split to show (default %(default)s)")
    parser.add_argument("--max-puzzles", type=int, default=DEFAULT_MAX_PUZZLES, metavar="N",
                        help="puzzles shown per set at most, drawn at random when there are more "
                             "(default %(default)s; ARC: original puzzles)")
    parser.add_argument("--max-examples", type=int, default=DEFAULT_MAX_EXAMPLES, metavar="N",
                        help="examples shown per puzzle at most (default %(default)s; ARC: over its versions, "
                             "the original version first)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the drawing (default %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="FILE", help="HTML file to write (default %(default)s)")
    args = parser.parse_args(argv)
    if args.max_puzzles < 1 or args.max_examples < 1:
        parser.error("--max-puzzles and --max-examples must be at least 1")
    return args


def build_report(dataset_dir: str, split_name: str, prediction_prefix: Optional[str], max_puzzles: int,
                 max_examples: int, seed: int) -> dict:
    split = read_named_split(dataset_dir, split_name)
    predictions = None
    if prediction_prefix is not None:
        predictions = load_predictions(prediction_prefix, split.metadata.blank_identifier_id, split.metadata.pad_id,
                                   seq_len=split.metadata.seq_len)
    return ReportBuilder(split, predictions, max_puzzles, max_examples, seed).build()


def main(argv=None) -> int:
    args = parse_args(argv)

    def run() -> None:
        report = build_report(args.dataset, args.split, args.predictions, args.max_puzzles, args.max_examples,
                              args.seed)
        write_text(args.out, render_html(report))
        print(json.dumps(os.path.abspath(args.out)))

    return exit_status(run)


if __name__ == "__main__":
    run_cli(main)
