"""Losses and loss-head metrics against float64 hand computations on crafted batches."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from models.losses import ACTLossHead, softmax_cross_entropy, stablemax_cross_entropy

IGNORE = -100


def hand_stablemax_nll(row, label):
    s = [1 / (1 - x) if x < 0 else x + 1 for x in row]
    return -math.log(s[label] / sum(s))


def hand_softmax_nll(row, label):
    return -(row[label] - math.log(sum(math.exp(x) for x in row)))


LOGITS = torch.tensor([[[2.0, -1.0, 0.5], [-3.0, -0.5, 0.0]],
                       [[0.0, 0.0, 0.0], [1.5, 2.5, -2.0]]])
LABELS = torch.tensor([[0, 2], [IGNORE, 1]])


@pytest.mark.parametrize("loss_fn,hand_nll,dtype,tolerance", [
    (stablemax_cross_entropy, hand_stablemax_nll, torch.float64, 1e-12),
    (softmax_cross_entropy, hand_softmax_nll, torch.float32, 1e-6),
])
def test_cross_entropy_against_hand_values(loss_fn, hand_nll, dtype, tolerance):
    loss = loss_fn(LOGITS, LABELS)
    assert loss.dtype == dtype
    for b in range(2):
        for t in range(2):
            label = int(LABELS[b, t])
            expected = 0.0 if label == IGNORE else hand_nll(LOGITS[b, t].tolist(), label)
            assert abs(loss[b, t].item() - expected) < tolerance


class FixedACTModel(nn.Module):
    """Stands in for the ACT model: returns crafted outputs and a crafted carry."""

    def __init__(self, outputs, halted, steps, labels):
        super().__init__()
        self.outputs, self.halted, self.steps, self.labels = outputs, halted, steps, labels

    def forward(self, carry, batch, exploration=None):
        new_carry = SimpleNamespace(halted=self.halted, steps=self.steps, current_data={"labels": self.labels})
        return new_carry, dict(self.outputs), None


def crafted_head(with_target):
    # Vocabulary 3, 4 sequences of 3 tokens.
    labels = torch.tensor([[0, 1, 2],                # all correct
                           [0, 1, IGNORE],           # one of two correct
                           [IGNORE, IGNORE, IGNORE],  # nothing to predict
                           [2, 2, 2]])               # all correct but not halted
    predictions = torch.tensor([[0, 1, 2], [0, 2, 0], [1, 1, 1], [2, 2, 2]])
    logits = torch.nn.functional.one_hot(predictions, 3).float() * 4.0 - 1.0
    outputs = {"logits": logits, "q_halt_logits": torch.tensor([1.0, 0.5, -2.0, -1.0]),
               "q_continue_logits": torch.tensor([0.2, -0.3, 0.1, 0.7])}
    if with_target:
        outputs["target_q_continue"] = torch.tensor([0.9, 0.1, 0.5, 0.3])
    model = FixedACTModel(outputs, halted=torch.tensor([True, True, True, False]),
                          steps=torch.tensor([3, 2, 5, 1], dtype=torch.int32), labels=labels)
    return ACTLossHead(model, "stablemax_cross_entropy"), outputs, labels


def bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_loss_head_metrics_and_losses_on_crafted_batch():
    head, outputs, labels = crafted_head(with_target=True)
    result = head(carry=None, batch={}, return_keys=["logits", "missing"])
    metrics, loss, detached = result.metrics, result.loss, result.outputs

    # Halted with labels: sequences 0 and 1. Sequence 2 has no labels, sequence 3 did not halt.
    assert int(metrics.count) == 2
    assert abs(metrics.per_sequence["accuracy"].item() - (1.0 + 0.5)) < 1e-6
    assert int(metrics.per_sequence["exact_accuracy"]) == 1
    # q_halt >= 0 vs correctness: seq 0 (1.0, correct) right; seq 1 (0.5, wrong) wrong.
    assert int(metrics.per_sequence["q_halt_accuracy"]) == 1
    assert int(metrics.per_sequence["steps"]) == 3 + 2
    assert not bool(result.all_halted) and result.routing is None
    assert set(detached) == {"logits"} and not detached["logits"].requires_grad

    logits = outputs["logits"]
    lm = 0.0
    for b in range(4):
        valid = [t for t in range(3) if labels[b, t] != IGNORE]
        token_losses = [hand_stablemax_nll(logits[b, t].tolist(), int(labels[b, t])) for t in valid]
        lm += sum(token_losses) / max(len(valid), 1)
    seq_correct = [1.0, 0.0, 1.0, 1.0]  # a sequence without labels counts as correct (0 == 0)
    q_halt = sum(bce(outputs["q_halt_logits"][b].item(), seq_correct[b]) for b in range(4))
    q_cont = sum(bce(outputs["q_continue_logits"][b].item(), outputs["target_q_continue"][b].item()) for b in range(4))
    assert abs(metrics.losses["lm_loss"].item() - lm) < 1e-9
    assert abs(metrics.losses["q_halt_loss"].item() - q_halt) < 1e-5
    assert abs(metrics.losses["q_continue_loss"].item() - q_cont) < 1e-5
    assert abs(loss.item() - (lm + 0.5 * (q_halt + q_cont))) < 1e-5


def test_loss_head_without_target_has_no_continue_loss():
    head, outputs, _ = crafted_head(with_target=False)
    result = head(carry=None, batch={})
    losses = result.metrics.losses
    assert "q_continue_loss" not in losses
    torch.testing.assert_close(result.loss, losses["lm_loss"] + 0.5 * losses["q_halt_loss"].double())
