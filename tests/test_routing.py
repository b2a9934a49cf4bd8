"""Pointer-over-Heads controllers: routing weights, temperature and top-k, the two-timescale state, ACT
halting, per-token routing, a hand-written reference step, torch.compile, diagnostics, config building."""
import functools
import math

import pydantic
import pytest
import torch
import torch.nn.functional as F

from models.routing import (DEFAULT_TEMPERATURE_INIT, DEFAULT_TEMPERATURE_MIN, ACTHRMPointerController, ACTState,
                            HRMPointerController, HRMState, PointerOverHeadsController, RoutingConfig, build_router,
                            controller_seed, new_controller, routing_diagnostics)

B, L, D, HEADS = 3, 5, 16, 6
CONTROLLERS = ["classical", "hrm", "hrm_act"]


def make_controller(kind, seed=0, **kwargs):
    torch.manual_seed(seed)
    if kind == "classical":
        return PointerOverHeadsController(D, HEADS, **kwargs)
    if kind == "hrm":
        return HRMPointerController(D, HEADS, **kwargs)
    return ACTHRMPointerController(D, HEADS, **kwargs)


def random_input(seed=1, batch=B, length=L):
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


def run_calls(controller, x, calls, state=None, **kwargs):
    """Thread the state through `calls` forwards; return the per-call (alphas, state, aux)."""
    outputs = []
    for _ in range(calls):
        alphas, state, aux = controller(x, state=state, **kwargs)
        outputs.append((alphas, state, aux))
    return outputs


# Shapes, normalisation, interface


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_forward_shapes_normalisation_and_aux(kind):
    controller = make_controller(kind)
    alphas, state, aux = controller(random_input())
    assert alphas.shape == (B, HEADS)
    assert (alphas >= 0).all()
    torch.testing.assert_close(alphas.sum(-1), torch.ones(B))
    assert all(isinstance(getattr(aux, name), torch.Tensor) for name in ("router_logits", "alphas", "entropy", "temperature"))
    assert aux.router_logits.shape == (B, HEADS)
    assert aux.entropy.shape == () and aux.entropy.requires_grad
    assert aux.temperature.shape == () and aux.temperature.item() == controller.temperature
    assert aux.topk_idx is None
    if kind == "classical":
        assert state is None and controller.init_state(B, torch.device("cpu")) is None
    else:
        assert state.z_L.shape == state.z_H.shape == (B, D)
        assert state.step.dtype == torch.long and state.step.tolist() == [1] * B
        assert isinstance(state, ACTState if kind == "hrm_act" else HRMState)


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_per_token_shapes_and_errors(kind):
    controller = make_controller(kind, topk=2)
    alphas, _, aux = controller(random_input(), per_token=True)
    assert alphas.shape == (B, L, HEADS)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(B, L))
    assert (alphas > 0).sum(-1).eq(2).all()
    assert aux.topk_idx.shape == (B, L, 2)
    with pytest.raises(ValueError, match="per_token"):
        controller(random_input()[:, 0], per_token=True)


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_return_aux_false_gives_same_alphas_and_no_aux(kind):
    x = random_input()
    controller = make_controller(kind)
    alphas, _, aux = controller(x)
    alphas_quiet, _, aux_quiet = controller(x, return_aux=False)
    assert aux_quiet is None
    assert torch.equal(alphas, alphas_quiet)


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_pooled_input_shapes_agree(kind):
    # [B, L, D] is pooled by a plain mean: the same as passing the mean as [B, D], or as [B, 1, D].
    x = random_input()
    controller = make_controller(kind)
    alphas_seq, _, _ = controller(x)
    alphas_vec, _, _ = controller(x.mean(1))
    alphas_one, _, _ = controller(x.mean(1, keepdim=True))
    torch.testing.assert_close(alphas_seq, alphas_vec)
    assert torch.equal(alphas_vec, alphas_one)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="topk"):
        HRMPointerController(D, HEADS, topk=HEADS + 1)
    with pytest.raises(ValueError, match="topk"):
        PointerOverHeadsController(D, HEADS, topk=0)
    with pytest.raises(ValueError, match="T must"):
        HRMPointerController(D, HEADS, T=0)
    with pytest.raises(ValueError, match="max_ponders"):
        ACTHRMPointerController(D, HEADS, max_ponders=0)


