"""Pointer-over-Heads routing inside TRM (arch=trm_poh): controller none is plain TRM bit for bit, uniform
routing too, the one controller's calls and gradients, and a tiny routed training run."""
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from models import build_model, parse_arch
from models.checkpoint import load_model_weights
from models.config_validation import ConfigError
from training.distributed import DistributedContext
from training.loop import run_training

from test_trm import BATCH, IDS, SEQ, TRM_ARCH, VOCAB, tiny_batch
from tiny_runs import (arch_config, assert_evaluate_reproduces_final_evaluation, make_config, read_metrics,
                       train_losses)

CONTROLLERS = ["classical", "hrm", "hrm_act"]
TINY = {k: v for k, v in TRM_ARCH.items() if k not in ("name", "loss")}
CALLS_PER_STEP = TRM_ARCH["H_cycles"] * (TRM_ARCH["L_cycles"] + 1)  # every z_L and z_H update calls the network


def composed_arch(name, **overrides):
    """config/arch/<name>.yaml as Hydra composes it, with the tiny sizes of test_trm."""
    merged = OmegaConf.merge(arch_config(name), OmegaConf.create(dict(TINY, **overrides)))
    return parse_arch(OmegaConf.to_container(merged, resolve=True))


def build(arch, seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, batch_size=BATCH, seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=IDS)
    with torch.no_grad():  # heads that make logits, Q values and halting depend on the weights
        model.model.inner.puzzle_emb.weights.normal_(generator=torch.Generator().manual_seed(1))
        model.model.inner.q_head.weight.normal_(std=0.5, generator=torch.Generator().manual_seed(2))
    return model


def routed(controller, **routing):
    return build(composed_arch("trm_poh", routing=dict(controller=controller, **routing)))


def routing_keys(model):
    return [k for k in model.state_dict() if ".router." in k]


def make_uniform(model):
    """Zero the router's last layer: equal logits, so every head gets weight exactly 1/heads."""
    last = model.model.inner.L_level.router.router[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()


def assert_steps_equal(plain, other, steps=4, grads=True):
    """Training ACT steps of both models give identical outputs, carries, losses and gradients."""
    for model in (plain, other):
        model.train()
    carries = [plain.initial_carry(tiny_batch(1)), other.initial_carry(tiny_batch(1))]
    for step in range(steps):
        batch = tiny_batch(step + 1)
        results = []
        for i, model in enumerate((plain, other)):
            model.zero_grad()
            torch.manual_seed(100 + step)
            results.append(model(carry=carries[i], batch=batch, return_keys=["logits", "q_halt_logits"]))
            results[-1].loss.backward()
            carries[i] = results[-1].carry
        a, b = results
        for key in ("logits", "q_halt_logits"):
            assert torch.equal(a.outputs[key], b.outputs[key]), key
        assert torch.equal(a.loss, b.loss) and torch.equal(a.carry.halted, b.carry.halted)
        assert torch.equal(a.carry.inner_carry.z_H, b.carry.inner_carry.z_H)
        assert torch.equal(a.carry.inner_carry.z_L, b.carry.inner_carry.z_L)
        if grads:
            other_params = dict(other.named_parameters())
            for name, p in plain.named_parameters():
                assert torch.equal(p.grad, other_params[name].grad), name
    return results


def test_controller_none_is_plain_trm_bit_for_bit():
    plain = build(composed_arch("trm"))
    off = build(composed_arch("trm_poh", routing=dict(controller="none")))
    assert off.routers() == {} and routing_keys(off) == []
    assert plain.state_dict().keys() == off.state_dict().keys()
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in plain.state_dict().items())
    results = assert_steps_equal(plain, off)
    assert results[1].routing is None


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("per_token", [False, True])
def test_uniform_routing_equals_plain_trm_bit_for_bit(controller, per_token):
    plain = build(composed_arch("trm"))
    model = routed(controller, per_token=per_token)
    assert load_model_weights(model, plain.state_dict()) == routing_keys(model)
    make_uniform(model)
    # The controllers' parameters are the only ones plain TRM lacks; compare the shared gradients.
    results = assert_steps_equal(plain, model, steps=2)
    states = results[1].carry.inner_carry.router_states
    assert set(states) == {"L"}
    if controller != "classical":
        assert states["L"].step.tolist() == [2 * CALLS_PER_STEP] * BATCH


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_the_one_controller_routes_every_call_and_learns_from_the_last_recursion(controller):
    # Every call updates the slow state (T=1, max_ponders=1), so its GRU is on the gradient path too.
    model = routed(controller, **{"classical": {}, "hrm": {"T": 1}, "hrm_act": {"max_ponders": 1}}[controller])
    model.train()
    batch = tiny_batch(1)
    result = model(carry=model.initial_carry(batch), batch=batch)
    result.loss.backward()
    assert set(model.routers()) == {"L"} and routing_keys(model)[0].startswith("model.inner.L_level.router.")
    for name, p in model.named_parameters():
        if ".router." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    level = result.routing.levels["L"]
    assert set(result.routing.levels) == {"L"} and level.alphas.shape == (BATCH, CALLS_PER_STEP, 4)
    if controller != "classical":
        assert level.diagnostics.slow_updates.item() == CALLS_PER_STEP * BATCH
    assert result.routing.entropy.requires_grad
    groups = model.parameter_groups()
    router_ids = {id(p) for p in model.routers()["L"].parameters()}
    assert {id(p) for p in groups.routing} == router_ids and not {id(p) for p in groups.weights} & router_ids


