"""Puzzle embedding: a large table trained sparsely, only on the rows a batch looks up.

The table is a persistent buffer, not a parameter, so the main optimizer never sees it. In training the
looked-up rows are copied into a small leaf tensor `local_weights`; backward fills `local_weights.grad`,
and `SparseEmbeddingSignSGD` scatters a sign-SGD update back into the table, after gathering every
rank's ids and gradients. Under gradient accumulation the optimizer keeps each micro-batch's rows and
gradients (`keep_micro_batch`) and updates once from all of them, as from one batch.
"""
from typing import Iterable, List, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from models.initializers import trunc_normal_init_


class CastedSparseEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float,
                 cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.batch_size = batch_size
        # The only persistent state: checkpoints hold exactly the key `weights`.
        self.register_buffer("weights", trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))
        # Per-step scratch, never saved: the rows this rank looked up, and which rows they were.
        self.register_buffer("local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True),
                             persistent=False)
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        if ids.shape != self.local_ids.shape:
            raise ValueError(f"training batch of ids has shape {tuple(ids.shape)}, but the puzzle embedding was "
                             f"built for batch_size={self.batch_size}")
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.cast_to)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # Moving or casting a buffer is recorded by autograd; local_weights must stay a leaf to receive .grad.
        if not self.local_weights.is_leaf:
            self.local_weights = self.local_weights.detach().requires_grad_()
        return self


class SparseEmbeddingSignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay on the embedding rows used this step, summed over all ranks.

    `buffers` is a `CastedSparseEmbedding` or its `.buffers()`. Build the optimizer after the model has been
    moved to its device: moving replaces the buffer tensors.
    """

    def __init__(self, buffers: Union[nn.Module, Iterable[torch.Tensor]], lr: float = 1e-3,
                 weight_decay: float = 1e-2, world_size: int = 1):
        if isinstance(buffers, nn.Module):
            buffers = buffers.buffers()
        buffers = list(buffers)
        _split_embedding_buffers(buffers)  # fail early on anything but one embedding's three buffers
        super().__init__(buffers, dict(lr=lr, weight_decay=weight_decay, world_size=world_size))
        # The step's earlier micro-batches: (ids, gradients) each, in order; never saved, empty between steps.
        self.kept_micro_batches: List[Tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def keep_micro_batch(self) -> None:
        """Set this micro-batch's rows and gradients aside for the step (the next micro-batch overwrites
        the looked-up rows): the step then updates from the kept ones and the last, in order."""
        for group in self.param_groups:
            _, local_weights, local_ids = _split_embedding_buffers(group["params"])
            if local_weights.grad is not None:
                self.kept_micro_batches.append((local_ids.clone(), local_weights.grad.clone()))
                local_weights.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        kept, self.kept_micro_batches = self.kept_micro_batches, []
        for group in self.param_groups:
            weights, local_weights, local_ids = _split_embedding_buffers(group["params"])
            if local_weights.grad is None:
                continue
            ids, grads = local_ids, local_weights.grad
            if kept:  # this rank's rows of the whole batch, in order
                ids = torch.cat([*(kept_ids for kept_ids, _ in kept), ids])
                grads = torch.cat([*(kept_grads for _, kept_grads in kept), grads])
            if group["world_size"] > 1:
                ids = _gather_from_all_ranks(ids, group["world_size"])
                grads = _gather_from_all_ranks(grads, group["world_size"])
            # A puzzle seen by several rows (or ranks) gets one update, from the sum of its gradients.
            unique_ids, row_of_id = torch.unique(ids, return_inverse=True)
            grad_sums = grads.new_zeros(len(unique_ids), grads.shape[1]).index_add_(0, row_of_id, grads)

            lr, weight_decay = group["lr"], group["weight_decay"]
            rows = weights[unique_ids]
            rows.mul_(1 - lr * weight_decay).add_(torch.sign(grad_sums), alpha=-lr)
            weights[unique_ids] = rows


def _split_embedding_buffers(buffers: Iterable[torch.Tensor]):
    """Tell the embedding's buffers apart: (weights, local_weights, local_ids)."""
    weights, local_weights, local_ids = [], [], []
    for buffer in buffers:
        if buffer.requires_grad:
            local_weights.append(buffer)
        elif not buffer.is_floating_point():
            local_ids.append(buffer)
        else:
            weights.append(buffer)
    if not (len(weights) == len(local_weights) == len(local_ids) == 1):
        raise ValueError("expected the three buffers of one CastedSparseEmbedding (weights, local_weights, "
                         f"local_ids); got {len(weights)}, {len(local_weights)} and {len(local_ids)}")
    return weights[0], local_weights[0], local_ids[0]


def _gather_from_all_ranks(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order."""
    gathered = tensor.new_empty((world_size * tensor.shape[0], *tensor.shape[1:]))
    try:
        _all_gather_into_tensor(gathered, tensor.contiguous())
    except RuntimeError:
        # Gloo in older PyTorch releases lacks the single-tensor all-gather; the list form works everywhere.
        dist.all_gather(list(gathered.chunk(world_size)), tensor.contiguous())
    return gathered


def _all_gather_into_tensor(output: torch.Tensor, input: torch.Tensor):
    # PyTorch 2.13 renamed all_gather_into_tensor to all_gather_single and deprecated the old name.
    all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    all_gather_single(output, input)
