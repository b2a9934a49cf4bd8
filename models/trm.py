"""The Tiny Recursive Model (TRM): one small network applied recursively to a latent z_L and an answer z_H,
with the release's key names and defaults, and ACT halting on the halt logit alone.

The embeddings, heads, carries and parameter groups are HRM's, and so is the network's module (HRM's
`ReasoningModule` with TRM's blocks); only the blocks and the recursion differ. As in HRM, Pointer-over-Heads
routing (`routing`, arch=trm_poh) may weigh the attention heads: the one network has one controller (level
"L"), called on every application of the network, z_L and z_H updates alike.
"""
from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple

import pydantic
import torch
from torch import nn

from models.hrm import (Batch, DatasetSizes, HierarchicalReasoningModel, HierarchicalReasoningModelACT, InnerCarry,
                        LevelCalls, ReasoningModule, SharedArchConfig, initial_state)
from models.layers import Attention, CosSin, SwiGLU, check_head_sizes, rms_norm
from models.routing import RoutingConfig, RoutingOutput


class TRMArchConfig(SharedArchConfig):
    """Architecture of `trm` as a run config's `arch` block sets it, with the release's key names and defaults;
    the sizes that come from the dataset are TRMConfig's."""

    H_cycles: int = pydantic.Field(gt=0, description="recursions per ACT step; all but the last without gradient")
    L_cycles: int = pydantic.Field(gt=0, description="z_L updates per recursion")
    H_layers: int = pydantic.Field(ge=0, description="ignored, as in the release: there is one network")
    L_layers: int = pydantic.Field(gt=0, description="layers of the one network")
    pos_encodings: Literal["rope", "learned", "none"]
    mlp_t: bool = pydantic.Field(False, description="mix positions with an MLP over the sequence, not attention")
    puzzle_emb_len: int = pydantic.Field(16, ge=0, description="positions of the puzzle embedding; 0: "
                                                               "ceil(puzzle_emb_ndim / hidden_size)")
    no_ACT_continue: bool = pydantic.Field(True, description="halt on sigmoid(q_halt) alone, no continue loss")
    routing: RoutingConfig = RoutingConfig()

    @pydantic.model_validator(mode="after")
    def _consistent_sizes(self) -> "TRMArchConfig":
        check_head_sizes(self.hidden_size, self.num_heads, self.pos_encodings)
        if self.mlp_t and self.routing.controller != "none":
            raise ValueError("routing weighs attention heads, and mlp_t has none: set mlp_t false or "
                             "routing.controller none")
        self.routing.check_heads(self.num_heads)
        # The release accepts this and then fails on a shape mismatch in its first forward.
        if self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden_size > 0:
            raise ValueError(f"puzzle_emb_ndim ({self.puzzle_emb_ndim}) does not fit in puzzle_emb_len "
                             f"({self.puzzle_emb_len}) positions of hidden_size ({self.hidden_size})")
        return self


class TRMConfig(TRMArchConfig, DatasetSizes):
    """The architecture with the sizes its dataset and batch give it; `puzzle_emb_len` 0 is resolved to the
    positions the puzzle embedding needs.

    Without a puzzle embedding there are no puzzle positions, whatever `puzzle_emb_len` says (the release
    fails on the shape mismatch instead), so that a task with one puzzle identifier runs with the defaults.
    """

    @pydantic.model_validator(mode="after")
    def _resolve_puzzle_emb_len(self) -> "TRMConfig":
        if self.puzzle_emb_len == 0 or self.puzzle_emb_ndim == 0:
            self.puzzle_emb_len = -(-self.puzzle_emb_ndim // self.hidden_size)
        return self


class Block(nn.Module):
    """Post-norm block: mix positions (attention, or with `mlp_t` a SwiGLU across the sequence), then a
    SwiGLU across channels, each followed by a residual RMS norm."""

    def __init__(self, config: TRMConfig, attention_backend: str):
        super().__init__()
        self.mixes_with_mlp = config.mlp_t
        if config.mlp_t:
            self.mlp_t = SwiGLU(config.seq_len + config.puzzle_emb_len, config.expansion)
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads, attention_backend)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, hidden_states: torch.Tensor, cos_sin: Optional[CosSin],
                head_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`head_weights` scale the attention heads (routing; never given with `mlp_t`)."""
        if self.mixes_with_mlp:
            # The MLP and its norm both run over the sequence axis, as the release does.
            by_channel = hidden_states.transpose(1, 2)
            hidden_states = rms_norm(by_channel + self.mlp_t(by_channel), self.norm_eps).transpose(1, 2)
        else:
            attention = self.self_attn(hidden_states, cos_sin, head_weights)
            hidden_states = rms_norm(hidden_states + attention, self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class TinyRecursiveReasoningModel(HierarchicalReasoningModel):
    """One ACT step of TRM: HRM's embeddings and heads around the recursion of one network (`L_level`, the
    release's name for it)."""

    def build_levels(self, config: TRMConfig) -> None:
        self.L_level = ReasoningModule(config, config.L_layers, self.attention_backend, "L", block=Block)
        self.H_init = initial_state(config)
        self.L_init = initial_state(config)

    def levels(self) -> Dict[str, ReasoningModule]:
        return {"L": self.L_level}

    def recursion(self, run: LevelCalls, z_H: torch.Tensor, z_L: torch.Tensor,
                  x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """z_L updated L_cycles times from z_L and z_H + input, then z_H from z_L."""
        for _ in range(self.config.L_cycles):
            z_L = run("L", z_L, z_H + x)
        return run("L", z_H, z_L), z_L

    def forward(self, carry: InnerCarry, batch: Batch
                ) -> Tuple[InnerCarry, torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Optional[RoutingOutput]]:
        """One ACT step: the new carry, logits, (q_halt, q_continue) logits, and the routing (None without)."""
        cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        run = LevelCalls(self.levels(), carry.router_states, cos_sin)
        z_H, z_L = carry.z_H, carry.z_L
        # H_cycles - 1 recursions without gradient, then one with.
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self.recursion(run, z_H, z_L, x)
        z_H, z_L = self.recursion(run, z_H, z_L, x)

        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach(), router_states=run.carried_router_states())
        return new_carry, logits, (q_logits[..., 0], q_logits[..., 1]), run.routing()


class TinyRecursiveReasoningModelACT(HierarchicalReasoningModelACT):
    """HRM's ACT wrapper around TRM's step. With `no_ACT_continue` (the default) a sequence halts when
    sigmoid(q_halt) > 0.5 and nothing bootstraps the continue logit.

    `no_ACT_continue=false` cannot run in the release (it unpacks its step's 3 results as 5); here it is
    HRM's rule: halt when q_halt > q_continue, with the bootstrapped continue target.
    """

    inner_class = TinyRecursiveReasoningModel

    def halt_signal(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.config.no_ACT_continue:
            return outputs["q_halt_logits"] > 0
        return super().halt_signal(outputs)

    def learns_q_continue(self) -> bool:
        return not self.config.no_ACT_continue
