"""Process-group set-up and the collectives training needs: parameter broadcast, bucketed gradient sums and
gathering objects to the main process.

Processes come from torchrun and talk through torch.distributed (NCCL on CUDA, gloo on CPU). Gradients are
summed here in explicit flat buckets after backward, rather than through DistributedDataParallel, because:
- the reference sums gradients (the loss is already scaled by 1 / global batch size), where DDP averages;
- `torch.compile` sees the whole model as one graph, without the graph breaks DDP's optimizer puts at
  bucket boundaries, and the ACT step's extra no-grad forward (the Q target) needs no DDP bookkeeping;
- the model has 27M parameters: one all-reduce of its gradients takes about 1 ms, so overlapping it
  with backward, DDP's main gain, has almost nothing to win.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional

import torch
import torch.distributed as dist

# Gradients are summed in flat buckets of about this size: few collectives, bounded extra memory.
GRADIENT_BUCKET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistributedContext:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU), or run as a single process."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if "LOCAL_RANK" not in os.environ:
        return DistributedContext(rank=0, world_size=1, device=torch.device(device_type))
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend="gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _buckets(tensors: List[torch.Tensor], bucket_bytes: int) -> Iterable[List[torch.Tensor]]:
    """Consecutive groups of same-dtype tensors of at most about `bucket_bytes` each."""
    bucket, size = [], 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (size + nbytes > bucket_bytes or tensor.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket


def _flat_collective(tensors: List[torch.Tensor], collective, bucket_bytes: int) -> None:
    """Run an in-place collective over `tensors` through flat buffers, one call per bucket."""
    for bucket in _buckets(tensors, bucket_bytes):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        collective(flat)
        torch._foreach_copy_(bucket, [piece.view_as(t) for piece, t in zip(flat.split([t.numel() for t in bucket]), bucket)])


def sum_gradients(parameters: Iterable[torch.nn.Parameter], bucket_bytes: int = GRADIENT_BUCKET_BYTES) -> None:
    """Sum every rank's gradients in place (not averaged: the loss is already scaled by 1/global batch)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    _flat_collective(grads, dist.all_reduce, bucket_bytes)


def broadcast_from_main(tensors: Iterable[torch.Tensor], bucket_bytes: int = GRADIENT_BUCKET_BYTES) -> None:
    """Overwrite every rank's copies with rank 0's (parameters and buffers at start-up)."""
    with torch.no_grad():
        _flat_collective(list(tensors), lambda flat: dist.broadcast(flat, src=0), bucket_bytes)


def gather_to_main(obj: Any, ctx: DistributedContext) -> Optional[List[Any]]:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere). Every rank must call it."""
    if ctx.world_size == 1:
        return [obj]
    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered
