"""Gradient accumulation: steps over micro-batches give the whole batch's weights, carry and logged figures
(exploration on or off), bad values fail at start-up, `auto` picks the fewest micro-batches that fit, and a
resumed run may change their number."""
import os
import re

import pytest
import torch
from torch.utils._pytree import tree_leaves

from dataset.format import PuzzleDatasetMetadata
from models.config_validation import ConfigError
from models.hrm import LEVELS
from training.distributed import DistributedContext
from training.grad_accumulation import check_grad_accum_steps, choose_grad_accum_steps
from training.loop import create_train_state, resolve_grad_accum_steps, run_training, train_step
from training.resume import compare_configs
from training.metrics import TRAIN_PREFIX, TrainMetrics, routing_metric_name

from tiny_runs import make_config, read_metrics, train_losses

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))
METADATA = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6, seq_len=12,
                                 num_puzzle_identifiers=4, total_groups=96, mean_puzzle_examples=1, sets=["all"])
BATCH = 16
# Tight float32 tolerances: the micro-batches' gradients are summed in another order than the whole batch's.
TOLERANCES = dict(rtol=1e-5, atol=1e-6)


def batches(count):
    generator = torch.Generator().manual_seed(1)
    return [{"inputs": torch.randint(1, 6, (BATCH, 12), generator=generator, dtype=torch.int32),
             "labels": torch.randint(1, 6, (BATCH, 12), generator=generator, dtype=torch.int32),
             "puzzle_identifiers": torch.randint(1, 4, (BATCH,), generator=generator, dtype=torch.int32)}
            for _ in range(count)]


def train(parts, arch, *overrides, steps=4):
    """`steps` steps of a tiny model from the same seed, in `parts` micro-batches; the state and its figures."""
    config = make_config("unused", "checkpoint_path=unused", f"grad_accum_steps={parts}", *overrides, arch=arch)
    torch.manual_seed(0)
    state = create_train_state(config, METADATA, CPU)
    with torch.no_grad():
        # Q head favouring halting: sequences stop after one step unless exploration keeps them going, so
        # the exploration draws decide which sequences continue.
        state.base_model.model.inner.q_head.bias.copy_(torch.tensor([1.0, -1.0]))
    state.model.train()
    metrics = TrainMetrics()
    for batch in batches(steps):
        train_step(state, batch, config, CPU, BATCH, metrics)
    return state, metrics.reduce(CPU, BATCH)


@pytest.mark.parametrize("arch, overrides, parts", [
    ("hrm_v1", ["arch.halt_exploration_prob=0.0"], 4),
    ("hrm_v1", ["arch.halt_exploration_prob=0.5"], 2),
    ("trm", ["arch.halt_exploration_prob=0.5", "arch.L_layers=1", "arch.H_cycles=2", "arch.L_cycles=2"], 4),
    ("hrm_poh", ["arch.halt_exploration_prob=0.5", "arch.routing.controller=hrm", "routing.warmup_epochs=0",
                 "routing.controller_lr=1e-3"], 4),
])
def test_micro_batches_give_the_whole_batch_update(arch, overrides, parts):
    whole, whole_figures = train(1, arch, *overrides)
    split, figures = train(parts, arch, *overrides)
    assert whole_figures["train/steps"] < 2.5  # halting varies, so the exploration draws matter
    whole_state, split_state = whole.base_model.state_dict(), split.base_model.state_dict()
    assert list(whole_state) == list(split_state)
    for name in whole_state:  # every parameter, and the puzzle embedding's table
        torch.testing.assert_close(split_state[name], whole_state[name], **TOLERANCES, msg=name)
    # The carry: the same sequences halted, at the same steps, on the same data; the hidden states, outputs
    # of one more pass through the (float32-close) weights, as close as that allows.
    assert torch.equal(split.carry.halted, whole.carry.halted) and torch.equal(split.carry.steps, whole.carry.steps)
    assert all(torch.equal(split.carry.current_data[k], v) for k, v in whole.carry.current_data.items())
    torch.testing.assert_close(tree_leaves(split.carry.inner_carry), tree_leaves(whole.carry.inner_carry),
                               rtol=1e-4, atol=1e-5)
    # The figures of whole steps; a spread (std) over micro-batches is their mean, not the batch's.
    assert sorted(figures) == sorted(whole_figures)
    spreads = {TRAIN_PREFIX + routing_metric_name("entropy_std", level) for level in LEVELS}
    for name, value in whole_figures.items():
        if name not in spreads:
            assert figures[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


@pytest.mark.slow
def test_a_run_with_micro_batches_ends_with_the_weights_and_losses_of_whole_batches(tiny_dataset, tmp_path):
    finished = {}
    for parts in (1, 4):
        config = make_config(tiny_dataset, f"checkpoint_path={tmp_path / str(parts)}", f"grad_accum_steps={parts}",
                             "arch.halt_exploration_prob=0.5", "epochs=2", "eval_interval=1")
        finished[parts] = run_training(config, CPU)
    whole, split = (torch.load(os.path.join(run.run_dir, f"step_{run.step}")) for run in finished.values())
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], **TOLERANCES, msg=name)
    losses = [train_losses(read_metrics(run.run_dir)) for run in finished.values()]
    assert sorted(losses[0]) == sorted(losses[1]) == list(range(1, 13))
    assert all(losses[1][step] == pytest.approx(losses[0][step], rel=1e-5) for step in losses[0])


