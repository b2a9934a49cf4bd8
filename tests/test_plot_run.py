"""Run plots (puzzle_tools/plot_run.py): reading metrics.jsonl (resumed steps, evaluation rows, the
num_params row), the figures' data, the PNG files written, and bad input."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="plot_run needs matplotlib (in the base install)")
import matplotlib.image  # noqa: E402  (after the skip)

from puzzle_tools import plot_run  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def training_row(step, routing):
    row = {"step": step, "train/lm_loss": 2.0 / step, "train/accuracy": 1 - 1 / step,
           "train/exact_accuracy": step / 100, "train/lr": 1e-4 * min(1, step / 20), "train/q_halt_loss": 0.5 / step,
           "train/q_continue_loss": 0.1, "train/steps": 4.0, "train/count": 768}
    if routing:
        row.update({"train/routing/routing_entropy_mean_H": 2.0 - step / 100,
                    "train/routing/routing_entropy_mean_L": 1.5, "train/routing/top1_share_H": 0.2,
                    "train/routing/top1_share_L": step / 200})
    return row


def evaluation_row(step, exact):
    return {"step": step, "all/accuracy": 0.9, "all/exact_accuracy": exact, "all/lm_loss": 0.3, "all/steps": 16.0,
            "all/q_halt_accuracy": 0.8}


def write_run(folder, rows):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(folder)


@pytest.fixture
def runs(tmp_path):
    """Run `poh` logs routing and was resumed from step 20 after reaching step 30 (steps 30 logged again);
    run `plain` has no routing."""
    poh_rows = ([{"num_params": 1234}] + [training_row(step, True) for step in (10, 20, 30)]
                + [evaluation_row(20, 0.25), {**training_row(30, True), "train/lm_loss": 9.0}, evaluation_row(30, 0.5),
                   training_row(40, True), evaluation_row(40, 0.75)])
    plain_rows = [{"num_params": 99}] + [training_row(step, False) for step in (10, 20)] + [evaluation_row(20, 0.1)]
    return write_run(tmp_path / "poh", poh_rows), write_run(tmp_path / "plain", plain_rows)


def test_read_run_keeps_the_last_value_of_a_repeated_step(runs):
    run = plot_run.read_run(runs[0])
    assert run.name == "poh" and sorted(run.rows) == [10, 20, 30, 40]
    steps, values = run.series("train/lm_loss")
    assert steps.tolist() == [10, 20, 30, 40] and values.tolist() == [0.2, 0.1, 9.0, 0.05]
    assert run.series("all/exact_accuracy")[1].tolist() == [0.25, 0.5, 0.75]
    assert run.evaluation_sets() == ["all"]


def test_figures_hold_both_runs(runs):
    metrics = [plot_run.read_run(path) for path in runs]
    accuracy = plot_run.draw_figure(plot_run.FIGURES["accuracy"], metrics)
    exact_axes = accuracy.axes[1]
    assert exact_axes.get_title() == "exact accuracy"
    lines = {line.get_label(): line for line in exact_axes.lines}
    assert sorted(lines) == ["plain all", "plain train", "poh all", "poh train"]
    np.testing.assert_allclose(lines["poh all"].get_ydata(), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(lines["poh train"].get_xdata(), [10, 20, 30, 40])
    assert lines["poh all"].get_marker() == "o" and lines["poh all"].get_color() != lines["plain all"].get_color()
    routing = plot_run.draw_figure(plot_run.FIGURES["routing"], metrics)
    assert [line.get_label() for line in routing.axes[0].lines] == ["poh H train", "poh L train"]  # plain: none
    np.testing.assert_allclose(routing.axes[1].lines[1].get_ydata(), [0.05, 0.1, 0.15, 0.2])
    assert plot_run.draw_figure(plot_run.FIGURES["routing"], metrics[1:]) is None


def test_cli_writes_valid_pngs(runs, tmp_path, capsys):
    out = tmp_path / "plots"
    assert plot_run.main([*runs, "--out", str(out)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = ["losses", "accuracy", "lr", "routing"]
    assert printed == [str(out / f"plot_{name}.png") for name in names]
    assert sorted(os.listdir(out)) == sorted(f"plot_{name}.png" for name in names)  # no temporary files
    for path in printed:
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] == 400 and image.shape[1] >= 600


def test_sample_evaluations_are_hollow_markers_and_whole_split_ones_filled(tmp_path):
    # eval_max_examples: samples of the test split between rounds, the whole split at the end.
    rows = [training_row(10, False), {"step": 10, "sample/all/exact_accuracy": 0.2, "sample/all/lm_loss": 0.5},
            training_row(20, False), {"step": 20, "sample/all/exact_accuracy": 0.4, "sample/all/lm_loss": 0.4},
            training_row(30, False), evaluation_row(30, 0.3)]
    run = plot_run.read_run(write_run(tmp_path / "sampled", rows))
    assert run.evaluation_sets() == ["all"]
    exact_axes = plot_run.draw_figure(plot_run.FIGURES["accuracy"], [run]).axes[1]
    lines = {line.get_label(): line for line in exact_axes.lines}
    assert sorted(lines) == ["sampled all", "sampled all (sample)", "sampled train"]
    np.testing.assert_allclose(lines["sampled all (sample)"].get_xdata(), [10, 20])
    np.testing.assert_allclose(lines["sampled all (sample)"].get_ydata(), [0.2, 0.4])
    np.testing.assert_allclose(lines["sampled all"].get_ydata(), [0.3])
    sample, whole = lines["sampled all (sample)"], lines["sampled all"]
    assert sample.get_marker() == whole.get_marker() and sample.get_color() == whole.get_color()
    assert sample.get_markerfacecolor() == "none" and whole.get_markerfacecolor() != "none"
    assert [text.get_text() for text in exact_axes.get_legend().get_texts()] == [
        "sampled train", "sampled all", "sampled all (sample)"]


def test_default_folder_is_the_first_run_and_routing_only_when_logged(runs, capsys):
    assert plot_run.main([runs[1]]) == 0
    assert capsys.readouterr().out.splitlines() == [json.dumps(os.path.join(runs[1], f"plot_{name}.png"))
                                                    for name in ("losses", "accuracy", "lr")]


def test_bad_input_is_one_error_line(tmp_path, capsys):
    assert plot_run.main([str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {tmp_path / 'absent'}: run folder not found"]
    os.makedirs(tmp_path / "empty")
    assert plot_run.main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {tmp_path / 'empty' / 'metrics.jsonl'}: file not found"]
    broken = write_run(tmp_path / "broken", [training_row(10, False)])
    with open(os.path.join(broken, "metrics.jsonl"), "a") as f:
        f.write('{"step": 20, "train/lm_loss": \n')
    assert plot_run.main([broken]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {broken}/metrics.jsonl, line 2: not valid JSON")


def test_a_line_torn_by_a_crash_is_skipped(tmp_path):
    # A killed run's last row can be cut short, without its newline.
    run_dir = write_run(tmp_path / "killed", [training_row(10, False), training_row(20, False)])
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 30, "train/lm_loss": 0.0')
    assert sorted(plot_run.read_run(run_dir).rows) == [10, 20]
