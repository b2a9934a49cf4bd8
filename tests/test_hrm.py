"""HRM recurrence, ACT halting and the model contract, against hand-written slow reference computations."""
import math

import pytest
import torch

from models import build_model, parse_arch
from models.hrm import HierarchicalReasoningModelACT, HRMConfig, InnerCarry

TINY_ARCH = dict(
    name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
    loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
    puzzle_emb_ndim=48, H_cycles=2, L_cycles=3, H_layers=1, L_layers=2, hidden_size=32, expansion=2,
    num_heads=4, pos_encodings="rope", halt_max_steps=4, halt_exploration_prob=0.1, forward_dtype="float32",
)
BATCH, SEQ, VOCAB, IDS = 4, 9, 7, 5


def tiny_model(**overrides):
    torch.manual_seed(0)
    return build_model(parse_arch(dict(TINY_ARCH, **overrides)), batch_size=BATCH, seq_len=SEQ, vocab_size=VOCAB,
                       num_puzzle_identifiers=IDS)


def tiny_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int32),
        "labels": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(0, IDS, (BATCH,), generator=g, dtype=torch.int32),
    }


def randomise_puzzle_embedding(model):
    with torch.no_grad():
        model.model.inner.puzzle_emb.weights.normal_()


# ---------------------------------------------------------------------------------------------------------
# A slow reference of the reference release's model, written from the state dict alone with explicit formulas.

def ref_linear(x, w, b=None):
    y = torch.einsum("...i,oi->...o", x, w)
    return y if b is None else y + b


def ref_rms(x, eps=1e-5):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def ref_rope(x, theta=10000.0):
    # x: [B, S, H, D]; rotate pairs (i, i + D/2) by angle pos * theta^(-2i/D).
    _, S, _, D = x.shape
    half = D // 2
    out = torch.empty_like(x)
    for pos in range(S):
        for i in range(half):
            angle = pos * theta ** (-2 * i / D)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, pos, :, i], x[:, pos, :, i + half]
            out[:, pos, :, i] = a * c - b * s
            out[:, pos, :, i + half] = b * c + a * s
    return out


def ref_block(h, sd, prefix, heads, rope):
    B, S, Hd = h.shape
    d = Hd // heads
    qkv = ref_linear(h, sd[prefix + "self_attn.qkv_proj.weight"])
    q, k, v = (qkv[..., i * Hd:(i + 1) * Hd].reshape(B, S, heads, d) for i in range(3))
    if rope:
        q, k = ref_rope(q), ref_rope(k)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    probs = torch.exp(scores - scores.max(-1, keepdim=True).values)
    probs = probs / probs.sum(-1, keepdim=True)
    attn = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, S, Hd)
    h = ref_rms(h + ref_linear(attn, sd[prefix + "self_attn.o_proj.weight"]))
    gate_up = ref_linear(h, sd[prefix + "mlp.gate_up_proj.weight"])
    inter = gate_up.shape[-1] // 2
    gate, up = gate_up[..., :inter], gate_up[..., inter:]
    mlp = ref_linear(gate / (1 + torch.exp(-gate)) * up, sd[prefix + "mlp.down_proj.weight"])
    return ref_rms(h + mlp)


def ref_level(h, injection, sd, level, num_layers, heads, rope):
    h = h + injection
    for i in range(num_layers):
        h = ref_block(h, sd, f"model.inner.{level}.layers.{i}.", heads, rope)
    return h


