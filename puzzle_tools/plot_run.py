"""Plot training runs from their `metrics.jsonl`: losses, token and exact accuracy with the evaluation
points, the learning rate, and the Pointer-over-Heads routing diagnostics when they were logged.

    python puzzle_tools/plot_run.py RUN_DIR [RUN_DIR ...] [--out DIR]

Every run is drawn on the same figures in its own colour, labelled by its folder name: training figures as
lines, evaluations (`<set>/<metric>`, usually set `all`) as filled markers, and evaluations on a sample of
the test split (`sample/<set>/<metric>`, `eval_max_examples`) as hollow ones labelled "(sample)". Writes plot_losses.png,
plot_accuracy.png, plot_lr.png and, when a run logged routing, plot_routing.png into --out (default: the
first run folder) and prints each written path, quoted. A step logged twice (a run resumed from an earlier
checkpoint logs its steps again) keeps its last values.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from command_line import OneLineArgumentParser, exit_status, run_cli
from puzzle_tools.tool_io import ToolInputError
from training.metrics import EVAL_SAMPLE_PREFIX, TRAIN_PREFIX, logged_routing_levels, routing_metric_name
from training.run_folder import METRICS_FILE, atomic_path, read_metrics

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError:  # a broken install: plots are then reported as not drawn
    Figure = None

EVALUATION_MARKERS = ("o", "s", "^", "D", "v")
METRIC_LINE_STYLES = ("-", "--", ":", "-.")
PANEL_SIZE_INCHES = (6.0, 4.0)


@dataclass(frozen=True)
class Panel:
    title: str
    metrics: Tuple[Tuple[str, str], ...]  # (name after "train/" or "<set>/", legend label)
    with_evaluations: bool = True
    routing_diagnostic: Optional[str] = None  # also this diagnostic of every routed level a run logged


FIGURES: Dict[str, Tuple[Panel, ...]] = {
    "losses": (Panel("LM loss", (("lm_loss", ""),)),
               Panel("Q halt loss", (("q_halt_loss", ""),)),
               Panel("Q continue loss", (("q_continue_loss", ""),))),
    "accuracy": (Panel("token accuracy", (("accuracy", ""),)),
                 Panel("exact accuracy", (("exact_accuracy", ""),))),
    "lr": (Panel("learning rate", (("lr", ""),), with_evaluations=False),),
    "routing": (Panel("routing entropy (mean)", (), with_evaluations=False, routing_diagnostic="entropy_mean"),
                Panel("top-1 head share", (), with_evaluations=False, routing_diagnostic="top1_share")),
}


@dataclass
class RunMetrics:
    name: str  # the run folder's name, the legend label
    rows: Dict[int, Dict[str, float]]  # step -> metric -> value, the last logged value of each

    def series(self, key: str) -> Tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric, by step."""
        points = sorted((step, row[key]) for step, row in self.rows.items() if key in row)
        return np.array([p[0] for p in points], dtype=np.int64), np.array([p[1] for p in points], dtype=np.float64)

    def routing_levels(self, diagnostic: str) -> List[str]:
        """The routed levels whose `diagnostic` the run logged in training."""
        names = {key[len(TRAIN_PREFIX):] for row in self.rows.values() for key in row if key.startswith(TRAIN_PREFIX)}
        return logged_routing_levels(names, diagnostic)

    def evaluation_sets(self) -> List[str]:
        """Sets with evaluation metrics (`<set>/<metric>` keys other than training's, of whole-split or
        sample evaluations)."""
        return sorted({key.removeprefix(EVAL_SAMPLE_PREFIX).split("/")[0] for row in self.rows.values() for key in row
                       if "/" in key and not key.startswith(TRAIN_PREFIX)})


