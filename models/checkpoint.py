"""Loading model weights from our checkpoints or the reference release's, compiled or not."""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Set, Union

import torch
from torch import nn

from command_line import MissingInputError, UserError


class CheckpointError(UserError, ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the file or key."""


# torch.compile wraps the module and prefixes every state-dict key with this.
COMPILED_PREFIX = "_orig_mod."


def strip_compiled_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k[len(COMPILED_PREFIX):] if k.startswith(COMPILED_PREFIX) else k: v for k, v in state_dict.items()}


# The full training state (training/checkpointing.py) holds the weights under "model".
TRAIN_STATE_FILE = "train_state.pt"


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read the weights of a `step_N` file (a plain `state_dict`) or of a run's `train_state.pt` on CPU,
    without the compile prefix. A missing, truncated or foreign file is a one-line error."""
    if not os.path.isfile(path):
        raise MissingInputError(f"checkpoint {path} not found")
    # Weights files load with weights_only; the training state holds more than tensors (our own format).
    full_state = os.path.basename(path) == TRAIN_STATE_FILE
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not full_state)
    except Exception as e:  # truncated or not a torch file: zip, pickle and EOF errors vary with the damage
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {detail[:120]})") from None
    if full_state and isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return strip_compiled_prefix(loaded)


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
    expected = target.state_dict()
    for key, value in state_dict.items():
        if key in expected and value.shape != expected[key].shape:
            raise CheckpointError(f"checkpoint does not match the model: {key} has shape {tuple(value.shape)} in "
                                  f"the checkpoint and {tuple(expected[key].shape)} in the model")
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
