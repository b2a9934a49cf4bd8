"""What a training run holds between steps, and its state dicts: shared state (weights, optimizers,
progress) and each process's own (its ACT carry and random generators)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from models.checkpoint import load_model_weights
from training.routing_schedule import RoutingSchedule


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every tensor inside nested dataclasses, dicts, lists and tuples (e.g. an ACT carry)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


@dataclass
class TrainProgress:
    """Where the run is: optimizer steps taken, data rounds finished, batches taken of the current round."""
    step: int = 0
    rounds_done: int = 0
    batches_done_in_round: int = 0

    def state_dict(self) -> Dict[str, int]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Dict[str, int]) -> None:
        for name, value in state.items():
            setattr(self, name, int(value))


@dataclass
class TrainState:
    model: nn.Module  # what runs: the compiled wrapper when compiled
    base_model: nn.Module  # the plain module behind it
    optimizers: List[torch.optim.Optimizer]
    total_steps: int
    routing: Optional[RoutingSchedule] = None
    progress: TrainProgress = field(default_factory=TrainProgress)
    carry: Any = None  # this process's ACT carry

    def state_dict(self) -> Dict[str, Any]:
        """The state every process shares (identical on all ranks)."""
        return {"model": self.base_model.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
                "progress": self.progress.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        load_model_weights(self.base_model, state["model"])
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"the saved state has {len(state['optimizers'])} optimizers, this model needs "
                             f"{len(self.optimizers)}")
        for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(optimizer_state)
        self.progress.load_state_dict(state["progress"])

    def rank_state_dict(self, device: torch.device) -> Dict[str, Any]:
        """This process's own state, on the CPU: its ACT carry and its random generators."""
        return {"carry": map_tensors(self.carry, lambda t: t.cpu()),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}

    def load_rank_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        self.carry = map_tensors(state["carry"], lambda t: t.to(device))
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
