"""The atomic output folder every builder writes through: what it replaces, what it refuses, permissions,
killed builds' leftovers and write failures; and the dataset fingerprint."""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from dataset import build_arc_dataset, build_maze_dataset, build_ood_dataset, build_sudoku_dataset
from dataset.common import DatasetBuildError, atomic_output_dir, dataset_fingerprint


def write_dataset_marker(folder):
    os.makedirs(folder / "train", exist_ok=True)
    (folder / "train" / "dataset.json").write_text("{}")


def test_new_folder_gets_mkdir_permissions(tmp_path):
    with atomic_output_dir(str(tmp_path / "out")) as out:
        (open(os.path.join(out, "a.txt"), "w")).close()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o777 & ~umask
    assert os.listdir(tmp_path) == ["out"]


def test_overwrite_replaces_only_empty_or_dataset_folders(tmp_path):
    other = tmp_path / "other"
    os.makedirs(other)
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetBuildError, match="holds something other than a dataset"):
        with atomic_output_dir(str(other), overwrite=True):
            pytest.fail("the build must not start")
    assert (other / "thesis.tex").read_text() == "precious"

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(DatasetBuildError, match="not a folder"):
        with atomic_output_dir(str(a_file), overwrite=True):
            pass
    assert a_file.read_text() == "x"

    dataset = tmp_path / "dataset"
    write_dataset_marker(dataset)
    with atomic_output_dir(str(dataset), overwrite=True) as out:
        write_dataset_marker(type(tmp_path)(out))
        (open(os.path.join(out, "new.txt"), "w")).close()
    assert sorted(os.listdir(dataset)) == ["new.txt", "train"]
    assert sorted(os.listdir(tmp_path)) == ["a_file", "dataset", "other"]  # no temporary folders left


def test_a_folder_appearing_during_the_build_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(DatasetBuildError, match="appeared while the dataset was being built") as error:
        with atomic_output_dir(str(target)) as out:
            (open(os.path.join(out, "built.txt"), "w")).close()
            os.makedirs(target)
            (target / "theirs.txt").write_text("theirs")
    assert os.listdir(target) == ["theirs.txt"]
    kept = str(error.value).rsplit(" ", 1)[-1]
    assert os.listdir(kept) == ["built.txt"]


def test_killed_builds_leave_no_pile_of_temporary_folders(tmp_path):
    # A build killed with SIGKILL cannot clean up; the next build of the same output removes its folder.
    script = ("import os, sys\nfrom dataset.common import atomic_output_dir\n"
              "with atomic_output_dir(sys.argv[1]) as out:\n    os.kill(os.getpid(), 9)\n")
    def leftovers():
        return [name for name in os.listdir(tmp_path) if name.startswith(".out.tmp-")]

    seen = []
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True)
        assert result.returncode == -9
        assert len(leftovers()) == 1 and leftovers()[0] not in seen  # the earlier one was removed
        seen += leftovers()
    with atomic_output_dir(str(tmp_path / "out")):
        assert len(leftovers()) == 1 and leftovers()[0] not in seen  # only this build's own folder
    assert os.listdir(tmp_path) == ["out"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_is_one_error(tmp_path):
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(DatasetBuildError, match="cannot create a folder in"):
            with atomic_output_dir(str(tmp_path / "out")):
                pass
    finally:
        os.chmod(tmp_path, 0o755)


def test_path_under_a_file_and_failing_writes_are_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetBuildError, match="cannot create a folder in"):
        with atomic_output_dir(str(tmp_path / "file" / "out")):
            pass
    with pytest.raises(DatasetBuildError, match="cannot write the dataset beside .*No space left on device"):
        with atomic_output_dir(str(tmp_path / "out")):
            raise OSError(28, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_fingerprint_follows_contents_not_location(tmp_path):
    def build(folder, value):
        write_dataset_marker(folder)
        np.save(folder / "train" / "all__inputs.npy", np.full((4, 3), value, dtype=np.uint8))

    build(tmp_path / "a", 1)
    build(tmp_path / "b", 1)
    build(tmp_path / "c", 2)
    assert dataset_fingerprint(str(tmp_path / "a")) == dataset_fingerprint(str(tmp_path / "b"))
    assert dataset_fingerprint(str(tmp_path / "a")) != dataset_fingerprint(str(tmp_path / "c"))


def test_permission_denied_is_one_error(tmp_path, monkeypatch):
    # As root (CI) chmod cannot make a folder read-only, so the refusal is simulated where it happens.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkdtemp", refuse)
    with pytest.raises(DatasetBuildError, match="cannot create a folder in .*: Permission denied"):
        with atomic_output_dir(str(tmp_path / "out")):
            pass


@pytest.mark.parametrize("builder", [build_arc_dataset, build_maze_dataset, build_sudoku_dataset])
@pytest.mark.parametrize("seed", ["-1", str(2 ** 32), "4e3"])
def test_every_builder_refuses_a_seed_its_random_draws_cannot_take_before_building(builder, seed, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        builder.parse_args(["--output-dir", str(tmp_path / "out"), "--seed", seed])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --seed: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_the_ood_builder_refuses_a_bad_seed_in_every_command(seed, tmp_path, capsys):
    for command in ("maze-size", "sudoku-givens", "subsample"):
        with pytest.raises(SystemExit) as exit_info:
            build_ood_dataset.parse_args([command, "--output-dir", str(tmp_path), "--seed", seed])
        assert exit_info.value.code == 2
        assert "error: argument --seed: must be in 0..4294967295" in capsys.readouterr().err


def test_a_builder_takes_the_largest_seed_numpy_takes():
    assert build_sudoku_dataset.parse_args(["--seed", str(2 ** 32 - 1)]).seed == 2 ** 32 - 1
