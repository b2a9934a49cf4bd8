"""Building blocks against hand computations: init statistics, RoPE, SwiGLU width, RMS norm, post-norm."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.attention import attention
from models.initializers import trunc_normal_init_
from models.layers import (Attention, CastedEmbedding, CastedLinear, RotaryEmbedding, SwiGLU, apply_rotary, rms_norm,
                           swiglu_intermediate_size)

# Standard deviation of a unit normal cut at +-2: sqrt(1 - 2*2*phi(2)/Z), Z = erf(2/sqrt 2).
TRUNCATED_STD_AT_2 = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(2 / math.sqrt(2)))


@pytest.mark.parametrize("std", [0.02, 1.0 / math.sqrt(512), 1.0])
def test_trunc_normal_has_requested_std_and_is_cut_at_two_sigma(std):
    torch.manual_seed(0)
    sample = trunc_normal_init_(torch.empty(400_000), std=std)
    assert abs(sample.std().item() / std - 1) < 0.02
    # The cut sits at 2 sigma of the underlying (uncorrected) normal, i.e. 2 * std / TRUNCATED_STD_AT_2.
    bound = 2 * std / TRUNCATED_STD_AT_2
    assert sample.abs().max().item() <= bound * (1 + 1e-6)
    assert sample.abs().max().item() > 0.99 * bound
    assert abs(sample.mean().item()) < 0.01 * std


def test_trunc_normal_zero_std_gives_zeros():
    assert torch.equal(trunc_normal_init_(torch.ones(5), std=0), torch.zeros(5))


def test_casted_linear_init_and_cast():
    torch.manual_seed(0)
    layer = CastedLinear(256, 1024, bias=True)
    assert layer.weight.dtype == torch.float32
    assert abs(layer.weight.std().item() * math.sqrt(256) - 1) < 0.02
    assert torch.equal(layer.bias, torch.zeros(1024))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.linear(x, layer.weight.bfloat16(), layer.bias.bfloat16()))


def test_casted_embedding_init_and_cast():
    torch.manual_seed(0)
    emb = CastedEmbedding(1000, 256, init_std=1 / 16, cast_to=torch.bfloat16)
    assert abs(emb.embedding_weight.std().item() * 16 - 1) < 0.02
    ids = torch.tensor([[3, 999]])
    out = emb(ids)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[0, 1], emb.embedding_weight[999].bfloat16())


def test_rope_equals_complex_rotation():
    head_dim, positions, theta = 8, 6, 10000.0
    rope = RotaryEmbedding(head_dim, positions, theta)
    torch.manual_seed(0)
    x = torch.randn(2, positions, 3, head_dim)
    rotated = apply_rotary(x, rope())

    # Pair dimension i with i + d/2 as the complex number x_i + j x_{i+d/2}, rotate by pos * theta^(-2i/d).
    half = head_dim // 2
    freqs = torch.tensor([theta ** (-2 * i / head_dim) for i in range(half)], dtype=torch.float64)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * freqs[None, :]
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    z = z * torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    expected = torch.cat((z.real, z.imag), dim=-1)
    torch.testing.assert_close(rotated.double(), expected, rtol=1e-5, atol=1e-5)


def test_rope_keeps_dtype_and_computes_in_float32():
    rope = RotaryEmbedding(8, 4, 10000.0)
    x = torch.randn(1, 4, 2, 8).bfloat16()
    out = apply_rotary(x, rope())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, apply_rotary(x.float(), rope()).bfloat16())


@pytest.mark.parametrize("hidden,expansion,expected", [(512, 4, 1536), (64, 4, 256), (384, 2.5, 768), (256, 3, 512)])
def test_swiglu_width_rounds_up_to_256(hidden, expansion, expected):
    assert swiglu_intermediate_size(hidden, expansion) == expected
    mlp = SwiGLU(hidden, expansion)
    assert mlp.gate_up_proj.weight.shape == (2 * expected, hidden)
    assert mlp.down_proj.weight.shape == (hidden, expected)


def test_swiglu_splits_gate_then_up():
    torch.manual_seed(0)
    mlp = SwiGLU(32, 2)
    x = torch.randn(2, 5, 32)
    inter = swiglu_intermediate_size(32, 2)
    gate = x @ mlp.gate_up_proj.weight[:inter].T
    up = x @ mlp.gate_up_proj.weight[inter:].T
    expected = (gate * torch.sigmoid(gate) * up) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)


def test_rms_norm_is_weightless_and_float32_inside():
    x = torch.tensor([[3.0, 4.0]])
    expected = x / math.sqrt((9 + 16) / 2 + 1e-5)
    torch.testing.assert_close(rms_norm(x, 1e-5), expected)
    xb = torch.randn(4, 16).bfloat16()
    assert rms_norm(xb, 1e-5).dtype == torch.bfloat16
    torch.testing.assert_close(rms_norm(xb, 1e-5), rms_norm(xb.float(), 1e-5).bfloat16())


def test_attention_qkv_layout_and_output():
    torch.manual_seed(0)
    hidden, heads = 32, 4
    attn = Attention(hidden, heads, backend="sdpa")
    x = torch.randn(2, 7, hidden)
    head_dim = hidden // heads
    w = attn.qkv_proj.weight
    # Fused projection rows: all q heads, then all k heads, then all v heads.
    q = (x @ w[:hidden].T).view(2, 7, heads, head_dim)
    k = (x @ w[hidden:2 * hidden].T).view(2, 7, heads, head_dim)
    v = (x @ w[2 * hidden:].T).view(2, 7, heads, head_dim)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    heads_out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    torch.testing.assert_close(attn.head_outputs(x, None), heads_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn(x, None), heads_out.reshape(2, 7, hidden) @ attn.o_proj.weight.T,
                               rtol=1e-5, atol=1e-5)


def test_attention_function_is_non_causal_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 4) for _ in range(3))
    out = attention(q, k, v, "sdpa")
    weights = torch.einsum("bqhd,bkhd->bhqk", q, k).div(2).softmax(-1)
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", weights, v), rtol=1e-5, atol=1e-5)
