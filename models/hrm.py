"""The Hierarchical Reasoning Model: config, the H/L recurrence with its 1-step gradient, and ACT halting."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple

import pydantic
import torch
import torch.utils._pytree as pytree
from torch import nn

from models.attention import BACKEND_CHOICES, resolve_backend
from models.initializers import trunc_normal_init_
from models.routing import Controller, RoutingCall, RoutingConfig, RoutingOutput, build_router, summarize_routing
from models.layers import (Attention, CastedEmbedding, CastedLinear, CosSin, RotaryEmbedding, SwiGLU, check_head_sizes,
                           rms_norm)
from models.sparse_embedding import CastedSparseEmbedding

logger = logging.getLogger(__name__)

Batch = Dict[str, torch.Tensor]

# The reasoning levels, high and low, as routing states and routing figures name them.
LEVELS = ("H", "L")


class SharedArchConfig(pydantic.BaseModel):
    """The `arch` keys of every architecture here (HRM, TRM, the transformer baseline), with the reference's
    names and defaults: the embeddings' and blocks' sizes, ACT halting, the dtype and the attention kernel."""

    model_config = pydantic.ConfigDict(extra="forbid")

    puzzle_emb_ndim: int = pydantic.Field(0, ge=0, description="0 disables the puzzle embedding")
    hidden_size: int = pydantic.Field(gt=0)
    expansion: float = pydantic.Field(gt=0)
    num_heads: int = pydantic.Field(gt=0)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    halt_max_steps: int = pydantic.Field(gt=0)
    halt_exploration_prob: float = pydantic.Field(ge=0, le=1)
    forward_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    attention_backend: Literal[BACKEND_CHOICES] = "auto"


class HRMArchConfig(SharedArchConfig):
    """Architecture of `hrm_v1` as a run config's `arch` block sets it, with the reference's key names and
    defaults; the sizes that come from the dataset are HRMConfig's."""

    H_cycles: int = pydantic.Field(gt=0)
    L_cycles: int = pydantic.Field(gt=0)
    H_layers: int = pydantic.Field(gt=0)
    L_layers: int = pydantic.Field(gt=0)
    pos_encodings: Literal["rope", "learned"]
    routing: RoutingConfig = RoutingConfig()

    @pydantic.model_validator(mode="after")
    def _heads_divide_hidden(self) -> "HRMArchConfig":
        check_head_sizes(self.hidden_size, self.num_heads, self.pos_encodings)
        self.routing.check_heads(self.num_heads)
        return self


class DatasetSizes(pydantic.BaseModel):
    """The sizes an architecture gets from its dataset and batch, and its forward dtype."""

    batch_size: int = pydantic.Field(gt=0, description="sequences per rank")
    seq_len: int = pydantic.Field(gt=0)
    num_puzzle_identifiers: int = pydantic.Field(gt=0)
    vocab_size: int = pydantic.Field(gt=0)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.forward_dtype)


class HRMConfig(HRMArchConfig, DatasetSizes):
    """The architecture with the sizes its dataset and batch give it."""

    @property
    def puzzle_emb_len(self) -> int:
        """Positions the puzzle embedding takes in front of the tokens."""
        return math.ceil(self.puzzle_emb_ndim / self.hidden_size)


def initial_state(config: HRMConfig) -> nn.Buffer:
    """A level's starting state: one fixed (untrained) truncated-normal vector shared by every position."""
    return nn.Buffer(trunc_normal_init_(torch.empty(config.hidden_size, dtype=config.dtype), std=1), persistent=True)


