"""HRM models: a run config's `arch` block as a typed ArchConfig, and `build_model`, which turns it into the
loss-head-wrapped model."""
from __future__ import annotations

from typing import Any, Dict, Literal

import pydantic

from models.config_validation import validate_config
from models.hrm import HierarchicalReasoningModelACT, HRMArchConfig, HRMConfig
from models.losses import LOSS_FUNCTIONS, ACTLossHead

# Architecture and loss-head names as they appear in reference configs.
ARCHITECTURES = {"hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1": HierarchicalReasoningModelACT}
LOSS_HEADS = {"losses@ACTLossHead": ACTLossHead}


class LossConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    name: Literal[tuple(LOSS_HEADS)]
    loss_type: Literal[tuple(LOSS_FUNCTIONS)]


class ArchConfig(HRMArchConfig):
    """The `arch` block of a run config (ours or the reference's): the architecture's name, its loss head
    and its keys."""

    name: Literal[tuple(ARCHITECTURES)]
    loss: LossConfig


def parse_arch(values: Dict[str, Any]) -> ArchConfig:
    """Validate an `arch` block; an unknown, missing or ill-typed key is a ConfigError naming it."""
    return validate_config(ArchConfig, values, prefix="arch")


def build_model(arch: ArchConfig, *, batch_size: int, seq_len: int, vocab_size: int,
                num_puzzle_identifiers: int) -> ACTLossHead:
    """Build the loss-head-wrapped model; dataset-derived sizes come from the keyword arguments."""
    config = validate_config(HRMConfig, dict(arch.model_dump(exclude={"name", "loss"}), batch_size=batch_size,
                                             seq_len=seq_len, vocab_size=vocab_size,
                                             num_puzzle_identifiers=num_puzzle_identifiers), prefix="arch")
    return LOSS_HEADS[arch.loss.name](ARCHITECTURES[arch.name](config), loss_type=arch.loss.loss_type)
