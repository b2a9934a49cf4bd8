"""The atomic writers on a full disk and into paths that cannot be written: one FileWriteError naming the
file, the previous file whole and no temporary file left."""
import os

import pytest
import torch

from dataset.atomic_file import FileWriteError, append_text, atomic_path, write_text
from full_disk import filling_the_disk
from training import run_folder

WEIGHTS = {"w": torch.arange(20000, dtype=torch.float32)}


def folder_contents(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_torch_save_on_a_full_disk_is_one_error_and_keeps_the_previous_weights(tmp_path, monkeypatch):
    path = run_folder.save_model_weights(str(tmp_path), 4, WEIGHTS)
    before = folder_contents(tmp_path)
    monkeypatch.setattr(torch, "save", filling_the_disk(torch.save, path_argument=1))
    with pytest.raises(FileWriteError, match=f"cannot write {path}: .*unexpected pos"):  # torch's RuntimeError
        run_folder.save_model_weights(str(tmp_path), 4, {"w": WEIGHTS["w"] + 1})
    assert folder_contents(tmp_path) == before


def test_a_runtime_error_of_torch_save_names_the_file(tmp_path, monkeypatch):
    def no_space(obj, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed, No space left on device")

    (tmp_path / "train_state.pt").write_bytes(b"previous")
    monkeypatch.setattr(torch, "save", no_space)
    saved = run_folder.SavedTrainState(model=WEIGHTS, optimizers=[], progress=run_folder.TrainProgress(),
                                       per_rank=[{}], config={}, data_fingerprint=None)
    with pytest.raises(FileWriteError, match="train_state.pt: .*PytorchStreamWriter failed writing file"):
        run_folder.write_train_state(str(tmp_path), saved)
    assert folder_contents(tmp_path) == {"train_state.pt": b"previous"}


def test_an_append_on_a_full_disk_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.jsonl")
    append_text(path, '{"step": 1}\n')
    full = filling_the_disk(append_text, path_argument=0, room=5)
    with pytest.raises(FileWriteError, match=f"cannot write {path}: File too large"):
        full(path, '{"step": 2, "loss": 0.5}\n')  # 5 bytes fit: the row is cut back, never left half
    assert open(path).read() == '{"step": 1}\n'
    append_text(path, '{"step": 2}\n')
    assert open(path).read() == '{"step": 1}\n{"step": 2}\n'


@pytest.mark.parametrize("target", ["folder", "under_a_file"])
def test_paths_that_cannot_be_written_are_one_error(tmp_path, target):
    # Root ignores read-only permissions, so an existing folder and a path under a file stand for them.
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("kept")
    path = str(tmp_path / "folder") if target == "folder" else str(tmp_path / "a_file" / "out.txt")
    before = (tmp_path / "a_file").read_text()
    for write in (lambda: write_text(path, "x"), lambda: append_text(path, "x")):
        with pytest.raises(FileWriteError, match=f"cannot write {path}: "):
            write()
    assert (tmp_path / "a_file").read_text() == before and os.listdir(tmp_path / "folder") == []


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(path)) as tmp:
            open(tmp, "w").write("half")
            raise KeyboardInterrupt
    assert folder_contents(tmp_path) == {"out.txt": b"previous"}
