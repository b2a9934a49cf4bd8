"""ARC voting and scoring (puzzle_tools/arc_vote.py) on a tiny dataset built by the real ARC builder, with
prediction files of known votes in our format and the reference's; also the ARC canvas crop, version names
and the prediction file reader it relies on."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from puzzle_tools import arc_vote
from puzzle_tools.grids import ArcVersion, crop_arc_canvas, parse_arc_version, to_original_frame
from puzzle_tools.predictions import load_predictions
from tool_datasets import (EVALUATION_PUZZLES, TRAINING_PUZZLE, augment_grid, build_arc, encode_answer, grid,
                           halt_logit, identifier_names, load_set, save_ours, save_reference)

RIGHT = {name: [np.array(grid(output)) for _, output in tests] for name, tests in EVALUATION_PUZZLES.items()}
WRONG_A1 = grid(["021", "431"])  # one cell off
WRONG_B2 = grid(["01", "27"])  # another shape
WRONG_C3 = grid(["0043", "6511"])
WRONG_E5_FIRST = grid(["0432", "6000"])
WRONG_E5_SECOND = grid(["0432"])


def planned_answer(puzzle, version, test_index):
    """(answer in the original frame, halt probability) of version `version` (0 = original) of a puzzle's
    test input, or None for no prediction. The votes each puzzle gets:
      a1  right x2 (halt .9, .8) vs wrong x2 (.6, .5): a tie of votes, won by the right one's confidence
      b2  wrong x3 (.1) outvotes right x1 (.99): right is 2nd
      c3  two test inputs: the first always right, the second always wrong
      d4  no prediction at all
      e5  wrong x2 (.3), another wrong x1 (.9), right x1 (.4): right is 3rd, losing a tie on confidence
    """
    right = RIGHT[puzzle][test_index]
    if puzzle == "a1":
        return (right, [.9, .8][version]) if version < 2 else (WRONG_A1, [.6, .5][version - 2])
    if puzzle == "b2":
        return (WRONG_B2, .1) if version < 3 else (right, .99)
    if puzzle == "c3":
        return (right, .7) if test_index == 0 else (WRONG_C3, .7)
    if puzzle == "e5":
        return [(WRONG_E5_FIRST, .3), (WRONG_E5_FIRST, .3), (WRONG_E5_SECOND, .9), (right, .4)][version]
    return None


EXPECTED_SCORES = {"pass@1": 0.2, "pass@2": 0.4, "pass@10": 0.6,  # solved: a1; a1 b2; a1 b2 e5
                   "arc_prize_score": 0.5,  # (a1 1 + b2 1 + c3 1/2 + d4 0 + e5 0) / 5
                   "num_puzzles": 5, "missing_puzzles": ["d4"],
                   "unmatched_predictions": 2}  # the two rows of the training puzzle
EXPECTED_SUBMISSION = {
    "a1": [{"attempt_1": RIGHT["a1"][0].tolist(), "attempt_2": WRONG_A1.tolist()}],
    "b2": [{"attempt_1": WRONG_B2.tolist(), "attempt_2": RIGHT["b2"][0].tolist()}],
    "c3": [{"attempt_1": RIGHT["c3"][0].tolist(), "attempt_2": RIGHT["c3"][0].tolist()},  # one candidate: twice
           {"attempt_1": WRONG_C3.tolist(), "attempt_2": WRONG_C3.tolist()}],
    "d4": [{"attempt_1": [[0]], "attempt_2": [[0]]}],
    "e5": [{"attempt_1": WRONG_E5_FIRST.tolist(), "attempt_2": WRONG_E5_SECOND.tolist()}],
}


def assert_expected_scores(scores):
    assert scores.keys() == EXPECTED_SCORES.keys()
    for key, expected in EXPECTED_SCORES.items():
        assert scores[key] == (pytest.approx(expected) if isinstance(expected, float) else expected), key


def prediction_rows(dataset_dir):
    """inputs, labels (-100 ignored), identifiers, predicted tokens and halting logits of every planned row,
    plus two rows for the training puzzle (in no test split), in a seeded shuffled order."""
    names = identifier_names(dataset_dir)
    test = load_set(dataset_dir, "test")
    rows = []
    versions_seen = {}
    for puzzle, identifier in enumerate(test["puzzle_identifiers"]):
        name = names[identifier]
        original = name.split("_")[0]
        version = versions_seen.setdefault(original, -1) + 1
        versions_seen[original] = version
        for test_index, example in enumerate(range(test["puzzle_indices"][puzzle], test["puzzle_indices"][puzzle + 1])):
            planned = planned_answer(original, version, test_index)
            if planned is not None:
                rows.append((test["inputs"][example], test["labels"][example], identifier,
                             encode_answer(planned[0], name), halt_logit(planned[1])))
    train = load_set(dataset_dir, "train")
    training_identifiers = [i for i, name in enumerate(names) if name.startswith(TRAINING_PUZZLE[0])]
    for example in np.flatnonzero(np.isin(np.repeat(train["puzzle_identifiers"], np.diff(train["puzzle_indices"])),
                                          training_identifiers))[:2]:
        rows.append((train["inputs"][example], train["labels"][example], 0, train["labels"][example], 0.0))
    order = np.random.default_rng(0).permutation(len(rows))
    inputs, labels, identifiers, preds, q_halt_logits = (np.array(column) for column in zip(*[rows[i] for i in order]))
    # The crop must ignore anything past the end markers: put colours in the canvas' last row.
    preds[::2, 900 - 30:] = 5
    # Saved labels carry -100 on unlabelled cells, as the loader gives them.
    labels = np.where(labels == 0, -100, labels.astype(np.int32))
    return inputs, labels, identifiers, preds, q_halt_logits


@pytest.fixture(scope="module")
def arc_dataset(tmp_path_factory):
    return build_arc(tmp_path_factory.mktemp("arc_vote"))


@pytest.fixture(scope="module")
def our_predictions(arc_dataset, tmp_path_factory):
    """Our format, split across 2 rank files."""
    prefix = str(tmp_path_factory.mktemp("preds") / "step_5_all_preds")
    columns = prediction_rows(arc_dataset)
    half = len(columns[0]) // 2
    for rank, rows in enumerate([slice(0, half), slice(half, None)]):
        save_ours(f"{prefix}.{rank}", *(column[rows] for column in columns))
    return prefix


def test_vote_scores_known_votes(arc_dataset, our_predictions):
    assert_expected_scores(arc_vote.vote(arc_dataset, our_predictions, [1, 2, 10]))


def test_candidates_ranked_by_votes_then_mean_halting_probability(arc_dataset, our_predictions):
    result = arc_vote.vote_predictions(arc_dataset, our_predictions)
    summary = {name: [[(c.votes, round(c.mean_halt_probability, 6)) for c in test.candidates] for test in tests]
               for name, tests in result.tests.items()}
    assert summary == {"a1": [[(2, 0.85), (2, 0.55)]], "b2": [[(3, 0.1), (1, 0.99)]],
                       "c3": [[(4, 0.7)], [(4, 0.7)]],
                       "d4": [[]], "e5": [[(2, 0.3), (1, 0.9), (1, 0.4)]]}
    assert [test.rank_of_expected() for test in result.tests["e5"]] == [2]
    np.testing.assert_array_equal(result.tests["a1"][0].candidates[0].grid, RIGHT["a1"][0])


def test_cli_prints_scores_and_writes_submission(arc_dataset, our_predictions, tmp_path, capsys):
    submission_path = tmp_path / "out" / "submission.json"
    code = arc_vote.main(["--dataset", arc_dataset, "--predictions", our_predictions, "--k", "1", "2", "10",
                          "--submission", str(submission_path)])
    assert code == 0
    assert_expected_scores(json.loads(capsys.readouterr().out))
    assert json.loads(submission_path.read_text()) == EXPECTED_SUBMISSION
    assert os.listdir(submission_path.parent) == ["submission.json"]  # no temporary file left


def empty_crop_rows(dataset_dir, puzzles):
    """One row per test example of every version of `puzzles` whose predicted canvas is all pad: it crops
    to an empty grid, confidently (halt probability .99)."""
    names = identifier_names(dataset_dir)
    test = load_set(dataset_dir, "test")
    identifiers = np.repeat(test["puzzle_identifiers"], np.diff(test["puzzle_indices"]))
    rows = np.flatnonzero([names[i].split("_")[0] in puzzles for i in identifiers])
    labels = np.where(test["labels"][rows] == 0, -100, test["labels"][rows].astype(np.int32))
    return (test["inputs"][rows], labels, identifiers[rows], np.zeros((len(rows), 900), dtype=np.uint8),
            np.full(len(rows), halt_logit(.99)))


def test_empty_crops_winning_the_vote_stay_out_of_the_submission(arc_dataset, tmp_path):
    # a1: 4 empty crops outvote its right (x2) and wrong (x2) answers; d4: empty crops only.
    prefix = str(tmp_path / "empty_preds")
    save_ours(f"{prefix}.0", *(np.concatenate(pair) for pair in zip(prediction_rows(arc_dataset),
                                                                     empty_crop_rows(arc_dataset, {"a1", "d4"}))))
    result = arc_vote.vote_predictions(arc_dataset, prefix)
    assert [c.grid.shape for c in result.tests["a1"][0].candidates] == [(0, 0), (2, 3), (2, 3)]
    assert [(c.grid.shape, c.votes) for c in result.tests["d4"][0].candidates] == [((0, 0), 4)]
    # pass@K as the reference counts it: the empty crop is a wrong candidate, so a1 is solved at K = 2 only.
    scores = arc_vote.score(result, [1, 2, 10])
    assert scores["pass@1"] == 0 and scores["pass@2"] == pytest.approx(0.4)
    assert scores["arc_prize_score"] == pytest.approx(0.5) and scores["missing_puzzles"] == []
    # The submission: the best-ranked valid grids, [[0]] where there is none.
    entries = arc_vote.submission(result)
    assert entries == EXPECTED_SUBMISSION
    assert all(arc_vote.is_submittable(np.array(grid)) for tests in entries.values() for test in tests
               for grid in test.values())


def test_submittable_grids():
    assert arc_vote.is_submittable(np.zeros((1, 1), dtype=np.int32))
    assert arc_vote.is_submittable(np.full((30, 30), 9))
    for invalid in (np.zeros((0, 0)), np.zeros((1, 0)), np.zeros((31, 2)), np.full((2, 2), 10), np.full((2, 2), -1),
                    np.zeros(3)):
        assert not arc_vote.is_submittable(invalid), invalid.shape


def test_default_ks(arc_dataset, our_predictions):
    scores = arc_vote.vote(arc_dataset, our_predictions)
    assert [key for key in scores if key.startswith("pass@")] == ["pass@1", "pass@2", "pass@10", "pass@100",
                                                                  "pass@1000"]
    assert scores["pass@1000"] == pytest.approx(0.6)


def test_reference_format_logits_and_padding_rows(arc_dataset, tmp_path):
    prefix = str(tmp_path / "reference_preds")
    columns = prediction_rows(arc_dataset)
    half = len(columns[0]) // 2
    for rank, rows in enumerate([slice(0, half), slice(half, None)]):
        save_reference(f"{prefix}.{rank}", *(column[rows] for column in columns), vocab_size=12, num_padding=3,
                       seed=rank)
    predictions = load_predictions(prefix)
    assert len(predictions) == len(columns[0])  # 2 x 3 padding rows dropped
    np.testing.assert_array_equal(predictions.preds, columns[3])  # the argmax of the logits
    assert_expected_scores(arc_vote.vote(arc_dataset, prefix, [1, 2, 10]))


def test_single_rank_file_and_rank_order(arc_dataset, our_predictions):
    both = load_predictions(our_predictions)
    rank0 = load_predictions(f"{our_predictions}.0")
    assert both.files == [f"{our_predictions}.0", f"{our_predictions}.1"] and rank0.files == [f"{our_predictions}.0"]
    np.testing.assert_array_equal(both.inputs[:len(rank0)], rank0.inputs)
    assert both.labels.min() == -100 and both.preds.dtype == np.uint8
    np.testing.assert_allclose(both.halt_probabilities, 1 / (1 + np.exp(-both.q_halt_logits)))
    # Rows are found again by identifier and inputs, whatever file they are in.
    assert both.find_rows(both.puzzle_identifiers[[5, 1]], both.inputs[[5, 1]]).tolist() == [5, 1]
    assert both.find_rows([999], both.inputs[:1]).tolist() == [-1]


# --- errors --------------------------------------------------------------------------------------------

def run_main(capsys, *argv):
    code = arc_vote.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def test_missing_prediction_files(arc_dataset, tmp_path, capsys):
    code, err = run_main(capsys, "--dataset", arc_dataset, "--predictions", str(tmp_path / "nothing"))
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'nothing'}: no prediction files")


def test_garbage_and_incomplete_prediction_files(arc_dataset, tmp_path, capsys):
    garbage = tmp_path / "garbage.0"
    garbage.write_bytes(b"not a torch file\n" * 10)
    code, err = run_main(capsys, "--dataset", arc_dataset, "--predictions", str(tmp_path / "garbage"))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {garbage}: not a prediction file")

    incomplete = tmp_path / "incomplete.0"
    torch.save({"inputs": torch.zeros(2, 900, dtype=torch.int32), "preds": torch.zeros(2, 900, dtype=torch.uint8),
                "puzzle_identifiers": torch.ones(2, dtype=torch.int32)}, incomplete)
    code, err = run_main(capsys, "--dataset", arc_dataset, "--predictions", str(tmp_path / "incomplete"))
    assert code == 2 and err == [f"error: {incomplete}: no key 'q_halt_logits'"]

    no_predictions = tmp_path / "no_predictions.0"
    torch.save({"inputs": torch.zeros(2, 900)}, no_predictions)
    code, err = run_main(capsys, "--dataset", arc_dataset, "--predictions", str(no_predictions))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {no_predictions}: no key 'preds'")

    wrong_shape = tmp_path / "wrong_shape.0"
    torch.save({"inputs": torch.zeros(2, 900), "preds": torch.zeros(3, 900), "q_halt_logits": torch.zeros(2),
                "puzzle_identifiers": torch.zeros(2)}, wrong_shape)
    code, err = run_main(capsys, "--dataset", arc_dataset, "--predictions", str(wrong_shape))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {wrong_shape}: 'preds' has shape (3, 900)")


def test_missing_or_wrong_dataset(our_predictions, tmp_path, capsys):
    code, err = run_main(capsys, "--dataset", str(tmp_path / "absent"), "--predictions", our_predictions)
    assert code == 2 and err == [f"error: {tmp_path / 'absent'}: dataset folder not found"]


def test_identifier_beyond_the_dataset(arc_dataset, tmp_path, capsys):
    prefix = str(tmp_path / "foreign")
    save_ours(f"{prefix}.0", np.full((1, 900), 2), np.full((1, 900), 2), [999], np.full((1, 900), 2), [0.0])
    code, err = run_main(capsys, "--dataset", arc_dataset, "--predictions", prefix)
    assert code == 2 and err == [f"error: {prefix}: puzzle identifier 999 is not in {arc_dataset}/identifiers.json "
                                 f"(25 identifiers); predictions of another dataset?"]


@pytest.mark.parametrize("tool", ["arc_vote", "visualize"])
@pytest.mark.parametrize("kind, index, side, bad_grid, fault", [
    ("test", 0, "input", [[1, 2], [3]], "grid rows have different lengths"),
    ("test", 0, "output", "12\n34", "grid must be a 2-D list of integers"),
    ("train", 1, "output", [[1, 2, 3], [4, 5]], "grid rows have different lengths"),
    ("test", 0, "output", [[1, 12]], "grid values must be colours 0..9, got 1..12"),
])
def test_malformed_grids_in_test_puzzles_are_one_line(arc_dataset, our_predictions, tmp_path, capsys, tool, kind,
                                                      index, side, bad_grid, fault):
    from puzzle_tools import visualize

    dataset = tmp_path / "arc"
    shutil.copytree(arc_dataset, dataset)
    with open(dataset / "test_puzzles.json") as f:
        puzzles = json.load(f)
    puzzles["b2"][kind][index][side] = bad_grid
    (dataset / "test_puzzles.json").write_text(json.dumps(puzzles))
    argv = ["--dataset", str(dataset), "--predictions", our_predictions]
    code = (arc_vote.main(argv) if tool == "arc_vote" else
            visualize.main([*argv, "--out", str(tmp_path / "page.html")]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: {dataset / 'test_puzzles.json'}: puzzle b2, {kind} pair {index} {side}: "
                                 f"{fault}"]
    assert not (tmp_path / "page.html").exists()


# --- the canvas crop and version names -----------------------------------------------------------------

def test_crop_follows_the_reference_rule():
    canvas = np.zeros((30, 30), dtype=np.uint8)
    canvas[:2, :3] = [[2, 3, 4], [5, 6, 7]]
    canvas[2, :3] = 1
    canvas[:2, 3] = 1
    canvas[5:, 10:] = 9  # beyond the end markers: ignored
    np.testing.assert_array_equal(crop_arc_canvas(canvas.reshape(-1)), [[0, 1, 2], [3, 4, 5]])
    # A ragged prediction: the largest top-left rectangle of colours wins (2 rows x 3 beats 3 rows x 1).
    ragged = np.zeros((30, 30), dtype=np.uint8)
    ragged[0, :4], ragged[1, :3], ragged[2, :1] = 2, 3, 4
    np.testing.assert_array_equal(crop_arc_canvas(ragged.reshape(-1)), [[0, 0, 0], [1, 1, 1]])
    full = np.full(900, 11, dtype=np.uint8)
    assert crop_arc_canvas(full).shape == (30, 30)
    assert crop_arc_canvas(np.zeros(900, dtype=np.uint8)).shape == (0, 0)
    # Cropping from an origin: a grid shifted on the canvas, as training examples are.
    shifted = np.zeros((30, 30), dtype=np.uint8)
    shifted[4:6, 7:9] = [[2, 3], [4, 5]]
    np.testing.assert_array_equal(crop_arc_canvas(shifted.reshape(-1), (4, 7)), [[0, 1], [2, 3]])


def test_version_names_and_inverse_augmentation():
    assert parse_arc_version("007bbfc7") == ArcVersion("007bbfc7", 0, tuple(range(10)))
    assert parse_arc_version("a_b_t5_0987654321") == ArcVersion("a_b", 5, (0, 9, 8, 7, 6, 5, 4, 3, 2, 1))
    original = grid(["1230", "4560"])
    for name in ("p_t1_0123456789", "p_t7_0918273645", "p_t6_0213456789", "p"):
        augmented = augment_grid(original, name)
        np.testing.assert_array_equal(to_original_frame(augmented, parse_arc_version(name)), original)


def loop_crop(canvas):
    """The reference evaluation's crop, written as its row-by-row scan."""
    best_area, best_shape, width = 0, (0, 0), canvas.shape[1]
    for num_rows in range(1, canvas.shape[0] + 1):
        for col in range(width):
            if not 2 <= canvas[num_rows - 1, col] <= 11:
                width = col
                break
        if num_rows * width > best_area:
            best_area, best_shape = num_rows * width, (num_rows, width)
    return canvas[:best_shape[0], :best_shape[1]].astype(int) - 2


def test_crop_matches_the_row_scan_on_noisy_predictions():
    rng = np.random.default_rng(7)
    for _ in range(200):
        canvas = np.zeros((30, 30), dtype=np.uint8)
        rows, cols = rng.integers(1, 31, size=2)
        canvas[:rows, :cols] = rng.integers(2, 12, size=(rows, cols))
        # Predicted markers and pad scattered inside, as an untrained model writes them.
        noise = rng.random((30, 30)) < rng.choice([0.0, 0.01, 0.05])
        canvas[noise] = rng.integers(0, 2, size=noise.sum())
        np.testing.assert_array_equal(crop_arc_canvas(canvas.reshape(-1)), loop_crop(canvas))
