"""Evaluation: every test example for `halt_max_steps` ACT steps, per-set metrics, saved outputs, routing log."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from dataset.common import PuzzleDatasetMetadata
from models.routing import RoutingOutput
from training import checkpointing
from training.distributed import DistributedContext
from training.metrics import EvalMetrics

# Outputs `--save-outputs` / `eval_save_outputs` may name: the batch's tensors and the model's outputs.
SAVABLE_OUTPUTS = ("inputs", "labels", "puzzle_identifiers", "logits", "q_halt_logits", "q_continue_logits")
ROUTING_LOG_SAMPLES = 10


def routing_log_lines(routing: RoutingOutput, act_step: int, topk: Optional[int]) -> List[dict]:
    """One line per sample (the first few), level and controller call: its alphas and top heads."""
    lines = []
    for level, level_routing in sorted(routing.levels.items()):
        alphas = level_routing.alphas[:ROUTING_LOG_SAMPLES].float().cpu()  # [samples, calls, heads]
        top_heads = alphas.argsort(dim=-1, descending=True)[..., :topk or alphas.shape[-1]]
        for sample in range(alphas.shape[0]):
            for call in range(alphas.shape[1]):
                lines.append(dict(act_step=act_step, sample=sample, level=level, call=call,
                                  alphas=[round(a, 6) for a in alphas[sample, call].tolist()],
                                  top_heads=top_heads[sample, call].tolist()))
    return lines


def evaluate(model: nn.Module, loader, metadata: PuzzleDatasetMetadata, ctx: DistributedContext,
             save_outputs: Sequence[str] = (), outputs_path: Optional[str] = None,
             routing_log_path: Optional[str] = None) -> Optional[Dict[str, Dict[str, float]]]:
    """Run every test example of `loader` through `model` (the loss-head-wrapped model, compiled or not).

    Returns per-set metrics divided by the counted sequences on rank 0 (None on other ranks). Each rank
    saves the `save_outputs` it saw to `<outputs_path>.<rank>`. With routing on, rank 0 writes
    `routing_log_path` (JSON lines): the first batch's routing of up to 10 samples at every ACT step.
    """
    metrics = EvalMetrics(metadata.sets, ctx.device)
    saved: Dict[str, List[torch.Tensor]] = {}
    routers = model.routers()
    topk = next(iter(routers.values())).topk if routers else None
    routing_lines: Optional[List[dict]] = [] if routers and routing_log_path is not None and ctx.is_main else None
    model.eval()
    with torch.inference_mode():
        for set_name, batch, _ in loader:
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            carry = model.initial_carry(batch)
            act_step = 0
            while True:
                result = model(carry=carry, batch=batch, return_keys=save_outputs)
                carry = result.carry
                act_step += 1
                if routing_lines is not None:
                    routing_lines.extend(routing_log_lines(result.routing, act_step, topk))
                if result.all_halted:
                    break
            if routing_lines is not None:
                checkpointing.write_jsonl(routing_log_path, routing_lines)
                routing_lines = None  # the first batch only
            for collection in (batch, result.outputs):
                for k, v in collection.items():
                    if k in save_outputs:
                        saved.setdefault(k, []).append(v.cpu())
            metrics.add(set_name, result.metrics)

    if saved and outputs_path is not None:
        checkpointing.atomic_torch_save({k: torch.cat(v) for k, v in saved.items()}, f"{outputs_path}.{ctx.rank}")
    return metrics.reduce(ctx)
