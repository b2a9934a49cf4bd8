"""Pointer-over-Heads routing inside HRM: exactness when uniform, carry handling, checkpoints, training schedules."""
import pytest
import torch

from models import build_model, parse_arch
from models.checkpoint import load_model_weights
from models.routing import HRMState
from models.checkpoint import routing_keys as model_routing_keys
from training.metrics import Reduction, named_step_metrics
from training.optimization import build_optimizers
from training.routing_schedule import RoutingSchedule, RoutingScheduleConfig

ARCH = dict(
    name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
    loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
    puzzle_emb_ndim=32, H_cycles=2, L_cycles=2, H_layers=1, L_layers=2, hidden_size=32, expansion=2,
    num_heads=4, pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.1, forward_dtype="float32",
)
SIZES = dict(batch_size=4, seq_len=6, vocab_size=5, num_puzzle_identifiers=3)
CONTROLLERS = ["classical", "hrm", "hrm_act"]


def make_model(controller="none", seed=0, **routing):
    torch.manual_seed(seed)
    return build_model(parse_arch(dict(ARCH, routing=dict(controller=controller, **routing))), **SIZES)


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(0, 5, (4, 6), generator=g), "labels": torch.randint(0, 5, (4, 6), generator=g),
            "puzzle_identifiers": torch.randint(0, 3, (4,), generator=g)}


def make_uniform(model):
    """Zero the last router layer: equal logits, so every head gets weight exactly 1/heads."""
    for name, p in model.named_parameters():
        if ".router.router." in name and name.split(".")[-2] == str(len(model.model.inner.H_level.router.router) - 1):
            with torch.no_grad():
                p.zero_()


def routing_keys(model):
    return [k for k in model.state_dict() if ".router." in k]


def test_routing_off_adds_no_parameters():
    plain, routed = make_model("none"), make_model("hrm")
    assert routing_keys(plain) == []
    assert set(routed.state_dict()) - set(plain.state_dict()) == set(routing_keys(routed))
    assert routing_keys(routed)[0].startswith("model.inner.H_level.router.")


@pytest.mark.parametrize("controller", CONTROLLERS)
@pytest.mark.parametrize("per_token", [False, True])
def test_uniform_routing_equals_plain_hrm_bit_for_bit(controller, per_token):
    plain = make_model("none")
    routed = make_model(controller, per_token=per_token)
    assert load_model_weights(routed, plain.state_dict()) == routing_keys(routed)
    make_uniform(routed)
    batch = make_batch()
    for model in (plain, routed):
        model.train()
    torch.manual_seed(5)
    result_a = plain(carry=plain.initial_carry(batch), batch=batch, return_keys=["logits"])
    torch.manual_seed(5)
    result_b = routed(carry=routed.initial_carry(batch), batch=batch, return_keys=["logits"])
    assert torch.equal(result_a.outputs["logits"], result_b.outputs["logits"])
    carry_b = result_b.carry
    assert torch.equal(result_a.carry.inner_carry.z_H, carry_b.inner_carry.z_H)
    # The routing state advanced: one call per module call (H: 2, L: 4 per ACT step).
    states = carry_b.inner_carry.router_states
    if controller != "classical":
        assert states["H"].step.tolist() == [2] * 4 and states["L"].step.tolist() == [4] * 4


@pytest.mark.parametrize("controller, routing", [
    ("classical", {}), ("hrm", {}), ("hrm", {"T": 2, "topk": 2}), ("hrm", {"per_token": True, "d_ctrl": 8}),
    ("hrm_act", {}), ("hrm_act", {"use_layernorm": False, "max_ponders": 3})])
def test_the_same_seed_gives_every_shared_weight_the_plain_models_value(controller, routing):
    # Paired seeds: the controllers draw from their own generators, so the arms of an A/B start alike.
    torch.manual_seed(7)
    plain = build_model(parse_arch(dict(ARCH)), **SIZES)  # hrm_v1: no routing block at all
    plain_rng = torch.get_rng_state()
    routed = make_model(controller, seed=7, **routing)
    shared = plain.state_dict()
    assert set(shared) == set(routed.state_dict()) - set(routing_keys(routed))
    assert all(torch.equal(shared[key], routed.state_dict()[key]) for key in shared)
    # What is drawn after the model (halting exploration) is drawn alike too.
    assert torch.equal(torch.get_rng_state(), plain_rng)
    # The controllers differ by level and by seed.
    routers = routed.routers()
    assert not torch.equal(routers["H"].router[0].weight, routers["L"].router[0].weight)
    other_seed = make_model(controller, seed=8, **routing).routers()
    assert not torch.equal(routers["H"].router[0].weight, other_seed["H"].router[0].weight)


