"""The CUDA fast path (CUDA-graph replay of the compiled model) against the plain compiled path, and the
choice between them.

The cuda tests build the same weights twice and run both paths on the same batches for several ACT steps,
feeding each path's carry back in (the carry is what graph replay could overwrite), then compare logits,
Q values, losses, metrics and every gradient. The tolerances are bf16's: both paths compute in bfloat16,
and Inductor may order a reduction differently in each compilation.
"""
import copy
import types

import pytest
import torch

from models import build_model, parse_arch
from training.evaluation import evaluate
from training.fast_path import GraphReplayedModel, prepare_model, uses_fast_path
from training.distributed import DistributedContext

ARCH = dict(name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
            loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
            halt_exploration_prob=0.0, halt_max_steps=4, H_cycles=2, L_cycles=2, H_layers=2, L_layers=2,
            hidden_size=64, num_heads=2, expansion=4, puzzle_emb_ndim=64, pos_encodings="rope")
SIZES = dict(batch_size=8, seq_len=16, vocab_size=7, num_puzzle_identifiers=5)
# bf16 keeps 8 bits of mantissa: 2^-8 relative, a few units of it after a few layers.
BF16_TOLERANCE = dict(rtol=4e-2, atol=4e-2)


def config(**values):
    return types.SimpleNamespace(**{"compile": True, "fast_path": True, "grad_accum_steps": 1, **values})


def batches(count, device, generator_seed=0):
    generator = torch.Generator().manual_seed(generator_seed)
    return [{"inputs": torch.randint(1, SIZES["vocab_size"], (SIZES["batch_size"], SIZES["seq_len"]), generator=generator),
             "labels": torch.randint(1, SIZES["vocab_size"], (SIZES["batch_size"], SIZES["seq_len"]), generator=generator),
             "puzzle_identifiers": torch.randint(0, SIZES["num_puzzle_identifiers"], (SIZES["batch_size"],),
                                                 generator=generator).to(torch.int32)}
            for _ in range(count)]


def test_cpu_always_takes_the_plain_path():
    model = build_model(parse_arch(dict(ARCH, forward_dtype="float32")), **SIZES)
    cpu = torch.device("cpu")
    assert not uses_fast_path(config(), cpu, model)
    assert prepare_model(model, config(), cpu) is model


def test_fast_path_needs_compile_its_key_whole_batches_and_no_routing():
    cuda = torch.device("cuda")
    model = build_model(parse_arch(dict(ARCH, forward_dtype="float32")), **SIZES)
    routed = build_model(parse_arch(dict(ARCH, forward_dtype="float32", routing=dict(controller="classical"))),
                         **SIZES)
    assert uses_fast_path(config(), cuda, model)
    assert not uses_fast_path(config(fast_path=False), cuda, model)
    assert not uses_fast_path(config(compile=False), cuda, model)
    assert not uses_fast_path(config(), cuda, routed)
    assert not uses_fast_path(config(grad_accum_steps=2), cuda, model)


def test_graph_replayed_model_hands_back_a_copy_of_the_carry():
    """What the wrapper adds, checked without a GPU: same result, a carry in memory of its own."""
    torch.manual_seed(0)
    model = build_model(parse_arch(dict(ARCH, forward_dtype="float32")), **SIZES)
    wrapped = GraphReplayedModel(model)
    batch = batches(1, "cpu")[0]
    carry = model.initial_carry(batch)
    plain = model(carry=carry, batch=batch)
    replayed = wrapped(carry=carry, batch=batch)
    assert torch.equal(plain.carry.inner_carry.z_H, replayed.carry.inner_carry.z_H)
    assert torch.equal(plain.carry.steps, replayed.carry.steps)
    assert replayed.carry.inner_carry.z_H.data_ptr() != plain.carry.inner_carry.z_H.data_ptr()
    assert torch.equal(plain.metrics.count, replayed.metrics.count)
    assert wrapped.routers() == {} and wrapped.state_dict().keys() == model.state_dict().keys()


def run_steps(model, base_model, steps):
    """Training calls on fresh batches with the carry fed back, as train_step makes them; returns each
    step's outputs and metrics and every parameter's gradient after each backward."""
    records, carry = [], None
    for batch in steps:
        batch = {k: v.cuda() for k, v in batch.items()}
        carry = carry if carry is not None else model.initial_carry(batch)
        result = model(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits"])
        carry = result.carry
        result.loss.backward()
        grads = {name: p.grad.float().clone() for name, p in base_model.named_parameters() if p.grad is not None}
        grads["puzzle_emb"] = base_model.model.inner.puzzle_emb.local_weights.grad.float().clone()
        for p in base_model.parameters():
            p.grad = None
        base_model.model.inner.puzzle_emb.local_weights.grad = None
        records.append(dict(outputs={k: v.float().clone() for k, v in result.outputs.items()},
                            loss=result.loss.detach().float().clone(), count=result.metrics.count.clone(),
                            halted=carry.halted.clone(), steps=carry.steps.clone(), grads=grads))
    return records


def two_paths():
    torch.manual_seed(0)
    plain_model = build_model(parse_arch(ARCH), **SIZES).cuda()
    fast_model = copy.deepcopy(plain_model)
    return (plain_model, prepare_model(plain_model, config(fast_path=False), torch.device("cuda")),
            fast_model, prepare_model(fast_model, config(), torch.device("cuda")))


@pytest.mark.cuda
def test_fast_path_training_steps_match_the_plain_path():
    plain_base, plain, fast_base, fast = two_paths()
    assert isinstance(fast, GraphReplayedModel)
    steps = batches(5, "cpu")
    plain.train(), fast.train()
    plain_records, fast_records = run_steps(plain, plain_base, steps), run_steps(fast, fast_base, steps)
    for step, (p, f) in enumerate(zip(plain_records, fast_records)):
        for key in p["outputs"]:
            torch.testing.assert_close(f["outputs"][key], p["outputs"][key], **BF16_TOLERANCE,
                                       msg=lambda m: f"step {step}, {key}: {m}")
        torch.testing.assert_close(f["loss"], p["loss"], rtol=1e-2, atol=1e-2)
        assert torch.equal(f["halted"], p["halted"]) and torch.equal(f["steps"], p["steps"])
        assert torch.equal(f["count"], p["count"])
        assert f["grads"].keys() == p["grads"].keys()
        for name in p["grads"]:
            scale = p["grads"][name].abs().max().clamp_min(1e-6)
            torch.testing.assert_close(f["grads"][name] / scale, p["grads"][name] / scale, **BF16_TOLERANCE,
                                       msg=lambda m: f"step {step}, gradient of {name}: {m}")


@pytest.mark.cuda
def test_fast_path_evaluation_matches_the_plain_path():
    plain_base, plain, fast_base, fast = two_paths()
    ctx = DistributedContext(rank=0, world_size=1, device=torch.device("cuda"))
    metadata = types.SimpleNamespace(sets=["all"])
    data = batches(4, "cpu", generator_seed=1)
    small = [("all", b, SIZES["batch_size"]) for b in data]
    plain_metrics = evaluate(plain, small, metadata, ctx)
    fast_metrics = evaluate(fast, small, metadata, ctx)
    assert plain_metrics["all"].keys() == fast_metrics["all"].keys()
    for name, value in plain_metrics["all"].items():
        assert fast_metrics["all"][name] == pytest.approx(value, rel=2e-2, abs=2e-2), name
