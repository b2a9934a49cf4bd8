"""HRM models: `build_model` turns a reference-style arch config into the loss-head-wrapped model."""
from __future__ import annotations

from typing import Any, Dict

from models.config_validation import ConfigError, validate_config
from models.hrm import HierarchicalReasoningModelACT, HRMConfig
from models.losses import LOSS_FUNCTIONS, ACTLossHead

# Architecture and loss-head names as they appear in reference configs.
ARCHITECTURES = {"hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1": HierarchicalReasoningModelACT}
LOSS_HEADS = {"losses@ACTLossHead": ACTLossHead}


def build_model(arch: Dict[str, Any], *, batch_size: int, seq_len: int, vocab_size: int,
                num_puzzle_identifiers: int) -> ACTLossHead:
    """Build the loss-head-wrapped model from an arch config (SPEC keys plus `name` and `loss`).

    Dataset-derived sizes come from the keyword arguments. Unknown or bad keys raise ConfigError.
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
    return LOSS_HEADS[loss_name](ARCHITECTURES[name](config), loss_type=loss_type)
