import io
import math

import pytest
import torch

from models.adam_atan2 import AdamATan2, _foreach_adam_atan2_

BETA1, BETA2 = 0.9, 0.95


def scalar_update(p, g, m, v, t, lr, wd):
    """The reference Adam-atan2 update for one float64 scalar, written out by hand."""
    p = p * (1 - lr * wd)
    m = BETA1 * m + (1 - BETA1) * g
    v = BETA2 * v + (1 - BETA2) * g * g
    p = p - lr / (1 - BETA1 ** t) * math.atan2(m, math.sqrt(v) / math.sqrt(1 - BETA2 ** t))
    return p, m, v


def reference_run(initial, grads_per_step, lrs, wd):
    """Apply scalar_update element by element; `grads_per_step[s][i]` is None when param i has no grad."""
    values = [p.double().flatten().tolist() for p in initial]
    moments = [[(0.0, 0.0) for _ in vals] for vals in values]
    steps = [0] * len(initial)
    for grads, lr in zip(grads_per_step, lrs):
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            steps[i] += 1
            for j, g in enumerate(grad.double().flatten().tolist()):
                m, v = moments[i][j]
                values[i][j], m, v = scalar_update(values[i][j], g, m, v, steps[i], lr, wd)
                moments[i][j] = (m, v)
    return [torch.tensor(vals, dtype=torch.float64).reshape(p.shape) for vals, p in zip(values, initial)]


def run_optimizer(params, grads_per_step, lrs, wd, optimizer=None):
    optimizer = optimizer or AdamATan2(params, lr=lrs[0], betas=(BETA1, BETA2), weight_decay=wd)
    for grads, lr in zip(grads_per_step, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr  # as the trainer's schedule does every step
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        optimizer.step()
    return optimizer


def test_first_step_is_lr_times_atan_tenth_over_tenth_whatever_the_gradient_scale():
    # Step 1: m = 0.1 g and sqrt(v) / sqrt(0.05) = |g|, so p moves by -lr / 0.1 * atan(0.1) * sign(g).
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    run_optimizer([p], [[torch.tensor([1e-8, -3.0, 250.0, 0.0], dtype=torch.float64)]], [1e-2], wd=0.0)
    step = 1e-2 * 0.99668652491162  # atan(0.1) / 0.1
    assert torch.allclose(p.detach(), torch.tensor([-step, step, -step, 0.0], dtype=torch.float64),
                          rtol=0, atol=1e-14)


def test_three_steps_with_changing_lr_match_hand_computation():
    a = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.25, 0.0], [-0.75, 1.5]], dtype=torch.float64, requires_grad=True)
    grads = [
        [torch.tensor([0.1, -0.2, 0.3]), torch.tensor([[1.0, -1.0], [0.5, 0.0]])],
        [torch.tensor([-0.3, 0.2, 0.3]), torch.tensor([[-2.0, 0.1], [0.5, 0.0]])],
        [torch.tensor([0.05, 0.0, -0.6]), torch.tensor([[0.3, 0.3], [-4.0, 0.0]])],
    ]
    grads = [[g.double() for g in step] for step in grads]
    lrs, wd = [1e-2, 5e-3, 2e-2], 0.1
    expected = reference_run([a.detach(), b.detach()], grads, lrs, wd)
    run_optimizer([a, b], grads, lrs, wd)
    for got, want in zip([a, b], expected):
        assert torch.allclose(got.detach(), want, rtol=0, atol=1e-14)
    # b[1, 1] never had a gradient: weight decay only, and atan2(0, 0) = 0 rather than NaN.
    assert b[1, 1].item() == pytest.approx(1.5 * (1 - 1e-3) * (1 - 5e-4) * (1 - 2e-3), abs=1e-15)