@pytest.mark.parametrize("overrides, message", [
    (["grad_accum_steps=3"], "config: grad_accum_steps (3) must divide global_batch_size (16)"),
    (["grad_accum_steps=0"], "config.grad_accum_steps: must be a positive integer or auto (got 0)"),
    (["grad_accum_steps=most"], "config.grad_accum_steps: must be a positive integer or auto (got 'most')"),
])
def test_bad_values_fail_at_start_up_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config("unused", *overrides)


def test_each_process_batch_must_split_into_the_micro_batches():
    check_grad_accum_steps(8, 16, world_size=2)
    check_grad_accum_steps("auto", 16, world_size=2)
    with pytest.raises(ConfigError, match=re.escape(
            "grad_accum_steps (8) must divide each process's batch (global_batch_size 16 / 4 processes = 4)")):
        check_grad_accum_steps(8, 16, world_size=4)


def test_auto_is_one_on_the_cpu_and_says_so(capsys):
    config = resolve_grad_accum_steps(make_config("unused", "grad_accum_steps=auto"), METADATA, CPU)
    assert config.grad_accum_steps == 1
    assert capsys.readouterr().out == "grad_accum_steps=auto: 1 (on the CPU there is no GPU memory to fit)\n"


@pytest.mark.slow
def test_auto_tries_doubling_micro_batch_counts_until_a_first_step_fits():
    tried = []

    def first_step_fitting_from(fitting):
        def first_step(parts):
            tried.append(parts)
            if parts < fitting:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return first_step

    parts, reason = choose_grad_accum_steps(24, torch.device("cuda"), first_step_fitting_from(4))
    assert (parts, tried) == (4, [1, 2, 4]) and reason.startswith("micro-batches of 6 sequences")
    tried.clear()
    with pytest.raises(ConfigError, match=r"^grad_accum_steps=auto: even micro-batches of 3 sequences do not fit"):
        choose_grad_accum_steps(24, torch.device("cuda"), first_step_fitting_from(16))
    assert tried == [1, 2, 4, 8]


@pytest.mark.cuda
def test_auto_on_a_gpu_keeps_whole_batches_that_fit_and_leaves_the_seeded_run_alone(capsys):
    gpu = DistributedContext(rank=0, world_size=1, device=torch.device("cuda"))
    config = make_config("unused", "grad_accum_steps=auto", "compile=false")
    assert resolve_grad_accum_steps(config, METADATA, gpu).grad_accum_steps == 1
    assert capsys.readouterr().out.startswith("grad_accum_steps=auto: 1 (micro-batches of 16 sequences")


def test_a_resumed_run_may_take_other_micro_batches_or_another_evaluation_sample():
    saved = make_config("unused", "checkpoint_path=unused").model_dump()
    changed = make_config("unused", "checkpoint_path=unused", "grad_accum_steps=4", "eval_max_examples=8")
    assert compare_configs(saved, changed, None, "unused") == {}
