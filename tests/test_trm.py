"""TRM against a slow, literal re-statement of its release's forward (same weights: carries, logits, Q values,
halting, losses and gradients over several ACT steps), its state-dict keys, config checks and a training run."""
import math

import pytest
import torch

from models import build_model, parse_arch
from models.checkpoint import COMPILED_PREFIX, load_model_weights
from models.config_validation import ConfigError
from training.distributed import DistributedContext
from training.loop import run_training
from training.run_folder import read_weights

from test_hrm import ref_linear, ref_rms, ref_rope
from tiny_runs import make_config, read_metrics, train_losses

TRM_ARCH = dict(
    name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
    loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
    puzzle_emb_ndim=48, H_cycles=2, L_cycles=2, H_layers=0, L_layers=2, hidden_size=32, expansion=2,
    num_heads=4, pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.5, forward_dtype="float32",
    puzzle_emb_len=3,
)
BATCH, SEQ, VOCAB, IDS = 6, 9, 7, 5
CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))

# The variants the release's configs and README use, and puzzle_emb_len=0 (ceil of the embedding's width).
VARIANTS = {
    "attention-rope": {},
    "attention-learned-len0": dict(pos_encodings="learned", puzzle_emb_len=0),
    "mlp_t-no-positions": dict(mlp_t=True, pos_encodings="none"),
}


def tiny_trm(**overrides):
    return tiny_model(dict(TRM_ARCH, **overrides))


def tiny_model(arch):
    """The model of the `arch` block at the tiny sizes, seeded, with random puzzle embeddings and Q head."""
    torch.manual_seed(0)
    model = build_model(parse_arch(arch), batch_size=BATCH, seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=IDS)
    # Untrained heads are all zeros: random ones make logits, Q values and halting depend on the weights.
    with torch.no_grad():
        model.model.inner.puzzle_emb.weights.normal_()
        model.model.inner.q_head.weight.normal_(std=0.5)
        model.model.inner.q_head.bias.zero_()
    return model


def tiny_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int32),
        "labels": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(0, IDS, (BATCH,), generator=g, dtype=torch.int32),
    }


# ---------------------------------------------------------------------------------------------------------
# The release's model restated literally from its code, on a dict of tensors named as its state dict is.

def release_losses(logits, labels, q_halt):
    """The release's ACTLossHead restated: stablemax cross entropy (per sequence, divided by its labelled cells)
    and the halting loss. Returns (lm_loss, q_halt_loss, labelled cells per sequence, sequence correct)."""
    mask = labels != -100
    loss_counts = mask.sum(-1)
    s = torch.where(logits.double() < 0, 1 / (1 - logits.double() + 1e-30), logits.double() + 1)
    logprobs = torch.log(s / s.sum(-1, keepdim=True))
    picked = torch.gather(logprobs, -1, torch.where(mask, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    lm_loss = (-torch.where(mask, picked, 0) / loss_counts.clamp_min(1).unsqueeze(-1)).sum()
    seq_is_correct = (mask & (logits.argmax(-1) == labels)).sum(-1) == loss_counts
    q_halt_loss = torch.nn.functional.binary_cross_entropy_with_logits(q_halt, seq_is_correct.float(), reduction="sum")
    return lm_loss, q_halt_loss, loss_counts, seq_is_correct


def release_swiglu(x, w, prefix):
    gate, up = ref_linear(x, w[prefix + "gate_up_proj.weight"]).chunk(2, dim=-1)
    return ref_linear(gate * torch.sigmoid(gate) * up, w[prefix + "down_proj.weight"])


def release_attention(h, w, prefix, heads, rope):
    B, S, D = h.shape
    d = D // heads
    qkv = ref_linear(h, w[prefix + "qkv_proj.weight"]).view(B, S, 3 * heads, d)
    q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]
    if rope:
        q, k = ref_rope(q), ref_rope(k)
    probs = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d), dim=-1)
    return ref_linear(torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, S, D), w[prefix + "o_proj.weight"])