def test_without_gradient_the_first_recursions_leave_the_controller_untouched():
    model = routed("classical")
    model.train()
    batch = tiny_batch(1)
    inner = model.model.inner
    grads = []
    inner.L_level.router.register_forward_hook(lambda m, i, o: grads.append(o[0].requires_grad))
    model(carry=model.initial_carry(batch), batch=batch)
    # H_cycles=2 recursions of 3 calls each: the first recursion without gradient, the last with.
    assert grads == [False] * 3 + [True] * 3


def test_trm_poh_with_mlp_t_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="arch: routing weighs attention heads, and mlp_t has none"):
        composed_arch("trm_poh", mlp_t=True, pos_encodings="none")


@pytest.mark.slow
def test_routed_trm_training_lowers_loss_and_logs_routing(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ctx = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))
    config = make_config(tiny_dataset, f"checkpoint_path={tmp_path}", "arch.puzzle_emb_len=1", "lr=3e-3",
                         "routing.warmup_epochs=0", "routing.controller_lr=1e-3", arch="trm_poh")
    run_training(config, ctx)
    rows = read_metrics(tmp_path)
    losses = train_losses(rows)
    assert np.mean([losses[s] for s in range(21, 25)]) < np.mean([losses[s] for s in range(1, 5)])
    logged = set(rows[-2])
    assert {"train/routing/routing_entropy_mean_L", "train/routing/top1_share_L", "train/routing/temperature_L",
            "train/routing/n_H_updates_L"} <= logged
    assert not any(key.startswith("train/routing/") and key.endswith("_H") for key in logged)
    with open(tmp_path / "routing_24.jsonl") as f:
        lines = [json.loads(line) for line in f]
    # 10 samples x (H_cycles 1 x (L_cycles 2 + 1) calls) x 3 ACT steps, all of the one level.
    assert len(lines) == 10 * 3 * 3 and {line["level"] for line in lines} == {"L"}
    assert_evaluate_reproduces_final_evaluation(tmp_path / "step_24", rows, capsys)


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_the_same_seed_gives_every_shared_weight_plain_trms_value(controller):
    # Paired seeds, as for HRM: the controller draws from its own generator, so the arms of an A/B start alike.
    torch.manual_seed(3)
    plain = build_model(composed_arch("trm"), batch_size=BATCH, seq_len=SEQ, vocab_size=VOCAB,
                        num_puzzle_identifiers=IDS)
    plain_rng = torch.get_rng_state()
    torch.manual_seed(3)
    with_router = build_model(composed_arch("trm_poh", routing=dict(controller=controller)), batch_size=BATCH,
                              seq_len=SEQ, vocab_size=VOCAB, num_puzzle_identifiers=IDS)
    assert torch.equal(torch.get_rng_state(), plain_rng)
    shared = plain.state_dict()
    assert set(shared) == set(with_router.state_dict()) - set(routing_keys(with_router))
    assert all(torch.equal(shared[key], with_router.state_dict()[key]) for key in shared)
