"""Attention kernel choice: one non-causal attention function behind FlashAttention 3/2/4 or PyTorch SDPA.

Tensors are `[batch, seq, heads, head_dim]` in and out (the FlashAttention layout). `auto` picks the first
installed kernel in the order FlashAttention 3, 2, 4, then PyTorch's `scaled_dot_product_attention`
(which itself runs PyTorch's flash or cuDNN kernel on CUDA). FlashAttention kernels only take CUDA
half-precision tensors; anything else (CPU, float32) runs through SDPA, so CPU always works.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from models.config_validation import ConfigError

logger = logging.getLogger(__name__)

# Environment variable that forces a backend, overriding the config key.
BACKEND_ENV_VAR = "HRM_ATTENTION_BACKEND"

# Backend name -> (module to import, attribute holding the attention function), in `auto` order.
FLASH_BACKENDS: Dict[str, Tuple[str, str]] = {
    "fa3": ("flash_attn_interface", "flash_attn_func"),
    "fa2": ("flash_attn", "flash_attn_func"),
    "fa4": ("flash_attn.cute", "flash_attn_func"),
}
BACKENDS = (*FLASH_BACKENDS, "sdpa")
BACKEND_CHOICES = ("auto", *BACKENDS)  # what the config key accepts
FLASH_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _load_flash_function(backend: str) -> Optional[Callable]:
    module_name, attribute = FLASH_BACKENDS[backend]
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except Exception:  # not installed, or installed without a usable build for this machine
        return None


def installed_backends() -> Tuple[str, ...]:
    """The backends importable here, in `auto` order (`sdpa` always)."""
    return tuple(b for b in FLASH_BACKENDS if _load_flash_function(b) is not None) + ("sdpa",)


def resolve_backend(requested: str = "auto") -> str:
    """Turn a config value (or the environment override) into a concrete backend name.

    An unknown backend, or forcing one that is not installed, is a ConfigError naming where it was set
    (the config key, or the environment variable, which overrides it).
    """
    source = BACKEND_ENV_VAR if os.environ.get(BACKEND_ENV_VAR) else "arch.attention_backend"
    requested = os.environ.get(BACKEND_ENV_VAR) or requested or "auto"
    if requested not in BACKEND_CHOICES:
        raise ConfigError(f"{source}: attention backend must be one of {', '.join(BACKEND_CHOICES)}; got {requested!r}")
    if requested == "auto":
        return installed_backends()[0] if torch.cuda.is_available() else "sdpa"
    if requested not in installed_backends():
        module_name = FLASH_BACKENDS[requested][0]
        raise ConfigError(f"{source}: attention backend {requested!r} was forced but `{module_name}` is not "
                          f"installed here (installed: {', '.join(installed_backends())})")
    return requested


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, backend: str) -> torch.Tensor:
    """Non-causal softmax attention of `[B, S, H, D]` tensors with scale `1/sqrt(D)`."""
    if backend != "sdpa" and query.is_cuda and query.dtype in FLASH_DTYPES:
        out = _load_flash_function(backend)(query, key, value, causal=False)
        # Some FlashAttention versions also return the log-sum-exp.
        return out[0] if isinstance(out, tuple) else out
    return _sdpa(query, key, value)
