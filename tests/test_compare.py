"""puzzle_tools/compare.py: Welch's t, Cohen's d and the bootstrap interval against hand computations; arm
selection; degenerate and bad inputs; the plot."""
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from puzzle_tools import compare

METRIC = "all/exact_accuracy"


def write_csv(path, rows, columns=("config_id", "seed", "arch.routing.controller", METRIC)):
    path.write_text("\n".join([",".join(columns)] + [",".join(map(str, row)) for row in rows]) + "\n")
    return str(path)


def arm_csv(path, values, controller="none"):
    return write_csv(path, [(f"controller-{controller}", seed, controller, v) for seed, v in enumerate(values)])


def run_json(capsys, *argv):
    assert compare.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def arms(tmp_path):
    return arm_csv(tmp_path / "b.csv", [1, 2, 3, 4]), arm_csv(tmp_path / "t.csv", [3, 4, 5, 6, 7], "hrm")


def test_statistics_match_the_hand_formulas(arms, capsys):
    result = run_json(capsys, *arms, "--metric", METRIC)
    assert set(result) == {"metric", "n_baseline", "n_treatment", "mean_baseline", "mean_treatment", "std_baseline",
                           "std_treatment", "welch_t", "p_value", "cohens_d", "bootstrap_ci95"}
    # Baseline 1..4: mean 2.5, s^2 = 5/3. Treatment 3..7: mean 5, s^2 = 10/4 = 2.5.
    var_b, var_t = 5 / 3, 2.5
    assert (result["n_baseline"], result["n_treatment"]) == (4, 5)
    assert result["mean_baseline"] == 2.5 and result["mean_treatment"] == 5.0
    assert result["std_baseline"] == pytest.approx(math.sqrt(var_b))
    assert result["std_treatment"] == pytest.approx(math.sqrt(var_t))
    se_b, se_t = var_b / 4, var_t / 5
    t = 2.5 / math.sqrt(se_b + se_t)
    df = (se_b + se_t) ** 2 / (se_b ** 2 / 3 + se_t ** 2 / 4)  # Welch-Satterthwaite
    assert t == pytest.approx(2.6111648, rel=1e-7) and df == pytest.approx(6.9807692, rel=1e-7)
    assert result["welch_t"] == pytest.approx(t, rel=1e-12)
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(t, df), rel=1e-10)
    # d = 2.5 / sqrt((5/3 + 5/2) / 2) = 2.5 / sqrt(25/12) = sqrt(3)
    assert result["cohens_d"] == pytest.approx(math.sqrt(3), rel=1e-12)

    low, high = result["bootstrap_ci95"]
    assert low < 2.5 < high
    # The percentile interval of the difference of means, as an independent resampling sees it.
    rng = np.random.default_rng(123)
    baseline, treatment = np.array([1, 2, 3, 4.0]), np.array([3, 4, 5, 6, 7.0])
    diffs = (rng.choice(treatment, (40000, 5)).mean(1) - rng.choice(baseline, (40000, 4)).mean(1))
    assert low == pytest.approx(np.percentile(diffs, 2.5), abs=0.1)
    assert high == pytest.approx(np.percentile(diffs, 97.5), abs=0.1)
    # Seeded: the same seed gives the same interval, another seed another one.
    assert run_json(capsys, *arms, "--metric", METRIC)["bootstrap_ci95"] == [low, high]
    assert run_json(capsys, *arms, "--metric", METRIC, "--seed", "7")["bootstrap_ci95"] != [low, high]

    assert compare.main([*arms, "--metric", METRIC]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:4] == [f"{'arm':<12}{'n':>4}{'mean':>14}{'std':>14}",
                          f"{'baseline':<12}{4:>4}{2.5:>14.6g}{math.sqrt(var_b):>14.6g}",
                          f"{'treatment':<12}{5:>4}{5.0:>14.6g}{math.sqrt(2.5):>14.6g}"]
    assert lines[4] == (f"difference  2.5 (treatment - baseline), bootstrap 95% CI [{low:.6g}, {high:.6g}] "
                        f"(percentile, 9999 resamples, seed 0)")
    assert lines[5] == f"Welch's t   2.61116, df 6.981, two-sided p {2 * stats.t.sf(t, df):.4g}"
    assert lines[6] == "Cohen's d   1.73205"


