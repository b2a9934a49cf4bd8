"""The transformer baseline against a slow, literal re-statement of the TRM release's Model_ACTV2 and its loss
head (same weights: carries, logits, Q values, halting, losses and gradients over several ACT steps), its
state-dict keys, config checks and a training run."""
import math

import pytest
import torch

from models import build_model, parse_arch
from models.config_validation import ConfigError
from training.distributed import DistributedContext
from training.loop import run_training

from test_hrm import ref_linear, ref_rms, ref_rope
from test_trm import (BATCH, SEQ, assert_float32_close, assert_release_checkpoint_loads,
                      assert_unrouted_training_interface, release_losses, release_swiglu, release_weights, tiny_batch,
                      tiny_model)
from tiny_runs import make_config, read_metrics, train_losses

TRANSFORMER_ARCH = dict(
    name="recursive_reasoning.transformers_baseline@Model_ACTV2",
    loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
    puzzle_emb_ndim=48, H_cycles=1, H_layers=2, hidden_size=32, expansion=2, num_heads=3, pos_encodings="rope",
    halt_max_steps=3, halt_exploration_prob=0.5, forward_dtype="float32",
)
CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))

# 3 heads of 10 dimensions on 32 (heads that do not divide the width, as the release's 12 on 512 do), learned
# positions with 4 whole heads, and the halting switches.
VARIANTS = {
    "rope-uneven-heads": {},
    "learned": dict(pos_encodings="learned", num_heads=4),
    "act_disabled": dict(act_enabled=False),
    "act_inference": dict(act_inference=True),
}


def tiny_transformer(**overrides):
    return tiny_model(dict(TRANSFORMER_ARCH, **overrides))


# ---------------------------------------------------------------------------------------------------------
# The release's model restated literally from its code, on a dict of tensors named as its state dict is.

def release_attention(h, w, prefix, heads, rope):
    B, S, _ = h.shape
    d = h.shape[-1] // heads  # head_dim = hidden_size // num_heads, num_heads * head_dim may fall short
    qkv = ref_linear(h, w[prefix + "qkv_proj.weight"]).view(B, S, 3 * heads, d)
    q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]
    if rope:
        q, k = ref_rope(q), ref_rope(k)
    probs = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, S, heads * d)
    return ref_linear(out, w[prefix + "o_proj.weight"])


def release_H_level(h, injection, w, arch):
    h = h + injection
    for i in range(arch["H_layers"]):
        prefix = f"model.inner.H_level.layers.{i}."
        h = ref_rms(h + release_attention(h, w, prefix + "self_attn.", arch["num_heads"], arch["pos_encodings"] == "rope"))
        h = ref_rms(h + release_swiglu(h, w, prefix + "mlp."))
    return h


