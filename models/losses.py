"""Losses and the ACT loss head: stablemax / softmax cross entropy, Q-learning halting losses, metrics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dataset.format import IGNORE_LABEL_ID
from models.hrm import ACTCarry, Batch, ExplorationDraws, ParameterGroups
from models.routing import Controller, RoutingOutput


def stablemax(x: torch.Tensor) -> torch.Tensor:
    """s(x) = 1/(1 - x) for x < 0, x + 1 otherwise: a softmax substitute that grows linearly, not exponentially."""
    return torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s_x = stablemax(x)
    return torch.log(s_x / s_x.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token loss in float64; ignored labels give 0."""
    log_probs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, 0).to(torch.long)
    label_log_probs = torch.gather(log_probs, dim=-1, index=safe_labels.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, label_log_probs, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID) -> torch.Tensor:
    """Per-token ordinary cross entropy in float32; ignored labels give 0."""
    flat = F.cross_entropy(logits.to(torch.float32).view(-1, logits.shape[-1]), labels.to(torch.long).view(-1),
                           ignore_index=ignore_index, reduction="none")
    return flat.view(labels.shape)


LOSS_FUNCTIONS = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


@dataclass
class StepMetrics:
    """One call's metrics, grouped by how they are reduced; all are sums on the device.

    count: sequences that finished in this call and have labels. per_sequence (accuracy, exact_accuracy,
    q_halt_accuracy, steps) sums over those sequences: report them divided by `count`. losses (lm_loss,
    q_halt_loss and, in training, q_continue_loss) sum over the whole batch: training reports them
    divided by the global batch size, evaluation (as the reference does) by `count`.
    """
    count: torch.Tensor
    per_sequence: Dict[str, torch.Tensor]
    losses: Dict[str, torch.Tensor]


@dataclass
class LossHeadOutput:
    carry: ACTCarry
    loss: torch.Tensor  # summed over the batch; training scales it by 1 / global batch size
    metrics: StepMetrics
    outputs: Dict[str, torch.Tensor]  # the requested `return_keys`, detached
    routing: Optional[RoutingOutput]  # None without routing
    all_halted: torch.Tensor


class ACTLossHead(nn.Module):
    """Wraps the ACT model: computes LM and Q losses and the halted sequences' metrics each call."""

    def __init__(self, model: nn.Module, loss_type: str):
        super().__init__()
        if loss_type not in LOSS_FUNCTIONS:
            raise ValueError(f"loss_type must be one of {sorted(LOSS_FUNCTIONS)}, got {loss_type!r}")
        self.model = model
        self.loss_fn = LOSS_FUNCTIONS[loss_type]
        # Weights of the routing terms, set by the trainer's schedules. Buffers, not Python floats, so that
        # changing them never recompiles the model; not persistent, so checkpoints keep the reference keys.
        self.register_buffer("routing_entropy_weight", torch.zeros(()), persistent=False)
        self.register_buffer("routing_ponder_weight", torch.zeros(()), persistent=False)

    def initial_carry(self, batch: Batch) -> ACTCarry:
        return self.model.initial_carry(batch)

    def draw_exploration(self, batch_size: int, device: torch.device) -> Optional[ExplorationDraws]:
        return self.model.draw_exploration(batch_size, device)

    def routers(self) -> Dict[str, Controller]:
        """The routing controller of each routed level ("H", "L"); empty without routing."""
        return self.model.routers()

    def parameter_groups(self) -> ParameterGroups:
        return self.model.parameter_groups()

    def set_routing_loss_weights(self, entropy: float, ponder: float) -> None:
        """Weights of the entropy bonus and the ponder cost (in-place: a compiled model does not recompile)."""
        self.routing_entropy_weight.fill_(entropy)
        self.routing_ponder_weight.fill_(ponder)

    def forward(self, carry: ACTCarry, batch: Batch, return_keys: Sequence[str] = (),
                exploration: Optional[ExplorationDraws] = None) -> LossHeadOutput:
        new_carry, outputs, routing = self.model(carry=carry, batch=batch, exploration=exploration)
        labels = new_carry.current_data["labels"]

        with torch.no_grad():
            mask = labels != IGNORE_LABEL_ID
            label_counts = mask.sum(-1)
            divisor = label_counts.clamp_min(1).unsqueeze(-1)
            is_correct = mask & (torch.argmax(outputs["logits"], dim=-1) == labels)
            seq_is_correct = is_correct.sum(-1) == label_counts
            # Metrics count only sequences that finished this call and have something to predict.
            valid = new_carry.halted & (label_counts > 0)
            per_sequence = {
                "accuracy": torch.where(valid, (is_correct.to(torch.float32) / divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_is_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_is_correct)).sum(),
                "steps": torch.where(valid, new_carry.steps, 0).sum(),
            }

        lm_loss = (self.loss_fn(outputs["logits"], labels) / divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(
            outputs["q_halt_logits"], seq_is_correct.to(outputs["q_halt_logits"].dtype), reduction="sum")
        losses = {"lm_loss": lm_loss.detach(), "q_halt_loss": q_halt_loss.detach()}
        q_continue_loss = 0
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            losses["q_continue_loss"] = q_continue_loss.detach()

        total_loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)
        if routing is not None:
            # Entropy is a bonus (subtracted): it keeps routing spread over heads early in training. Routing
            # terms are per sequence like the other losses, so they scale with the batch before 1/global batch.
            batch_size = labels.shape[0]
            total_loss = total_loss - self.routing_entropy_weight * batch_size * routing.entropy
            if routing.ponder_cost is not None:
                total_loss = total_loss + self.routing_ponder_weight * routing.ponder_cost
        return LossHeadOutput(carry=new_carry, loss=total_loss,
                              metrics=StepMetrics(count=valid.sum(), per_sequence=per_sequence, losses=losses),
                              outputs={k: outputs[k].detach() for k in return_keys if k in outputs},
                              routing=routing, all_halted=new_carry.halted.all())