def test_filters_pick_each_arm_out_of_one_sweep_csv(tmp_path, capsys):
    columns = ("config_id", "seed", "arch.routing.controller", "arch.routing.topk", METRIC)
    path = write_csv(tmp_path / "sweep.csv", [
        ("a", 0, "none", "null", 0.50), ("a", 1, "none", "null", 0.60), ("a", 2, "none", "null", 0.70),
        ("b", 0, "hrm", "null", 0.80), ("b", 1, "hrm", "null", 0.90),
        ("c", 0, "hrm", "4", 0.10), ("c", 1, "hrm", "4", 0.20), ("d", 0, "none", "4", 0.0)], columns)
    result = run_json(capsys, path, path, "--metric", METRIC, "--filter", "arch.routing.topk=null",
                      "--baseline-filter", "arch.routing.controller=none",
                      "--treatment-filter", "arch.routing.controller=hrm")
    assert (result["n_baseline"], result["n_treatment"]) == (3, 2)
    assert result["mean_baseline"] == pytest.approx(0.6) and result["mean_treatment"] == pytest.approx(0.85)


@pytest.mark.parametrize("baseline, treatment, argv, message", [
    ([1.0], [2.0, 3.0], [], f"error: the baseline arm has 1 run(s) with {METRIC}; at least 2 per arm are needed"),
    ([1.0, 2.0], [], [], f"error: the treatment arm has 0 run(s) with {METRIC}; at least 2 per arm are needed"),
    ([0.5, 0.5, 0.5], [0.75, 0.75], [],
     f"error: {METRIC} is constant within both arms (baseline 0.5, treatment 0.75): the t statistic is undefined"),
    ([0.1 + 0.2, 0.3, 0.3], [0.75, 0.75], [],  # equal but for float rounding: t would divide by noise
     f"error: {METRIC} is constant within both arms (baseline 0.3, treatment 0.75): the t statistic is undefined"),
    ([1.0, 2.0], [2.0, 3.0], ["--filter", "seed"], "error: --filter 'seed': expected KEY=VALUE"),
    ([1.0, 2.0], [2.0, 3.0], ["--baseline-filter", "topk=4"],
     f"error: {{b}}: no column 'topk' (columns: config_id, seed, arch.routing.controller, {METRIC})"),
    ([1.0, 2.0], [2.0, 3.0], ["--plot", "/nonexistent/folder/ab.png"],
     "error: --plot /nonexistent/folder/ab.png: its folder does not exist"),
])
def test_degenerate_and_bad_inputs_are_one_line_errors(tmp_path, capsys, baseline, treatment, argv, message):
    b, t = arm_csv(tmp_path / "b.csv", baseline), arm_csv(tmp_path / "t.csv", treatment, "hrm")
    assert compare.main([b, t, "--metric", METRIC, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [message.format(b=b)] and captured.out == ""


def test_missing_files_columns_and_values_name_themselves(tmp_path, capsys):
    b, t = arm_csv(tmp_path / "b.csv", [1, 2]), arm_csv(tmp_path / "t.csv", [2, 3])
    assert compare.main([b, str(tmp_path / "absent.csv"), "--metric", METRIC]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {tmp_path / 'absent.csv'}: file not found"]
    assert compare.main([b, t, "--metric", "all/accuracy"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {b}: no column 'all/accuracy' (columns: config_id, seed, arch.routing.controller, {METRIC})"]
    empty = write_csv(tmp_path / "e.csv", [("a", 0, "hrm", 0.5), ("a", 1, "hrm", "")])
    assert compare.main([b, empty, "--metric", METRIC]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {empty}, row 3: {METRIC} is '', not a finite number"]
    nan = write_csv(tmp_path / "n.csv", [("a", 0, "hrm", "nan"), ("a", 1, "hrm", 0.5)])
    assert compare.main([b, nan, "--metric", METRIC]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {nan}, row 2: {METRIC} is 'nan', not a finite number"]


def test_usage_mistakes_are_one_line_errors(arms, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main([*arms])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: the following arguments are required: --metric"]


def test_one_constant_arm_is_fine(tmp_path, capsys):
    b, t = arm_csv(tmp_path / "b.csv", [0.5, 0.5, 0.5]), arm_csv(tmp_path / "t.csv", [0.6, 0.8])
    result = run_json(capsys, b, t, "--metric", METRIC)
    # s_b = 0: t = 0.2 / sqrt(0.02 / 2), d = 0.2 / sqrt(0.02 / 2).
    assert result["welch_t"] == pytest.approx(2.0) and result["cohens_d"] == pytest.approx(2.0)
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(2.0, 1))  # df = 1: all variance in the 2-run arm


def test_plot_writes_a_png_atomically(arms, tmp_path, capsys):
    import matplotlib.image

    assert compare.main([*arms, "--metric", METRIC, "--plot", str(tmp_path / "ab.png")]) == 0
    image = matplotlib.image.imread(str(tmp_path / "ab.png"))
    assert image.shape[:2] == (480, 960)  # 8 x 4 inches at 120 dpi
    assert sorted(os.listdir(tmp_path)) == ["ab.png", "b.csv", "t.csv"]  # no temporary file left


def test_a_row_missing_the_metric_is_one_line_naming_the_row(tmp_path, capsys):
    b = arm_csv(tmp_path / "b.csv", [1, 2, 3])
    short = tmp_path / "short.csv"
    short.write_text(f"config_id,seed,{METRIC}\na,0,0.5\na,1\na,2,0.7\n")  # row 3 was cut off before its metric
    assert compare.main([b, str(short), "--metric", METRIC]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {short}, row 3: 2 fields, but the header has 3"]


@pytest.mark.parametrize("target", ["folder", "file"])
def test_a_plot_that_cannot_be_written_is_one_line_after_the_statistics(arms, tmp_path, capsys, monkeypatch, target):
    import matplotlib.figure

    plot = tmp_path / "ab.png"
    if target == "folder":
        plot.mkdir()  # an existing folder in the plot's place (root ignores read-only permissions)
    else:
        plot.write_bytes(b"previous plot")

        def no_space(figure, path, **kwargs):
            with open(path, "wb") as f:
                f.write(b"half a png")
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", no_space)
    assert compare.main([*arms, "--metric", METRIC, "--plot", str(plot), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n_baseline"] == 4  # the statistics are printed before the plot is drawn
    reason = "Is a directory" if target == "folder" else "No space left on device"
    assert captured.err.strip().splitlines() == [f"error: cannot write {plot}: {reason}"]
    assert plot.is_dir() if target == "folder" else plot.read_bytes() == b"previous plot"
    assert sorted(os.listdir(tmp_path)) == ["ab.png", "b.csv", "t.csv"]


def seeded_csv(path, seeds_and_values, controller):
    return write_csv(path, [(f"controller-{controller}", seed, controller, value) for seed, value in seeds_and_values])


@pytest.fixture
def paired_arms(tmp_path):
    # The treatment's rows come in another seed order: pairing goes by the seed column, not by row.
    return (seeded_csv(tmp_path / "b.csv", [(0, 10), (1, 20), (2, 30), (3, 40)], "none"),
            seeded_csv(tmp_path / "t.csv", [(3, 46), (1, 22), (0, 11), (2, 33)], "hrm"))


def test_paired_statistics_match_the_hand_formulas(paired_arms, capsys):
    result = run_json(capsys, *paired_arms, "--metric", METRIC, "--paired")
    paired = result["paired"]
    assert set(paired) == {"n_pairs", "seeds", "mean_difference", "std_difference", "t", "df", "p_value",
                           "bootstrap_ci95"}
    # Per seed 0..3, d = 1, 2, 3, 6: mean 3, s^2 = (4 + 1 + 0 + 9) / 3 = 14/3, t = 3 / (s / 2) = 6 sqrt(3/14).
    assert (paired["n_pairs"], paired["seeds"], paired["df"]) == (4, ["0", "1", "2", "3"], 3)
    assert paired["mean_difference"] == 3.0 and paired["std_difference"] == pytest.approx(math.sqrt(14 / 3))
    t = 6 * math.sqrt(3 / 14)
    assert t == pytest.approx(2.7774603, rel=1e-7)
    assert paired["t"] == pytest.approx(t, rel=1e-12)
    assert paired["p_value"] == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-10)
    assert paired["p_value"] == pytest.approx(0.0691369, rel=1e-5)
    # The unpaired figures are still there, of the same runs: the pairing is what makes the difference clear.
    assert result["mean_baseline"] == 25.0 and result["mean_treatment"] == 28.0 and result["p_value"] > 0.7

    # The paired bootstrap draws the same seeds for both arms: it is the bootstrap of the mean difference.
    low, high = paired["bootstrap_ci95"]
    def alone(seed):
        interval = stats.bootstrap((np.array([1.0, 2, 3, 6]),), np.mean, n_resamples=9999, method="percentile",
                                   random_state=seed).confidence_interval
        return [interval.low, interval.high]
    assert [low, high] == alone(0)
    rng = np.random.default_rng(123)
    means = rng.choice([1.0, 2, 3, 6], (40000, 4)).mean(1)
    assert low == pytest.approx(np.percentile(means, 2.5), abs=0.3)
    assert high == pytest.approx(np.percentile(means, 97.5), abs=0.3)
    assert run_json(capsys, *paired_arms, "--metric", METRIC, "--paired", "--seed", "7")["paired"]["bootstrap_ci95"] \
        == alone(7)
    assert "paired" not in run_json(capsys, *paired_arms, "--metric", METRIC)

    assert compare.main([*paired_arms, "--metric", METRIC, "--paired"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        f"paired      4 seeds (0 1 2 3): mean difference 3 (std {math.sqrt(14 / 3):.6g}), t 2.77746, df 3, "
        f"two-sided p {2 * stats.t.sf(t, 3):.4g}",
        f"            paired bootstrap 95% CI [{low:.6g}, {high:.6g}] (seeds resampled, percentile, 9999 resamples, "
        f"seed 0)"]


def test_paired_arms_from_one_sweep_csv_and_a_plot(tmp_path, capsys):
    import matplotlib.image

    # A sweep CSV as sweep.py writes it now (with the device column): both arms filtered out of it.
    columns = ("config_id", "seed", "arch.routing.controller", "device", METRIC)
    path = write_csv(tmp_path / "sweep.csv", [
        ("controller-none", 0, "none", "NVIDIA H200", 0.5), ("controller-hrm", 0, "hrm", "NVIDIA H200", 0.75),
        ("controller-none", 1, "none", "NVIDIA H200", 0.25), ("controller-hrm", 1, "hrm", "NVIDIA H200", 0.375)],
        columns)
    result = run_json(capsys, path, path, "--metric", METRIC, "--paired", "--plot", str(tmp_path / "ab.png"),
                      "--baseline-filter", "arch.routing.controller=none",
                      "--treatment-filter", "arch.routing.controller=hrm")
    assert result["paired"]["seeds"] == ["0", "1"] and result["paired"]["mean_difference"] == 0.1875
    assert matplotlib.image.imread(str(tmp_path / "ab.png")).shape[:2] == (480, 960)


@pytest.mark.parametrize("baseline, treatment, message", [
    ([(0, 1.0), (1, 2.0), (2, 3.0)], [(0, 1.5), (1, 2.0), (3, 3.5)],
     "error: --paired: the arms' seeds do not pair up (baseline only: 2; treatment only: 3; --seeds keeps the shared "
     "ones)"),
    ([(0, 1.0), (1, 2.0)], [(0, 1.5), (1, 2.0), (2, 2.5), (10, 1.0)],
     "error: --paired: the arms' seeds do not pair up (treatment only: 2 10; --seeds keeps the shared ones)"),
    ([(0, 1.0), (1, 2.0), (1, 3.0)], [(0, 1.5), (1, 2.5)],
     "error: --paired: seed 1 is in 2 rows of the baseline arm; each seed must be one run of each arm "
     "(filter the arm to one setting)"),
    ([(0, 1.0), (1, 2.0), (2, 4.0)], [(0, 1.5), (1, 2.5), (2, 4.5)],
     f"error: --paired: {METRIC} treatment - baseline is 0.5 for every seed: the paired t statistic is undefined"),
    ([(0, 0.1), (1, 0.2), (2, 0.3)], [(0, 0.2), (1, 0.3), (2, 0.4)],  # 0.1, 0.09999999999999998, 0.10000000000000003
     f"error: --paired: {METRIC} treatment - baseline is 0.1 for every seed: the paired t statistic is undefined"),
])
def test_paired_arms_whose_seeds_do_not_pair_up_are_one_line_errors(tmp_path, capsys, baseline, treatment, message):
    b, t = seeded_csv(tmp_path / "b.csv", baseline, "none"), seeded_csv(tmp_path / "t.csv", treatment, "hrm")
    assert compare.main([b, t, "--metric", METRIC, "--paired"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [message] and captured.out == ""


def test_paired_needs_a_seed_column(tmp_path, capsys):
    no_seeds = write_csv(tmp_path / "b.csv", [("a", 1.0), ("a", 2.0)], columns=("config_id", METRIC))
    assert compare.main([no_seeds, no_seeds, "--metric", METRIC, "--paired"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {no_seeds}: no column 'seed' (columns: config_id, {METRIC})"]
    # Without --paired, the same file compares as before.
    assert compare.main([no_seeds, no_seeds, "--metric", METRIC]) == 0


def test_seeds_keep_the_shared_seeds_of_a_longer_sweep(tmp_path, capsys):
    # A 3-seed treatment against a 5-seed baseline: --seeds pairs the 3, as if the baseline had run those alone.
    longer = seeded_csv(tmp_path / "b.csv", [(0, 10), (1, 20), (2, 30), (3, 90), (4, 0)], "none")
    shorter = seeded_csv(tmp_path / "t.csv", [(2, 33), (0, 11), (1, 22)], "hrm")
    alone = seeded_csv(tmp_path / "b3.csv", [(0, 10), (1, 20), (2, 30)], "none")
    picked = run_json(capsys, longer, shorter, "--metric", METRIC, "--paired", "--seeds", "0", "1", "2")
    assert picked == run_json(capsys, alone, shorter, "--metric", METRIC, "--paired")
    assert picked["paired"]["seeds"] == ["0", "1", "2"] and picked["paired"]["mean_difference"] == 2.0
    assert (picked["n_baseline"], picked["mean_baseline"]) == (3, 20.0)
    # Unpaired too: the Welch figures of the same 3 baseline runs.
    assert run_json(capsys, longer, shorter, "--metric", METRIC, "--seeds", "0", "1", "2")["mean_baseline"] == 20.0
    # A seed that one arm lacks is named, never dropped silently.
    assert compare.main([longer, shorter, "--metric", METRIC, "--seeds", "0", "3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: --seeds: {shorter} has no selected run of seed 3"]
