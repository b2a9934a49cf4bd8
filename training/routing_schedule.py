"""Training schedules of Pointer-over-Heads routing: temperature, entropy weight, warm-up freeze and clipping.

A schedule "epoch" is `routing.schedule_epoch_steps` training steps when set, else one
`routing.schedule_epochs_per_run`-th of the run (default 1/20). HRM runs last thousands of data epochs, so
the per-data-epoch schedules the controllers were tuned with (temperature x0.95 per epoch, 5 warm-up
epochs, entropy weight halving every 5) would be over within the first percent of training; counted in
twentieths of the run they keep the proportions of the ~20-epoch runs they came from.
"""
from __future__ import annotations

from typing import Iterable, List

import torch
from torch import nn

from models.checkpoint import ROUTER_KEY_MARKER
from models.routing import RoutingConfig


def is_router_parameter(name: str) -> bool:
    return ROUTER_KEY_MARKER in name


class RoutingSchedule:
    def __init__(self, model: nn.Module, routing: RoutingConfig, total_steps: int):
        self.model = model
        self.routing = routing
        self.steps_per_epoch = routing.schedule_epoch_steps or max(1, total_steps // routing.schedule_epochs_per_run)
        self.routers = [level.router for level in model.model.inner.levels().values() if hasattr(level, "router")]
        named = list(model.named_parameters())
        self.router_params = [p for name, p in named if is_router_parameter(name)]
        self.encoder_params = [p for name, p in named if not is_router_parameter(name)]

    def epoch(self, step: int) -> int:
        """Schedule epoch of training step `step` (counted from 1)."""
        return (step - 1) // self.steps_per_epoch

    def temperature(self, epoch: int) -> float:
        return max(self.routing.temperature_min, self.routing.temperature_init * self.routing.temperature_decay ** epoch)

    def entropy_weight(self, epoch: int) -> float:
        """`entropy_reg`, halved every `entropy_decay_epochs` epochs."""
        return self.routing.entropy_reg * 0.5 ** (epoch // self.routing.entropy_decay_epochs)

    def frozen(self, epoch: int) -> bool:
        return epoch < self.routing.warmup_epochs

    def before_step(self, step: int) -> None:
        """Set this step's temperature and loss weights (in-place tensor updates: no recompilation)."""
        epoch = self.epoch(step)
        for router in self.routers:
            router.set_temperature(self.temperature(epoch))
        self.model.routing_entropy_weight.fill_(self.entropy_weight(epoch))
        self.model.routing_ponder_weight.fill_(self.routing.ponder_tau)

    def before_optimizer_step(self, step: int) -> None:
        """Freeze the controllers during warm-up, else clip them; clip the rest of the model."""
        if self.frozen(self.epoch(step)):
            for p in self.router_params:
                p.grad = None  # the optimizer skips it: no update, no weight decay
        elif self.routing.controller_clip is not None:
            _clip(self.router_params, self.routing.controller_clip)
        if self.routing.encoder_clip is not None:
            _clip(self.encoder_params, self.routing.encoder_clip)


def _clip(params: Iterable[torch.Tensor], max_norm: float) -> None:
    grads: List[torch.Tensor] = [p for p in params if p.grad is not None]
    if grads:
        torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True)
