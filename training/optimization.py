"""The two optimizers of HRM and the learning-rate schedule they share."""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

from models.adam_atan2 import AdamATan2
from models.sparse_embedding import SparseEmbeddingSignSGD
from training.routing_schedule import is_router_parameter


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up, then a half cosine from `base_lr` down to `min_ratio * base_lr` at `total_steps`."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


def build_optimizers(model: nn.Module, config, world_size: int) -> List[torch.optim.Optimizer]:
    """Sign-SGD for the puzzle embedding (when the model has one) and Adam-atan2 for every parameter.

    Routing controllers, when present, form their own Adam-atan2 group. Each parameter group records its
    `base_lr`; the schedule sets the group's actual `lr` every step.
    """
    optimizers = []
    inner = model.model.inner
    if hasattr(inner, "puzzle_emb"):
        optimizers.append(SparseEmbeddingSignSGD(inner.puzzle_emb.buffers(), lr=0,
                                                 weight_decay=config.puzzle_emb_weight_decay, world_size=world_size))
        optimizers[-1].param_groups[0]["base_lr"] = config.puzzle_emb_lr
    named = list(model.named_parameters())
    groups = [dict(params=[p for name, p in named if not is_router_parameter(name)], base_lr=config.lr)]
    router_params = [p for name, p in named if is_router_parameter(name)]
    if router_params:  # routing controllers learn at their own rate
        groups.append(dict(params=router_params, base_lr=model.model.config.routing.controller_lr))
    optimizers.append(AdamATan2(groups, lr=0, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)))
    return optimizers
