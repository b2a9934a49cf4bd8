"""Training of Pointer-over-Heads routing: its config block and schedules (temperature, entropy weight,
warm-up freeze and the controllers' gradient clip).

A schedule "epoch" is `routing.schedule_epoch_steps` training steps when set, else one
`routing.schedule_epochs_per_run`-th of the run (default 1/20). HRM runs last thousands of data epochs, so
the per-data-epoch schedules the controllers were tuned with (temperature x0.95 per epoch, 5 warm-up
epochs, entropy weight halving every 5) would be over within the first percent of training; counted in
twentieths of the run they keep the proportions of the ~20-epoch runs they came from.
"""
from __future__ import annotations

from typing import Optional

import pydantic

from models.losses import ACTLossHead
from models.routing import DEFAULT_TEMPERATURE_INIT, DEFAULT_TEMPERATURE_MIN
from training.optimization import clip_gradient_norm


class RoutingScheduleConfig(pydantic.BaseModel):
    """The training config's `routing` block. It applies only when `arch.routing.controller` is not none,
    except `encoder_clip`, which applies to every model, so that the arms of a routing A/B (a plain arm,
    controller none, beside routed ones) are clipped alike; its default, null, clips nothing, as the
    reference does."""

    model_config = pydantic.ConfigDict(extra="forbid")

    temperature_init: float = pydantic.Field(DEFAULT_TEMPERATURE_INIT, gt=0)
    temperature_min: float = pydantic.Field(DEFAULT_TEMPERATURE_MIN, gt=0)
    temperature_decay: float = pydantic.Field(0.95, gt=0, le=1, description="temperature_init * decay^epoch, floored")
    entropy_reg: float = pydantic.Field(1e-3, ge=0, description="weight of the entropy bonus in the loss")
    entropy_decay_epochs: int = pydantic.Field(5, gt=0, description="entropy_reg halves every this many epochs")
    ponder_tau: float = pydantic.Field(0.01, ge=0, description="hrm_act: weight of the ponder cost in the loss")
    controller_lr: float = pydantic.Field(1e-4, ge=0, description="base learning rate of the controllers")
    controller_clip: Optional[float] = pydantic.Field(0.5, gt=0, description="gradient-norm clip of the controllers")
    encoder_clip: Optional[float] = pydantic.Field(None, gt=0, description="gradient-norm clip of every weight "
                                                                          "but the controllers', with or without them")
    warmup_epochs: int = pydantic.Field(5, ge=0, description="controllers stay frozen for this many epochs")
    schedule_epoch_steps: Optional[int] = pydantic.Field(None, gt=0, description="steps per schedule epoch")
    schedule_epochs_per_run: int = pydantic.Field(20, gt=0, description="schedule epochs in a run, when steps are not set")


class RoutingSchedule:
    """Sets the model's routing controllers and loss weights before each step, and treats the controllers'
    gradients (the other weights' clip, `encoder_clip`, is the train step's, for every model)."""

    def __init__(self, model: ACTLossHead, config: RoutingScheduleConfig, total_steps: int):
        self.model = model
        self.routers = list(model.routers().values())
        self.config = config
        self.steps_per_epoch = config.schedule_epoch_steps or max(1, total_steps // config.schedule_epochs_per_run)
        self.router_params = model.parameter_groups().routing

    def epoch(self, step: int) -> int:
        """Schedule epoch of training step `step` (counted from 1)."""
        return (step - 1) // self.steps_per_epoch

    def temperature(self, epoch: int) -> float:
        """`temperature_init * temperature_decay^epoch`; the controllers floor it at `temperature_min`."""
        return self.config.temperature_init * self.config.temperature_decay ** epoch

    def entropy_weight(self, epoch: int) -> float:
        """`entropy_reg`, halved every `entropy_decay_epochs` epochs."""
        return self.config.entropy_reg * 0.5 ** (epoch // self.config.entropy_decay_epochs)

    def frozen(self, epoch: int) -> bool:
        return epoch < self.config.warmup_epochs

    def before_step(self, step: int) -> None:
        """Set this step's temperature and loss weights (in-place tensor updates: no recompilation)."""
        epoch = self.epoch(step)
        for router in self.routers:
            router.set_temperature(self.temperature(epoch), minimum=self.config.temperature_min)
        self.model.set_routing_loss_weights(entropy=self.entropy_weight(epoch), ponder=self.config.ponder_tau)

    def before_optimizer_step(self, step: int) -> None:
        """Freeze the controllers during warm-up, else clip them."""
        if self.frozen(self.epoch(step)):
            for p in self.router_params:
                p.grad = None  # the optimizer skips it: no update, no weight decay
        elif self.config.controller_clip is not None:
            clip_gradient_norm(self.router_params, self.config.controller_clip)
