"""Turns pydantic validation failures into one-line messages that name the bad config fields."""
from __future__ import annotations

from typing import Type, TypeVar

import pydantic

from command_line import UserError

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


class ConfigError(UserError, ValueError):
    """A config value is unknown, missing or ill-typed; the message names the field."""


def describe_validation_error(error: pydantic.ValidationError, prefix: str) -> str:
    problems = []
    for item in error.errors():
        field = ".".join([prefix, *(str(part) for part in item["loc"])]) if item["loc"] else prefix
        if item["type"] == "extra_forbidden":
            problems.append(f"{field}: unknown key")
        elif item["type"] == "missing":
            problems.append(f"{field}: missing")
        elif not item["loc"] or isinstance(item.get("input"), (dict, list)):
            # A rule over several fields (or a whole block): its message names them; the input would be
            # the whole config.
            problems.append(f"{field}: {item['msg'].removeprefix('Value error, ')}")
        else:
            got = repr(item.get("input"))
            problems.append(f"{field}: {item['msg']} (got {got if len(got) <= 60 else got[:57] + '...'})")
    return "; ".join(problems)


def validate_config(model_class: Type[ModelT], values: dict, prefix: str) -> ModelT:
    """Build `model_class` from `values`, raising ConfigError with every bad field named."""
    try:
        return model_class(**values)
    except pydantic.ValidationError as e:
        raise ConfigError(f"invalid config: {describe_validation_error(e, prefix)}") from None
