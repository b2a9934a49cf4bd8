"""Loading a state dict (ours or the reference release's, compiled or not) into a model."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Set

import torch
from torch import nn

from command_line import UserError


class CheckpointError(UserError, ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the file or key."""


# torch.compile wraps the module and prefixes every state-dict key with this.
COMPILED_PREFIX = "_orig_mod."


def strip_compiled_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len(COMPILED_PREFIX):] if k.startswith(COMPILED_PREFIX) else k: v for k, v in state_dict.items()}


def routing_keys(model: nn.Module) -> Set[str]:
    """State-dict keys of the model's routing controllers (none for a model without routing)."""
    routers = {id(router) for router in model.routers().values()} if hasattr(model, "routers") else set()
    prefixes = [f"{name}." for name, module in model.named_modules() if id(module) in routers]
    return {key for key in model.state_dict() if any(key.startswith(prefix) for prefix in prefixes)}


def puzzle_embedding_key(model: nn.Module) -> Optional[str]:
    """The state-dict key of the model's puzzle-embedding table (the persistent one of its buffers), None for a
    model without one."""
    buffers = {id(buffer) for buffer in model.parameter_groups().puzzle_embedding}
    keys = [key for key, value in model.state_dict(keep_vars=True).items() if id(value) in buffers]
    return keys[0] if keys else None


def load_model_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Load a state dict into `model`, which may itself be compiled.

    Every key must match, except that routing-controller keys may be missing: a plain HRM checkpoint
    (ours or the reference's) loads into a routed model, whose controllers keep their fresh weights.
    Returns the missing routing keys.
    """
    state_dict = strip_compiled_prefix(state_dict)
    target = getattr(model, "_orig_mod", model)
    expected = target.state_dict()
    embedding_key = puzzle_embedding_key(target)
    for key, value in state_dict.items():
        if key in expected and value.shape != expected[key].shape:
            detail = (f": one row per puzzle identifier, so the checkpoint's dataset had {value.shape[0]} "
                      f"identifiers (num_puzzle_identifiers) and this one has {expected[key].shape[0]}"
                      if key == embedding_key and value.shape[1:] == expected[key].shape[1:] else "")
            raise CheckpointError(f"checkpoint does not match the model: {key} has shape {tuple(value.shape)} in "
                                  f"the checkpoint and {tuple(expected[key].shape)} in the model{detail}")
    routing = routing_keys(target)
    missing = [k for k in expected if k not in state_dict and k not in routing]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not match the model: {_first_keys('missing', missing)}"
                              f"{', ' if missing and unexpected else ''}{_first_keys('unexpected', unexpected)}")
    missing_routing, _ = target.load_state_dict(state_dict, strict=False)
    return missing_routing


def _first_keys(kind: str, keys: List[str], shown: int = 3) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{kind} {', '.join(keys[:shown])}{more}"
