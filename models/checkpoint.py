"""Loading model weights from our checkpoints or the reference release's, compiled or not."""
from __future__ import annotations

from typing import Dict, Mapping, Union

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


def load_model_weights(model: nn.Module, source: Union[str, Mapping[str, torch.Tensor]], strict: bool = True):
    """Load a state dict (or a path to one) into `model`, which may itself be compiled.

    Returns the `(missing_keys, unexpected_keys)` of `load_state_dict`.
    """
    state_dict = read_state_dict(source) if isinstance(source, str) else strip_compiled_prefix(source)
    target = getattr(model, "_orig_mod", model)
    return target.load_state_dict(state_dict, strict=strict, assign=False)
