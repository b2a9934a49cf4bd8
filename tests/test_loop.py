"""What the training loop refuses before its first step (a dataset whose splits disagree, a run of no steps),
and the arms of a routing A/B, which differ only in their controllers; its evaluations between rounds on a
sample of the test split."""
import os

import numpy as np
import pytest
import torch

from dataset.common import atomic_output_dir
from dataset.format import PuzzleDatasetMetadata, read_split, save_identifiers, save_split
from models.checkpoint import load_model_weights
from training import run_folder
from training.build import create_loader, create_model, read_metadata
from training.distributed import DistributedContext
from training.evaluation import evaluate
from training.loop import create_train_state, run_training, train_step
from training.metrics_log import flatten_eval_metrics

from tiny_runs import TINY_OVERRIDES, make_config, pretrain_in_process, read_metrics

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


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


def ab_arm(data_path, controller, *overrides):
    """A run's config and training state as pretrain.py builds them: the plain arm is hrm_v1."""
    if controller == "none":
        config = make_config(data_path, *overrides)
    else:
        config = make_config(data_path, f"arch.routing.controller={controller}", *overrides, arch="hrm_poh")
    torch.manual_seed(config.seed)  # as train_in_run_folder seeds rank 0
    return config, create_train_state(config, read_metadata(config, "train"), CPU)


def train_batches_of(config, count):
    loader, _ = create_loader(config, "train", CPU, test_set_mode=False, epochs_per_iter=config.epochs_per_round)
    batches = []
    for batch in loader.dataset:  # the loader's own iteration, without its worker process
        batches.append(batch)
        if len(batches) == count:
            return batches


def test_the_encoder_clip_is_off_by_default_as_in_the_reference(tiny_dataset):
    assert make_config(tiny_dataset).routing.encoder_clip is None
    assert make_config(tiny_dataset, arch="hrm_poh").routing.encoder_clip is None


@pytest.mark.parametrize("controller, encoder_clip", [("classical", "1e-3"), ("hrm", "1e-3"), ("hrm_act", "1e-3"),
                                                     ("hrm", "null")])
def test_the_arms_of_a_routing_ab_differ_only_in_the_controller(tiny_dataset, controller, encoder_clip):
    # With controllers that route uniformly (a zero last layer, kept by the warm-up freeze), a routed arm is the
    # plain model: same initial weights (paired seeds), data, clip, optimizer and schedules give the plain arm's
    # weights bit for bit, step after step.
    overrides = [f"routing.encoder_clip={encoder_clip}", "routing.warmup_epochs=5", "routing.schedule_epoch_steps=1"]
    arms = {name: ab_arm(tiny_dataset, name, *overrides) for name in ("none", controller)}
    routers = arms[controller][1].base_model.routers().values()
    assert len(routers) == 2
    for router in routers:
        with torch.no_grad():
            router.router[-1].weight.zero_()
            router.router[-1].bias.zero_()
    norms = {}
    for name, (config, state) in arms.items():
        shared, adam = state.shared_weights, state.optimizers[-1]
        norms[name] = []
        real_step = adam.step

        def step_recording_the_norm(*args, real_step=real_step, shared=shared, seen=norms[name], **kwargs):
            seen.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in shared])).item())
            return real_step(*args, **kwargs)
        adam.step = step_recording_the_norm
        for _, batch, global_batch_size in train_batches_of(config, 3):
            train_step(state, batch, config, CPU, global_batch_size)
    assert norms["none"] == norms[controller] and len(norms["none"]) == 3
    if encoder_clip == "1e-3":
        assert norms["none"] == pytest.approx([1e-3] * 3, rel=1e-5)
    else:
        assert min(norms["none"]) > 1e-2  # not clipped
    plain = arms["none"][1].base_model.state_dict()
    routed = arms[controller][1].base_model.state_dict()
    assert all(torch.equal(plain[key], routed[key]) for key in plain)
    assert torch.equal(arms["none"][1].carry.inner_carry.z_H, arms[controller][1].carry.inner_carry.z_H)


def test_the_arms_of_a_routing_ab_see_the_same_data_in_the_same_order(tiny_dataset):
    plain = train_batches_of(make_config(tiny_dataset), 6)
    routed = train_batches_of(make_config(tiny_dataset, "arch.routing.controller=hrm", arch="hrm_poh"), 6)
    for (_, a, size_a), (_, b, size_b) in zip(plain, routed, strict=True):
        assert size_a == size_b and all(torch.equal(a[key], b[key]) for key in a)
    other_seed = train_batches_of(make_config(tiny_dataset, "seed=1"), 6)
    assert not all(torch.equal(a["inputs"], b["inputs"]) for (_, a, _), (_, b, _) in zip(plain, other_seed))


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