def test_router_state_lives_in_carry_resets_for_halted_rows_and_is_detached():
    model = make_model("hrm", T=2)
    model.eval()
    batch = make_batch()
    carry = model.initial_carry(batch)
    carry = model(carry=carry, batch=batch).carry
    state = carry.inner_carry.router_states["L"]
    assert isinstance(state, HRMState) and not state.z_L.requires_grad and state.z_L.abs().sum() > 0
    carry.halted = torch.tensor([True, False, False, True])
    reset = model.model.inner.reset_carry(carry.halted, carry.inner_carry).router_states["L"]
    assert reset.step.tolist() == [0, 4, 4, 0]
    assert torch.equal(reset.z_L[0], torch.zeros(32)) and torch.equal(reset.z_L[1], state.z_L[1])
    carry = model(carry=carry, batch=batch).carry
    assert carry.inner_carry.router_states["L"].step.tolist() == [4, 8, 8, 4]


@pytest.mark.parametrize("controller", CONTROLLERS)
def test_only_the_last_calls_carry_gradient_to_the_controllers(controller):
    # Every call updates the slow state (T=1, max_ponders=1), so its GRU is on the gradient path too.
    model = make_model(controller, **{"classical": {}, "hrm": {"T": 1}, "hrm_act": {"max_ponders": 1}}[controller])
    model.train()
    batch = make_batch()
    result = model(carry=model.initial_carry(batch), batch=batch)
    result.loss.backward()
    for name, p in model.named_parameters():
        if ".router." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    levels = result.routing.levels
    assert levels["H"].alphas.shape == (4, 2, 4) and levels["L"].alphas.shape == (4, 4, 4)
    assert not levels["H"].alphas.requires_grad
    for level in ("H", "L"):
        expected = {"entropy_mean", "entropy_std", "herfindahl", "top1_share", "temperature"}
        if controller != "classical":
            expected.add("slow_updates")
        if controller == "hrm_act":
            expected.add("ponder_cost")
        assert set(levels[level].diagnostics.figures()) == expected
        assert levels[level].diagnostics.temperature.item() == pytest.approx(2.0)
    # Every call of the step updated the slow state of every sequence: 2 H calls and 4 L calls, 4 sequences.
    if controller != "classical":
        assert levels["H"].diagnostics.slow_updates.item() == 2 * 4
        assert levels["L"].diagnostics.slow_updates.item() == 4 * 4
    assert (result.routing.ponder_cost is not None) == (controller == "hrm_act")


def test_routing_figures_are_logged_under_the_names_older_runs_used():
    model = make_model("hrm_act")
    batch = make_batch()
    result = model(carry=model.initial_carry(batch), batch=batch)
    routing_names = {name: reduction for name, _, reduction in named_step_metrics(result.metrics, result.routing)
                     if name.startswith("routing/")}
    assert set(routing_names) == {f"routing/{name}_{level}" for level in ("H", "L") for name in (
        "routing_entropy_mean", "routing_entropy_std", "head_herfindahl", "top1_share", "temperature", "n_H_updates",
        "ponder_cost")}
    # Counts over the step's sequences are summed over its micro-batches (gradient accumulation); the rest
    # are means.
    counts = {f"routing/{name}_{level}" for level in ("H", "L") for name in ("n_H_updates", "ponder_cost")}
    assert {name: reduction for name, reduction in routing_names.items() if reduction != Reduction.MEAN} == {
        name: Reduction.PER_STEP for name in counts}


