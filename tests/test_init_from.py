"""init_from: a new run from another run's weights, puzzle-embedding rows matched by identifier name between
two tiny datasets that share some puzzles; the one-line refusals; freeze_weights; resume keeps its weights."""
import os

import pytest
import torch

from dataset.format import read_identifiers
from models.checkpoint import CheckpointError
from models.config_validation import ConfigError
from training import run_folder
from training.build import create_model, read_metadata
from training.distributed import DistributedContext
from training.init_from import init_from_checkpoint
from training.loop import create_train_state, run_training, train_step
from training.train_state import TrainProgress

from tiny_runs import make_config, read_metrics, write_tiny_dataset

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))
EMBEDDING = "model.inner.puzzle_emb.weights"
OLD_NAMES = ("<blank>", "a", "b", "c")
NEW_NAMES = ("<blank>", "c", "d", "a", "e")  # shares <blank>, a and c with the old dataset, at other ids


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_from_data")
    return write_tiny_dataset(str(root / "old"), OLD_NAMES), write_tiny_dataset(str(root / "new"), NEW_NAMES)


def model_for(dataset, *overrides):
    config = make_config(dataset, *overrides)
    return create_model(config, read_metadata(config, "train"), CPU)


def save_checkpoint(folder, dataset, step=7, seed=1, manifest=True, *overrides):
    """A step_N of a model for `dataset` with seeded random weights; embedding row i holds i + 1 + seed / 10.
    With `manifest`, the run folder's identifiers.json beside it."""
    model = model_for(dataset, *overrides)
    generator = torch.Generator().manual_seed(seed)
    weights = {key: torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
               for key, value in model.state_dict().items()}
    rows, width = weights[EMBEDDING].shape
    weights[EMBEDDING] = (torch.arange(rows, dtype=torch.float32) + 1 + seed / 10)[:, None].repeat(1, width)
    path = run_folder.save_model_weights(str(folder), step, weights)
    if manifest:
        run_folder.write_identifiers(str(folder), read_identifiers(dataset))
    return path, weights


def assert_network_weights_equal(model, weights):
    for key, value in model.state_dict().items():
        if key != EMBEDDING:
            assert torch.equal(value, weights[key]), key


def test_rows_are_matched_by_name_and_new_ones_keep_the_initialisation(datasets, tmp_path):
    old, new = datasets
    save_checkpoint(tmp_path, old, step=3, seed=5)
    path, weights = save_checkpoint(tmp_path, old, step=7, seed=1)  # the latest: what the folder means
    model = model_for(new)
    assert torch.equal(model.state_dict()[EMBEDDING], torch.zeros(5, 16))  # the reference initialises to zero
    loaded = init_from_checkpoint(model, str(tmp_path), None, new)
    # new ids <blank> c d a e <- old rows 0, 3, (none), 1, (none); old row i holds i + 1.1.
    assert model.state_dict()[EMBEDDING][:, 0].tolist() == pytest.approx([1.1, 4.1, 0, 2.1, 0])
    assert torch.equal(model.state_dict()[EMBEDDING][:, 1:], model.state_dict()[EMBEDDING][:, :1].expand(-1, 15))
    assert_network_weights_equal(model, weights)
    assert (loaded.copied_rows, loaded.new_rows, loaded.path) == (3, 2, path)
    assert loaded.summary() == f"init_from {path}: puzzle-embedding rows matched by identifier name: 3 copied, 2 new"


def test_without_identifiers_sizes_must_agree_or_the_list_be_given(datasets, tmp_path):
    old, new = datasets
    path, weights = save_checkpoint(tmp_path, old, manifest=False)
    with pytest.raises(ConfigError) as refusal:
        init_from_checkpoint(model_for(new), path, None, new)
    assert str(refusal.value) == (
        f"init_from {path}: its puzzle embedding has 4 rows and this dataset 5 identifiers, and it has no "
        f"identifiers.json beside it to match them by name; give its dataset's list with "
        f"init_from_identifiers=PATH/identifiers.json")
    # Given the old dataset's list, the rows are matched by name.
    model = model_for(new)
    loaded = init_from_checkpoint(model, path, os.path.join(old, "identifiers.json"), new)
    assert (loaded.copied_rows, loaded.new_rows, loaded.by_name) == (3, 2, True)
    assert model.state_dict()[EMBEDDING][:, 0].tolist() == pytest.approx([1.1, 4.1, 0, 2.1, 0])
    # Equal sizes load by index.
    model = model_for(old)
    loaded = init_from_checkpoint(model, path, None, old)
    assert loaded.summary() == f"init_from {path}: puzzle-embedding rows taken by index (no identifier list): " \
                               f"4 copied, 0 new"
    assert torch.equal(model.state_dict()[EMBEDDING], weights[EMBEDDING])
    assert_network_weights_equal(model, weights)


