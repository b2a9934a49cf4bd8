"""The command-line convention: every input error is a UserError, reported as one `error:` line with exit
status 2; the argument parser fails the same way; no script exits at import."""
import os
import subprocess
import sys

import pytest

import pretrain
from command_line import MissingInputError, OneLineArgumentParser, UserError, exit_status, run_cli
from dataset.atomic_file import FileWriteError
from dataset.common import DatasetBuildError
from dataset.format import DatasetFormatError
from dataset.maze_generator import MazeGenerationError
from models.checkpoint import CheckpointError
from models.config_validation import ConfigError
from puzzle_tools import compare
from puzzle_tools.compare import CompareError
from puzzle_tools.sweep import SweepError
from puzzle_tools.tool_io import ToolInputError
from training.evaluation import EvaluationError
from training.run_folder import RunFolderError
from training.preemption import TrainingInterrupted

from conftest import REPO_ROOT


def raising(error):
    def run():
        raise error
    return run


@pytest.mark.parametrize("error_type", [ConfigError, DatasetFormatError, DatasetBuildError, MazeGenerationError,
                                        CheckpointError, RunFolderError, FileWriteError, ToolInputError, CompareError,
                                        SweepError, MissingInputError, EvaluationError])
def test_every_input_error_is_one_line_and_status_2(error_type, capsys):
    assert issubclass(error_type, UserError)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(raising(error_type("data/x: file not found")))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: data/x: file not found\n"


def test_the_kept_bases_still_catch():
    # Callers that catch the standard types keep catching these.
    assert issubclass(MissingInputError, FileNotFoundError)
    assert all(issubclass(error, ValueError) for error in (ConfigError, DatasetFormatError, CheckpointError,
                                                           ToolInputError))


def test_a_stop_on_a_signal_is_not_an_input_error():
    assert not issubclass(TrainingInterrupted, UserError)


def test_status_passes_through(capsys):
    assert exit_status(lambda: None) == 0
    assert exit_status(lambda: 130) == 130
    assert exit_status(raising(SweepError("--seeds 0 0: a seed is listed twice"))) == 2
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: 1)
    assert exit_info.value.code == 1
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        exit_status(raising(RuntimeError("boom")))
    assert capsys.readouterr().err == "error: --seeds 0 0: a seed is listed twice\n"


FORKING_SCRIPT = """
import os, sys
from command_line import run_cli
def main():
    print("run finished")
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the child exits through Python, which writes out what its copy of stdout holds
    os.waitpid(pid, 0)
run_cli(main)
"""


def test_output_redirected_to_a_file_is_written_once_across_a_fork(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered, as on a cluster
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")])
    log = tmp_path / "log.txt"
    with open(log, "w") as stdout:
        subprocess.run([sys.executable, "-c", FORKING_SCRIPT], stdout=stdout, stderr=subprocess.STDOUT, env=env,
                       check=True, timeout=60)
    assert log.read_text() == "run finished\n"


def test_parser_mistakes_are_one_line(capsys):
    parser = OneLineArgumentParser()
    parser.add_argument("--count", type=int)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--count", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: argument --count: invalid int value: 'many'\n"


def test_pretrain_takes_hydra_overrides_and_explains_them(capsys):
    overrides = ["data=maze", "lr=3e-4", "+arch.extra=1", "~arch.loss", "arch.L_cycles=8", "beta1=-0.5"]
    assert pretrain.parse_overrides(overrides) == overrides
    with pytest.raises(SystemExit) as exit_info:
        pretrain.parse_overrides(["lr=1", "--help"])
    assert exit_info.value.code == 0
    assert "Hydra override" in capsys.readouterr().out


def test_compare_without_scipy_is_a_one_line_error_not_an_exit_at_import(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scipy", None)  # as if scipy were not installed
    csv_path = tmp_path / "runs.csv"
    csv_path.write_text("metric\n0.5\n0.6\n")
    assert compare.main([str(csv_path), str(csv_path), "--metric", "metric"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: compare.py needs scipy: pip install scipy (or pip install -e '.[plot]')"]