def release_emb_len(arch):
    return -(arch["puzzle_emb_ndim"] // -arch["hidden_size"])


def release_inner(w, puzzle_rows, arch, z_H, data):
    hidden, emb_len = arch["hidden_size"], release_emb_len(arch)
    embedding = w["model.inner.embed_tokens.embedding_weight"][data["inputs"].long()]
    pad = emb_len * hidden - puzzle_rows.shape[-1]
    puzzle = torch.cat([puzzle_rows, torch.zeros(puzzle_rows.shape[0], pad)], dim=-1) if pad > 0 else puzzle_rows
    embedding = torch.cat([puzzle.view(-1, emb_len, hidden), embedding], dim=-2)
    if arch["pos_encodings"] == "learned":
        embedding = 0.707106781 * (embedding + w["model.inner.embed_pos.embedding_weight"])
    z_H = release_H_level(z_H, math.sqrt(hidden) * embedding, w, arch)  # "1-step grad": one pass, with gradient
    logits = ref_linear(z_H, w["model.inner.lm_head.weight"])[:, emb_len:]
    q = ref_linear(z_H[:, 0], w["model.inner.q_head.weight"], w["model.inner.q_head.bias"])
    return z_H.detach(), logits, q[..., 0], q[..., 1]


def release_act_step(w, arch, carry, batch, training):
    """One call of the release's Model_ACTV2 (compute_target_q left False, as its loss head leaves it) and its
    ACTLossHead's loss; returns the new carry, outputs, loss and the looked-up puzzle rows (a leaf)."""
    halted, steps, z_H, current = carry
    z_H = torch.where(halted.view(-1, 1, 1), w["model.inner.H_init"], z_H)
    steps = torch.where(halted, 0, steps)
    current = {k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v) for k, v in current.items()}
    puzzle_rows = w["model.inner.puzzle_emb.weights"][current["puzzle_identifiers"].long()].detach().requires_grad_()
    z_H, logits, q_halt, q_continue = release_inner(w, puzzle_rows, arch, z_H, current)
    with torch.no_grad():
        steps = steps + 1
        halted = steps >= arch["halt_max_steps"]
        use_adaptive = arch["halt_max_steps"] > 1 and (
            (training and arch.get("act_enabled", True)) or (not training and arch.get("act_inference", False)))
        if use_adaptive:
            halted = halted | (q_halt > q_continue)
            if training:
                min_halt_steps = ((torch.rand_like(q_halt) < arch["halt_exploration_prob"])
                                  * torch.randint_like(steps, low=2, high=arch["halt_max_steps"] + 1))
                halted = halted & (steps >= min_halt_steps)

    lm_loss, q_halt_loss, loss_counts, seq_is_correct = release_losses(logits, current["labels"], q_halt)
    valid = halted & (loss_counts > 0)
    metrics = dict(count=valid.sum(), exact_accuracy=(valid & seq_is_correct).sum(),
                   steps=torch.where(valid, steps, 0).sum())
    outputs = dict(logits=logits, q_halt_logits=q_halt, q_continue_logits=q_continue)
    return (halted, steps, z_H, current), outputs, lm_loss + 0.5 * q_halt_loss, metrics, puzzle_rows


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_act_steps_equal_the_release_restated(variant, training):
    overrides = VARIANTS[variant]
    arch = dict(TRANSFORMER_ARCH, **overrides)
    model = tiny_transformer(**overrides)
    model.train(training)
    w = release_weights(model)
    batch = tiny_batch(1)
    carry = model.initial_carry(batch)
    shape = (BATCH, SEQ + release_emb_len(arch), arch["hidden_size"])
    ref_carry = (torch.ones(BATCH, dtype=torch.bool), torch.zeros(BATCH, dtype=torch.int32), torch.zeros(shape),
                 {k: torch.empty_like(v) for k, v in batch.items()})
    halting_seen = []
    for step in range(5):
        batch = tiny_batch(step + 1)  # a new batch each call: halted sequences take theirs
        model.zero_grad()
        torch.manual_seed(100 + step)
        result = model(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits"])
        torch.manual_seed(100 + step)
        ref_carry, ref_outputs, ref_loss, ref_metrics, puzzle_rows = release_act_step(w, arch, ref_carry, batch, training)
        carry = result.carry

        for key in ("logits", "q_halt_logits", "q_continue_logits"):
            assert_float32_close(result.outputs[key], ref_outputs[key], key)
        assert torch.equal(carry.halted, ref_carry[0]) and torch.equal(carry.steps, ref_carry[1])
        assert_float32_close(carry.inner_carry.z_H, ref_carry[2], "z_H")
        assert "target_q_continue" not in result.outputs and "q_continue_loss" not in result.metrics.losses
        assert result.metrics.count == ref_metrics["count"]
        assert result.metrics.per_sequence["exact_accuracy"] == ref_metrics["exact_accuracy"]
        assert result.metrics.per_sequence["steps"] == ref_metrics["steps"]
        assert_float32_close(result.loss.double(), ref_loss, "loss")
        halting_seen.append(tuple(carry.halted.tolist()))

        if training:
            result.loss.backward()
            ref_loss.backward()
            for name, p in model.model.named_parameters():
                assert_float32_close(p.grad, w[f"model.{name}"].grad, name)
                w[f"model.{name}"].grad = None
            local_weights = model.model.inner.puzzle_emb.local_weights
            assert_float32_close(local_weights.grad, puzzle_rows.grad, "puzzle embedding rows")
            local_weights.grad = None  # the sparse optimizer's step clears it in training
    if (training and arch.get("act_enabled", True)) or (not training and arch.get("act_inference", False)):
        # Halting varied by sequence and step, so the comparison tested the Q rule (and, in training, exploration).
        assert len(set(halting_seen)) > 2
    else:
        # Without adaptive halting every sequence runs exactly halt_max_steps (3), then restarts.
        assert [h.count(True) for h in halting_seen] == [0, 0, BATCH, 0, 0]


def test_the_stack_runs_once_per_step_with_gradient_whatever_H_cycles():
    model = tiny_transformer(H_cycles=4)
    inner = model.model.inner
    calls = []
    inner.H_level.register_forward_hook(lambda m, i, o: calls.append(o[0].requires_grad))
    carry = inner.reset_carry(torch.ones(BATCH, dtype=torch.bool), inner.empty_carry(BATCH, torch.device("cpu")))
    new_carry, logits, _, routing = inner(carry, tiny_batch(1))
    assert calls == [True] and logits.requires_grad and not new_carry.z_H.requires_grad and routing is None


SUDOKU_SIZES = dict(batch_size=768, seq_len=81, vocab_size=11, num_puzzle_identifiers=1)


def test_release_state_dict_keys_and_parameter_count_at_its_defaults():
    arch = dict(TRANSFORMER_ARCH, hidden_size=512, num_heads=12, expansion=4, puzzle_emb_ndim=512, H_layers=8)
    model = build_model(parse_arch(arch), **SUDOKU_SIZES)
    layer_names = ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_up_proj.weight",
                   "mlp.down_proj.weight"]
    assert set(model.state_dict()) == {
        "model.inner.H_init", "model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight",
        "model.inner.q_head.weight", "model.inner.q_head.bias", "model.inner.puzzle_emb.weights",
        *(f"model.inner.H_level.layers.{i}.{n}" for i in range(8) for n in layer_names)}
    # 12 heads of 42 (504 of the 512 dimensions); SwiGLU width round(4 * 512 * 2/3) rounded up to 256 = 1536.
    assert model.state_dict()["model.inner.H_level.layers.0.self_attn.qkv_proj.weight"].shape == (3 * 504, 512)
    assert model.state_dict()["model.inner.H_level.layers.0.self_attn.o_proj.weight"].shape == (512, 504)
    assert sum(p.numel() for p in model.parameters()) == (
        11 * 512 * 2 + 512 * 2 + 2 + 8 * (512 * 1512 + 504 * 512 + 512 * 3072 + 1536 * 512))


