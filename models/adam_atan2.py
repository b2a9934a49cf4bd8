"""Adam-atan2: Adam with atan2(m, sqrt(v)) in place of m / (sqrt(v) + eps), so no epsilon is needed.

Per parameter, at its step t (counted from 1):
    p *= 1 - lr * wd
    m  = lerp(m, g, 1 - beta1)
    v  = lerp(v, g * g, 1 - beta2)
    p -= lr / (1 - beta1^t) * atan2(m, sqrt(v) / sqrt(1 - beta2^t))

The update runs as multi-tensor (`torch._foreach_*`) ops per device and dtype. PyTorch has no
`_foreach_atan2`, so that one op is a per-tensor `torch.atan2` writing in place. When the optional CUDA
package `adam-atan2` is installed (module `adam_atan2_backend`), its fused kernel replaces all of this for
CUDA tensors, provided it computes the formula above (its releases differ; see `_fused_kernel_follows_formula`).
"""
import math

import torch

try:
    import adam_atan2_backend  # optional fused CUDA kernel: pip install adam-atan2
except ImportError:
    adam_atan2_backend = None


class AdamATan2(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple = (0.9, 0.95), weight_decay: float = 0.1):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight decay {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            # (device, dtype) -> lists of params, grads, exp_avgs, exp_avg_sqs, steps
            tensors_by_kind = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    # float32 step on the parameter's device: no host sync, and the layout the fused kernel reads.
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                lists = tensors_by_kind.setdefault((p.device, p.dtype), ([], [], [], [], []))
                for tensor_list, tensor in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    tensor_list.append(tensor)

            beta1, beta2 = group["betas"]
            for (device, dtype), lists in tensors_by_kind.items():
                if device.type == "cuda" and _fused_kernel_follows_formula(device):
                    torch._foreach_add_(lists[4], 1)
                    adam_atan2_backend.adam_atan2_cuda_impl_(*lists, float(group["lr"]), beta1, beta2,
                                                             group["weight_decay"])
                else:
                    _foreach_adam_atan2_(*lists, lr=group["lr"], beta1=beta1, beta2=beta2,
                                         weight_decay=group["weight_decay"])

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # torch leaves `step` on the device it was saved from; the update needs it beside its parameter.
        for p, state in self.state.items():
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def _foreach_adam_atan2_(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay):
    """One Adam-atan2 step, in place, on lists of same-device, same-dtype tensors."""
    torch._foreach_add_(steps, 1)
    torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    grad_squares = torch._foreach_mul(grads, grads)
    torch._foreach_lerp_(exp_avg_sqs, grad_squares, 1 - beta2)
    del grad_squares

    # Bias corrections for each tensor's own step count, on the device, in float64 (in float32, 1 - 0.95
    # is off by ~2e-7 relative).
    t = torch.stack(steps).double()
    negative_step_sizes = list((-lr / (1 - beta1 ** t)).to(params[0].dtype).unbind())
    bias_correction2_sqrts = list((1 - beta2 ** t).sqrt().to(params[0].dtype).unbind())

    updates = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(updates, bias_correction2_sqrts)
    for exp_avg, update in zip(exp_avgs, updates):
        torch.atan2(exp_avg, update, out=update)
    torch._foreach_mul_(updates, negative_step_sizes)
    torch._foreach_add_(params, updates)


_fused_kernel_checked = {}  # device -> whether adam_atan2_backend computes the module's formula there


def _fused_kernel_follows_formula(device: torch.device) -> bool:
    """Whether to use the fused kernel on `device`: installed, and bias-correcting m the way this module does.

    Some releases of the package apply 1/(1 - beta1^t) inside the atan2 instead of to the step size. A one-
    element probe at step 1 with g = 1 tells them apart: here p = -lr * atan(0.1) / 0.1, there -lr * atan(1).
    """
    if adam_atan2_backend is None:
        return False
    if device not in _fused_kernel_checked:
        param, grad = torch.zeros(1, device=device), torch.ones(1, device=device)
        exp_avg, exp_avg_sq = torch.zeros(1, device=device), torch.zeros(1, device=device)
        step = torch.ones((), device=device)
        adam_atan2_backend.adam_atan2_cuda_impl_([param], [grad], [exp_avg], [exp_avg_sq], [step],
                                                 1.0, 0.9, 0.95, 0.0)
        _fused_kernel_checked[device] = abs(param.item() + math.atan(0.1) / 0.1) < 1e-5
    return _fused_kernel_checked[device]