class Block(nn.Module):
    """Post-norm transformer block: norm(h + attn(h)), then norm(h + mlp(h))."""

    def __init__(self, config: HRMConfig, attention_backend: str):
        super().__init__()
        self.self_attn = Attention(config.hidden_size, config.num_heads, attention_backend)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, hidden_states: torch.Tensor, cos_sin: Optional[CosSin],
                head_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        attention = self.self_attn(hidden_states, cos_sin, head_weights)
        hidden_states = rms_norm(hidden_states + attention, self.norm_eps)
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class ReasoningModule(nn.Module):
    """One level (H or L): add the injection, optionally route over heads, then run the layers in order.

    With routing on, the level's controller (`router`) reads the level's input once per call and its
    weights scale the heads of every layer of that call.
    """

    def __init__(self, config: HRMConfig, num_layers: int, attention_backend: str, level: str,
                 block: Callable = Block):
        super().__init__()
        self.layers = nn.ModuleList(block(config, attention_backend) for _ in range(num_layers))
        self.num_heads = config.num_heads
        self.per_token = config.routing.per_token
        if config.routing.controller != "none":
            # Drawn from its own generator: the layers get the plain model's weights (paired seeds).
            self.router = build_router(config.routing, config.hidden_size, config.num_heads, name=level)

    def forward(self, hidden_states: torch.Tensor, injection: torch.Tensor, cos_sin: Optional[CosSin],
                router_state: Any = None) -> Tuple[torch.Tensor, Any, Optional[RoutingCall]]:
        """Returns the new hidden states, the router's new state and what it routed (None without routing)."""
        hidden_states = hidden_states + injection
        head_weights, routing = None, None
        if hasattr(self, "router"):
            # The controller runs in float32; `heads * alpha` is exactly 1 for uniform routing.
            alphas, router_state, routing = self.router(hidden_states.float(), state=router_state,
                                                        per_token=self.per_token)
            head_weights = alphas * self.num_heads
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos_sin, head_weights)
        return hidden_states, router_state, routing


@dataclass
class ParameterGroups:
    """The model's trained tensors, by how each is optimised (every parameter is in exactly one group)."""
    weights: List[nn.Parameter]  # the network: Adam-atan2 at the base learning rate
    routing: List[nn.Parameter]  # routing controllers: their own Adam-atan2 group (empty without routing)
    puzzle_embedding: List[torch.Tensor]  # the sparse puzzle-embedding buffers: sign-SGD (empty without one)


@dataclass
class InnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor
    # Routing controllers' recurrent states by level ("H", "L"); empty without routing.
    router_states: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ACTCarry:
    inner_carry: InnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: Batch


@dataclass
class ExplorationDraws:
    """The random numbers of one training step's halting exploration, one of each per sequence."""
    explore: torch.Tensor  # float32 uniform in [0, 1): the sequence explores when below halt_exploration_prob
    min_halt_steps: torch.Tensor  # int32 in 2..halt_max_steps: the steps an exploring sequence must run


# Carries (and exploration draws) are pytrees, so training moves, joins and splits them leaf by leaf with
# torch.utils._pytree.
pytree.register_dataclass(InnerCarry)
pytree.register_dataclass(ACTCarry)
pytree.register_dataclass(ExplorationDraws)