def read_run(run_dir: str) -> RunMetrics:
    """The numeric metrics of a run folder's metrics.jsonl; rows without a step (num_params) are skipped."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isdir(run_dir):
        raise ToolInputError(f"{run_dir}: run folder not found")
    if not os.path.isfile(path):
        raise ToolInputError(f"{path}: file not found")
    rows: Dict[int, Dict[str, float]] = {}
    for row in read_metrics(path):
        if "step" not in row:
            continue
        step = row.pop("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ToolInputError(f"{path}: \"step\" must be an integer, got {step!r}")
        # A repeated step (after a resume) overwrites the values logged before.
        rows.setdefault(step, {}).update(
            (key, float(value)) for key, value in row.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    if not rows:
        raise ToolInputError(f"{path}: no rows with a \"step\"")
    return RunMetrics(os.path.basename(os.path.normpath(run_dir)), rows)


@dataclass
class Series:
    """One line (training) or set of markers (an evaluation set) of a panel."""
    label: str
    steps: np.ndarray
    values: np.ndarray
    style: Dict[str, object]  # matplotlib plot() keywords


def panel_series(panel: Panel, run: RunMetrics) -> List[Series]:
    """What one run shows on a panel: its training curves and evaluation points that were logged."""
    series = []
    metrics = panel.metrics
    if panel.routing_diagnostic is not None:
        metrics += tuple((routing_metric_name(panel.routing_diagnostic, level), level)
                         for level in run.routing_levels(panel.routing_diagnostic))
    for metric_index, (metric, metric_label) in enumerate(metrics):
        label = " ".join(filter(None, [run.name, metric_label]))
        steps, values = run.series(TRAIN_PREFIX + metric)
        if len(steps):
            line_style = METRIC_LINE_STYLES[metric_index % len(METRIC_LINE_STYLES)]
            series.append(Series(f"{label} train", steps, values, dict(linestyle=line_style, linewidth=1.2)))
        if not panel.with_evaluations:
            continue
        for set_index, set_name in enumerate(run.evaluation_sets()):
            marker = EVALUATION_MARKERS[set_index % len(EVALUATION_MARKERS)]
            for prefix, kind, fill in (("", "", {}), (EVAL_SAMPLE_PREFIX, " (sample)", dict(markerfacecolor="none"))):
                steps, values = run.series(f"{prefix}{set_name}/{metric}")
                if len(steps):
                    series.append(Series(f"{label} {set_name}{kind}", steps, values,
                                         dict(linestyle="none", marker=marker, markersize=5, **fill)))
    return series


def draw_figure(panels: Tuple[Panel, ...], runs: List[RunMetrics]):
    """A figure with one axes per panel that has data (each run in its colour), or None when none has."""
    drawn_panels = []
    for panel in panels:
        series = [(run_index, s) for run_index, run in enumerate(runs) for s in panel_series(panel, run)]
        if series:
            drawn_panels.append((panel, series))
    if not drawn_panels:
        return None
    figure = Figure(figsize=(PANEL_SIZE_INCHES[0] * len(drawn_panels), PANEL_SIZE_INCHES[1]), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (panel, series) in enumerate(drawn_panels):
        axes = figure.add_subplot(1, len(drawn_panels), index + 1)
        for run_index, line in series:
            axes.plot(line.steps, line.values, color=f"C{run_index % 10}", label=line.label, **line.style)
        axes.set_title(panel.title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return figure


def plot_runs(run_dirs: List[str], out_dir: str) -> List[str]:
    """Write the figures of the runs into `out_dir`; returns the written paths."""
    if Figure is None:
        raise ToolInputError("matplotlib is not installed (pip install matplotlib)")
    runs = [read_run(run_dir) for run_dir in run_dirs]
    written = []
    for name, panels in FIGURES.items():
        figure = draw_figure(panels, runs)
        if figure is None:
            continue
        path = os.path.join(out_dir, f"plot_{name}.png")
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
        written.append(path)
    return written


def parse_args(argv=None) -> argparse.Namespace:
    summary, _, details = __doc__.partition("\n\n")
    parser = OneLineArgumentParser(description=summary, epilog=details,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help=f"run folders holding {METRICS_FILE}")
    parser.add_argument("--out", metavar="DIR", help="folder for the PNG files (default: the first run folder)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def run() -> None:
        for path in plot_runs(args.run_dirs, args.out or args.run_dirs[0]):
            print(json.dumps(path))

    return exit_status(run)


if __name__ == "__main__":
    run_cli(main)
