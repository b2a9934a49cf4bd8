"""What a training run holds between steps: the shared state (weights, optimizers, progress) and each
process's own (its ACT carry and random generators), and how each is restored."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import torch
from torch import nn

from models.checkpoint import load_model_weights
from training.ema import WeightEMA
from training.routing_schedule import RoutingSchedule

if TYPE_CHECKING:  # the run folder's file format, which itself holds a TrainProgress
    from training.run_folder import SavedTrainState


def join_and_split_carries(carries: List[Any], world_size: int, rank: int) -> Any:
    """Rank `rank`'s share, among `world_size` processes, of the ACT carries `carries` saved by each rank of
    another process count. Every carry tensor has the batch first, and each rank holds a contiguous slice
    of the global batch, so joining in rank order gives the global carry and equal chunks re-split it."""
    def share(tensors: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors).chunk(world_size)[rank].clone()
    return _zip_tensors(carries, share)


def _zip_tensors(objs: List[Any], fn: Callable[[List[torch.Tensor]], torch.Tensor]) -> Any:
    """Combine parallel structures (same layout, e.g. one ACT carry per rank) leaf by leaf with `fn`."""
    first = objs[0]
    if isinstance(first, torch.Tensor):
        return fn(objs)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(first, **{f.name: _zip_tensors([getattr(o, f.name) for o in objs], fn)
                                             for f in dataclasses.fields(first)})
    if isinstance(first, dict):
        return {k: _zip_tensors([o[k] for o in objs], fn) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_zip_tensors(list(items), fn) for items in zip(*objs))
    return first


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


@dataclass
class TrainState:
    model: nn.Module  # what runs: the compiled wrapper when compiled
    base_model: nn.Module  # the plain module behind it
    optimizers: List[torch.optim.Optimizer]
    total_steps: int
    routing: Optional[RoutingSchedule] = None
    ema: Optional[WeightEMA] = None  # with `ema=true`
    progress: TrainProgress = field(default_factory=TrainProgress)
    carry: Any = None  # this process's ACT carry

    def load_saved(self, saved: "SavedTrainState") -> None:
        """Take the state every process shares (weights, optimizers, progress, average) from a saved run."""
        load_model_weights(self.base_model, saved.model)
        if len(saved.optimizers) != len(self.optimizers):
            raise ValueError(f"the saved state has {len(saved.optimizers)} optimizers, this model needs "
                             f"{len(self.optimizers)}")
        for optimizer, optimizer_state in zip(self.optimizers, saved.optimizers):
            # The moments come from the saved state; the settings (base_lr, weight decay, betas) from this
            # run's config, so a deliberate change on resume is used, not silently replaced by the saved one.
            settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            optimizer.load_state_dict(optimizer_state)
            for group, group_settings in zip(optimizer.param_groups, settings):
                group.update(group_settings)
        self.progress = dataclasses.replace(saved.progress)
        if self.ema is not None and saved.ema is not None:
            self.ema.load_state_dict(saved.ema)
        elif self.ema is not None:  # averaging switched on at resume (resume_allow_changes=[ema]): start here
            self.ema = WeightEMA(self.base_model, self.ema.rate)

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