def test_low_precision_input_routes_in_float32():
    controller = make_controller("hrm")
    x = random_input().bfloat16()
    alphas, state, _ = controller(x)
    assert alphas.dtype == state.z_H.dtype == torch.float32
    assert torch.equal(alphas, controller(x.float())[0])


# Top-k and temperature


@pytest.mark.parametrize("kind", CONTROLLERS)
@pytest.mark.parametrize("topk", [1, 3, HEADS])
def test_topk_keeps_k_largest_renormalised(kind, topk):
    controller = make_controller(kind, topk=topk)
    alphas, _, aux = controller(random_input())
    probs = torch.softmax(aux.router_logits / aux.temperature, dim=-1)
    top_probs, top_idx = probs.topk(topk, dim=-1)
    expected = torch.zeros_like(probs).scatter(-1, top_idx, top_probs / top_probs.sum(-1, keepdim=True))
    torch.testing.assert_close(alphas, expected)
    assert (alphas > 0).sum(-1).tolist() == [topk] * B
    assert torch.equal(aux.topk_idx, top_idx)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(B))
    if topk == HEADS:
        torch.testing.assert_close(alphas, probs)


def test_topk_one_is_one_hot_on_the_argmax():
    alphas, _, aux = make_controller("hrm", topk=1)(random_input())
    assert torch.equal(alphas, F.one_hot(aux.router_logits.argmax(-1), HEADS).float())


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_temperature_clamps_at_minimum_and_sharpens(kind):
    controller = make_controller(kind, temperature_init=2.0, temperature_min=0.5)
    assert controller.temperature == 2.0
    controller.set_temperature(0.1)
    assert controller.temperature == 0.5
    controller.set_temperature(0.1, minimum=0.2)  # a new floor replaces the old one
    assert controller.temperature == 0.2 and controller.temperature_min == 0.2
    with pytest.raises(ValueError, match="positive"):
        controller.set_temperature(1.0, minimum=0.0)
    assert "temperature" not in dict(controller.named_parameters())
    assert "temperature" not in controller.state_dict()

    x = random_input()
    results = {}
    for temperature in (4.0, 1.0, 0.5):
        controller.set_temperature(temperature)
        alphas, _, aux = controller(x)
        assert aux.temperature.item() == temperature
        torch.testing.assert_close(alphas, torch.softmax(aux.router_logits / temperature, dim=-1))
        results[temperature] = (alphas, aux)
    # Temperature scales the logits, never the logits themselves.
    torch.testing.assert_close(results[4.0][1].router_logits, results[0.5][1].router_logits)
    entropies = [results[t][1].entropy.item() for t in (4.0, 1.0, 0.5)]
    top_probs = [results[t][0].max(-1).values.mean().item() for t in (4.0, 1.0, 0.5)]
    assert entropies[0] > entropies[1] > entropies[2]
    assert top_probs[0] < top_probs[1] < top_probs[2]


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_every_controller_defaults_to_the_one_temperature_pair(kind):
    controller = make_controller(kind)
    assert (controller.temperature, controller.temperature_min) == (DEFAULT_TEMPERATURE_INIT, DEFAULT_TEMPERATURE_MIN)


def test_initial_temperature_below_minimum_is_clamped():
    assert HRMPointerController(D, HEADS, temperature_init=0.3, temperature_min=0.7).temperature == 0.7


# Entropy


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_entropy_matches_hand_computation(kind):
    controller = make_controller(kind)
    alphas, _, aux = controller(random_input())
    expected = -(alphas * alphas.log()).sum(-1).mean()
    torch.testing.assert_close(aux.entropy, expected)


def test_uniform_routing_has_entropy_log_heads():
    controller = make_controller("hrm")
    with torch.no_grad():
        controller.router[-1].weight.zero_()
        controller.router[-1].bias.zero_()
    alphas, _, aux = controller(random_input())
    torch.testing.assert_close(alphas, torch.full((B, HEADS), 1 / HEADS))
    torch.testing.assert_close(aux.entropy, torch.tensor(math.log(HEADS)))