class LevelCalls:
    """The calls of the levels within one ACT step: each routed level's controller state threads from call
    to call, and its calls are kept in order for the step's RoutingOutput."""

    def __init__(self, levels: Dict[str, ReasoningModule], router_states: Dict[str, Any], cos_sin: Optional[CosSin]):
        self.levels = levels
        self.cos_sin = cos_sin
        self.router_states = dict(router_states)
        self.calls: Dict[str, List[RoutingCall]] = {name: [] for name in self.router_states}

    def __call__(self, name: str, hidden: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        hidden, state, routing = self.levels[name](hidden, injection, self.cos_sin, self.router_states.get(name))
        if routing is not None:
            self.router_states[name] = state
            self.calls[name].append(routing)
        return hidden

    def carried_router_states(self) -> Dict[str, Any]:
        """The controllers' states for the next step's carry, cut from the graph."""
        return {k: s.detach() if s is not None else None for k, s in self.router_states.items()}

    def routing(self) -> Optional[RoutingOutput]:
        return summarize_routing(self.calls)


class HierarchicalReasoningModel(nn.Module):
    """One ACT step of HRM: embeddings, H/L cycles, LM and Q heads."""

    def __init__(self, config: HRMConfig):
        super().__init__()
        self.config = config
        dtype = config.dtype
        self.attention_backend = resolve_backend(config.attention_backend)
        logger.info("attention backend: %s", self.attention_backend)

        # Construction order follows the reference so that a seeded init draws the same numbers.
        self.embed_scale = math.sqrt(config.hidden_size)
        embed_init_std = 1.0 / self.embed_scale
        self.embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size, embed_init_std, dtype)
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)

        self.puzzle_emb_len = config.puzzle_emb_len
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim,
                                                    batch_size=config.batch_size, init_std=0, cast_to=dtype)
        num_positions = config.seq_len + self.puzzle_emb_len
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(config.hidden_size // config.num_heads, num_positions, config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(num_positions, config.hidden_size, embed_init_std, dtype)
        self.build_levels(config)

        # Q head starts near "never halt" (sigmoid(-5) ~ 0.007) so early training runs the full steps.
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    def build_levels(self, config: HRMConfig) -> None:
        """The reasoning levels and their initial states (a variant of the recurrence builds its own)."""
        self.H_level = ReasoningModule(config, config.H_layers, self.attention_backend, "H")
        self.L_level = ReasoningModule(config, config.L_layers, self.attention_backend, "L")
        self.H_init = initial_state(config)
        self.L_init = initial_state(config)

    def input_embeddings(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        embedding = self.embed_tokens(inputs.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            puzzle_embedding = self.puzzle_emb(puzzle_identifiers)
            pad = self.puzzle_emb_len * self.config.hidden_size - puzzle_embedding.shape[-1]
            if pad > 0:
                puzzle_embedding = nn.functional.pad(puzzle_embedding, (0, pad))
            puzzle_embedding = puzzle_embedding.view(-1, self.puzzle_emb_len, self.config.hidden_size)
            embedding = torch.cat((puzzle_embedding, embedding), dim=-2)
        if self.config.pos_encodings == "learned":
            # 1/sqrt(2) keeps the sum of two unit-variance embeddings at unit variance.
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.config.dtype))
        return self.embed_scale * embedding

    def levels(self) -> Dict[str, ReasoningModule]:
        return dict(zip(LEVELS, (self.H_level, self.L_level)))

    def routers(self) -> Dict[str, Controller]:
        """The routing controller of each routed level ("H", "L"); empty without routing."""
        return {name: level.router for name, level in self.levels().items() if hasattr(level, "router")}

    def parameter_groups(self) -> ParameterGroups:
        routing_ids = {id(p) for router in self.routers().values() for p in router.parameters()}
        parameters = list(self.parameters())
        return ParameterGroups(
            weights=[p for p in parameters if id(p) not in routing_ids],
            routing=[p for p in parameters if id(p) in routing_ids],
            puzzle_embedding=list(self.puzzle_emb.buffers()) if self.config.puzzle_emb_ndim > 0 else [])

    def empty_carry(self, batch_size: int, device: torch.device) -> InnerCarry:
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        router_states = {name: router.init_state(batch_size, device) for name, router in self.routers().items()}
        return InnerCarry(z_H=torch.empty(shape, dtype=self.config.dtype, device=device),
                          z_L=torch.empty(shape, dtype=self.config.dtype, device=device), router_states=router_states)

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        """Put sequences flagged in `reset` back to the initial states (routing states included)."""
        router_states = {name: state.reset(reset) if state is not None else None
                         for name, state in carry.router_states.items()}
        reset = reset.view(-1, 1, 1)
        return InnerCarry(z_H=torch.where(reset, self.H_init, carry.z_H), z_L=torch.where(reset, self.L_init, carry.z_L),
                          router_states=router_states)

    def forward(self, carry: InnerCarry, batch: Batch
                ) -> Tuple[InnerCarry, torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Optional[RoutingOutput]]:
        """One ACT step: the new carry, logits, (q_halt, q_continue) logits, and the routing (None without)."""
        cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        H_cycles, L_cycles = self.config.H_cycles, self.config.L_cycles
        run = LevelCalls(self.levels(), carry.router_states, cos_sin)

        # All cycles but the last L and H updates run without gradient (the "1-step gradient").
        with torch.no_grad():
            z_H, z_L = carry.z_H, carry.z_L
            for h in range(H_cycles):
                for l in range(L_cycles):
                    if not (h == H_cycles - 1 and l == L_cycles - 1):
                        z_L = run("L", z_L, z_H + x)
                if h != H_cycles - 1:
                    z_H = run("H", z_H, z_L)
        z_L = run("L", z_L, z_H + x)
        z_H = run("H", z_H, z_L)

        new_carry = InnerCarry(z_H=z_H.detach(), z_L=z_L.detach(), router_states=run.carried_router_states())
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        return new_carry, logits, (q_logits[..., 0], q_logits[..., 1]), run.routing()


class HierarchicalReasoningModelACT(nn.Module):
    """ACT wrapper: restarts halted sequences, runs one step, decides halting with the Q head."""

    inner_class = HierarchicalReasoningModel  # the one-step model a variant of the recurrence replaces

    def __init__(self, config: HRMConfig):
        super().__init__()
        self.config = config
        self.inner = self.inner_class(config)

    def routers(self) -> Dict[str, Controller]:
        return self.inner.routers()

    def parameter_groups(self) -> ParameterGroups:
        return self.inner.parameter_groups()

    def initial_carry(self, batch: Batch) -> ACTCarry:
        batch_size, device = batch["inputs"].shape[0], batch["inputs"].device
        return ACTCarry(
            inner_carry=self.inner.empty_carry(batch_size, device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),  # all halted: the first call resets everyone
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def draw_exploration(self, batch_size: int, device: torch.device) -> Optional[ExplorationDraws]:
        """The halting exploration's draws of a training call on `batch_size` sequences, drawn as the call
        draws them, so passing each part of a batch its rows (gradient accumulation) draws what one call on
        the whole batch would; None when a call draws none (evaluation, or halt_max_steps 1)."""
        if not (self.training and self.config.halt_max_steps > 1):
            return None
        return self._draws(torch.empty(batch_size, dtype=torch.float32, device=device),
                           torch.empty(batch_size, dtype=torch.int32, device=device))

    def _draws(self, q_halt_logits: torch.Tensor, steps: torch.Tensor) -> ExplorationDraws:
        return ExplorationDraws(explore=torch.rand_like(q_halt_logits),
                                min_halt_steps=torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1))

    def forward(self, carry: ACTCarry, batch: Batch, exploration: Optional[ExplorationDraws] = None
                ) -> Tuple[ACTCarry, Dict[str, torch.Tensor], Optional[RoutingOutput]]:
        """One ACT step: the new carry, the outputs (reference names: logits, q_halt_logits, q_continue_logits,
        and target_q_continue in training) and the step's routing (None without routing). `exploration`:
        this call's rows of `draw_exploration` (None: the call draws its own)."""
        inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
        steps = torch.where(carry.halted, 0, carry.steps)
        current_data = {k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
                        for k, v in carry.current_data.items()}

        inner_carry, logits, (q_halt_logits, q_continue_logits), routing = self.inner(inner_carry, current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt_logits, "q_continue_logits": q_continue_logits}

        with torch.no_grad():
            steps = steps + 1
            halted = self.halted(steps, outputs, inner_carry, current_data, exploration)
        return ACTCarry(inner_carry, steps, halted, current_data), outputs, routing

    def halt_signal(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Sequences the Q head would stop (where it halts adaptively: in training)."""
        return outputs["q_halt_logits"] > outputs["q_continue_logits"]

    def learns_q_continue(self) -> bool:
        """Whether training bootstraps a target for the continue logit (`target_q_continue`)."""
        return True

    def halts_adaptively(self) -> bool:
        """Whether the Q head may stop sequences before `halt_max_steps` now: in training only."""
        return self.training

    def halted(self, steps: torch.Tensor, outputs: Dict[str, torch.Tensor], inner_carry: InnerCarry,
               current_data: Batch, exploration: Optional[ExplorationDraws] = None) -> torch.Tensor:
        """Which sequences stop after this step; in training, also adds `target_q_continue` to `outputs`."""
        is_last_step = steps >= self.config.halt_max_steps
        halted = is_last_step
        if self.halts_adaptively() and self.config.halt_max_steps > 1:
            halted = halted | self.halt_signal(outputs)
            if self.training:
                # Exploration: some sequences must run at least a random 2..halt_max_steps steps.
                draws = exploration if exploration is not None else self._draws(outputs["q_halt_logits"], steps)
                explore = draws.explore < self.config.halt_exploration_prob
                min_halt_steps = explore * draws.min_halt_steps
                halted = halted & (steps >= min_halt_steps)
        if self.training and self.config.halt_max_steps > 1 and self.learns_q_continue():
            # Bootstrapped Q target from one more step on the new carry.
            _, _, (next_q_halt, next_q_continue), _ = self.inner(inner_carry, current_data)
            outputs["target_q_continue"] = torch.sigmoid(
                torch.where(is_last_step, next_q_halt, torch.maximum(next_q_halt, next_q_continue)))
        return halted
