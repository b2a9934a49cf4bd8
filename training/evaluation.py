"""Evaluation: every test example for `halt_max_steps` ACT steps, per-set metrics, saved outputs, routing log."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from command_line import UserError
from dataset.format import PuzzleDatasetMetadata
from models.routing import RoutingOutput
from training import run_folder
from training.arc_score import VOTING_OUTPUTS, ArcScorer, ArcScores
from training.distributed import DistributedContext, gather_to_main
from training.metrics import EvalMetrics

# Outputs `--save-outputs` / `eval_save_outputs` may name: the batch's tensors, the model's outputs, and
# `preds`, the argmax tokens (uint8), far smaller than the logits.
BATCH_OUTPUTS = ("inputs", "labels", "puzzle_identifiers")
MODEL_OUTPUTS = ("logits", "q_halt_logits", "q_continue_logits")
SAVABLE_OUTPUTS = (*BATCH_OUTPUTS, *MODEL_OUTPUTS, "preds")
# What scoring and voting need (puzzle_tools/arc_vote.py): saved by default for ARC datasets (evaluate.py).
PREDICTION_OUTPUTS = ("inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits")
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


class EvaluationError(UserError):
    """An evaluation that could not see its split's examples."""


@dataclass
class Evaluation:
    metrics: Optional[Dict[str, Dict[str, float]]]  # per set, divided by the counted sequences; None off rank 0
    outputs: Dict[str, torch.Tensor]  # this rank's `save_outputs` of the examples it saw, padding rows left out
    arc_scores: Optional[ArcScores] = None  # on rank 0, when scored (ARC datasets)


def evaluate(model: nn.Module, loader, metadata: PuzzleDatasetMetadata, ctx: DistributedContext,
             save_outputs: Sequence[str] = (), outputs_path: Optional[str] = None,
             routing_log_path: Optional[str] = None) -> Optional[Dict[str, Dict[str, float]]]:
    """Run every test example of `loader` through `model` (the loss-head-wrapped model, compiled or not).

    Returns per-set metrics divided by the counted sequences on rank 0 (None on other ranks). Each rank
    saves the `save_outputs` of the examples it saw to `<outputs_path>.<rank>` (the padding rows of a last,
    short batch left out). With routing on, rank 0 writes
    `routing_log_path` (JSON lines): the first batch's routing of up to 10 samples at every ACT step.
    """
    return evaluate_and_score(model, loader, metadata, ctx, save_outputs, outputs_path, routing_log_path).metrics


def evaluate_and_score(model: nn.Module, loader, metadata: PuzzleDatasetMetadata, ctx: DistributedContext,
                       save_outputs: Sequence[str] = (), outputs_path: Optional[str] = None,
                       routing_log_path: Optional[str] = None,
                       arc_scorer: Optional[ArcScorer] = None) -> Evaluation:
    """evaluate(), also scoring ARC with `arc_scorer`: every rank's predictions are gathered on rank 0 and
    voted on there. Returns the metrics, this rank's outputs and (rank 0) the ARC scores."""
    voting = [name for name in VOTING_OUTPUTS if name not in save_outputs] if arc_scorer is not None else []
    evaluation = evaluate_with_outputs(model, loader, metadata, ctx, [*save_outputs, *voting], routing_log_path)
    saved = {name: evaluation.outputs[name] for name in save_outputs if name in evaluation.outputs}
    if saved and outputs_path is not None:
        run_folder.write_predictions(outputs_path, ctx.rank, saved)
    if arc_scorer is not None:
        gathered = gather_to_main({name: evaluation.outputs[name] for name in VOTING_OUTPUTS
                                   if name in evaluation.outputs}, ctx)
        if ctx.is_main:
            ranks = [outputs for outputs in gathered if outputs]
            evaluation.arc_scores = arc_scorer.score({name: torch.cat([outputs[name] for outputs in ranks])
                                                      for name in VOTING_OUTPUTS})
    return evaluation


def evaluate_with_outputs(model: nn.Module, loader, metadata: PuzzleDatasetMetadata, ctx: DistributedContext,
                          save_outputs: Sequence[str] = (), routing_log_path: Optional[str] = None) -> Evaluation:
    """evaluate(), returning the outputs instead of writing them (evaluate.py shows the metrics first)."""
    metrics = EvalMetrics(metadata.sets, ctx.device)
    saved: Dict[str, List[torch.Tensor]] = {}
    routers = model.routers()
    topk = next(iter(routers.values())).topk if routers else None
    routing_lines: Optional[List[dict]] = [] if routers and routing_log_path is not None and ctx.is_main else None
    return_keys = [k for k in MODEL_OUTPUTS if k in save_outputs or (k == "logits" and "preds" in save_outputs)]
    model.eval()
    batches = 0
    with torch.inference_mode():
        for set_name, batch, examples_in_batch in loader:
            batches += 1
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            carry = model.initial_carry(batch)
            act_step = 0
            while True:
                result = model(carry=carry, batch=batch, return_keys=return_keys)
                carry = result.carry
                act_step += 1
                if routing_lines is not None:
                    routing_lines.extend(routing_log_lines(result.routing, act_step, topk))
                if result.all_halted:
                    break
            if routing_lines is not None:
                run_folder.write_jsonl(routing_log_path, routing_lines)
                routing_lines = None  # the first batch only
            if save_outputs:
                # This rank's rows of the global batch that are examples, not padding.
                local_size = len(batch["inputs"])
                real_rows = max(0, min(local_size, examples_in_batch - ctx.rank * local_size))
                values = {**batch, **result.outputs}
                if "preds" in save_outputs:
                    logits = result.outputs["logits"]
                    values["preds"] = logits.argmax(dim=-1).to(torch.uint8 if logits.shape[-1] <= 256 else torch.int32)
                for k in save_outputs:
                    saved.setdefault(k, []).append(values[k][:real_rows].cpu())
            metrics.add(set_name, result.metrics)
    if batches == 0:  # e.g. a data-loader worker that could not hand over its batches (a full /dev/shm)
        raise EvaluationError("the evaluation received no batch from its data loader, so it has no metrics; a "
                              "failed loader worker (shared memory /dev/shm full?) is reported above")

    return Evaluation(metrics.reduce(ctx), {k: torch.cat(v) for k, v in saved.items()})
