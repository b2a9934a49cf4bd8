"""What a training run holds between steps: the shared state (weights, optimizers, progress) and each
process's own (its ACT carry and random generators), and how each is restored."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
import torch.utils._pytree as pytree
from torch import nn

from models.checkpoint import load_model_weights
from training.ema import WeightEMA
from training.routing_schedule import RoutingSchedule

if TYPE_CHECKING:  # the run folder's file format, which itself holds a TrainProgress
    from training.run_folder import SavedTrainState


def join_rows(trees: List[Any]) -> Any:
    """Pytrees of tensors with the batch first (ACT carries, batches), joined along the batch in order."""
    return pytree.tree_map(lambda *leaves: torch.cat(leaves) if isinstance(leaves[0], torch.Tensor) else leaves[0],
                           *trees)


def split_rows(tree: Any, parts: int) -> List[Any]:
    """A pytree of tensors with the batch first, as `parts` equal consecutive slices of its rows (views)."""
    leaves, spec = pytree.tree_flatten(tree)
    pieces = [leaf.tensor_split(parts) if isinstance(leaf, torch.Tensor) else [leaf] * parts for leaf in leaves]
    return [pytree.tree_unflatten([piece[part] for piece in pieces], spec) for part in range(parts)]


def join_and_split_carries(carries: List[Any], world_size: int, rank: int) -> Any:
    """Rank `rank`'s share, among `world_size` processes, of the ACT carries `carries` saved by each rank of
    another process count. Every carry tensor has the batch first, and each rank holds a contiguous slice
    of the global batch, so joining in rank order gives the global carry and equal chunks re-split it."""
    share = split_rows(join_rows(carries), world_size)[rank]
    return pytree.tree_map_only(torch.Tensor, torch.clone, share)


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
    # Every weight but the controllers' (parameter_groups().weights): what `routing.encoder_clip` clips.
    shared_weights: List[nn.Parameter] = field(default_factory=list)
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
        return {"carry": pytree.tree_map_only(torch.Tensor, lambda t: t.cpu(), self.carry),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}

    def load_rank_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        self.carry = pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), state["carry"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
