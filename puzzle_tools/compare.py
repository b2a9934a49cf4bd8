"""Compare one metric between two arms of runs (A/B): each arm's runs, mean and standard deviation, Welch's
t-test, Cohen's d and a seeded bootstrap 95% confidence interval of the difference of means; with `--paired`,
also the paired t-test and a paired bootstrap interval over the runs matched by seed.

    python puzzle_tools/compare.py baseline.csv treatment.csv --metric all/exact_accuracy
    python puzzle_tools/compare.py results.csv results.csv --metric all/exact_accuracy --paired \\
        --baseline-filter arch.routing.controller=none --treatment-filter arch.routing.controller=hrm --plot ab.png

The CSVs are as puzzle_tools/sweep.py writes them: one row per run, the metric as a column. Every selected row
is one run (one seed); `--filter KEY=VALUE` keeps the rows of both arms whose column KEY equals VALUE,
`--baseline-filter` and `--treatment-filter` select within one arm (so one sweep CSV can hold both arms), and
`--seeds 0 1 2 3 4` keeps those seeds' runs in both arms (a 5-seed sweep against the same seeds of a 10-seed one).

Statistics (differences are treatment minus baseline):
  std          sample standard deviation (ddof=1)
  Welch's t    scipy.stats.ttest_ind(treatment, baseline, equal_var=False): t, Welch-Satterthwaite df and
               the two-sided p
  Cohen's d    (mean_t - mean_b) / sqrt((s_b^2 + s_t^2) / 2), s^2 with ddof=1
  bootstrap    scipy.stats.bootstrap over the two arms resampled independently, statistic = difference of
               means, percentile method (BCa's jackknife is unstable with the 3-5 seeds of a sweep), 9999
               resamples, random_state = --seed: the same inputs and seed give the same interval
  --paired     the runs are paired by their `seed` column (the same seed in both arms: the same initial
               weights but for the routing controllers, the same data order), and each seed's difference
               d = treatment - baseline is what varies:
    paired t   scipy.stats.ttest_rel(treatment, baseline): t = mean(d) / (std(d) / sqrt(n)), df = n - 1,
               two-sided p
    paired     scipy.stats.bootstrap with paired=True: the same seeds are drawn for both arms (so it is
    bootstrap  the bootstrap of mean(d)), percentile method, 9999 resamples, random_state = --seed

`--json` prints {mean_baseline, mean_treatment, welch_t, p_value, cohens_d, bootstrap_ci95: [low, high],
n_baseline, n_treatment, std_baseline, std_treatment, metric}, with `--paired` also paired: {n_pairs, seeds,
mean_difference, std_difference, t, df, p_value, bootstrap_ci95}. `--plot FILE` writes a PNG: each arm's runs
as points with their mean (with `--paired`, each seed's two runs joined by a line), and the difference of
means with its bootstrap interval (the paired one with `--paired`).

An arm with fewer than two runs, or a metric constant within both arms (the t statistic is undefined), is
one `error:` line and exit status 2, as is a missing file or column, or a value that is not a finite number.
With `--paired`, so are arms whose seeds do not pair up (a seed in one arm only, or in several rows of one
arm) and differences that are the same for every seed (the paired t statistic is undefined).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from command_line import OneLineArgumentParser, UserError, exit_status, run_cli
from dataset.text_file import csv_rows
from training.run_folder import atomic_path

BOOTSTRAP_RESAMPLES = 9999
CONFIDENCE_LEVEL = 0.95
SEED_COLUMN = "seed"  # what --paired pairs the runs by, as puzzle_tools/sweep.py names it


class CompareError(UserError):
    """Bad input; the message names the file, column or arm."""


@dataclasses.dataclass(frozen=True)
class ArmRuns:
    """An arm's selected runs: the metric of each and, when pairing, each one's seed (in the same order)."""
    values: np.ndarray
    seeds: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """The paired statistics over the seeds both arms ran (`differences`: treatment - baseline, per seed)."""
    seeds: Tuple[str, ...]
    differences: np.ndarray
    t: float
    df: int
    p_value: float
    bootstrap_ci95: Tuple[float, float]

    def as_json(self) -> Dict[str, object]:
        return dict(n_pairs=len(self.seeds), seeds=list(self.seeds), mean_difference=float(self.differences.mean()),
                    std_difference=float(self.differences.std(ddof=1)), t=self.t, df=self.df, p_value=self.p_value,
                    bootstrap_ci95=list(self.bootstrap_ci95))


@dataclasses.dataclass(frozen=True)
class Comparison:
    metric: str
    baseline: np.ndarray
    treatment: np.ndarray
    welch_t: float
    welch_df: float
    p_value: float
    cohens_d: float
    bootstrap_ci95: Tuple[float, float]
    paired: Optional[PairedComparison] = None  # with --paired; the arms' runs are then in seed order

    def as_json(self) -> Dict[str, object]:
        figures = dict(metric=self.metric, n_baseline=len(self.baseline), n_treatment=len(self.treatment),
                       mean_baseline=float(self.baseline.mean()), mean_treatment=float(self.treatment.mean()),
                       std_baseline=float(self.baseline.std(ddof=1)), std_treatment=float(self.treatment.std(ddof=1)),
                       welch_t=self.welch_t, p_value=self.p_value, cohens_d=self.cohens_d,
                       bootstrap_ci95=list(self.bootstrap_ci95))
        if self.paired is not None:
            figures["paired"] = self.paired.as_json()
        return figures


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", help="CSV of the baseline arm's runs")
    parser.add_argument("treatment", help="CSV of the treatment arm's runs")
    parser.add_argument("--metric", required=True, help="column to compare, e.g. all/exact_accuracy")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep only rows (of both arms) whose column KEY is VALUE; repeatable")
    parser.add_argument("--baseline-filter", action="append", default=[], metavar="KEY=VALUE",
                        help="like --filter, for the baseline arm only")
    parser.add_argument("--treatment-filter", action="append", default=[], metavar="KEY=VALUE",
                        help="like --filter, for the treatment arm only")
    parser.add_argument("--paired", action="store_true",
                        help=f"pair the runs of the two arms by their {SEED_COLUMN!r} column and add the paired "
                             f"t-test and paired bootstrap interval")
    parser.add_argument("--seeds", nargs="+", metavar="SEED",
                        help="keep only the runs of these seeds, in both arms (e.g. the seeds a shorter sweep shares "
                             "with a longer one)")
    parser.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    parser.add_argument("--plot", metavar="FILE", help="also draw the runs, means and interval into this PNG")
    parser.add_argument("--seed", type=int, default=0, help="random_state of the bootstrap (default %(default)s)")
    return parser.parse_args(argv)


def parse_filters(flag: str, items: Sequence[str]) -> List[Tuple[str, str]]:
    filters = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(f"{flag} {item!r}: expected KEY=VALUE")
        filters.append((key, value))
    return filters


def read_arm(path: str, metric: str, filters: Sequence[Tuple[str, str]], with_seeds: bool = False,
             only_seeds: Optional[Sequence[str]] = None) -> ArmRuns:
    """The metric of every row of `path` that passes the filters (and, `with_seeds`, each row's seed); with
    `only_seeds`, of the rows of those seeds alone, each of which must be there."""
    rows = csv_rows(path, CompareError)
    columns = next(rows, [])
    with_seeds = with_seeds or only_seeds is not None
    for key in [metric] + [key for key, _ in filters] + ([SEED_COLUMN] if with_seeds else []):
        if key not in columns:
            raise CompareError(f"{path}: no column {key!r} (columns: {', '.join(columns) or 'none'})")
    values, seeds = [], []
    for line, fields in enumerate(rows, start=2):
        if not fields:
            continue  # a blank line
        if len(fields) != len(columns):
            raise CompareError(f"{path}, row {line}: {len(fields)} fields, but the header has {len(columns)}")
        row = dict(zip(columns, fields))
        if only_seeds is not None and row[SEED_COLUMN] not in only_seeds:
            continue
        if all(row[key] == value for key, value in filters):
            try:
                value = float(row[metric])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise CompareError(f"{path}, row {line}: {metric} is {row[metric]!r}, not a finite number")
            values.append(value)
            if with_seeds:
                seeds.append(row[SEED_COLUMN])
    missing = [seed for seed in only_seeds or [] if seed not in seeds]
    if missing:
        raise CompareError(f"--seeds: {path} has no selected run of seed {' '.join(missing)}")
    return ArmRuns(np.array(values, dtype=np.float64), tuple(seeds))


def seed_order(seed: str) -> Tuple[int, int, str]:
    """Integer seeds in numeric order, then any others by name."""
    try:
        return (0, int(seed), "")
    except ValueError:
        return (1, 0, seed)


def pair_by_seed(baseline: ArmRuns, treatment: ArmRuns) -> Tuple[ArmRuns, ArmRuns]:
    """Both arms' runs in the order of their common seeds; each seed must be one run of each arm."""
    for arm, runs in (("baseline", baseline), ("treatment", treatment)):
        for seed in sorted(set(runs.seeds), key=seed_order):
            if runs.seeds.count(seed) > 1:
                raise CompareError(f"--paired: seed {seed} is in {runs.seeds.count(seed)} rows of the {arm} arm; "
                                   f"each seed must be one run of each arm (filter the arm to one setting)")
    only = {arm: sorted(set(runs.seeds) - set(other.seeds), key=seed_order)
            for arm, runs, other in (("baseline", baseline, treatment), ("treatment", treatment, baseline))}
    if any(only.values()):
        listed = "; ".join(f"{arm} only: {' '.join(seeds)}" for arm, seeds in only.items() if seeds)
        raise CompareError(f"--paired: the arms' seeds do not pair up ({listed}; --seeds keeps the shared ones)")
    seeds = tuple(sorted(baseline.seeds, key=seed_order))

    def in_seed_order(runs: ArmRuns) -> ArmRuns:
        return ArmRuns(np.array([runs.values[runs.seeds.index(seed)] for seed in seeds]), seeds)
    return in_seed_order(baseline), in_seed_order(treatment)


def difference_of_means(treatment: np.ndarray, baseline: np.ndarray, axis: int = -1) -> np.ndarray:
    return treatment.mean(axis=axis) - baseline.mean(axis=axis)


# Figures that differ by less than this fraction of their size differ by float rounding only (0.3 - 0.2 is
# not 0.2 - 0.1): taken as constant, or the t statistics would divide by rounding noise.
ROUNDING = 1e-9


def is_constant(values: np.ndarray, *arms: np.ndarray) -> bool:
    """Whether `values` are equal but for the float rounding of figures of the size of `arms`' (default: theirs)."""
    scale = max(float(np.abs(arm).max()) for arm in (arms or (values,)))
    return float(np.ptp(values)) <= ROUNDING * scale


def compare(metric: str, baseline: np.ndarray, treatment: np.ndarray, seed: int) -> Comparison:
    for arm, values in (("baseline", baseline), ("treatment", treatment)):
        if len(values) < 2:
            raise CompareError(f"the {arm} arm has {len(values)} run(s) with {metric}; at least 2 per arm are needed")
    if is_constant(baseline) and is_constant(treatment):
        raise CompareError(f"{metric} is constant within both arms (baseline {baseline[0]:g}, treatment "
                           f"{treatment[0]:g}): the t statistic is undefined")
    from scipy import stats  # an optional extra of the package, checked by compare_arms

    with warnings.catch_warnings():
        if np.ptp(baseline) == 0 or np.ptp(treatment) == 0:
            # scipy calls an arm of identical runs (all 100% accurate, say) a precision loss; its variance is exactly 0.
            warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        welch = stats.ttest_ind(treatment, baseline, equal_var=False)
    var_b, var_t = baseline.var(ddof=1), treatment.var(ddof=1)
    cohens_d = (treatment.mean() - baseline.mean()) / np.sqrt((var_b + var_t) / 2)
    interval = stats.bootstrap((treatment, baseline), difference_of_means, n_resamples=BOOTSTRAP_RESAMPLES,
                               confidence_level=CONFIDENCE_LEVEL, method="percentile", vectorized=True,
                               random_state=seed).confidence_interval
    return Comparison(metric, baseline, treatment, float(welch.statistic), float(welch.df), float(welch.pvalue),
                      float(cohens_d), (float(interval.low), float(interval.high)))


def compare_paired(metric: str, baseline: ArmRuns, treatment: ArmRuns, seed: int) -> PairedComparison:
    """The paired t-test and paired bootstrap interval of two arms already in the same seed order."""
    differences = treatment.values - baseline.values
    if is_constant(differences, baseline.values, treatment.values):
        raise CompareError(f"--paired: {metric} treatment - baseline is {differences[0]:g} for every seed: the "
                           f"paired t statistic is undefined")
    from scipy import stats

    test = stats.ttest_rel(treatment.values, baseline.values)
    interval = stats.bootstrap((treatment.values, baseline.values), difference_of_means, paired=True,
                               n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE_LEVEL, method="percentile",
                               vectorized=True, random_state=seed).confidence_interval
    return PairedComparison(baseline.seeds, differences, float(test.statistic), int(test.df), float(test.pvalue),
                            (float(interval.low), float(interval.high)))


def report(result: Comparison, baseline_path: str, treatment_path: str, seed: int) -> str:
    lines = [f"{result.metric}: treatment ({treatment_path}) vs baseline ({baseline_path})",
             f"{'arm':<12}{'n':>4}{'mean':>14}{'std':>14}"]
    for arm, values in (("baseline", result.baseline), ("treatment", result.treatment)):
        lines.append(f"{arm:<12}{len(values):>4}{values.mean():>14.6g}{values.std(ddof=1):>14.6g}")
    low, high = result.bootstrap_ci95
    lines += [f"difference  {result.treatment.mean() - result.baseline.mean():.6g} (treatment - baseline), "
              f"bootstrap 95% CI [{low:.6g}, {high:.6g}] (percentile, {BOOTSTRAP_RESAMPLES} resamples, seed {seed})",
              f"Welch's t   {result.welch_t:.6g}, df {result.welch_df:.4g}, two-sided p {result.p_value:.4g}",
              f"Cohen's d   {result.cohens_d:.6g}"]
    paired = result.paired
    if paired is not None:
        low, high = paired.bootstrap_ci95
        lines += [f"paired      {len(paired.seeds)} seeds ({' '.join(paired.seeds)}): mean difference "
                  f"{paired.differences.mean():.6g} (std {paired.differences.std(ddof=1):.6g}), t {paired.t:.6g}, "
                  f"df {paired.df}, two-sided p {paired.p_value:.4g}",
                  f"            paired bootstrap 95% CI [{low:.6g}, {high:.6g}] (seeds resampled, percentile, "
                  f"{BOOTSTRAP_RESAMPLES} resamples, seed {seed})"]
    return "\n".join(lines)


def plot(result: Comparison, path: str) -> None:
    """Runs and means per arm (left), difference of means with its interval (right); written atomically."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    figure, (runs_axes, diff_axes) = plt.subplots(1, 2, figsize=(8, 4), gridspec_kw=dict(width_ratios=[2, 1]))
    arms = (("baseline", result.baseline), ("treatment", result.treatment))
    # A fixed spread instead of random jitter keeps the picture reproducible.
    offsets = {arm: np.linspace(-0.12, 0.12, len(values)) for arm, values in arms}
    for position, (arm, values) in enumerate(arms):
        runs_axes.scatter(position + offsets[arm], values, alpha=0.7)
        runs_axes.hlines(values.mean(), position - 0.25, position + 0.25, colors="black")
    if result.paired is not None:  # each seed's two runs, joined
        for offset, pair in zip(offsets["baseline"], zip(result.baseline, result.treatment)):
            runs_axes.plot([offset, 1 + offset], pair, color="gray", alpha=0.4, linewidth=1)
    runs_axes.set_xticks([0, 1], [f"{arm} (n={len(values)})" for arm, values in arms])
    runs_axes.set_xlim(-0.6, 1.6)
    runs_axes.set_ylabel(result.metric)
    runs_axes.set_title("runs (bar: mean)")
    difference = result.treatment.mean() - result.baseline.mean()
    paired = result.paired
    low, high = result.bootstrap_ci95 if paired is None else paired.bootstrap_ci95
    diff_axes.errorbar([0], [difference], yerr=[[difference - low], [high - difference]], fmt="o", capsize=6)
    diff_axes.axhline(0, color="gray", linestyle="--")
    diff_axes.set_xticks([0], ["treatment - baseline"])
    diff_axes.set_title(f"difference, bootstrap 95% CI\np = {result.p_value:.3g}, d = {result.cohens_d:.3g}"
                        if paired is None else f"difference,\npaired bootstrap 95% CI\npaired p = {paired.p_value:.3g}")
    figure.tight_layout()
    try:
        with atomic_path(path) as tmp_path:
            figure.savefig(tmp_path, format="png", dpi=120)
    finally:
        plt.close(figure)


def compare_arms(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("scipy") is None:
        raise CompareError("compare.py needs scipy: pip install scipy (or pip install -e '.[plot]')")
    shared = parse_filters("--filter", args.filter)
    baseline = read_arm(args.baseline, args.metric, shared + parse_filters("--baseline-filter", args.baseline_filter),
                        with_seeds=args.paired, only_seeds=args.seeds)
    treatment = read_arm(args.treatment, args.metric,
                         shared + parse_filters("--treatment-filter", args.treatment_filter),
                         with_seeds=args.paired, only_seeds=args.seeds)
    if args.paired:
        baseline, treatment = pair_by_seed(baseline, treatment)
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:  # only --plot needs it
            raise CompareError("--plot needs matplotlib: pip install matplotlib")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
            raise CompareError(f"--plot {args.plot}: its folder does not exist")
    result = compare(args.metric, baseline.values, treatment.values, args.seed)
    if args.paired:
        result = dataclasses.replace(result, paired=compare_paired(args.metric, baseline, treatment, args.seed))
    print(json.dumps(result.as_json(), indent=2) if args.json else report(result, args.baseline, args.treatment,
                                                                         args.seed))
    if args.plot:
        plot(result, args.plot)


def main(argv=None) -> int:
    args = parse_args(argv)
    return exit_status(lambda: compare_arms(args))


if __name__ == "__main__":
    run_cli(main)
