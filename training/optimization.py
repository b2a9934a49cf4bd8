"""The two optimizers of the models (sign-SGD for the puzzle embedding, Adam-atan2 for the rest) and the
learning-rate schedule they share."""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, List

import torch
from models.adam_atan2 import AdamATan2
from models import ParameterGroups
from models.config_validation import ConfigError
from models.sparse_embedding import SparseEmbeddingSignSGD


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up, then a half cosine from `base_lr` down to `min_ratio * base_lr` at `total_steps`."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))))


def build_optimizers(groups: ParameterGroups, config, world_size: int) -> List[torch.optim.Optimizer]:
    """Sign-SGD for the puzzle embedding (when the model has one) and Adam-atan2 for every parameter.

    `config` is the training config. Routing controllers, when present, form their own Adam-atan2 group at
    `routing.controller_lr`. Each parameter group records its `base_lr`; the schedule sets the group's
    actual `lr` every step.
    """
    optimizers = []
    if groups.puzzle_embedding:
        optimizers.append(SparseEmbeddingSignSGD(groups.puzzle_embedding, lr=0,
                                                 weight_decay=config.puzzle_emb_weight_decay, world_size=world_size))
        optimizers[-1].param_groups[0]["base_lr"] = config.puzzle_emb_lr
    adam_groups = [dict(params=groups.weights, base_lr=config.lr)] if groups.weights else []
    if groups.routing:
        adam_groups.append(dict(params=groups.routing, base_lr=config.routing.controller_lr))
    if adam_groups:
        optimizers.append(AdamATan2(adam_groups, lr=0, weight_decay=config.weight_decay,
                                    betas=(config.beta1, config.beta2)))
    return optimizers


def freeze_network(groups: ParameterGroups) -> ParameterGroups:
    """`freeze_weights`: the groups with only the puzzle embedding left to train (as TinyRecursiveModels'
    option of that name). The network's parameters stop taking gradients, so backward skips them."""
    if not groups.puzzle_embedding:
        raise ConfigError("freeze_weights=true trains only the puzzle embedding, but the model has none "
                          "(arch.puzzle_emb_ndim is 0)")
    for parameter in [*groups.weights, *groups.routing]:
        parameter.requires_grad_(False)
    return dataclasses.replace(groups, weights=[], routing=[])


def clip_gradient_norm(params: Iterable[torch.Tensor], max_norm: float) -> None:
    """Scale the gradients of `params` (those that have one) so that their joint norm is at most `max_norm`."""
    grads: List[torch.Tensor] = [p for p in params if p.grad is not None]
    if grads:
        torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True)


def keep_micro_batch_gradients(optimizers: List[torch.optim.Optimizer]) -> None:
    """After each micro-batch but a step's last: dense gradients add up by themselves, but the puzzle
    embedding's are per looked-up row, which the next micro-batch replaces, so its optimizer keeps them."""
    for optimizer in optimizers:
        if isinstance(optimizer, SparseEmbeddingSignSGD):
            optimizer.keep_micro_batch()