def test_a_release_checkpoint_loads_strictly_and_gives_the_same_outputs(tmp_path):
    assert_release_checkpoint_loads(tiny_transformer(pos_encodings="learned"),
                                    dict(TRANSFORMER_ARCH, pos_encodings="learned"), tmp_path / "step_10", tiny_batch(1))


def test_training_interface():
    assert_unrouted_training_interface(tiny_transformer())


@pytest.mark.parametrize("overrides,message", [
    (dict(pos_encodings="none"), "arch.pos_encodings"),
    (dict(num_heads=33), "arch: hidden_size (32) must be at least num_heads (33)"),
    (dict(num_heads=2, hidden_size=30), "arch: rope needs an even head size: hidden_size / num_heads = 15"),
    (dict(L_cycles=2), "arch.L_cycles: unknown key"),
    (dict(routing=dict(controller="hrm")), "arch.routing: unknown key"),
    (dict(act_inference="sometimes"), "arch.act_inference"),
])
def test_bad_transformer_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        parse_arch(dict(TRANSFORMER_ARCH, **overrides))


@pytest.mark.slow
def test_training_run_lowers_the_loss(tiny_dataset, tmp_path):
    run_dir = str(tmp_path / "run")
    config = make_config(tiny_dataset, f"checkpoint_path={run_dir}", "epochs=8", "eval_interval=8", "lr=3e-3",
                         "arch.num_heads=3", arch="transformer")
    finished = run_training(config, CPU)
    losses = train_losses(read_metrics(run_dir))
    steps = sorted(losses)
    assert losses[steps[-1]] < 0.8 * losses[steps[0]]
    assert finished.eval_metrics["all"]["accuracy"] > 0
