"""Pointer-over-Heads routing: controllers that weigh a layer's attention heads, and routing diagnostics.

A controller reads the hidden state `x` and returns `alphas`, non-negative weights over the heads that sum
to one; the attention layer scales each head's output `[B, S, heads, head_dim]` by its weight before the
output projection. Three controllers share one interface,

    alphas, new_state, aux = controller(x, head_outputs=None, state=state, mask=mask, per_token=False)

- `PointerOverHeadsController`: stateless MLP router (the state passes through as None).
- `HRMPointerController`: two recurrent states in the spirit of HRM, a fast `z_L` updated on every call
  and a slow `z_H` updated on every T-th call that conditions the fast one; routing reads both.
- `ACTHRMPointerController`: the same, with the slow update decided per sample by a learned, accumulated
  halting probability (adaptive computation time) instead of a fixed period.

`x` of `[B, L, D]` is pooled by a masked mean into one routing per sequence, `[B, heads]`; `x` of `[B, D]`
is used as is; `per_token=True` routes every token, `[B, L, heads]`. Routers read only `x`:
`head_outputs` is accepted so callers can pass what they have, and whether head outputs are cached
across calls is the caller's business. Routing runs in the controller's parameter dtype (float32)
whatever the activations' dtype; callers cast `alphas` when mixing.

The third result, `aux`, is a `RoutingCall`: the call's logits, alphas, differentiable mean entropy and
temperature and, where the controller has them, top-k indices, slow updates, halting probabilities and
ponder cost; its `diagnostics()` are the call's summary figures. `return_aux=False` gives None.

Temperature is a buffer changed in place by `set_temperature`, never a parameter, so the optimizer cannot
undo an annealing schedule, and a compiled model reads the new value without recompiling (a Python float
would be baked into the compiled graph). The forward has no data-dependent Python branching and no host
syncs, so it runs under `torch.compile`; a recurrent state is a dataclass of tensors threaded by the caller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Dict, List, Literal, Optional, Tuple, Union

import numpy as np
import pydantic
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

# The one default temperature pair (soft start, sharper floor), used by every controller and by training's
# temperature schedule.
DEFAULT_TEMPERATURE_INIT = 2.0
DEFAULT_TEMPERATURE_MIN = 0.7


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of `[B, L, ...]` over L, counting only positions where `mask` `[B, L]` is true (or non-zero).

    A row with no kept position gives zeros.
    """
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).reshape(*mask.shape, *(1,) * (x.ndim - 2))
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each distribution along the last dim; zero probabilities contribute nothing."""
    # Clamping keeps log finite at zeros left by top-k, so gradients there stay finite (and are masked).
    return -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(dim=-1)


@dataclass
class RoutingDiagnostics:
    """Summary figures of routing weights `[..., heads]` over all rows (leading dims flattened).

    entropy_mean / entropy_std: entropy per row (population std, so one row gives 0); herfindahl: mean sum
    of squared weights (1/heads when uniform, 1 when one head takes all); top1_share: mean largest weight.
    Where known: temperature, slow_updates (how many sequences' slow state updated) and ponder_cost.
    Values are detached tensors, so the caller decides when to synchronise.
    """
    entropy_mean: torch.Tensor
    entropy_std: torch.Tensor
    herfindahl: torch.Tensor
    top1_share: torch.Tensor
    temperature: Optional[torch.Tensor] = None
    slow_updates: Optional[torch.Tensor] = None
    ponder_cost: Optional[torch.Tensor] = None

    def figures(self) -> Dict[str, torch.Tensor]:
        """The figures present, by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def routing_diagnostics(alphas: torch.Tensor) -> RoutingDiagnostics:
    """The summary figures of routing weights `alphas` `[..., heads]` (see `RoutingDiagnostics`)."""
    rows = alphas.detach().reshape(-1, alphas.shape[-1]).float()
    entropy = row_entropy(rows)
    return RoutingDiagnostics(entropy_mean=entropy.mean(), entropy_std=entropy.std(correction=0),
                              herfindahl=rows.square().sum(dim=-1).mean(), top1_share=rows.max(dim=-1).values.mean())


@dataclass
class RoutingCall:
    """What one controller call routed, beside the alphas it returns.

    router_logits: [..., heads]; alphas: [..., heads]; entropy: differentiable scalar, the mean routing
    entropy; temperature: 0-d tensor. Where the controller has them: topk_idx (top-k), slow_updates (how
    many sequences' slow state updated), halt_prob ([B]) and the differentiable ponder_cost (hrm_act).
    """
    router_logits: torch.Tensor
    alphas: torch.Tensor
    entropy: torch.Tensor
    temperature: torch.Tensor
    topk_idx: Optional[torch.Tensor] = None
    slow_updates: Optional[torch.Tensor] = None
    halt_prob: Optional[torch.Tensor] = None
    ponder_cost: Optional[torch.Tensor] = None

    def diagnostics(self) -> RoutingDiagnostics:
        """This call's summary figures."""
        return replace(routing_diagnostics(self.alphas), temperature=self.temperature.detach().float(),
                       slow_updates=None if self.slow_updates is None else self.slow_updates.float(),
                       ponder_cost=None if self.ponder_cost is None else self.ponder_cost.detach())


def router_mlp(d_in: int, d_hidden: int, n_heads: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, n_heads))


