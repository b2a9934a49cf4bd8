"""The architectures: a run config's `arch` block as a typed ArchConfig (one class per architecture, picked
by its `name`), and `build_model`, which turns it into the loss-head-wrapped model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Type, Union

import pydantic
from torch import nn

from models.config_validation import ConfigError, validate_config
from models.hrm import HierarchicalReasoningModelACT, HRMArchConfig, HRMConfig, ParameterGroups
from models.losses import LOSS_FUNCTIONS, ACTLossHead
from models.transformer_baseline import TransformerArchConfig, TransformerBaselineACT, TransformerConfig
from models.trm import TinyRecursiveReasoningModelACT, TRMArchConfig, TRMConfig

LOSS_HEADS = {"losses@ACTLossHead": ACTLossHead}

# What training uses of the models, whatever the architecture (ParameterGroups: what `parameter_groups()` returns).
__all__ = ["ARCHITECTURES", "ArchConfig", "ParameterGroups", "build_model", "parse_arch"]


class LossConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    name: Literal[tuple(LOSS_HEADS)]
    loss_type: Literal[tuple(LOSS_FUNCTIONS)]


HRM_NAME = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
TRM_NAME = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
TRANSFORMER_NAME = "recursive_reasoning.transformers_baseline@Model_ACTV2"


class HRMArch(HRMArchConfig):
    """The `arch` block of an HRM run config (ours or the reference's)."""

    name: Literal[HRM_NAME]
    loss: LossConfig


class TRMArch(TRMArchConfig):
    """The `arch` block of a TRM run config (ours or the release's)."""

    name: Literal[TRM_NAME]
    loss: LossConfig


class TransformerArch(TransformerArchConfig):
    """The `arch` block of a transformer-baseline run config (ours or the TRM release's)."""

    name: Literal[TRANSFORMER_NAME]
    loss: LossConfig


ArchConfig = Union[HRMArch, TRMArch, TransformerArch]


@dataclass(frozen=True)
class Architecture:
    arch_config: Type[pydantic.BaseModel]  # the `arch` block
    model_config: Type[pydantic.BaseModel]  # the architecture with its dataset's sizes
    model: Type[nn.Module]  # the ACT model


# Architecture names as they appear in reference configs.
ARCHITECTURES = {
    HRM_NAME: Architecture(HRMArch, HRMConfig, HierarchicalReasoningModelACT),
    TRM_NAME: Architecture(TRMArch, TRMConfig, TinyRecursiveReasoningModelACT),
    TRANSFORMER_NAME: Architecture(TransformerArch, TransformerConfig, TransformerBaselineACT),
}


def parse_arch(values: Dict[str, Any]) -> ArchConfig:
    """Validate an `arch` block by its `name`; an unknown, missing or ill-typed key is a ConfigError naming it."""
    name = values.get("name")
    if name not in ARCHITECTURES:
        problem = "missing" if name is None else f"unknown architecture {name!r}"
        raise ConfigError(f"invalid config: arch.name: {problem}; choose from {', '.join(ARCHITECTURES)}")
    return validate_config(ARCHITECTURES[name].arch_config, values, prefix="arch")


def build_model(arch: ArchConfig, *, batch_size: int, seq_len: int, vocab_size: int,
                num_puzzle_identifiers: int) -> ACTLossHead:
    """Build the loss-head-wrapped model; dataset-derived sizes come from the keyword arguments."""
    architecture = ARCHITECTURES[arch.name]
    config = validate_config(architecture.model_config,
                             dict(arch.model_dump(exclude={"name", "loss"}), batch_size=batch_size, seq_len=seq_len,
                                  vocab_size=vocab_size, num_puzzle_identifiers=num_puzzle_identifiers), prefix="arch")
    return LOSS_HEADS[arch.loss.name](architecture.model(config), loss_type=arch.loss.loss_type)
