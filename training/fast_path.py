"""How the model runs on the device: plain (eager, or `torch.compile`d as the reference does) or the CUDA
fast path, the compiled model replayed as CUDA graphs.

CUDA graphs remove the launch gaps between the step's hundreds of kernels, but a replay writes its
outputs into memory the next replay reuses. The ACT carry that one call returns is the next call's input,
so the fast path copies the carry out of that memory after every call (a few hundred MB at the published
shapes, microseconds on the device). Everything else a call returns (loss, metrics, outputs) is used
before the next call, as training and evaluation already do.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

# Inductor settings of the fast path: CUDA graphs through Inductor's graph trees, which replay the
# backward too.
FAST_PATH_OPTIONS = {"triton.cudagraphs": True}


def compile_enabled(config, device: torch.device) -> bool:
    """`torch.compile` on CUDA unless `compile=false` or DISABLE_COMPILE is set (the reference's switch)."""
    return config.compile and device.type == "cuda" and not os.environ.get("DISABLE_COMPILE")


def uses_fast_path(config, device: torch.device, model: nn.Module) -> bool:
    """The fast path runs on CUDA with compilation on, unless `fast_path=false`. Models with routing
    controllers, and steps in micro-batches (`grad_accum_steps` > 1, several replays before one optimizer
    step), take the plain compiled path: their graph replay has not been checked against it yet."""
    return (config.fast_path and compile_enabled(config, device) and not model.routers()
            and config.grad_accum_steps == 1)


def prepare_model(model: nn.Module, config, device: torch.device) -> nn.Module:
    """What training and evaluation call: the model itself, compiled, or compiled for graph replay."""
    if not compile_enabled(config, device):
        return model
    if not uses_fast_path(config, device, model):
        return torch.compile(model, dynamic=False)
    return GraphReplayedModel(torch.compile(model, dynamic=False, options=FAST_PATH_OPTIONS))


class GraphReplayedModel:
    """A compiled model whose calls replay CUDA graphs; it stands in for the compiled module everywhere.

    Each call begins a new graph step (outputs of the previous call may be overwritten from here on) and
    returns its result with the ACT carry copied out of graph memory. Attribute access (train(), eval(),
    state_dict(), routers(), ...) goes to the compiled module, so saved weights keep the `_orig_mod.` keys
    a compiled reference run saves.
    """

    def __init__(self, compiled: nn.Module):
        self.compiled = compiled

    def __call__(self, *, carry, batch, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        result = self.compiled(carry=carry, batch=batch, **kwargs)
        return dataclasses.replace(result, carry=pytree.tree_map_only(torch.Tensor, torch.clone, result.carry))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.compiled, name)
