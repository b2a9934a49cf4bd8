"""Exponential moving average of the model's weights (as TinyRecursiveModels trains), used for evaluation
and the saved `step_N` weights when `ema=true`."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List

import torch
from torch import nn

from models.checkpoint import CheckpointError


class WeightEMA:
    """After every optimizer step, shadow <- rate * shadow + (1 - rate) * weights, for every parameter.

    The puzzle embedding (a buffer trained by sign-SGD, not a parameter) is not averaged, as in
    TinyRecursiveModels. `applied()` swaps the averaged weights into the model for a while.
    """

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        self.parameters: List[nn.Parameter] = list(model.parameters())
        self.shadow: List[torch.Tensor] = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.parameters], 1.0 - self.rate)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its trained weights again after it."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.parameters]
            torch._foreach_copy_(self.parameters, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.parameters, trained)

    def state_dict(self) -> Dict[str, List[torch.Tensor]]:
        return {"shadow": [t.cpu() for t in self.shadow]}

    @staticmethod
    def named_average(model: nn.Module, state: Dict[str, List[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """A saved average (`state_dict()`) as state-dict entries of `model`, which has the saving model's
        parameters (the puzzle embedding, not averaged, may differ)."""
        names = [name for name, _ in model.named_parameters()]
        if len(state["shadow"]) != len(names):
            raise CheckpointError(f"the saved weight average has {len(state['shadow'])} tensors, the model "
                                  f"{len(names)} parameters")
        return dict(zip(names, state["shadow"]))

    def load_state_dict(self, state: Dict[str, List[torch.Tensor]]) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"the saved average has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        with torch.no_grad():
            torch._foreach_copy_(self.shadow, [t.to(s.device) for t, s in zip(state["shadow"], self.shadow)])