def test_mixed_dtypes_and_shapes_match_per_element_reference():
    generator = torch.Generator().manual_seed(0)
    shapes_and_dtypes = [((7,), torch.float32), ((3, 5), torch.float64), ((2, 3, 4), torch.float32), ((), torch.float64)]
    params = [torch.randn(shape, generator=generator).to(dtype).requires_grad_() for shape, dtype in shapes_and_dtypes]
    initial = [p.detach().clone() for p in params]
    grads = [[torch.randn(p.shape, generator=generator).to(p.dtype) * 10.0 ** (i - 2) for i, p in enumerate(params)]
             for _ in range(4)]
    lrs, wd = [3e-2, 1e-2, 2e-2, 5e-3], 1.0

    run_optimizer(params, grads, lrs, wd)
    expected = reference_run(initial, grads, lrs, wd)
    for p, want in zip(params, expected):
        tolerance = 1e-13 if p.dtype == torch.float64 else 1e-6
        assert p.dtype in (torch.float32, torch.float64)
        assert torch.allclose(p.detach().double(), want, rtol=0, atol=tolerance)


def test_params_without_grad_are_skipped_and_count_their_own_steps():
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.5, 0.5], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([0.4, -0.1], dtype=torch.float64)
    grads = [[g, None], [g, g], [None, g]]
    lrs, wd = [1e-2, 2e-2, 3e-2], 0.5
    expected = reference_run([a.detach(), b.detach()], grads, lrs, wd)

    optimizer = run_optimizer([a, b], grads[:1], lrs[:1], wd)
    assert torch.equal(b.detach(), torch.tensor([0.5, 0.5], dtype=torch.float64))  # no weight decay either
    assert b not in optimizer.state
    run_optimizer([a, b], grads[1:], lrs[1:], wd, optimizer)
    assert optimizer.state[a]["step"].item() == 2 and optimizer.state[b]["step"].item() == 2
    for got, want in zip([a, b], expected):
        assert torch.allclose(got.detach(), want, rtol=0, atol=1e-14)


def test_state_dict_round_trip_continues_identically():
    generator = torch.Generator().manual_seed(1)
    params = [torch.randn(4, 3, generator=generator).requires_grad_(), torch.randn(5, generator=generator).requires_grad_()]
    grads = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(3)]
    lrs, wd = [1e-2, 2e-2, 4e-3], 0.1

    optimizer = run_optimizer(params, grads[:2], lrs[:2], wd)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)

    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = AdamATan2(resumed_params, lr=1.0, betas=(BETA1, BETA2), weight_decay=wd)
    resumed.load_state_dict(torch.load(buffer))

    run_optimizer(params, grads[2:], lrs[2:], wd, optimizer)
    run_optimizer(resumed_params, grads[2:], lrs[2:], wd, resumed)
    for original, restored in zip(params, resumed_params):
        assert torch.equal(original, restored)
    assert resumed.state[resumed_params[0]]["step"].item() == 3


def test_foreach_update_writes_in_place_and_advances_steps():
    p, g = torch.tensor([1.0]), torch.tensor([2.0])
    m, v, step = torch.zeros(1), torch.zeros(1), torch.zeros(())
    _foreach_adam_atan2_([p], [g], [m], [v], [step], lr=0.1, beta1=BETA1, beta2=BETA2, weight_decay=0.0)
    assert step.item() == 1
    assert m.item() == pytest.approx(0.2) and v.item() == pytest.approx(0.2)
    assert p.item() == pytest.approx(1.0 - 0.1 * math.atan(0.1) / 0.1)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(2)
    cpu_params = [torch.randn(64, 33, generator=generator).requires_grad_(), torch.randn(17, generator=generator).requires_grad_()]
    cuda_params = [p.detach().cuda().requires_grad_() for p in cpu_params]
    grads = [[torch.randn(p.shape, generator=generator) for p in cpu_params] for _ in range(3)]
    lrs = [1e-2, 2e-2, 4e-3]
    run_optimizer(cpu_params, grads, lrs, wd=0.1)
    run_optimizer(cuda_params, [[g.cuda() for g in step] for step in grads], lrs, wd=0.1)
    for cpu, cuda in zip(cpu_params, cuda_params):
        assert torch.allclose(cpu, cuda.cpu(), rtol=0, atol=1e-6)
