"""Weight averaging (`ema=true`): the average's arithmetic, evaluation and step_N from the average, and an
exact resume."""
import os
import signal

import pytest
import torch
from torch import nn

from training.distributed import DistributedContext
from training.ema import WeightEMA
from training.loop import run_training
from training.preemption import TrainingInterrupted

from test_resume import interrupt_at
from tiny_runs import make_config, read_metrics, train_losses

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


def test_average_follows_the_formula_and_swaps_in_and_out():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = WeightEMA(model, rate=0.9)
    for value in (3.0, 5.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update()
    # 0.9 * (0.9 * [1, 2] + 0.1 * 3) + 0.1 * 5
    expected = torch.tensor([[0.9 * (0.9 * 1 + 0.3) + 0.5, 0.9 * (0.9 * 2 + 0.3) + 0.5]])
    torch.testing.assert_close(ema.shadow[0], expected)
    with ema.applied():
        torch.testing.assert_close(model.weight.detach(), expected)
    assert torch.equal(model.weight.detach(), torch.full((1, 2), 5.0))


def test_evaluation_uses_the_average_and_resume_is_exact(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    overrides = ["ema=true", "ema_rate=0.9", "checkpoint_every_eval=true"]
    run_training(make_config(tiny_dataset, f"checkpoint_path={tmp_path / 'whole'}", *overrides), CPU)
    plain_dir = tmp_path / "plain"
    run_training(make_config(tiny_dataset, f"checkpoint_path={plain_dir}", "checkpoint_every_eval=true"), CPU)
    averaged = torch.load(tmp_path / "whole" / "step_24", weights_only=True)
    plain = torch.load(plain_dir / "step_24", weights_only=True)
    # Training itself is the same; the saved weights are the average, so they differ from the trained ones.
    assert train_losses(read_metrics(tmp_path / "whole")) == train_losses(read_metrics(plain_dir))
    assert not torch.equal(averaged["model.inner.lm_head.weight"], plain["model.inner.lm_head.weight"])
    assert torch.equal(averaged["model.inner.puzzle_emb.weights"], plain["model.inner.puzzle_emb.weights"])

    interrupt_at(monkeypatch, 7, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        run_training(make_config(tiny_dataset, f"checkpoint_path={tmp_path / 'cut'}", *overrides), CPU)
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_training(make_config(tiny_dataset, f"resume={tmp_path / 'cut'}", *overrides), CPU)
    resumed = torch.load(tmp_path / "cut" / "step_24", weights_only=True)
    for key, value in averaged.items():
        assert torch.equal(resumed[key], value), key
    assert os.path.isfile(tmp_path / "cut" / "step_12")
