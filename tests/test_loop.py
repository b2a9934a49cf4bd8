"""What the training loop refuses before its first step (a dataset whose splits disagree, a run of no steps),
and its evaluations between rounds on a sample of the test split."""
import os

import numpy as np
import pytest
import torch

from dataset.common import atomic_output_dir
from dataset.format import PuzzleDatasetMetadata, read_split, save_identifiers, save_split
from models.checkpoint import load_model_weights
from training import run_folder
from training.build import create_loader, create_model
from training.distributed import DistributedContext
from training.evaluation import evaluate
from training.loop import run_training
from training.metrics_log import flatten_eval_metrics

from tiny_runs import TINY_OVERRIDES, make_config, pretrain_in_process, read_metrics


def write_dataset(path, train_sets=("all",), train_examples=96, test_seq_len=12, test_vocab_size=6,
                  test_identifiers=4):
    """The tiny task's layout, with the test split's sizes (and its token and identifier values) as given."""
    rng = np.random.default_rng(0)
    splits = (("train", train_sets, train_examples, 12, 6, 4),
              ("test", ("all",), 32, test_seq_len, test_vocab_size, test_identifiers))
    with atomic_output_dir(str(path)) as out:
        for split, sets, n, seq_len, vocab_size, identifiers in splits:
            arrays = {name: dict(inputs=rng.integers(1, vocab_size, (n, seq_len)).astype(np.uint8),
                                 labels=rng.integers(1, vocab_size, (n, seq_len)).astype(np.uint8),
                                 puzzle_identifiers=rng.integers(1, identifiers, n).astype(np.int32),
                                 puzzle_indices=np.arange(n + 1, dtype=np.int32),
                                 group_indices=np.arange(n + 1, dtype=np.int32)) for name in sets}
            metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
                                             seq_len=seq_len, num_puzzle_identifiers=identifiers,
                                             total_groups=n * len(sets), mean_puzzle_examples=1, sets=list(sets))
            save_split(out, split, metadata, arrays)
        save_identifiers(out, ["<blank>", *(f"p{i}" for i in range(1, max(4, test_identifiers)))])
    return str(path)


def refusal(data_path, run_dir, capsys, *overrides):
    status, lines = pretrain_in_process([f"data_path={data_path}", *TINY_OVERRIDES, f"checkpoint_path={run_dir}",
                                         *overrides], capsys)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not os.path.exists(run_dir)  # refused before the run folder is made
    return lines[0]


@pytest.mark.parametrize("test_split, message", [
    (dict(test_seq_len=10), "seq_len 10, the train split's 12"),
    (dict(test_vocab_size=9), "vocab_size 9, more than the train split's 6"),
    (dict(test_identifiers=7), "num_puzzle_identifiers 7, more than the train split's 4"),
])
def test_a_test_split_that_does_not_fit_the_train_split_is_refused_before_training(test_split, message, tmp_path,
                                                                                   capsys):
    data_path = write_dataset(tmp_path / "data", **test_split)
    line = refusal(data_path, tmp_path / "run", capsys)
    assert "the test split does not fit the train split" in line and message in line
    assert os.path.join(data_path, "test", "dataset.json") in line


@pytest.mark.parametrize("overrides, numbers", [
    (["global_batch_size=200"], "global_batch_size (200) is more than a round of the train split yields: 192 "
                                "examples = 96 groups x 1 examples x 2 epoch(s) per round"),
    (["global_batch_size=100", "epochs=1", "eval_interval=null"], "100"),
])
def test_a_run_that_would_take_no_step_is_refused_with_the_numbers(overrides, numbers, tmp_path, tiny_dataset,
                                                                   capsys):
    line = refusal(tiny_dataset, tmp_path / "run", capsys, *overrides)
    assert line.startswith("error: the run would take 0 steps: ") and numbers in line


def test_a_train_split_with_no_sets_is_refused(tmp_path, capsys):
    data_path = write_dataset(tmp_path / "data", train_sets=())
    assert refusal(data_path, tmp_path / "run", capsys).endswith("has no sets: the run would take 0 steps")


@pytest.mark.slow
def test_evaluations_between_rounds_walk_one_seeded_sample_and_the_last_the_whole_split(tiny_dataset, tmp_path):
    cpu = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))
    run_dir = str(tmp_path / "run")
    config = make_config(tiny_dataset, f"checkpoint_path={run_dir}", "epochs=2", "eval_interval=1",
                         "eval_max_examples=5", "checkpoint_every_eval=true", "eval_save_outputs=[inputs]")
    run_training(config, cpu)
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows if "sample/all/exact_accuracy" in row] == [6]
    assert [row["step"] for row in rows if "all/exact_accuracy" in row] == [12]
    # The sample row is exactly the evaluation of that step's weights on the config's 5-example sample
    # (the loader's tests check that the sample is the same on every pass).
    sample_loader, metadata = create_loader(config, "test", cpu, test_set_mode=True, epochs_per_iter=1,
                                            max_examples=5)
    model = create_model(config, metadata, cpu)
    load_model_weights(model, run_folder.read_weights(run_folder.weights_path(run_dir, 6)))
    expected = flatten_eval_metrics(evaluate(model, sample_loader, metadata, cpu), sample=True)
    assert {key: rows_at(rows, 6)[key] for key in expected} == pytest.approx(expected, rel=1e-12)
    # The last evaluation covers every test example (its saved inputs); the sample saved no outputs.
    saved = torch.load(run_folder.predictions_prefix(run_dir, 12) + ".0", weights_only=True)
    assert np.array_equal(saved["inputs"].numpy(), read_split(tiny_dataset, "test").sets["all"].inputs)
    assert not os.path.exists(run_folder.predictions_prefix(run_dir, 6) + ".0")


def rows_at(rows, step):
    """Every figure logged at `step`, its rows merged."""
    return {key: value for row in rows if row.get("step") == step for key, value in row.items()}
