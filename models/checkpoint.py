"""Loading model weights from our checkpoints or the reference release's, compiled or not."""
from __future__ import annotations

from typing import Dict, List, Mapping, Set, Union

import torch
from torch import nn

# torch.compile wraps the module and prefixes every state-dict key with this.
COMPILED_PREFIX = "_orig_mod."


def strip_compiled_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len(COMPILED_PREFIX):] if k.startswith(COMPILED_PREFIX) else k: v for k, v in state_dict.items()}


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a `step_N` file (a plain `state_dict`) on CPU, without the compile prefix."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found") from None
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"checkpoint {path} does not hold a state dict (got {type(state_dict).__name__})")
    return strip_compiled_prefix(state_dict)


def routing_keys(model: nn.Module) -> Set[str]:
    """State-dict keys of the model's routing controllers (none for a model without routing)."""
    routers = {id(router) for router in model.routers().values()} if hasattr(model, "routers") else set()
    prefixes = [f"{name}." for name, module in model.named_modules() if id(module) in routers]
    return {key for key in model.state_dict() if any(key.startswith(prefix) for prefix in prefixes)}


def load_model_weights(model: nn.Module, source: Union[str, Mapping[str, torch.Tensor]]) -> List[str]:
    """Load a state dict (or a path to one) into `model`, which may itself be compiled.

    Every key must match, except that routing-controller keys may be missing: a plain HRM checkpoint
    (ours or the reference's) loads into a routed model, whose controllers keep their fresh weights.
    Returns the missing routing keys.
    """
    state_dict = read_state_dict(source) if isinstance(source, str) else strip_compiled_prefix(source)
    target = getattr(model, "_orig_mod", model)
    missing, unexpected = target.load_state_dict(state_dict, strict=False)
    routing = routing_keys(target)
    not_routing = [k for k in missing if k not in routing]
    if not_routing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {not_routing or 'none'}, "
                         f"unexpected {list(unexpected) or 'none'}")
    return missing
