"""The routing smoke command: one line per iteration, slow-update marks, temperature annealing to the floor."""
import math
import re

import pytest

from puzzle_tools import routing_smoke

LINE = re.compile(r"iter +(\d+)  entropy (\S+)  max_prob (\S+)  temp (\S+)  top_heads ([\d,]+)(  H-update)?$")


def run_smoke(capsys, controller, *extra):
    routing_smoke.main(["--controller", controller, "--iterations", "12", "--T", "4", "--topk", "3", "--heads", "8",
                        "--d-model", "64", "--seed", "0", *extra])
    lines = capsys.readouterr().out.splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return [dict(iteration=int(m[1]), entropy=float(m[2]), max_prob=float(m[3]), temperature=float(m[4]),
                 top_heads=[int(h) for h in m[5].split(",")], slow_update=m[6] is not None) for m in matches]


@pytest.mark.parametrize("controller", ["classical", "hrm", "hrm_act"])
def test_one_line_per_iteration_with_annealed_temperature(capsys, controller):
    rows = run_smoke(capsys, controller)
    assert [row["iteration"] for row in rows] == list(range(12))
    # max(0.7, 2.0 * 0.9^i): 2.000, 1.800, 1.620, ... reaches the floor at i = 10.
    expected = [max(0.7, 2.0 * 0.9 ** i) for i in range(12)]
    assert [row["temperature"] for row in rows] == pytest.approx(expected, abs=5e-4)
    assert rows[-1]["temperature"] == rows[-2]["temperature"] == 0.7
    for row in rows:
        # Top-3 routing: the entropy is at most log 3 and the largest weight at least 1/3.
        assert 0 <= row["entropy"] <= math.log(3) + 1e-4
        assert 1 / 3 - 1e-4 <= row["max_prob"] <= 1
        assert len(set(row["top_heads"])) == 3 and all(0 <= h < 8 for h in row["top_heads"])
    # Annealing sharpens the routing.
    assert rows[-1]["entropy"] < rows[0]["entropy"] and rows[-1]["max_prob"] > rows[0]["max_prob"]


def test_hrm_marks_slow_updates_every_T_iterations(capsys):
    rows = run_smoke(capsys, "hrm")
    assert [row["iteration"] for row in rows if row["slow_update"]] == [0, 4, 8]
    rows = run_smoke(capsys, "hrm", "--T", "5")
    assert [row["iteration"] for row in rows if row["slow_update"]] == [0, 5, 10]


def test_hrm_act_marks_its_own_slow_updates(capsys):
    # A fresh halting gate says p = 1/4 everywhere: an update on the first call and then every fourth.
    rows = run_smoke(capsys, "hrm_act")
    assert [row["iteration"] for row in rows if row["slow_update"]] == [0, 4, 8]
    rows = run_smoke(capsys, "hrm_act", "--max-ponders", "3")
    assert [row["iteration"] for row in rows if row["slow_update"]] == [0, 3, 6, 9]


def test_classical_controller_has_no_slow_state(capsys):
    assert not any(row["slow_update"] for row in run_smoke(capsys, "classical"))


def test_same_seed_same_output(capsys):
    assert run_smoke(capsys, "hrm_act") == run_smoke(capsys, "hrm_act")
    assert run_smoke(capsys, "hrm_act", "--seed", "1") != run_smoke(capsys, "hrm_act")


def test_bad_width_is_rejected(capsys):
    with pytest.raises(SystemExit):
        routing_smoke.main(["--heads", "5", "--d-model", "64"])
    assert "divisible" in capsys.readouterr().err