def release_block(h, w, prefix, arch):
    if arch.get("mlp_t"):
        # transpose, MLP over the sequence, norm over the sequence, transpose back
        t = h.transpose(1, 2)
        h = ref_rms(t + release_swiglu(t, w, prefix + "mlp_t.")).transpose(1, 2)
    else:
        h = ref_rms(h + release_attention(h, w, prefix + "self_attn.", arch["num_heads"], arch["pos_encodings"] == "rope"))
    return ref_rms(h + release_swiglu(h, w, prefix + "mlp."))


def release_L_level(h, injection, w, arch):
    h = h + injection
    for i in range(arch["L_layers"]):
        h = release_block(h, w, f"model.inner.L_level.layers.{i}.", arch)
    return h


def release_emb_len(arch):
    return -(arch["puzzle_emb_ndim"] // -arch["hidden_size"]) if arch["puzzle_emb_len"] == 0 else arch["puzzle_emb_len"]


def release_inner(w, puzzle_rows, arch, z_H, z_L, data):
    hidden, emb_len = arch["hidden_size"], release_emb_len(arch)
    embedding = w["model.inner.embed_tokens.embedding_weight"][data["inputs"].long()]
    pad = emb_len * hidden - puzzle_rows.shape[-1]
    puzzle = torch.cat([puzzle_rows, torch.zeros(puzzle_rows.shape[0], pad)], dim=-1) if pad > 0 else puzzle_rows
    embedding = torch.cat([puzzle.view(-1, emb_len, hidden), embedding], dim=-2)
    if arch["pos_encodings"] == "learned":
        embedding = 0.707106781 * (embedding + w["model.inner.embed_pos.embedding_weight"])
    x = math.sqrt(hidden) * embedding
    with torch.no_grad():
        for _ in range(arch["H_cycles"] - 1):
            for _ in range(arch["L_cycles"]):
                z_L = release_L_level(z_L, z_H + x, w, arch)
            z_H = release_L_level(z_H, z_L, w, arch)
    for _ in range(arch["L_cycles"]):
        z_L = release_L_level(z_L, z_H + x, w, arch)
    z_H = release_L_level(z_H, z_L, w, arch)
    logits = ref_linear(z_H, w["model.inner.lm_head.weight"])[:, emb_len:]
    q = ref_linear(z_H[:, 0], w["model.inner.q_head.weight"], w["model.inner.q_head.bias"])
    return z_H.detach(), z_L.detach(), logits, q[..., 0], q[..., 1]


def release_act_step(w, arch, carry, batch, training):
    """One call of the release's TinyRecursiveReasoningModel_ACTV1 (no_ACT_continue) and its ACTLossHead's loss;
    returns the new carry, outputs, loss and the looked-up puzzle rows (a leaf, to read their gradient)."""
    halted, steps, z_H, z_L, current = carry
    z_H = torch.where(halted.view(-1, 1, 1), w["model.inner.H_init"], z_H)
    z_L = torch.where(halted.view(-1, 1, 1), w["model.inner.L_init"], z_L)
    steps = torch.where(halted, 0, steps)
    current = {k: torch.where(halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v) for k, v in current.items()}
    puzzle_rows = w["model.inner.puzzle_emb.weights"][current["puzzle_identifiers"].long()].detach().requires_grad_()
    z_H, z_L, logits, q_halt, q_continue = release_inner(w, puzzle_rows, arch, z_H, z_L, current)
    with torch.no_grad():
        steps = steps + 1
        is_last_step = steps >= arch["halt_max_steps"]
        halted = is_last_step
        if training and arch["halt_max_steps"] > 1:
            halted = halted | (q_halt > 0)
            min_halt_steps = ((torch.rand_like(q_halt) < arch["halt_exploration_prob"])
                              * torch.randint_like(steps, low=2, high=arch["halt_max_steps"] + 1))
            halted = halted & (steps >= min_halt_steps)

    lm_loss, q_halt_loss, loss_counts, seq_is_correct = release_losses(logits, current["labels"], q_halt)
    outputs = dict(logits=logits, q_halt_logits=q_halt, q_continue_logits=q_continue)
    return (halted, steps, z_H, z_L, current), outputs, lm_loss + 0.5 * q_halt_loss, puzzle_rows


def release_weights(model):
    """The model's state dict as leaf tensors (trained ones requiring gradient), in the release's names."""
    trained = {f"model.{name}" for name, _ in model.model.named_parameters()}
    return {k: v.detach().clone().requires_grad_(k in trained) for k, v in model.state_dict().items()}


def assert_float32_close(actual, expected, name):
    # Both sides run in float32 in different operation orders; the rounding scales with the values (gradients
    # of a loss summed over the batch reach several units).
    expected = expected.detach()
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_act_steps_equal_the_release_restated(variant, training):
    overrides = VARIANTS[variant]
    arch = dict(TRM_ARCH, **overrides)
    model = tiny_trm(**overrides)
    model.train(training)
    w = release_weights(model)
    batch = tiny_batch(1)
    carry = model.initial_carry(batch)
    shape = (BATCH, SEQ + release_emb_len(arch), arch["hidden_size"])
    ref_carry = (torch.ones(BATCH, dtype=torch.bool), torch.zeros(BATCH, dtype=torch.int32), torch.zeros(shape),
                 torch.zeros(shape), {k: torch.empty_like(v) for k, v in batch.items()})
    halting_seen = []
    for step in range(5):
        batch = tiny_batch(step + 1)  # a new batch each call: halted sequences take theirs
        model.zero_grad()
        torch.manual_seed(100 + step)
        result = model(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits"])
        torch.manual_seed(100 + step)
        ref_carry, ref_outputs, ref_loss, puzzle_rows = release_act_step(w, arch, ref_carry, batch, training)
        carry = result.carry

        for key in ("logits", "q_halt_logits", "q_continue_logits"):
            assert_float32_close(result.outputs[key], ref_outputs[key], key)
        assert torch.equal(carry.halted, ref_carry[0]) and torch.equal(carry.steps, ref_carry[1])
        assert_float32_close(carry.inner_carry.z_H, ref_carry[2], "z_H")
        assert_float32_close(carry.inner_carry.z_L, ref_carry[3], "z_L")
        assert "target_q_continue" not in result.outputs
        halting_seen.append(tuple(carry.halted.tolist()))

        if training:
            assert_float32_close(result.loss.double(), ref_loss, "loss")
            result.loss.backward()
            ref_loss.backward()
            for name, p in model.model.named_parameters():
                assert_float32_close(p.grad, w[f"model.{name}"].grad, name)
                w[f"model.{name}"].grad = None
            local_weights = model.model.inner.puzzle_emb.local_weights
            assert_float32_close(local_weights.grad, puzzle_rows.grad, "puzzle embedding rows")
            local_weights.grad = None  # the sparse optimizer's step clears it in training
    if training:
        # Halting varied by sequence and step, so the comparison tested the Q rule and the exploration.
        assert len(set(halting_seen)) > 2
    else:
        # Evaluation runs exactly halt_max_steps (3), then restarts every sequence.
        assert [h.count(True) for h in halting_seen] == [0, 0, BATCH, 0, 0]


def test_recursion_schedule_and_gradient_only_through_the_last_recursion():
    model = tiny_trm(H_cycles=3, L_cycles=4)
    inner = model.model.inner
    calls = []
    inner.L_level.register_forward_hook(lambda m, i, o: calls.append(o[0].requires_grad))
    carry = inner.reset_carry(torch.ones(BATCH, dtype=torch.bool), inner.empty_carry(BATCH, torch.device("cpu")))
    new_carry, logits, _, routing = inner(carry, tiny_batch(1))
    # Each recursion: 4 z_L updates, then 1 z_H update; 3 recursions, only the last with gradient.
    assert calls == [False] * 10 + [True] * 5
    assert logits.requires_grad and not new_carry.z_H.requires_grad and routing is None


def test_no_ACT_continue_false_is_hrms_rule_with_the_bootstrapped_target():
    model = tiny_trm(no_ACT_continue=False, halt_exploration_prob=0.0)
    model.train()
    with torch.no_grad():
        model.model.inner.q_head.weight.zero_()
        model.model.inner.q_head.bias.copy_(torch.tensor([1.0, 2.0]))  # q_halt > 0 but below q_continue
    batch = tiny_batch(1)
    result = model(carry=model.initial_carry(batch), batch=batch)
    assert not result.carry.halted.any() and "q_continue_loss" in result.metrics.losses
    model = tiny_trm(halt_exploration_prob=0.0)
    model.train()
    with torch.no_grad():
        model.model.inner.q_head.weight.zero_()
        model.model.inner.q_head.bias.copy_(torch.tensor([1.0, 2.0]))
    result = model(carry=model.initial_carry(batch), batch=batch)
    assert result.carry.halted.all() and "q_continue_loss" not in result.metrics.losses


def layer_keys(count, mixer):
    names = {"attention": ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight"],
             "mlp_t": ["mlp_t.gate_up_proj.weight", "mlp_t.down_proj.weight"]}[mixer]
    names = names + ["mlp.gate_up_proj.weight", "mlp.down_proj.weight"]
    return {f"model.inner.L_level.layers.{i}.{n}" for i in range(count) for n in names}


COMMON_KEYS = {"model.inner.H_init", "model.inner.L_init", "model.inner.embed_tokens.embedding_weight",
               "model.inner.lm_head.weight", "model.inner.q_head.weight", "model.inner.q_head.bias",
               "model.inner.puzzle_emb.weights"}
SUDOKU_SIZES = dict(batch_size=768, seq_len=81, vocab_size=11, num_puzzle_identifiers=1)


@pytest.mark.parametrize("overrides,mixer,parameters", [
    # Sizes from the release's layers: SwiGLU width round(4 * n * 2/3) rounded up to 256; mlp_t's n = 81 + 16.
    ({}, "attention", 11 * 512 * 2 + 512 * 2 + 2 + 2 * (512 * 1536 + 512 * 512 + 512 * 3072 + 1536 * 512)),
    (dict(mlp_t=True, pos_encodings="none"), "mlp_t",
     11 * 512 * 2 + 512 * 2 + 2 + 2 * (97 * 1024 + 512 * 97 + 512 * 3072 + 1536 * 512)),
])
def test_release_state_dict_keys_and_parameter_count_at_the_sudoku_shape(overrides, mixer, parameters):
    arch = dict(TRM_ARCH, hidden_size=512, num_heads=8, expansion=4, puzzle_emb_ndim=512, puzzle_emb_len=16,
                H_cycles=3, L_cycles=6, **overrides)
    model = build_model(parse_arch(arch), **SUDOKU_SIZES)
    assert set(model.state_dict()) == COMMON_KEYS | layer_keys(2, mixer)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model.state_dict()["model.inner.puzzle_emb.weights"].shape == (1, 512)


def test_learned_positions_cover_the_puzzle_positions():
    model = tiny_trm(pos_encodings="learned")
    assert model.state_dict()["model.inner.embed_pos.embedding_weight"].shape == (3 + SEQ, 32)
    assert tiny_trm(puzzle_emb_len=0).model.inner.puzzle_emb_len == 2  # ceil(48 / 32)


def assert_release_checkpoint_loads(source, arch, path, batch):
    """`source`'s weights saved as the release's compiled training saves them (`_orig_mod.` keys) load strictly
    into a new model of `arch`, which then gives the same logits."""
    torch.save({COMPILED_PREFIX + k: v for k, v in source.state_dict().items()}, path)
    torch.manual_seed(5)
    target = build_model(parse_arch(arch), batch_size=BATCH, seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=IDS)
    assert load_model_weights(target, read_weights(str(path))) == []
    target.load_state_dict(source.state_dict(), strict=True)
    source.eval(), target.eval()
    with torch.no_grad():
        a = source(carry=source.initial_carry(batch), batch=batch, return_keys=["logits"])
        b = target(carry=target.initial_carry(batch), batch=batch, return_keys=["logits"])
    assert torch.equal(a.outputs["logits"], b.outputs["logits"])


def assert_unrouted_training_interface(model):
    """What training asks of a model without routing: no routers, every parameter a weight, the puzzle
    embedding's table for sign-SGD."""
    groups = model.parameter_groups()
    assert model.routers() == {} and groups.routing == []
    assert {id(p) for p in groups.weights} == {id(p) for p in model.parameters()}
    assert groups.puzzle_embedding == list(model.model.inner.puzzle_emb.buffers())


def test_a_release_checkpoint_loads_strictly_and_gives_the_same_outputs(tmp_path):
    assert_release_checkpoint_loads(tiny_trm(mlp_t=True, pos_encodings="none"),
                                    dict(TRM_ARCH, mlp_t=True, pos_encodings="none"), tmp_path / "step_10", tiny_batch(1))


def test_training_interface():
    assert_unrouted_training_interface(tiny_trm())


@pytest.mark.parametrize("overrides,message", [
    (dict(puzzle_emb_ndim=200), "arch: puzzle_emb_ndim (200) does not fit in puzzle_emb_len (3) positions"),
    (dict(pos_encodings="alibi"), "arch.pos_encodings"),
    (dict(mlp_t="sometimes"), "arch.mlp_t"),
    (dict(routing=dict(controller="hrm"), mlp_t=True), "arch: routing weighs attention heads, and mlp_t has none"),
    (dict(routing=dict(controller="hrm", topk=5)), "arch: routing.topk (5) must be at most num_heads (4)"),
    (dict(routing=dict(controller="hrm", period=4)), "arch.routing.period: unknown key"),
    (dict(name="recursive_reasoning.nope@Model"), "arch.name: unknown architecture"),
])
def test_bad_trm_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        parse_arch(dict(TRM_ARCH, **overrides))


@pytest.mark.parametrize("puzzle_emb_len", [0, 16])
def test_without_a_puzzle_embedding_there_are_no_puzzle_positions(puzzle_emb_len):
    torch.manual_seed(0)
    model = build_model(parse_arch(dict(TRM_ARCH, puzzle_emb_ndim=0, puzzle_emb_len=puzzle_emb_len)),
                        batch_size=BATCH, seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=IDS)
    batch = tiny_batch(1)
    result = model(carry=model.initial_carry(batch), batch=batch, return_keys=["logits"])
    assert model.model.inner.puzzle_emb_len == 0 and result.carry.inner_carry.z_H.shape == (BATCH, SEQ, 32)
    assert result.outputs["logits"].shape == (BATCH, SEQ, VOCAB) and "model.inner.puzzle_emb.weights" not in model.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["trm", "trm_mlp"])
def test_training_run_lowers_the_loss(tiny_dataset, tmp_path, arch):
    run_dir = str(tmp_path / "run")
    config = make_config(tiny_dataset, f"checkpoint_path={run_dir}", "arch.puzzle_emb_len=1", "epochs=8",
                         "eval_interval=8", "lr=3e-3", arch=arch)
    finished = run_training(config, CPU)
    losses = train_losses(read_metrics(run_dir))
    steps = sorted(losses)
    assert losses[steps[-1]] < 0.8 * losses[steps[0]]
    assert finished.eval_metrics["all"]["accuracy"] > 0
