"""Gradient accumulation (`grad_accum_steps`): each step's batch as equal micro-batches, each run with its
rows of the ACT carry and of the halting exploration's draws, and the number of them `auto` picks.

The step's update is the whole batch's: gradients add up over micro-batches (the loss is already scaled by
1 / global batch size), the puzzle embedding's optimizer keeps every micro-batch's rows, and the
exploration is drawn once for the whole batch.
"""
from __future__ import annotations

import gc
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

from models.config_validation import ConfigError
from training.train_state import split_rows


def check_grad_accum_steps(grad_accum_steps: Any, global_batch_size: int, world_size: int) -> None:
    """Each process's share of the batch must split into `grad_accum_steps` equal micro-batches."""
    if grad_accum_steps == "auto" or global_batch_size % world_size != 0:
        return  # auto picks a divisor; the loader reports a batch the processes cannot share
    per_rank = global_batch_size // world_size
    if per_rank % grad_accum_steps != 0:
        raise ConfigError(f"invalid config: grad_accum_steps ({grad_accum_steps}) must divide each process's batch "
                          f"(global_batch_size {global_batch_size} / {world_size} processes = {per_rank})")


def micro_batches(model: nn.Module, carry: Any, batch: Dict[str, torch.Tensor], parts: int
                  ) -> List[Tuple[Any, Dict[str, torch.Tensor], Any]]:
    """(carry rows, batch rows, exploration draws) of each of a step's `parts` micro-batches, in row order.
    The draws are made once for the whole batch, as one call on it would draw them (with one part, None:
    the model draws its own, as it always has)."""
    if parts == 1:
        return [(carry, batch, None)]
    exploration = model.draw_exploration(len(batch["inputs"]), batch["inputs"].device)
    return list(zip(split_rows(carry, parts), split_rows(batch, parts), split_rows(exploration, parts)))


def choose_grad_accum_steps(per_rank_batch: int, device: torch.device,
                            first_step: Callable[[int], None]) -> Tuple[int, str]:
    """`grad_accum_steps=auto`: the fewest micro-batches (1, 2, 4, ... dividing `per_rank_batch`) for which
    `first_step(parts)`, a trial first step that leaves the run untouched, fits in GPU memory; and the
    one-line reason. On the CPU: 1."""
    if device.type != "cuda":
        return 1, "on the CPU there is no GPU memory to fit"
    parts = 1
    while per_rank_batch % parts == 0:
        try:
            first_step(parts)
            fits = True
        except torch.cuda.OutOfMemoryError:
            fits = False
        # The trial's tensors are unreferenced once its exception is gone; its compiled graphs (and their
        # CUDA-graph memory pools) go with the compile caches.
        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        if fits:
            return parts, (f"micro-batches of {per_rank_batch // parts} sequences: the fewest whose first step fits "
                           f"in GPU memory")
        parts *= 2
    raise ConfigError(f"grad_accum_steps=auto: even micro-batches of {per_rank_batch // (parts // 2)} sequences do "
                      f"not fit in GPU memory; lower global_batch_size")