def test_entropy_bonus_and_ponder_cost_enter_the_loss():
    model = make_model("hrm_act")
    model.train()
    batch = make_batch()
    torch.manual_seed(0)
    base_loss = model(carry=model.initial_carry(batch), batch=batch).loss
    model.set_routing_loss_weights(entropy=0.1, ponder=0.2)
    torch.manual_seed(0)
    result = model(carry=model.initial_carry(batch), batch=batch)
    expected = base_loss - 0.1 * 4 * result.routing.entropy + 0.2 * result.routing.ponder_cost
    torch.testing.assert_close(result.loss, expected)
    assert result.routing.entropy.requires_grad and result.routing.ponder_cost.requires_grad


def test_model_offers_its_routers_and_parameter_groups():
    plain, routed = make_model("none"), make_model("hrm")
    assert plain.routers() == {} and plain.parameter_groups().routing == []
    assert set(routed.routers()) == {"H", "L"}
    groups = routed.parameter_groups()
    router_ids = {id(p) for router in routed.routers().values() for p in router.parameters()}
    assert {id(p) for p in groups.routing} == router_ids
    assert {id(p) for p in groups.weights} | router_ids == {id(p) for p in routed.parameters()}
    assert not {id(p) for p in groups.weights} & router_ids
    assert any(t is routed.model.inner.puzzle_emb.weights for t in groups.puzzle_embedding)
    assert model_routing_keys(routed) == set(routing_keys(routed)) and model_routing_keys(plain) == set()


def test_schedule_sets_every_routers_temperature_floored_at_its_minimum():
    routed = make_model("hrm")
    RoutingSchedule(routed, RoutingScheduleConfig(temperature_init=1.3), total_steps=10).before_step(1)
    assert [router.temperature for router in routed.routers().values()] == [1.3, 1.3]
    RoutingSchedule(routed, RoutingScheduleConfig(temperature_init=0.1, temperature_min=0.4),
                    total_steps=10).before_step(1)
    assert [router.temperature for router in routed.routers().values()] == [0.4, 0.4]


class _Config:
    lr, puzzle_emb_lr, weight_decay, puzzle_emb_weight_decay, beta1, beta2 = 1e-4, 1e-2, 0.1, 0.1, 0.9, 0.95
    routing = RoutingScheduleConfig(controller_lr=3e-5)


def test_schedules_freeze_and_clip():
    model = make_model("hrm")
    config = RoutingScheduleConfig(temperature_init=2.0, temperature_min=0.5, temperature_decay=0.5, entropy_reg=1e-3,
                                   entropy_decay_epochs=2, warmup_epochs=1, schedule_epoch_steps=10,
                                   controller_clip=0.5, encoder_clip=1.0, controller_lr=3e-5)
    schedule = RoutingSchedule(model, config, total_steps=1000)
    assert [schedule.epoch(s) for s in (1, 10, 11, 30)] == [0, 0, 1, 2]
    assert [schedule.temperature(e) for e in (0, 1, 2)] == [2.0, 1.0, 0.5]
    assert [schedule.entropy_weight(e) for e in (0, 1, 2, 4)] == [1e-3, 1e-3, 5e-4, 2.5e-4]
    schedule.before_step(21)
    # The schedule's floor (0.5) applies, below the controllers' default floor (0.7).
    assert model.model.inner.H_level.router.temperature == 0.5
    assert model.routing_entropy_weight.item() == pytest.approx(5e-4)

    _, adam = build_optimizers(model.parameter_groups(), _Config, world_size=1)
    assert [g["base_lr"] for g in adam.param_groups] == [1e-4, 3e-5]
    assert {id(p) for p in adam.param_groups[1]["params"]} == {id(p) for p in schedule.router_params}

    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    schedule.before_optimizer_step(5)  # warm-up: controllers frozen
    assert all(p.grad is None for p in schedule.router_params)
    # The other weights are left alone: their clip (encoder_clip) is the train step's, for every model, and
    # tests/test_loop.py checks it.
    assert all(torch.equal(p.grad, torch.full_like(p, 10.0)) for p in model.parameter_groups().weights)
    for p in schedule.router_params:
        p.grad = torch.full_like(p, 10.0)
    schedule.before_optimizer_step(15)  # after warm-up: clipped to 0.5
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in schedule.router_params]))
    assert norm.item() == pytest.approx(0.5, rel=1e-5)


def test_default_schedule_epoch_is_a_twentieth_of_the_run():
    model = make_model("classical")
    assert RoutingSchedule(model, RoutingScheduleConfig(), total_steps=2000).steps_per_epoch == 100