def test_entropy_with_topk_zeros_is_finite_and_differentiable():
    controller = make_controller("hrm", topk=2)
    _, _, aux = controller(random_input())
    aux.entropy.backward()
    assert torch.isfinite(aux.entropy)
    assert all(torch.isfinite(p.grad).all() for p in controller.parameters() if p.grad is not None)
    assert controller.router[-1].weight.grad.abs().sum() > 0


# The two-timescale state


def test_slow_state_updates_every_T_steps_and_fast_state_every_step():
    T, calls = 3, 8
    controller = make_controller("hrm", T=T)
    state = controller.init_state(B, torch.device("cpu"))
    x = random_input()
    for step in range(calls):
        _, new_state, aux = controller(x, state=state)
        slow_changed = not torch.equal(new_state.z_H, state.z_H)
        assert slow_changed == (step % T == 0), step
        assert not torch.equal(new_state.z_L, state.z_L)
        assert aux.slow_updates.item() == (B if step % T == 0 else 0)
        assert new_state.step.tolist() == [step + 1] * B
        state = new_state


def test_slow_update_is_decided_per_sample():
    controller = make_controller("hrm", T=3)
    torch.manual_seed(2)
    state = HRMState(z_L=torch.randn(4, D), z_H=torch.randn(4, D), step=torch.tensor([0, 1, 2, 3]))
    _, new_state, aux = controller(random_input(batch=4), state=state)
    changed = [not torch.equal(new_state.z_H[i], state.z_H[i]) for i in range(4)]
    assert changed == [True, False, False, True]
    assert aux.slow_updates.item() == 2
    assert new_state.step.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["hrm", "hrm_act"])
def test_state_none_means_initial_state_and_threading_matters(kind):
    controller = make_controller(kind)
    x = random_input()
    alphas_none, _, _ = controller(x)
    alphas_init, _, _ = controller(x, state=controller.init_state(B, torch.device("cpu")))
    assert torch.equal(alphas_none, alphas_init)
    init = controller.init_state(B, torch.device("cpu"))
    assert torch.equal(init.z_L, torch.zeros(B, D)) and torch.equal(init.z_H, torch.zeros(B, D))
    assert init.step.tolist() == [0] * B

    outputs = run_calls(controller, x, 3)
    assert outputs[-1][1].step.tolist() == [3] * B
    # Same input, different history: the threaded state changes the routing.
    assert not torch.allclose(outputs[0][0], outputs[2][0])


def test_state_detach_and_reset():
    controller = make_controller("hrm_act")
    outputs = run_calls(controller, random_input(), 2)
    state = outputs[-1][1]
    assert state.z_L.grad_fn is not None
    detached = state.detach()
    assert isinstance(detached, ACTState) and detached.z_L.grad_fn is None
    assert torch.equal(detached.z_H, state.z_H)

    reset = state.reset(torch.tensor([True, False, True]))
    assert isinstance(reset, ACTState)
    for name in ("z_L", "z_H", "step", "halt_accum", "ponders"):
        value, before = getattr(reset, name), getattr(state, name)
        assert torch.equal(value[0], torch.zeros_like(value[0])) and torch.equal(value[2], torch.zeros_like(value[2]))
        assert torch.equal(value[1], before[1])


def test_reset_rows_restart_the_slow_schedule():
    controller = make_controller("hrm", T=3)
    state = run_calls(controller, random_input(), 1)[-1][1]  # every row at step 1: no slow update due
    state = state.reset(torch.tensor([True, False, False]))
    _, new_state, _ = controller(random_input(), state=state)
    assert not torch.equal(new_state.z_H[0], state.z_H[0])
    assert torch.equal(new_state.z_H[1:], state.z_H[1:])


