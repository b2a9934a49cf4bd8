"""The plain transformer baseline of the TRM release (`recursive_reasoning.transformers_baseline@Model_ACTV2`):
one stack of `H_layers` post-norm transformer blocks, applied once per ACT step to z_H plus the input, with
the release's key names, defaults and state-dict keys.

The embeddings, heads, blocks, level module and ACT wrapper are HRM's. As the release does:
- each ACT step runs the stack once, with gradient: z_H <- layers(z_H + input), from the carried (detached)
  z_H; `H_cycles` is accepted and ignored (the release keeps it "for compatibility");
- every head has hidden_size // num_heads dimensions whether or not num_heads divides hidden_size (the
  release's default is 12 heads of 42 on 512: o_proj maps 504 -> 512);
- the puzzle embedding takes ceil(puzzle_emb_ndim / hidden_size) positions; pos_encodings rope or learned;
- halting is HRM's rule (q_halt > q_continue) with exploration, in training when `act_enabled`; in
  evaluation every sequence runs halt_max_steps, unless `act_inference` (then the same rule, without
  exploration);
- its loss head never asks for the bootstrapped continue target, so there is no continue loss and the
  continue logit gets no gradient.
Not reproduced: the `actual_steps` output the release adds in evaluation with `act_inference` (the `steps`
metric counts the same). The baseline is never routed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Tuple

import pydantic
import torch
import torch.utils._pytree as pytree

from models.hrm import (Batch, DatasetSizes, HierarchicalReasoningModel, HierarchicalReasoningModelACT, HRMConfig,
                        ReasoningModule, SharedArchConfig, initial_state)
from models.layers import check_head_sizes
from models.routing import RoutingConfig


class TransformerArchConfig(SharedArchConfig):
    """Architecture of `transformer` as a run config's `arch` block sets it, with the release's key names and
    defaults; the sizes that come from the dataset are TransformerConfig's."""

    H_cycles: int = pydantic.Field(ge=0, description="ignored, as in the release: the stack runs once a step")
    H_layers: int = pydantic.Field(gt=0, description="layers of the stack")
    pos_encodings: Literal["rope", "learned"]
    act_enabled: bool = pydantic.Field(True, description="in training, the Q head may halt sequences early")
    act_inference: bool = pydantic.Field(False, description="in evaluation, the Q head may halt sequences early")

    @pydantic.model_validator(mode="after")
    def _head_sizes(self) -> "TransformerArchConfig":
        check_head_sizes(self.hidden_size, self.num_heads, self.pos_encodings, whole_heads=False)
        return self


class TransformerConfig(TransformerArchConfig, DatasetSizes):
    """The architecture with the sizes its dataset and batch give it."""

    puzzle_emb_len = HRMConfig.puzzle_emb_len

    @property
    def routing(self) -> RoutingConfig:
        """No controller: the stack is HRM's level module without routing."""
        return RoutingConfig()


@dataclass
class TransformerCarry:
    z_H: torch.Tensor  # the stack's output of the last step, its input (plus the input embedding) in the next


pytree.register_dataclass(TransformerCarry)


class TransformerBaseline(HierarchicalReasoningModel):
    """One ACT step of the baseline: HRM's embeddings and heads around one pass of the stack (`H_level`)."""

    def build_levels(self, config: TransformerConfig) -> None:
        self.H_level = ReasoningModule(config, config.H_layers, self.attention_backend, "H")
        self.H_init = initial_state(config)

    def levels(self) -> Dict[str, ReasoningModule]:
        return {"H": self.H_level}

    def empty_carry(self, batch_size: int, device: torch.device) -> TransformerCarry:
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        return TransformerCarry(z_H=torch.empty(shape, dtype=self.config.dtype, device=device))

    def reset_carry(self, reset: torch.Tensor, carry: TransformerCarry) -> TransformerCarry:
        return TransformerCarry(z_H=torch.where(reset.view(-1, 1, 1), self.H_init, carry.z_H))

    def forward(self, carry: TransformerCarry, batch: Batch
                ) -> Tuple[TransformerCarry, torch.Tensor, Tuple[torch.Tensor, torch.Tensor], None]:
        """One ACT step: the new carry, logits, (q_halt, q_continue) logits, and no routing."""
        cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, _, _ = self.H_level(carry.z_H, x, cos_sin)
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return TransformerCarry(z_H=z_H.detach()), logits, (q_logits[..., 0], q_logits[..., 1]), None


class TransformerBaselineACT(HierarchicalReasoningModelACT):
    """HRM's ACT wrapper around the baseline's step: HRM's halting rule where `act_enabled` (training) or
    `act_inference` (evaluation) allow it, and no bootstrapped continue target."""

    inner_class = TransformerBaseline

    def halts_adaptively(self) -> bool:
        return self.config.act_enabled if self.training else self.config.act_inference

    def learns_q_continue(self) -> bool:
        return False
