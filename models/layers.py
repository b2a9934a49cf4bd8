"""Transformer building blocks of HRM: cast-on-use linear/embedding, RoPE, attention, SwiGLU, RMS norm.

Parameters live in float32 and are cast to the activations' dtype where they are used, so the
optimizer always updates float32 master weights while the forward runs in bfloat16.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from models.attention import attention
from models.initializers import trunc_normal_init_

CosSin = Tuple[torch.Tensor, torch.Tensor]


def check_head_sizes(hidden_size: int, num_heads: int, pos_encodings: str, *, whole_heads: bool = True) -> None:
    """The heads must split `hidden_size` evenly (with `whole_heads`; else each head has hidden_size // num_heads
    dimensions, at least one), and RoPE rotates pairs of a head's dimensions: a ValueError naming the sizes
    otherwise (config validators call it, so the config fails before the model is built)."""
    if whole_heads and hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if num_heads > hidden_size:
        raise ValueError(f"hidden_size ({hidden_size}) must be at least num_heads ({num_heads})")
    if pos_encodings == "rope" and (hidden_size // num_heads) % 2:
        raise ValueError(f"rope needs an even head size: hidden_size / num_heads = {hidden_size // num_heads}")


class CastedLinear(nn.Module):
    """Linear layer with truncated-normal weights of std 1/sqrt(in), cast to the input dtype on use."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features ** -0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table with truncated-normal init whose lookups come out in `cast_to`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    """Precomputed float32 cos/sin tables for rotary position embeddings."""

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        # Written as 1 / theta^(i/d) rather than theta^(-i/d) to round exactly like the reference.
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.cos = nn.Buffer(angles.cos(), persistent=False)
        self.sin = nn.Buffer(angles.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos, self.sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos_sin: CosSin) -> torch.Tensor:
    """Rotate `[B, S, H, D]` queries or keys in float32 and return them in their own dtype."""
    cos, sin = (t.unsqueeze(-2) for t in cos_sin)  # [S, 1, D] broadcasts over heads
    x32 = x.to(cos.dtype)
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class Attention(nn.Module):
    """Non-causal multi-head attention with a fused q/k/v projection (all q heads, then k, then v)."""

    def __init__(self, hidden_size: int, num_heads: int, backend: str):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.backend = backend
        self.qkv_proj = CastedLinear(hidden_size, 3 * num_heads * self.head_dim, bias=False)
        self.o_proj = CastedLinear(num_heads * self.head_dim, hidden_size, bias=False)

    def head_outputs(self, hidden_states: torch.Tensor, cos_sin: Optional[CosSin]) -> torch.Tensor:
        """Per-head attention outputs `[B, S, heads, head_dim]`, before the output projection."""
        qkv = rearrange(self.qkv_proj(hidden_states), "b s (n d) -> b s n d", d=self.head_dim)
        query, key, value = qkv.split(self.num_heads, dim=2)
        if cos_sin is not None:
            query, key = apply_rotary(query, cos_sin), apply_rotary(key, cos_sin)
        return attention(query, key, value, self.backend)

    def forward(self, hidden_states: torch.Tensor, cos_sin: Optional[CosSin],
                head_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`head_weights` (`[B, heads]` or `[B, S, heads]`) scales each head's output before `o_proj`."""
        heads = self.head_outputs(hidden_states, cos_sin)
        if head_weights is not None:
            weights = head_weights.unsqueeze(1) if head_weights.ndim == 2 else head_weights
            heads = heads * weights.unsqueeze(-1).to(heads.dtype)
        return self.o_proj(rearrange(heads, "b s n d -> b s (n d)"))


def swiglu_intermediate_size(hidden_size: int, expansion: float) -> int:
    """`round(expansion * hidden * 2/3)` rounded up to a multiple of 256."""
    return -(-round(expansion * hidden_size * 2 / 3) // 256) * 256


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        intermediate = swiglu_intermediate_size(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * intermediate, bias=False)
        self.down_proj = CastedLinear(intermediate, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMS norm computed in float32 and cast back."""
    x32 = x.to(torch.float32)
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype)