# Gradients, determinism, batch independence, masking


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_gradients_reach_every_parameter(kind):
    # Five calls: the slow GRU's recurrent weights only matter from the second slow update (call 4) on.
    controller = make_controller(kind)
    target = torch.randn(HEADS, generator=torch.Generator().manual_seed(3))
    loss = 0
    for alphas, _, aux in run_calls(controller, random_input(), 5):
        loss = loss + (alphas * target).sum() + (aux.ponder_cost if aux.ponder_cost is not None else 0)
    loss.backward()
    for name, parameter in controller.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_halting_gate_learns_from_the_task_loss_alone():
    # The straight-through estimator gives the halting gate a gradient without any ponder cost.
    controller = make_controller("hrm_act")
    target = torch.randn(HEADS, generator=torch.Generator().manual_seed(3))
    alphas = run_calls(controller, random_input(), 2)[-1][0]
    (alphas * target).sum().backward()
    assert controller.halt_gate.bias.grad.abs() > 0
    assert controller.halt_gate.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_same_seed_gives_same_controller_and_outputs(kind):
    first, second = make_controller(kind, seed=7), make_controller(kind, seed=7)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    out_first = run_calls(first, random_input(), 3)
    out_second = run_calls(second, random_input(), 3)
    for (alphas_a, _, _), (alphas_b, _, _) in zip(out_first, out_second):
        assert torch.equal(alphas_a, alphas_b)
    assert not torch.equal(make_controller(kind, seed=8)(random_input())[0], out_first[0][0])


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_samples_are_routed_independently_of_the_batch(kind):
    controller = make_controller(kind)
    x = random_input()
    batched = run_calls(controller, x, 3)
    for row in range(B):
        alone = run_calls(controller, x[row:row + 1], 3)
        for (alphas_batch, _, _), (alphas_alone, _, _) in zip(batched, alone):
            torch.testing.assert_close(alphas_batch[row:row + 1], alphas_alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_masked_pooling_ignores_padded_tokens(kind):
    controller = make_controller(kind)
    x = random_input()
    lengths = torch.tensor([5, 3, 1])
    mask = torch.arange(L) < lengths[:, None]
    alphas, _, _ = controller(x, mask=mask)
    # Padded positions may hold anything.
    scrambled = torch.where(mask[..., None], x, 100 * torch.randn_like(x))
    assert torch.equal(controller(scrambled, mask=mask)[0], alphas)
    assert torch.equal(controller(x, mask=mask.float())[0], alphas)
    for row, length in enumerate(lengths.tolist()):
        alone, _, _ = controller(x[row:row + 1, :length])
        torch.testing.assert_close(alphas[row:row + 1], alone, rtol=1e-5, atol=1e-6)
    assert torch.equal(controller(x, mask=torch.ones(B, L, dtype=torch.bool))[0], controller(x)[0])


# Per-token routing


@pytest.mark.parametrize("kind", ["hrm", "hrm_act"])
def test_per_token_routing_shares_the_pooled_state(kind):
    controller = make_controller(kind)
    x = random_input()
    pooled = run_calls(controller, x, 3)
    per_token = run_calls(controller, x, 3, per_token=True)
    for (_, state_pooled, _), (_, state_token, _) in zip(pooled, per_token):
        assert torch.equal(state_pooled.z_L, state_token.z_L) and torch.equal(state_pooled.z_H, state_token.z_H)


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_identical_tokens_are_routed_like_the_pooled_input(kind):
    controller = make_controller(kind)
    x = random_input()[:, :1].expand(B, L, D)
    alphas_pooled, _, _ = controller(x)
    alphas_tokens, _, _ = controller(x, per_token=True)
    torch.testing.assert_close(alphas_tokens, alphas_pooled[:, None].expand(B, L, HEADS))


@pytest.mark.parametrize("kind", CONTROLLERS)
def test_per_token_padding_does_not_affect_kept_tokens(kind):
    controller = make_controller(kind)
    x = random_input()
    mask = torch.arange(L) < torch.tensor([5, 3, 2])[:, None]
    alphas, _, aux = controller(x, mask=mask, per_token=True)
    scrambled = torch.where(mask[..., None], x, 100 * torch.randn_like(x))
    alphas_scrambled, _, aux_scrambled = controller(scrambled, mask=mask, per_token=True)
    assert torch.equal(alphas[mask], alphas_scrambled[mask])
    # The entropy averages over kept tokens only, per sequence, then over the batch.
    token_entropy = -(alphas * alphas.log()).sum(-1)
    expected = torch.stack([token_entropy[row, mask[row]].mean() for row in range(B)]).mean()
    torch.testing.assert_close(aux.entropy, expected)
    torch.testing.assert_close(aux_scrambled.entropy, expected)


# ACT halting


def act_with_constant_halting(probability, **kwargs):
    controller = make_controller("hrm_act", **kwargs)
    with torch.no_grad():
        controller.halt_gate.bias.fill_(math.log(probability / (1 - probability)))
    return controller


def test_act_accumulates_halting_probability_and_resets_after_an_update():
    # p = 0.3 every call: the first call updates (fresh state), then the sum reaches 1.2 >= 0.99 at the 4th.
    controller = act_with_constant_halting(0.3)
    outputs = run_calls(controller, random_input(), 9)
    accumulated = [out[1].halt_accum[0].item() for out in outputs]
    expected = [0.0, 0.3, 0.6, 0.9, 0.0, 0.3, 0.6, 0.9, 0.0]
    assert accumulated == pytest.approx(expected, abs=1e-6)
    assert [out[2].slow_updates.item() for out in outputs] == [B if a == 0 else 0 for a in expected]
    assert [out[1].ponders[0].item() for out in outputs] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    for out in outputs:
        torch.testing.assert_close(out[2].halt_prob, torch.full((B,), 0.3))


def test_act_halt_epsilon_sets_the_threshold():
    # With epsilon 0.15 the threshold is 0.85, so 0.9 after three calls is enough.
    outputs = run_calls(act_with_constant_halting(0.3, halt_epsilon=0.15), random_input(), 5)
    assert [out[2].slow_updates.item() for out in outputs] == [B, 0, 0, B, 0]


def test_act_max_ponders_forces_an_update():
    outputs = run_calls(act_with_constant_halting(1e-6, max_ponders=3), random_input(), 7)
    assert [out[2].slow_updates.item() for out in outputs] == [B, 0, 0, B, 0, 0, B]
    assert [out[1].ponders[0].item() for out in outputs] == [0, 1, 2, 0, 1, 2, 0]


def test_act_slow_state_is_unchanged_between_updates():
    outputs = run_calls(act_with_constant_halting(0.3), random_input(), 4)
    assert torch.equal(outputs[1][1].z_H, outputs[0][1].z_H)
    assert torch.equal(outputs[2][1].z_H, outputs[1][1].z_H)
    assert not torch.equal(outputs[3][1].z_L, outputs[2][1].z_L)


def test_act_update_is_decided_per_sample():
    controller = act_with_constant_halting(0.25)
    state = controller.init_state(2, torch.device("cpu"))
    state = ACTState(z_L=state.z_L, z_H=torch.randn(2, D), step=torch.tensor([5, 5]),
                     halt_accum=torch.tensor([0.0, 0.8]), ponders=torch.tensor([1, 1]))
    _, new_state, aux = controller(random_input(batch=2), state=state)
    assert aux.slow_updates.item() == 1
    assert torch.equal(new_state.z_H[0], state.z_H[0]) and not torch.equal(new_state.z_H[1], state.z_H[1])
    assert new_state.halt_accum.tolist() == pytest.approx([0.25, 0.0])
    assert new_state.ponders.tolist() == [2, 0]


def test_ponder_cost_is_the_sum_of_this_calls_halting_probabilities():
    controller = make_controller("hrm_act")
    with torch.no_grad():
        controller.halt_gate.weight.normal_()
    state = run_calls(controller, random_input(), 1)[-1][1]
    _, _, aux = controller(random_input(seed=4), state=state)
    halt_prob = torch.sigmoid(state.z_H @ controller.halt_gate.weight[0] + controller.halt_gate.bias)
    torch.testing.assert_close(aux.halt_prob, halt_prob)
    torch.testing.assert_close(aux.ponder_cost, halt_prob.sum())
    assert aux.ponder_cost.requires_grad
    # A fresh controller halts with probability 1/4 everywhere.
    torch.testing.assert_close(make_controller("hrm_act")(random_input())[2].ponder_cost, torch.tensor(B / 4))


def test_act_with_negligible_halting_and_max_ponders_T_is_the_fixed_period_controller():
    T = 3
    fixed = make_controller("hrm", T=T)
    act = act_with_constant_halting(1e-12, max_ponders=T)
    act.load_state_dict(fixed.state_dict(), strict=False)
    x = random_input()
    for (alphas_fixed, state_fixed, _), (alphas_act, state_act, _) in zip(run_calls(fixed, x, 7),
                                                                           run_calls(act, x, 7)):
        assert torch.equal(state_fixed.z_H, state_act.z_H)
        assert torch.equal(alphas_fixed, alphas_act)


# A reference step with the GRU and LayerNorm equations written out


def gru_cell_reference(inputs, hidden, cell):
    input_r, input_z, input_n = (inputs @ cell.weight_ih.T + cell.bias_ih).chunk(3, dim=-1)
    hidden_r, hidden_z, hidden_n = (hidden @ cell.weight_hh.T + cell.bias_hh).chunk(3, dim=-1)
    reset = torch.sigmoid(input_r + hidden_r)
    update = torch.sigmoid(input_z + hidden_z)
    candidate = torch.tanh(input_n + reset * hidden_n)
    return (1 - update) * candidate + update * hidden


def layer_norm_reference(v, norm):
    centred = v - v.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.square().mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias


def test_hrm_step_matches_reference_equations():
    controller = make_controller("hrm", T=2, topk=4).double()
    torch.manual_seed(5)
    state = HRMState(z_L=torch.randn(2, D, dtype=torch.float64), z_H=torch.randn(2, D, dtype=torch.float64),
                     step=torch.tensor([4, 5]))
    x = torch.randn(2, L, D, dtype=torch.float64)
    alphas, new_state, aux = controller(x, state=state)

    x_ctrl = x.mean(1) @ controller.input_proj.weight.T + controller.input_proj.bias
    z_H = layer_norm_reference(gru_cell_reference(x_ctrl, state.z_H, controller.f_H), controller.norm_H)
    z_H = torch.stack([z_H[0], state.z_H[1]])  # step 4 is a multiple of T = 2, step 5 is not
    z_L = layer_norm_reference(gru_cell_reference(torch.cat([x_ctrl, z_H], -1), state.z_L, controller.f_L),
                               controller.norm_L)
    hidden = z_L + z_H @ controller.mix_gate.weight.T + controller.mix_gate.bias
    hidden = hidden @ controller.router[0].weight.T + controller.router[0].bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    logits = hidden @ controller.router[-1].weight.T + controller.router[-1].bias
    probs = torch.softmax(logits / 2.0, dim=-1)
    top_probs, top_idx = probs.topk(4, dim=-1)
    expected_alphas = torch.zeros_like(probs).scatter(-1, top_idx, top_probs / top_probs.sum(-1, keepdim=True))

    torch.testing.assert_close(new_state.z_H, z_H)
    torch.testing.assert_close(new_state.z_L, z_L)
    torch.testing.assert_close(aux.router_logits, logits)
    torch.testing.assert_close(alphas, expected_alphas)
    assert new_state.step.tolist() == [5, 6]


def test_classical_controller_is_an_mlp_on_pooled_or_token_states():
    controller = make_controller("classical", temperature_init=1.5)
    x = random_input()
    first, last = controller.router[0], controller.router[-1]
    for inputs, per_token in ((x.mean(1), False), (x, True)):
        logits = last(F.gelu(first(inputs)))
        alphas, state, aux = controller(x, per_token=per_token)
        torch.testing.assert_close(aux.router_logits, logits)
        torch.testing.assert_close(alphas, torch.softmax(logits / 1.5, dim=-1))
        assert state is None


# torch.compile


@functools.lru_cache(maxsize=None)
def compiler_works():
    try:
        torch.compile(lambda t: t + 1)(torch.zeros(1))
        return True
    except Exception:  # no working compiler toolchain on this platform
        return False


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hrm", "hrm_act"])
def test_compiled_forward_matches_eager(kind):
    if not compiler_works():
        pytest.skip("torch.compile does not work on this platform")
    controller = make_controller(kind, topk=3)
    compiled = torch.compile(controller, fullgraph=False)
    x = random_input()
    for (alphas_eager, state_eager, aux_eager), (alphas_compiled, state_compiled, aux_compiled) in zip(
            run_calls(controller, x, 5), run_calls(compiled, x, 5)):
        torch.testing.assert_close(alphas_compiled, alphas_eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state_compiled.z_H, state_eager.z_H, rtol=1e-5, atol=1e-6)
        assert torch.equal(state_compiled.step, state_eager.step)
        assert torch.equal(aux_compiled.slow_updates, aux_eager.slow_updates)


# Diagnostics


def test_routing_diagnostics_hand_computed():
    alphas = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    for shaped in (alphas, alphas.view(2, 1, 4)):
        stats = routing_diagnostics(shaped)
        assert set(stats.figures()) == {"entropy_mean", "entropy_std", "herfindahl", "top1_share"}
        assert all(isinstance(value, torch.Tensor) for value in stats.figures().values())
        torch.testing.assert_close(stats.entropy_mean, torch.tensor(math.log(4) / 2))
        torch.testing.assert_close(stats.entropy_std, torch.tensor(math.log(4) / 2))
        torch.testing.assert_close(stats.herfindahl, torch.tensor(0.625))
        torch.testing.assert_close(stats.top1_share, torch.tensor(0.625))
    single = routing_diagnostics(alphas[1:])
    assert single.entropy_std.item() == 0.0


def test_routing_diagnostics_do_not_track_gradients():
    alphas, _, _ = make_controller("hrm")(random_input())
    assert not any(value.requires_grad for value in routing_diagnostics(alphas).figures().values())


# Building from the arch config


@pytest.mark.parametrize("kind, cls", [("classical", PointerOverHeadsController), ("hrm", HRMPointerController),
                                       ("hrm_act", ACTHRMPointerController)])
def test_build_router_passes_the_config_options(kind, cls):
    config = RoutingConfig(controller=kind, d_ctrl=8, topk=2, T=3, max_ponders=7, halt_epsilon=0.05)
    controller = build_router(config, D, HEADS, name="L")
    assert type(controller) is cls
    # Every controller starts at the one default temperature pair; training's schedule takes over from there.
    assert (controller.topk, controller.temperature, controller.temperature_min) == (
        2, DEFAULT_TEMPERATURE_INIT, DEFAULT_TEMPERATURE_MIN)
    if kind == "classical":
        assert controller.router[0].out_features == 8
    else:
        assert controller.d_ctrl == 8 and controller.input_proj.in_features == D
    if kind == "hrm":
        assert controller.T == 3
    if kind == "hrm_act":
        assert (controller.max_ponders, controller.halt_epsilon) == (7, 0.05)


def test_routing_config_defaults_and_errors():
    assert RoutingConfig().controller == "none"
    with pytest.raises(ValueError, match="no controller"):
        build_router(RoutingConfig(), D, HEADS, name="L")
    with pytest.raises(pydantic.ValidationError):
        RoutingConfig(controller="hrm", hrm_T=4)
    with pytest.raises(pydantic.ValidationError):  # a training setting, not architecture
        RoutingConfig(controller="hrm", temperature_init=1.0)
    with pytest.raises(ValueError, match="topk"):
        build_router(RoutingConfig(controller="hrm", topk=HEADS + 1), D, HEADS, name="L")



@pytest.mark.parametrize("kind", CONTROLLERS)
def test_build_router_draws_from_its_own_generator_and_spares_the_default_one(kind):
    config = RoutingConfig(controller=kind)

    def build(seed, name):
        torch.manual_seed(seed)
        torch.rand(7)  # whatever was drawn before does not matter
        before = torch.get_rng_state()
        controller = build_router(config, D, HEADS, name=name)
        assert torch.equal(torch.get_rng_state(), before) and torch.initial_seed() == seed
        return controller.state_dict()

    def same(a, b):
        return all(torch.equal(a[key], b[key]) for key in a)

    # The weights are the controller class's own initialisation, drawn from the derived seed.
    torch.manual_seed(3)
    torch.manual_seed(controller_seed("H"))
    expected = new_controller(config, D, HEADS).state_dict()
    assert same(build(3, "H"), expected)
    assert same(build(3, "H"), build(3, "H"))
    assert not same(build(3, "H"), build(3, "L")) and not same(build(3, "H"), build(4, "H"))
