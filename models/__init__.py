"""HRM models: `build_model` turns a reference-style arch config into the loss-head-wrapped model."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from models.config_validation import ConfigError, validate_config
from models.hrm import HierarchicalReasoningModelACT, HRMConfig
from models.losses import LOSS_FUNCTIONS, ACTLossHead

# Architecture and loss-head names as they appear in reference configs.
ARCHITECTURES = {"hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1": HierarchicalReasoningModelACT}
LOSS_HEADS = {"losses@ACTLossHead": ACTLossHead}


def validate_arch(arch: Dict[str, Any], *, batch_size: int = 1, seq_len: int = 1, vocab_size: int = 1,
                  num_puzzle_identifiers: int = 1) -> Tuple[str, HRMConfig, str, str]:
    """Check an arch config (the reference arch keys plus `name` and `loss`) without building weights.

    Returns `(name, model config, loss head name, loss type)`; unknown or bad keys raise ConfigError.
    The size defaults are placeholders for checking a config before the dataset is read.
    """
    arch = dict(arch)
    name = arch.pop("name", None)
    loss = dict(arch.pop("loss", None) or {})
    if name not in ARCHITECTURES:
        raise ConfigError(f"invalid config: arch.name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    loss_name = loss.pop("name", None)
    if loss_name not in LOSS_HEADS:
        raise ConfigError(f"invalid config: arch.loss.name must be one of {sorted(LOSS_HEADS)}, got {loss_name!r}")
    loss_type = loss.pop("loss_type", None)
    if loss_type not in LOSS_FUNCTIONS:
        raise ConfigError(f"invalid config: arch.loss.loss_type must be one of {sorted(LOSS_FUNCTIONS)}, got {loss_type!r}")
    if loss:
        raise ConfigError(f"invalid config: arch.loss: unknown key(s) {', '.join(sorted(loss))}")
    config = validate_config(HRMConfig, dict(arch, batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size,
                                             num_puzzle_identifiers=num_puzzle_identifiers), prefix="arch")
    return name, config, loss_name, loss_type


def build_model(arch: Dict[str, Any], *, batch_size: int, seq_len: int, vocab_size: int,
                num_puzzle_identifiers: int) -> ACTLossHead:
    """Build the loss-head-wrapped model; dataset-derived sizes come from the keyword arguments."""
    name, config, loss_name, loss_type = validate_arch(arch, batch_size=batch_size, seq_len=seq_len,
                                                       vocab_size=vocab_size,
                                                       num_puzzle_identifiers=num_puzzle_identifiers)
    return LOSS_HEADS[loss_name](ARCHITECTURES[name](config), loss_type=loss_type)