def ref_inner_step(sd, arch, z_H, z_L, batch):
    hidden, heads = arch["hidden_size"], arch["num_heads"]
    rope = arch["pos_encodings"] == "rope"
    tokens = sd["model.inner.embed_tokens.embedding_weight"][batch["inputs"].long()]
    emb_len = -(-arch["puzzle_emb_ndim"] // hidden)
    puzzle = sd["model.inner.puzzle_emb.weights"][batch["puzzle_identifiers"].long()]
    puzzle = torch.cat([puzzle, torch.zeros(puzzle.shape[0], emb_len * hidden - puzzle.shape[1])], dim=1)
    x = torch.cat([puzzle.view(-1, emb_len, hidden), tokens], dim=1)
    if not rope:
        x = 0.707106781 * (x + sd["model.inner.embed_pos.embedding_weight"])
    x = math.sqrt(hidden) * x
    for h in range(arch["H_cycles"]):
        for _ in range(arch["L_cycles"]):
            z_L = ref_level(z_L, z_H + x, sd, "L_level", arch["L_layers"], heads, rope)
        z_H = ref_level(z_H, z_L, sd, "H_level", arch["H_layers"], heads, rope)
    logits = ref_linear(z_H, sd["model.inner.lm_head.weight"])[:, emb_len:]
    q = ref_linear(z_H[:, 0], sd["model.inner.q_head.weight"], sd["model.inner.q_head.bias"])
    return z_H, z_L, logits, q


@pytest.mark.parametrize("pos_encodings", ["rope", "learned"])
def test_inner_step_equals_slow_reference(pos_encodings):
    model = tiny_model(pos_encodings=pos_encodings)
    randomise_puzzle_embedding(model)
    with torch.no_grad():
        model.model.inner.q_head.weight.normal_()
    model.eval()
    sd = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    batch = tiny_batch()
    inner = model.model.inner
    carry = inner.reset_carry(torch.ones(BATCH, dtype=torch.bool), inner.empty_carry(BATCH, torch.device("cpu")))
    new_carry, logits, (q_halt, q_continue), _ = inner(carry, batch)

    arch = dict(TINY_ARCH, pos_encodings=pos_encodings)
    z0 = carry.z_H.double(), carry.z_L.double()
    ref_z_H, ref_z_L, ref_logits, ref_q = ref_inner_step(sd, arch, *z0, batch)
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(new_carry.z_H.double(), ref_z_H, **tol)
    torch.testing.assert_close(new_carry.z_L.double(), ref_z_L, **tol)
    torch.testing.assert_close(logits.double(), ref_logits, **tol)
    torch.testing.assert_close(q_halt.double(), ref_q[:, 0], **tol)
    torch.testing.assert_close(q_continue.double(), ref_q[:, 1], **tol)
    assert logits.shape == (BATCH, SEQ, VOCAB)


def test_cycle_schedule_counts_calls_and_only_last_calls_carry_gradient():
    model = tiny_model()
    inner = model.model.inner
    calls = {"H": [], "L": []}
    inner.H_level.register_forward_hook(lambda m, i, o: calls["H"].append(o[0].requires_grad))
    inner.L_level.register_forward_hook(lambda m, i, o: calls["L"].append(o[0].requires_grad))
    carry = inner.reset_carry(torch.ones(BATCH, dtype=torch.bool), inner.empty_carry(BATCH, torch.device("cpu")))
    new_carry, logits, _, _ = inner(carry, tiny_batch())
    # H_cycles=2, L_cycles=3: 6 L calls and 2 H calls, gradient only through the last of each.
    assert calls["L"] == [False] * 5 + [True]
    assert calls["H"] == [False, True]
    assert logits.requires_grad and not new_carry.z_H.requires_grad and not new_carry.z_L.requires_grad


def test_initial_buffers_heads_and_puzzle_embedding_init():
    model = tiny_model()
    inner = model.model.inner
    assert torch.equal(inner.q_head.weight, torch.zeros(2, 32))
    assert torch.equal(inner.q_head.bias, torch.full((2,), -5.0))
    names = dict(inner.named_buffers())
    for name in ("H_init", "L_init"):
        assert name in names and name not in dict(inner.named_parameters())
        assert names[name].shape == (32,) and names[name].dtype == torch.float32
        assert names[name].abs().max() <= 2 / 0.8796 + 1e-4
    assert torch.equal(inner.puzzle_emb.weights, torch.zeros(IDS, 48))
    assert "model.inner.puzzle_emb.weights" in model.state_dict()


def test_puzzle_embedding_padded_to_whole_positions():
    model = tiny_model()
    model.eval()
    inner = model.model.inner
    assert inner.puzzle_emb_len == 2  # ceil(48 / 32)
    randomise_puzzle_embedding(model)
    batch = tiny_batch()
    emb = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    assert emb.shape == (BATCH, 2 + SEQ, 32)
    vectors = inner.puzzle_emb.weights[batch["puzzle_identifiers"].long()]
    scale = math.sqrt(32)
    torch.testing.assert_close(emb[:, 0], scale * vectors[:, :32])
    torch.testing.assert_close(emb[:, 1, :16], scale * vectors[:, 32:])
    assert torch.equal(emb[:, 1, 16:], torch.zeros(BATCH, 16))
    tokens = inner.embed_tokens.embedding_weight[batch["inputs"].long()]
    torch.testing.assert_close(emb[:, 2:], scale * tokens)


def test_learned_positions_are_scaled_by_inverse_sqrt2():
    model = tiny_model(pos_encodings="learned", puzzle_emb_ndim=0)
    inner = model.model.inner
    assert not hasattr(inner, "rotary_emb") and inner.puzzle_emb_len == 0
    batch = tiny_batch()
    emb = inner.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    tokens = inner.embed_tokens.embedding_weight[batch["inputs"].long()]
    expected = math.sqrt(32) * 0.707106781 * (tokens + inner.embed_pos.embedding_weight)
    torch.testing.assert_close(emb, expected)


def run_step(model, carry, batch):
    return model(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits"])


def test_eval_runs_exactly_halt_max_steps_and_counts_steps():
    model = tiny_model()
    model.eval()
    batch = tiny_batch()
    carry = model.initial_carry(batch)
    assert carry.halted.all() and carry.steps.dtype == torch.int32
    with torch.no_grad():
        for step in range(1, 5):
            result = run_step(model, carry, batch)
            carry = result.carry
            assert torch.equal(carry.steps, torch.full((BATCH,), step, dtype=torch.int32))
            assert bool(result.all_halted) == (step == 4)
            assert "target_q_continue" not in result.outputs
            assert int(result.metrics.count) == (BATCH if step == 4 else 0)


def test_carry_reset_only_for_halted_sequences():
    model = tiny_model()
    model.eval()
    batch = tiny_batch(1)
    carry = model.initial_carry(batch)
    with torch.no_grad():
        carry = run_step(model, carry, batch).carry
        carry.halted = torch.tensor([True, False, True, False])
        old_z_H = carry.inner_carry.z_H.clone()
        new_batch = tiny_batch(2)
        inner = model.model.inner
        reset = inner.reset_carry(carry.halted, carry.inner_carry)
        assert torch.equal(reset.z_H[0], inner.H_init.expand(SEQ + 2, -1))
        assert torch.equal(reset.z_L[2], inner.L_init.expand(SEQ + 2, -1))
        assert torch.equal(reset.z_H[1], old_z_H[1]) and torch.equal(reset.z_H[3], old_z_H[3])
        carry = run_step(model, carry, new_batch).carry
    # Halted rows restarted on the new batch; the others kept their data and continued counting.
    assert carry.steps.tolist() == [1, 2, 1, 2]
    for row, source in [(0, new_batch), (1, batch), (2, new_batch), (3, batch)]:
        for key in ("inputs", "labels", "puzzle_identifiers"):
            assert torch.equal(carry.current_data[key][row], source[key][row])


def test_training_halts_on_q_and_explores():
    model = tiny_model(halt_max_steps=6, halt_exploration_prob=0.0)
    model.train()
    batch = tiny_batch()
    inner = model.model.inner
    carry = model.initial_carry(batch)
    # q_halt > q_continue for every sequence -> all halt after one step without exploration.
    with torch.no_grad():
        inner.q_head.bias.copy_(torch.tensor([3.0, -3.0]))
    result = run_step(model, carry, batch)
    assert bool(result.all_halted) and result.carry.steps.tolist() == [1] * BATCH
    # q_halt < q_continue -> nobody halts before halt_max_steps.
    with torch.no_grad():
        inner.q_head.bias.copy_(torch.tensor([-3.0, 3.0]))
    carry = model.initial_carry(batch)
    for step in range(1, 7):
        carry = run_step(model, carry, batch).carry
        assert carry.halted.all() == (step == 6)

    # With exploration always on, a Q-halt at step 1 is overridden: min_halt_steps >= 2.
    model = tiny_model(halt_max_steps=6, halt_exploration_prob=1.0)
    model.train()
    with torch.no_grad():
        model.model.inner.q_head.bias.copy_(torch.tensor([3.0, -3.0]))
    torch.manual_seed(3)
    carry = run_step(model, model.initial_carry(batch), batch).carry
    assert not carry.halted.any()


def test_bootstrapped_q_target_formula():
    model = tiny_model(halt_max_steps=2)
    model.train()
    with torch.no_grad():
        model.model.inner.q_head.weight.normal_()
    batch = tiny_batch()
    inner = model.model.inner
    carry = model.initial_carry(batch)
    for step in (1, 2):
        start_inner = inner.reset_carry(carry.halted, carry.inner_carry)
        start_data = {k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
                      for k, v in carry.current_data.items()}
        with torch.no_grad():
            after, _, _, _ = inner(start_inner, start_data)
            _, _, (next_halt, next_continue), _ = inner(after, start_data)
        result = model(carry=carry, batch=batch, return_keys=["target_q_continue"])
        carry = result.carry
        expected = torch.sigmoid(next_halt if step == 2 else torch.maximum(next_halt, next_continue))
        torch.testing.assert_close(result.outputs["target_q_continue"], expected)
        carry.halted = torch.zeros(BATCH, dtype=torch.bool)


def test_halt_max_steps_one_never_uses_q_in_training():
    model = tiny_model(halt_max_steps=1)
    model.train()
    result = run_step(model, model.initial_carry(tiny_batch()), tiny_batch())
    assert bool(result.all_halted) and "q_continue_loss" not in result.metrics.losses


def test_backward_reaches_every_parameter_and_puzzle_embedding():
    model = tiny_model()
    model.train()
    batch = tiny_batch()
    carry = model.initial_carry(batch)
    run_step(model, carry, batch).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.model.inner.puzzle_emb.local_weights.grad is not None


def test_bfloat16_forward_and_backward_run():
    model = tiny_model(forward_dtype="bfloat16")
    model.train()
    batch = tiny_batch()
    result = model(carry=model.initial_carry(batch), batch=batch, return_keys=["logits"])
    assert result.outputs["logits"].dtype == torch.bfloat16 and torch.isfinite(result.loss)
    result.loss.backward()
    assert model.model.inner.lm_head.weight.grad.dtype == torch.float32


def test_config_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        HRMConfig(batch_size=1, seq_len=1, num_puzzle_identifiers=1, vocab_size=2, H_cycles=1, L_cycles=1,
                  H_layers=1, L_layers=1, hidden_size=30, expansion=2, num_heads=4, pos_encodings="rope",
                  halt_max_steps=1, halt_exploration_prob=0)


def test_seeded_construction_is_deterministic():
    a, b = tiny_model(), tiny_model()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert isinstance(a.model, HierarchicalReasoningModelACT) and isinstance(a.model.inner.empty_carry(1, "cpu"), InnerCarry)


@pytest.mark.cuda
def test_bfloat16_forward_backward_on_cuda_with_every_installed_kernel():
    from models.attention import installed_backends
    batch = {k: v.cuda() for k, v in tiny_batch().items()}
    reference_logits = None
    for backend in installed_backends()[::-1]:  # sdpa first
        model = tiny_model(forward_dtype="bfloat16", attention_backend=backend).cuda()
        model.train()
        result = model(carry=model.initial_carry(batch), batch=batch, return_keys=["logits"])
        loss, outputs = result.loss, result.outputs
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
        if reference_logits is None:
            reference_logits = outputs["logits"].float()
        torch.testing.assert_close(outputs["logits"].float(), reference_logits, rtol=5e-2, atol=5e-2)