class RoutingController(nn.Module):
    """What the controllers share: temperature, optional top-k, and turning logits into alphas."""

    def __init__(self, n_heads: int, topk: Optional[int], temperature_init: float, temperature_min: float):
        super().__init__()
        if topk is not None and not 1 <= topk <= n_heads:
            raise ValueError(f"topk must be in 1..{n_heads} (n_heads) or None, got {topk}")
        if temperature_min <= 0:
            raise ValueError(f"temperature_min must be positive, got {temperature_min}")
        self.n_heads = n_heads
        self.topk = topk
        self.temperature_min = temperature_min
        # Persistent, so a checkpoint evaluates at the temperature it was trained to. float64 holds the set
        # value exactly; dividing float32 logits by a 0-d tensor keeps them float32.
        self.register_buffer("temperature_tensor", torch.zeros((), dtype=torch.float64))
        self.set_temperature(temperature_init)

    def set_temperature(self, temperature: float, minimum: Optional[float] = None) -> None:
        """Set the softmax temperature, clamped from below at `temperature_min` (replaced by `minimum` if given)."""
        if minimum is not None:
            if minimum <= 0:
                raise ValueError(f"temperature minimum must be positive, got {minimum}")
            self.temperature_min = minimum
        self.temperature_tensor.fill_(max(float(temperature), self.temperature_min))

    @property
    def temperature(self) -> float:
        return self.temperature_tensor.item()

    def route(self, logits: torch.Tensor, token_mask: Optional[torch.Tensor],
              return_aux: bool) -> Tuple[torch.Tensor, Optional[RoutingCall]]:
        """Logits `[..., heads]` -> alphas (temperature softmax, then top-k renormalised) and the call's routing.

        `token_mask` (per-token routing only) leaves padded tokens out of the entropy average.
        """
        probs = torch.softmax(logits / self.temperature_tensor, dim=-1)
        alphas, topk_idx = probs, None
        if self.topk is not None:
            top_probs, topk_idx = probs.topk(self.topk, dim=-1)
            alphas = torch.zeros_like(probs).scatter(-1, topk_idx, top_probs / top_probs.sum(-1, keepdim=True))
        if not return_aux:
            return alphas, None
        entropy = row_entropy(alphas)
        if entropy.ndim == 2:  # per token: average over kept tokens first, then over the batch
            entropy = masked_mean(entropy, token_mask)
        return alphas, RoutingCall(router_logits=logits, alphas=alphas, entropy=entropy.mean(),
                                   temperature=self.temperature_tensor, topk_idx=topk_idx)


def check_per_token_input(x: torch.Tensor, per_token: bool) -> None:
    if per_token and x.ndim != 3:
        raise ValueError(f"per_token routing needs x of shape [B, L, D], got {tuple(x.shape)}")


class PointerOverHeadsController(RoutingController):
    """Stateless router: an MLP maps the (pooled or per-token) hidden state to logits over the heads."""

    def __init__(self, d_model: int, n_heads: int, d_hidden: Optional[int] = None, *,
                 temperature_init: float = DEFAULT_TEMPERATURE_INIT, temperature_min: float = DEFAULT_TEMPERATURE_MIN,
                 topk: Optional[int] = None, dropout: float = 0.0):
        super().__init__(n_heads, topk, temperature_init, temperature_min)
        self.router = router_mlp(d_model, d_hidden or d_model, n_heads, dropout)

    def init_state(self, batch_size: int, device: torch.device) -> None:
        return None

    def forward(self, x: torch.Tensor, head_outputs: Optional[torch.Tensor] = None, *, state: None = None,
                mask: Optional[torch.Tensor] = None, return_aux: bool = True,
                per_token: bool = False) -> Tuple[torch.Tensor, None, Optional[RoutingCall]]:
        check_per_token_input(x, per_token)
        x = x.to(self.router[0].weight.dtype)
        if not per_token and x.ndim == 3:
            x = masked_mean(x, mask)
        alphas, aux = self.route(self.router(x), mask if per_token else None, return_aux)
        return alphas, None, aux


