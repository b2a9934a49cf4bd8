"""Learning-rate schedule and optimizer set-up against the reference release's formulas."""
import math

import pytest
import torch

from models import build_model, parse_arch
from training.distributed import _buckets
from training.optimization import build_optimizers, learning_rate


@pytest.mark.parametrize("step,expected", [
    (0, 0.0), (1, 1e-3 * 1 / 10), (9, 1e-3 * 9 / 10),                     # linear warm-up
    (10, 1e-3),                                                           # progress 0
    (55, 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))),       # half way: 0.55e-3
    (100, 1e-3 * 0.1),                                                    # the floor at total_steps
])
def test_learning_rate_warmup_then_cosine(step, expected):
    assert learning_rate(step, 1e-3, warmup_steps=10, total_steps=100, min_ratio=0.1) == pytest.approx(expected, abs=1e-15)


def test_min_ratio_one_is_constant_after_warmup():
    assert [learning_rate(s, 2e-4, 5, 50, 1.0) for s in (5, 20, 50)] == [2e-4] * 3


class _Config:
    lr, puzzle_emb_lr, weight_decay, puzzle_emb_weight_decay, beta1, beta2 = 1e-4, 1e-2, 0.1, 0.2, 0.9, 0.95


def test_build_optimizers_covers_every_parameter_and_the_embedding():
    model = build_model(parse_arch(dict(name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
                             loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
                             H_cycles=1, L_cycles=1, H_layers=1, L_layers=1, hidden_size=32, num_heads=2, expansion=2,
                             puzzle_emb_ndim=32, pos_encodings="rope", halt_max_steps=2, halt_exploration_prob=0.1,
                             forward_dtype="float32")),
                        batch_size=2, seq_len=4, vocab_size=5, num_puzzle_identifiers=3)
    sign_sgd, adam = build_optimizers(model.parameter_groups(), _Config, world_size=1)
    assert sign_sgd.param_groups[0]["base_lr"] == 1e-2 and sign_sgd.param_groups[0]["weight_decay"] == 0.2
    assert adam.param_groups[0]["base_lr"] == 1e-4 and adam.param_groups[0]["betas"] == (0.9, 0.95)
    assert {id(p) for p in adam.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    assert any(t is model.model.inner.puzzle_emb.weights for t in sign_sgd.param_groups[0]["params"])


def test_gradient_buckets_split_by_size_and_dtype():
    tensors = [torch.zeros(10), torch.zeros(10), torch.zeros(30), torch.zeros(5, dtype=torch.float64), torch.zeros(1)]
    sizes = [[t.numel() for t in bucket] for bucket in _buckets(tensors, bucket_bytes=100)]
    assert sizes == [[10, 10], [30], [5], [1]]