def test_a_list_of_another_length_and_a_weight_of_another_shape_are_one_line(datasets, tmp_path):
    old, new = datasets
    path, _ = save_checkpoint(tmp_path, old)
    with pytest.raises(ConfigError) as refusal:
        init_from_checkpoint(model_for(new), path, os.path.join(new, "identifiers.json"), new)
    assert str(refusal.value) == (f"init_from: {new}/identifiers.json lists 5 identifiers, but the puzzle embedding "
                                  f"of {path} has 4 rows")
    model = model_for(new, "arch.hidden_size=64")
    with pytest.raises(CheckpointError) as mismatch:
        init_from_checkpoint(model, path, None, new)
    key = next(k for k, v in model.state_dict().items() if k != EMBEDDING and v.shape != torch.load(path)[k].shape)
    shapes = f"{tuple(torch.load(path)[key].shape)} in the checkpoint and {tuple(model.state_dict()[key].shape)}"
    assert str(mismatch.value) == f"init_from {path}: checkpoint does not match the model: {key} has shape {shapes} " \
                                  f"in the model"
    with pytest.raises(ConfigError, match="^invalid config: .*init_from_identifiers names the identifiers of "
                                          "init_from's checkpoint: set init_from$"):
        make_config(new, "init_from_identifiers=x.json")


def test_freeze_weights_trains_only_the_puzzle_embedding(datasets, tmp_path):
    _, new = datasets
    config = make_config(new, f"checkpoint_path={tmp_path}", "freeze_weights=true", "lr=1e-2")
    state = create_train_state(config, read_metadata(config, "train"), CPU)
    before = {key: value.clone() for key, value in state.base_model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # batches of the tiny task, made here (a loader's worker takes seconds to start)
        inputs = torch.randint(1, 5, (16, 12), generator=generator, dtype=torch.int32)
        batch = dict(inputs=inputs, labels=5 - inputs,
                     puzzle_identifiers=torch.randint(1, 5, (16,), generator=generator, dtype=torch.int32))
        assert train_step(state, batch, config, CPU, 16) is not None
    after = state.base_model.state_dict()
    assert len(state.optimizers) == 1 and not any(p.grad is not None for p in state.base_model.parameters())
    assert all(torch.equal(before[key], after[key]) for key in before if key != EMBEDDING)
    assert not torch.equal(before[EMBEDDING], after[EMBEDDING])  # the used rows took sign-SGD steps
    with pytest.raises(ConfigError, match="^freeze_weights=true trains only the puzzle embedding, but the model has "
                                          r"none \(arch.puzzle_emb_ndim is 0\)$"):
        create_train_state(make_config(new, "freeze_weights=true", "arch.puzzle_emb_ndim=0"),
                           read_metadata(config, "train"), CPU)


@pytest.mark.slow
def test_a_run_from_a_checkpoint_records_its_identifiers_and_a_resume_keeps_its_own_weights(datasets, tmp_path,
                                                                                          capsys):
    old, new = datasets
    path, _ = save_checkpoint(tmp_path / "old_run", old)
    run_dir = str(tmp_path / "new_run")
    run_training(make_config(new, f"checkpoint_path={run_dir}", "epochs=2", f"init_from={path}"), CPU)
    out = capsys.readouterr().out
    assert f"init_from {path}: puzzle-embedding rows matched by identifier name: 3 copied, 2 new\n" in out
    with open(os.path.join(run_dir, "identifiers.json"), "rb") as f, open(os.path.join(new, "identifiers.json"), "rb") as g:
        assert f.read() == g.read()
    rows = read_metrics(run_dir)
    assert not any(key.startswith("arc/") for row in rows for key in row)  # no ARC scores on other tasks
    assert not os.path.exists(os.path.join(run_dir, "step_best"))
    assert rows[0]["step"] == 0 and min(row["step"] for row in rows if "train/lm_loss" in row) == 1  # at step 0
    # Resumed with init_from still set, even to a checkpoint gone since: the run goes on from its own state.
    os.remove(path)
    run_training(make_config(new, f"checkpoint_path={run_dir}", "epochs=4", f"resume={run_dir}", f"init_from={path}"),
                 CPU)
    assert "init_from" not in capsys.readouterr().out
    assert [row["step"] for row in read_metrics(run_dir) if "all/accuracy" in row] == [12, 24]


def test_a_training_state_of_an_ema_run_gives_its_weight_average(datasets, tmp_path):
    old, new = datasets
    _, weights = save_checkpoint(tmp_path, old)
    model = model_for(old)
    average = [torch.full_like(p, 0.5) for p in model.parameters()]
    run_folder.write_train_state(str(tmp_path), run_folder.SavedTrainState(
        model=weights, optimizers=[], progress=TrainProgress(step=7), per_rank=[], config={}, data_fingerprint=None,
        ema={"shadow": average}))
    model = model_for(new)
    loaded = init_from_checkpoint(model, str(tmp_path / "train_state.pt"), None, new)
    assert (loaded.copied_rows, loaded.new_rows) == (3, 2)
    assert all(torch.equal(p, torch.full_like(p, 0.5)) for p in model.parameters())  # the average, not `weights`
    assert model.state_dict()[EMBEDDING][:, 0].tolist() == pytest.approx([1.1, 4.1, 0, 2.1, 0])  # never averaged