@dataclass
class HRMState:
    """Recurrent state of an HRM controller, one row per sequence.

    z_L: [B, d_ctrl] fast state; z_H: [B, d_ctrl] slow state; step: [B] long, calls so far.
    """
    z_L: torch.Tensor
    z_H: torch.Tensor
    step: torch.Tensor

    def detach(self) -> "HRMState":
        """The same state cut from the autograd graph (for truncated backpropagation across calls)."""
        return type(self)(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def reset(self, rows: torch.Tensor) -> "HRMState":
        """The state with the sequences flagged in `rows` ([B] bool) back to the initial (all-zero) state."""
        def reset_field(t: torch.Tensor) -> torch.Tensor:
            return torch.where(rows.view(-1, *(1,) * (t.ndim - 1)), torch.zeros_like(t), t)
        return type(self)(**{f.name: reset_field(getattr(self, f.name)) for f in fields(self)})


class TwoTimescaleController(RoutingController):
    """Modules and steps shared by the HRM controllers; subclasses decide when the slow state updates.

    x_ctrl = input_proj(pooled x) feeds a slow GRU (state z_H) and a fast GRU (state z_L, fed [x_ctrl, z_H]),
    each followed by a LayerNorm when `use_layernorm`; the router reads z_L + mix_gate(z_H). A fresh
    state is all zeros with step 0.

    Per-token routing keeps the state per sequence (it advances exactly as with pooled routing) and adds
    each token's offset from the pooled input, input_proj(x_i) - input_proj(pooled x), to the router's
    input: tokens steer their own routing around the sequence's, and a sequence of identical tokens is
    routed exactly like its pooled input.
    """

    def __init__(self, d_model: int, n_heads: int, d_ctrl: Optional[int], *, topk: Optional[int],
                 temperature_init: float, temperature_min: float, use_layernorm: bool, dropout: float):
        super().__init__(n_heads, topk, temperature_init, temperature_min)
        d_ctrl = d_ctrl or d_model
        self.d_ctrl = d_ctrl
        self.input_proj = nn.Linear(d_model, d_ctrl)
        self.f_L = nn.GRUCell(2 * d_ctrl, d_ctrl)
        self.f_H = nn.GRUCell(d_ctrl, d_ctrl)
        self.norm_L = nn.LayerNorm(d_ctrl) if use_layernorm else nn.Identity()
        self.norm_H = nn.LayerNorm(d_ctrl) if use_layernorm else nn.Identity()
        self.mix_gate = nn.Linear(d_ctrl, d_ctrl)
        self.router = router_mlp(d_ctrl, d_ctrl, n_heads, dropout)

    def init_state(self, batch_size: int, device: torch.device) -> HRMState:
        zeros = torch.zeros(batch_size, self.d_ctrl, dtype=self.input_proj.weight.dtype, device=device)
        return HRMState(z_L=zeros, z_H=zeros.clone(), step=torch.zeros(batch_size, dtype=torch.long, device=device))

    def controller_input(self, x: torch.Tensor, mask: Optional[torch.Tensor],
                         per_token: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x_ctrl [B, d_ctrl] of the pooled input and, for per-token routing, each token's offset from it."""
        check_per_token_input(x, per_token)
        x = x.to(self.input_proj.weight.dtype)
        pooled = masked_mean(x, mask) if x.ndim == 3 else x
        token_offset = F.linear(x - pooled.unsqueeze(1), self.input_proj.weight) if per_token else None
        return self.input_proj(pooled), token_offset

    def slow_update(self, x_ctrl: torch.Tensor, z_H: torch.Tensor) -> torch.Tensor:
        return self.norm_H(self.f_H(x_ctrl, z_H))

    def fast_update(self, x_ctrl: torch.Tensor, z_H: torch.Tensor, z_L: torch.Tensor) -> torch.Tensor:
        return self.norm_L(self.f_L(torch.cat((x_ctrl, z_H), dim=-1), z_L))

    def router_logits(self, z_L: torch.Tensor, z_H: torch.Tensor, token_offset: Optional[torch.Tensor]) -> torch.Tensor:
        router_input = z_L + self.mix_gate(z_H)
        if token_offset is not None:
            router_input = router_input.unsqueeze(1) + token_offset
        return self.router(router_input)


class HRMPointerController(TwoTimescaleController):
    """Two-timescale recurrent router with a fixed period. Per call, with x_ctrl = input_proj(pooled x):

        z_H <- LN(GRU_H(x_ctrl, z_H))            only for samples with step % T == 0
        z_L <- LN(GRU_L([x_ctrl, z_H], z_L))     every call, conditioned on the (new) slow state
        alphas = softmax(router(z_L + mix_gate(z_H)) / temperature), optionally top-k

    so the first call on a fresh state updates z_H, then every T-th. See TwoTimescaleController for
    per-token routing.
    """

    def __init__(self, d_model: int, n_heads: int, d_ctrl: Optional[int] = None, *, T: int = 4,
                 topk: Optional[int] = None, temperature_init: float = DEFAULT_TEMPERATURE_INIT,
                 temperature_min: float = DEFAULT_TEMPERATURE_MIN, use_layernorm: bool = True, dropout: float = 0.0):
        super().__init__(d_model, n_heads, d_ctrl, topk=topk, temperature_init=temperature_init,
                         temperature_min=temperature_min, use_layernorm=use_layernorm, dropout=dropout)
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        self.T = T

    def forward(self, x: torch.Tensor, head_outputs: Optional[torch.Tensor] = None, *,
                state: Optional[HRMState] = None, mask: Optional[torch.Tensor] = None, return_aux: bool = True,
                per_token: bool = False) -> Tuple[torch.Tensor, HRMState, Optional[RoutingCall]]:
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        x_ctrl, token_offset = self.controller_input(x, mask, per_token)

        # The slow update runs for every sample and is kept where due, instead of branching on the step.
        update_H = state.step % self.T == 0
        z_H = torch.where(update_H.unsqueeze(-1), self.slow_update(x_ctrl, state.z_H), state.z_H)
        z_L = self.fast_update(x_ctrl, z_H, state.z_L)

        alphas, aux = self.route(self.router_logits(z_L, z_H, token_offset), mask if per_token else None, return_aux)
        if aux is not None:
            aux.slow_updates = update_H.sum()
        return alphas, HRMState(z_L=z_L, z_H=z_H, step=state.step + 1), aux


@dataclass
class ACTState(HRMState):
    """HRM state plus, per sequence, the halting probability accumulated since the last slow update
    (`halt_accum`, float) and the number of calls since then (`ponders`, long)."""
    halt_accum: torch.Tensor
    ponders: torch.Tensor


# Recurrent states are pytrees, as the ACT carries that hold them.
pytree.register_dataclass(HRMState)
pytree.register_dataclass(ACTState)


class ACTHRMPointerController(TwoTimescaleController):
    """HRM controller whose slow state updates when a learned halting signal says so.

    Per call and sample, p = sigmoid(w . z_H + b) is read from the slow state before the update and added
    to `halt_accum`; `ponders` counts the call. The slow state updates when
        halt_accum >= 1 - halt_epsilon,  or  ponders >= max_ponders (forced),  or  step == 0 (fresh state),
    and an update resets both to 0. So `max_ponders` bounds the period from above, and max_ponders = T
    with p ~ 0 reproduces the fixed-period controller. The gate starts at p = 1/4 everywhere (zero
    weights), i.e. an update every 4 calls, like the fixed-period default.

    Learning signals for p: `aux.ponder_cost` (sum of this call's p over the batch; the trainer adds
    `ponder_tau * ponder_cost`) pushes towards fewer updates, and a straight-through estimator lets the
    task loss push the other way: the forward uses the hard decision, the backward treats the slow state
    as z_H_old + p * (z_H_candidate - z_H_old).
    """

    def __init__(self, d_model: int, n_heads: int, d_ctrl: Optional[int] = None, *, topk: Optional[int] = None,
                 temperature_init: float = DEFAULT_TEMPERATURE_INIT, temperature_min: float = DEFAULT_TEMPERATURE_MIN,
                 use_layernorm: bool = True, dropout: float = 0.0, max_ponders: int = 20, halt_epsilon: float = 0.01):
        super().__init__(d_model, n_heads, d_ctrl, topk=topk, temperature_init=temperature_init,
                         temperature_min=temperature_min, use_layernorm=use_layernorm, dropout=dropout)
        if max_ponders < 1:
            raise ValueError(f"max_ponders must be at least 1, got {max_ponders}")
        if not 0 <= halt_epsilon < 1:
            raise ValueError(f"halt_epsilon must be in [0, 1), got {halt_epsilon}")
        self.max_ponders = max_ponders
        self.halt_epsilon = halt_epsilon
        self.halt_gate = nn.Linear(self.d_ctrl, 1)
        with torch.no_grad():
            self.halt_gate.weight.zero_()
            self.halt_gate.bias.fill_(-math.log(3))  # sigmoid(-log 3) = 1/4

    def init_state(self, batch_size: int, device: torch.device) -> ACTState:
        state = super().init_state(batch_size, device)
        return ACTState(z_L=state.z_L, z_H=state.z_H, step=state.step,
                        halt_accum=torch.zeros(batch_size, dtype=state.z_H.dtype, device=device),
                        ponders=torch.zeros(batch_size, dtype=torch.long, device=device))

    def forward(self, x: torch.Tensor, head_outputs: Optional[torch.Tensor] = None, *,
                state: Optional[ACTState] = None, mask: Optional[torch.Tensor] = None, return_aux: bool = True,
                per_token: bool = False) -> Tuple[torch.Tensor, ACTState, Optional[RoutingCall]]:
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        x_ctrl, token_offset = self.controller_input(x, mask, per_token)

        halt_prob = torch.sigmoid(self.halt_gate(state.z_H)).squeeze(-1)
        halt_accum = state.halt_accum + halt_prob.detach()
        ponders = state.ponders + 1
        update_H = (halt_accum >= 1 - self.halt_epsilon) | (ponders >= self.max_ponders) | (state.step == 0)

        z_H_candidate = self.slow_update(x_ctrl, state.z_H)
        # Straight-through: (p - p.detach()) is exactly zero forward and carries d(loss)/dp backward.
        straight_through = (halt_prob - halt_prob.detach()).unsqueeze(-1) * (z_H_candidate - state.z_H)
        z_H = torch.where(update_H.unsqueeze(-1), z_H_candidate, state.z_H) + straight_through
        z_L = self.fast_update(x_ctrl, z_H, state.z_L)

        alphas, aux = self.route(self.router_logits(z_L, z_H, token_offset), mask if per_token else None, return_aux)
        if aux is not None:
            aux.ponder_cost = halt_prob.sum()
            aux.slow_updates = update_H.sum()
            aux.halt_prob = halt_prob
        new_state = ACTState(z_L=z_L, z_H=z_H, step=state.step + 1,
                             halt_accum=torch.where(update_H, torch.zeros_like(halt_accum), halt_accum),
                             ponders=torch.where(update_H, torch.zeros_like(ponders), ponders))
        return alphas, new_state, aux


class RoutingConfig(pydantic.BaseModel):
    """The `arch.routing` block: which controller routes the attention heads, and its architecture.

    Options a controller does not have are ignored by it (`T` is for hrm; `max_ponders` and `halt_epsilon`
    for hrm_act; `use_layernorm` for hrm and hrm_act; classical uses `d_ctrl` as the width of its MLP).
    How the controllers are trained (temperature schedule, entropy bonus, learning rate, clips, warm-up)
    is training's business: the `routing` block of the training config.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    controller: Literal["none", "classical", "hrm", "hrm_act"] = "none"
    per_token: bool = False
    d_ctrl: Optional[int] = pydantic.Field(None, gt=0, description="controller width; None means hidden_size")
    topk: Optional[int] = pydantic.Field(None, gt=0)
    use_layernorm: bool = True
    dropout: float = pydantic.Field(0.0, ge=0, lt=1)
    T: int = pydantic.Field(4, gt=0, description="hrm: the slow state updates every T calls")
    max_ponders: int = pydantic.Field(20, gt=0, description="hrm_act: forced slow update after this many calls")
    halt_epsilon: float = pydantic.Field(0.01, ge=0, lt=1, description="hrm_act: update once accumulated p >= 1 - this")

    def check_heads(self, num_heads: int) -> None:
        """The controllers choose the top-k of the heads: a ValueError naming both when topk exceeds them."""
        if self.controller != "none" and self.topk is not None and self.topk > num_heads:
            raise ValueError(f"routing.topk ({self.topk}) must be at most num_heads ({num_heads})")


Controller = Union[PointerOverHeadsController, HRMPointerController, ACTHRMPointerController]


def controller_seed(name: str) -> int:
    """The seed of controller `name`'s own generator: derived from the default generator's initial seed (the
    run's seed, which training sets before building the model) and the name, so that each controller of a
    model, and each run seed, starts from its own weights."""
    sequence = np.random.SeedSequence(torch.initial_seed(), spawn_key=tuple(name.encode()))
    return int(sequence.generate_state(1, np.uint64)[0])


def build_router(config: RoutingConfig, d_model: int, n_heads: int, *, name: str) -> Controller:
    """The controller named by `config.controller` (not "none") for a layer of width d_model with n_heads;
    `name` tells the model's controllers apart (HRM's are "H" and "L").

    Its weights are drawn from its own generator (seeded by `controller_seed(name)`), and the default
    generator is left as it was found. So a model with controllers draws the same numbers for every other
    weight, and afterwards (halting exploration, the loader's worker seeds), as the same model without them:
    runs of one seed differ only by their controllers, which pairs the arms of an A/B by seed. Models are
    built on the CPU, so the CPU generator is the one to spare. The controller starts at the default
    temperature; training's schedule sets the temperature from then on.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(controller_seed(name))
        return new_controller(config, d_model, n_heads)


def new_controller(config: RoutingConfig, d_model: int, n_heads: int) -> Controller:
    common = dict(topk=config.topk, dropout=config.dropout)
    if config.controller == "classical":
        return PointerOverHeadsController(d_model, n_heads, config.d_ctrl, **common)
    if config.controller == "hrm":
        return HRMPointerController(d_model, n_heads, config.d_ctrl, T=config.T, use_layernorm=config.use_layernorm,
                                    **common)
    if config.controller == "hrm_act":
        return ACTHRMPointerController(d_model, n_heads, config.d_ctrl, max_ponders=config.max_ponders,
                                       halt_epsilon=config.halt_epsilon, use_layernorm=config.use_layernorm, **common)
    raise ValueError(f"no controller to build for routing.controller={config.controller!r}")


# ---------------------------------------------------------------------------------------------------------
# What routing reports to the model's callers


@dataclass
class LevelRouting:
    """One level's routing in one ACT step.

    alphas: [B, calls, heads], every call's weights in call order (per-token weights averaged over tokens);
    diagnostics: the last call's, with slow_updates summed over the step's calls. Each figure is a mean
    or a per-step count: callers average them over steps and processes.
    """
    alphas: torch.Tensor
    diagnostics: RoutingDiagnostics


@dataclass
class RoutingOutput:
    """Routing of one ACT step: the differentiable loss terms and, per level ("H", "L"), what was routed.

    entropy: mean routing entropy of each level's last call (the call that carries gradient), averaged
    over levels; ponder_cost: sum of the last calls' ponder costs (hrm_act only, else None).
    """
    entropy: torch.Tensor
    ponder_cost: Optional[torch.Tensor]
    levels: Dict[str, LevelRouting]


def summarize_routing(calls_by_level: Dict[str, List[RoutingCall]]) -> Optional[RoutingOutput]:
    """Turn each level's controller calls (in call order) into a RoutingOutput; None without routing."""
    if not calls_by_level:
        return None
    last_calls = [calls[-1] for calls in calls_by_level.values()]
    has_ponder = all(call.ponder_cost is not None for call in last_calls)
    levels = {}
    for level, calls in calls_by_level.items():
        alphas = [call.alphas.mean(dim=1) if call.alphas.ndim == 3 else call.alphas for call in calls]
        diagnostics = calls[-1].diagnostics()
        if diagnostics.slow_updates is not None:
            diagnostics.slow_updates = torch.stack([call.slow_updates for call in calls]).sum().float()
        levels[level] = LevelRouting(alphas=torch.stack(alphas, dim=1).detach(), diagnostics=diagnostics)
    return RoutingOutput(
        entropy=torch.stack([call.entropy for call in last_calls]).mean(),
        ponder_cost=torch.stack([call.ponder_cost for call in last_calls]).sum() if has_ponder else None,
        levels=levels)
