"""The training loop, as the reference runs it: rounds of `eval_interval` epochs of train steps, each round
followed by an evaluation, the run folder's files and the full training state."""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from dataset.common import PuzzleDatasetMetadata
from models.losses import LossHeadOutput
from training import checkpointing
from training.build import create_loader, create_model, ensure_dataset, maybe_compile, read_metadata
from training.config import PretrainConfig
from training.distributed import DistributedContext, broadcast_from_main, sum_gradients
from training.evaluation import evaluate
from training.metrics import TrainMetrics
from training.metrics_log import MetricsLogger, flatten_eval_metrics
from training.optimization import build_optimizers, learning_rate
from training.routing_schedule import RoutingSchedule
from training.train_state import TrainState


def total_train_steps(config: PretrainConfig, metadata: PuzzleDatasetMetadata) -> int:
    """The reference's step count (a round's final short batch is dropped, so the last 1-2 are never taken)."""
    return int(config.epochs * metadata.total_groups * metadata.mean_puzzle_examples / config.global_batch_size)


def create_train_state(config: PretrainConfig, metadata: PuzzleDatasetMetadata, ctx: DistributedContext) -> TrainState:
    total_steps = total_train_steps(config, metadata)
    base_model = create_model(config, metadata, ctx)
    if ctx.world_size > 1:
        broadcast_from_main(list(base_model.parameters()) + list(base_model.buffers()))
    routing = RoutingSchedule(base_model, config.routing, total_steps) if base_model.routers() else None
    return TrainState(model=maybe_compile(base_model, config, ctx), base_model=base_model,
                      optimizers=build_optimizers(base_model.parameter_groups(), config, ctx.world_size),
                      total_steps=total_steps, routing=routing)


def train_step(state: TrainState, batch: Dict[str, torch.Tensor], config: PretrainConfig, ctx: DistributedContext,
               global_batch_size: int) -> Optional[LossHeadOutput]:
    """One optimisation step; returns the model's result (metrics on the device), or None past `total_steps`."""
    state.progress.step += 1
    step = state.progress.step
    if step > state.total_steps:
        return None
    batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    if state.routing is not None:
        state.routing.before_step(step)
    result = state.model(carry=state.carry, batch=batch)
    state.carry = result.carry
    ((1 / global_batch_size) * result.loss).backward()
    if ctx.world_size > 1:
        sum_gradients(state.base_model.parameters())
    if state.routing is not None:
        state.routing.before_optimizer_step(step)
    for optimizer in state.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, group["base_lr"], config.lr_warmup_steps, state.total_steps,
                                        config.lr_min_ratio)
        optimizer.step()
        optimizer.zero_grad()
    return result


def log_train_metrics(train_metrics: TrainMetrics, logger: Optional[MetricsLogger], state: TrainState,
                      config: PretrainConfig, ctx: DistributedContext) -> None:
    reduced = train_metrics.reduce(ctx, config.global_batch_size)
    if logger is not None and reduced is not None:
        step = min(state.progress.step, state.total_steps)
        lr = learning_rate(step, config.lr, config.lr_warmup_steps, state.total_steps, config.lr_min_ratio)
        logger.log({**reduced, "train/lr": lr}, step=step)


def run_training(config: PretrainConfig, ctx: DistributedContext) -> Optional[Dict[str, Dict[str, float]]]:
    """Train for `epochs` in rounds of `eval_interval` epochs, evaluating after each; returns the last eval."""
    ensure_dataset(config, ctx)
    torch.manual_seed(config.seed + ctx.rank)
    state = create_train_state(config, read_metadata(config, "train"), ctx)
    if config.resume:
        checkpointing.restore_train_state(config.resume, state, ctx)
    progress = state.progress
    train_loader, _ = create_loader(config, "train", ctx, test_set_mode=False, epochs_per_iter=config.epochs_per_round,
                                    start_round=progress.rounds_done)
    eval_loader, eval_metadata = create_loader(config, "test", ctx, test_set_mode=True, epochs_per_iter=1)

    logger = None
    if ctx.is_main:
        checkpointing.write_config(config.checkpoint_path, config.model_dump())
        logger = MetricsLogger(config.checkpoint_path, config.project_name, config.run_name, config.model_dump(),
                               total_steps=state.total_steps, initial_step=progress.step)
        logger.log({"num_params": sum(p.numel() for p in state.base_model.parameters())}, step=progress.step)

    train_metrics = TrainMetrics()
    eval_metrics = None
    for _ in range(progress.rounds_done, config.num_rounds):
        state.model.train()
        for batch_index, (_, batch, global_batch_size) in enumerate(train_loader):
            if batch_index < progress.batches_done_in_round:
                continue  # fast-forward to where a mid-round resume stopped
            result = train_step(state, batch, config, ctx, global_batch_size)
            progress.batches_done_in_round += 1
            if result is not None:
                train_metrics.add(result.metrics, result.routing)
            if progress.step % config.log_interval == 0:
                log_train_metrics(train_metrics, logger, state, config, ctx)
            if config.checkpoint_interval and progress.step % config.checkpoint_interval == 0:
                checkpointing.save_train_state(config.checkpoint_path, state, ctx)
        progress.rounds_done += 1
        progress.batches_done_in_round = 0
        if progress.rounds_done == config.num_rounds:
            log_train_metrics(train_metrics, logger, state, config, ctx)  # the last, partial log interval

        step = progress.step
        eval_metrics = evaluate(state.model, eval_loader, eval_metadata, ctx, config.eval_save_outputs,
                                outputs_path=os.path.join(config.checkpoint_path, f"step_{step}_all_preds"),
                                routing_log_path=os.path.join(config.checkpoint_path, f"routing_{step}.jsonl"))
        if logger is not None and eval_metrics is not None:
            logger.log(flatten_eval_metrics(eval_metrics), step=min(step, state.total_steps))
            logger.progress.write(f"evaluation at step {step}: {eval_metrics}")
        if ctx.is_main and (config.checkpoint_every_eval or progress.rounds_done == config.num_rounds):
            checkpointing.save_model_weights(config.checkpoint_path, step, state.model.state_dict())
        checkpointing.save_train_state(config.checkpoint_path, state, ctx)

    if logger is not None:
        logger.close()
    return eval_metrics
