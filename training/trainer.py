"""The training loop: train steps, evaluation rounds, logging, checkpoints and resume, as the reference runs them."""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from dataset.puzzle_dataset import DatasetFormatError, create_dataloader
from models import build_model
from models.checkpoint import load_model_weights
from models.config_validation import ConfigError
from training import checkpointing
from training.config import PretrainConfig
from training.distributed import DistributedContext, broadcast_from_main, sum_gradients
from training.metrics_log import MetricsLogger, flatten_eval_metrics
from training.optimization import build_optimizers, learning_rate
from training.routing_schedule import RoutingSchedule


@dataclass
class TrainState:
    model: nn.Module  # what runs: the compiled wrapper when compiled
    base_model: nn.Module  # the plain module behind it
    optimizers: List[torch.optim.Optimizer]
    total_steps: int
    routing: Optional[RoutingSchedule] = None
    step: int = 0
    rounds_done: int = 0
    batches_done_in_round: int = 0
    carry: Any = None


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every tensor inside nested dataclasses, dicts, lists and tuples (e.g. an ACT carry)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def ensure_dataset(config: PretrainConfig, ctx: DistributedContext) -> None:
    """Check that data_path holds a dataset; build it first when the config asks to."""
    marker = os.path.join(config.data_path, "train", "dataset.json")
    if not os.path.isfile(marker) and config.auto_build_data and config.data_build_command:
        if ctx.is_main:
            print(f"building the dataset: {config.data_build_command}", flush=True)
            subprocess.run([sys.executable, *shlex.split(config.data_build_command)], check=True)
        if ctx.world_size > 1:
            dist.barrier()
    if not os.path.isfile(marker):
        command = config.data_build_command or f"dataset/build_<task>_dataset.py --output-dir {config.data_path}"
        raise ConfigError(f"data_path {config.data_path!r} holds no dataset (missing {marker}); "
                          f"build it with: python {command}")


def create_loader(config: PretrainConfig, split: str, ctx: DistributedContext, test_set_mode: bool, epochs_per_iter: int):
    """This rank's loader of `split` and its metadata; a bad dataset folder is a ConfigError with a hint."""
    if config.global_batch_size % ctx.world_size != 0:
        raise ConfigError(f"invalid config: global_batch_size ({config.global_batch_size}) must be divisible by "
                          f"the number of processes ({ctx.world_size})")
    try:
        return create_dataloader(config.data_path, split, seed=config.seed, global_batch_size=config.global_batch_size,
                                 test_set_mode=test_set_mode, epochs_per_iter=epochs_per_iter, rank=ctx.rank,
                                 world_size=ctx.world_size)
    except DatasetFormatError as e:
        hint = f"; rebuild it with: python {config.data_build_command}" if config.data_build_command else ""
        raise ConfigError(f"data_path: {e}{hint}") from None


def create_model(config: PretrainConfig, metadata, ctx: DistributedContext) -> nn.Module:
    """The loss-head-wrapped model for this dataset, with this rank's share of the batch, on the device."""
    return build_model(config.arch, batch_size=config.global_batch_size // ctx.world_size, seq_len=metadata.seq_len,
                       vocab_size=metadata.vocab_size,
                       num_puzzle_identifiers=metadata.num_puzzle_identifiers).to(ctx.device)


def maybe_compile(model: nn.Module, config: PretrainConfig, ctx: DistributedContext) -> nn.Module:
    """`torch.compile` on CUDA unless `compile=false` or DISABLE_COMPILE is set."""
    if config.compile and ctx.device.type == "cuda" and not os.environ.get("DISABLE_COMPILE"):
        return torch.compile(model, dynamic=False)
    return model


def create_train_state(config: PretrainConfig, metadata, ctx: DistributedContext) -> TrainState:
    total_steps = int(config.epochs * metadata.total_groups * metadata.mean_puzzle_examples / config.global_batch_size)
    base_model = create_model(config, metadata, ctx)
    if ctx.world_size > 1:
        broadcast_from_main(list(base_model.parameters()) + list(base_model.buffers()))
    model = maybe_compile(base_model, config, ctx)
    routing_config = base_model.model.config.routing
    routing = RoutingSchedule(base_model, routing_config, total_steps) if routing_config.controller != "none" else None
    return TrainState(model=model, base_model=base_model, optimizers=build_optimizers(base_model, config, ctx.world_size),
                      total_steps=total_steps, routing=routing)


def train_step(state: TrainState, batch: Dict[str, torch.Tensor], config: PretrainConfig, ctx: DistributedContext,
               global_batch_size: int) -> Optional[Dict[str, torch.Tensor]]:
    """One optimisation step; returns the step's (device) metrics, or None past `total_steps`."""
    state.step += 1
    if state.step > state.total_steps:
        return None
    batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    if state.routing is not None:
        state.routing.before_step(state.step)
    state.carry, loss, metrics, _, _ = state.model(carry=state.carry, batch=batch, return_keys=())
    ((1 / global_batch_size) * loss).backward()
    if ctx.world_size > 1:
        sum_gradients(state.base_model.parameters())
    if state.routing is not None:
        state.routing.before_optimizer_step(state.step)
    for optimizer in state.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(state.step, group["base_lr"], config.lr_warmup_steps, state.total_steps,
                                        config.lr_min_ratio)
        optimizer.step()
        optimizer.zero_grad()
    return metrics


class TrainMetricsAccumulator:
    """Sums step metrics on the device and reduces them only when logged, so steps never wait for the host."""

    def __init__(self):
        self.keys: Optional[List[str]] = None
        self.total: Optional[torch.Tensor] = None
        self.steps = 0

    def add(self, metrics: Dict[str, torch.Tensor]) -> None:
        if self.keys is None:
            self.keys = sorted(metrics)  # the same order on every rank
        values = torch.stack([metrics[k].to(torch.float64) for k in self.keys])
        self.total = values if self.total is None else self.total + values
        self.steps += 1

    def reduce(self, ctx: DistributedContext, global_batch_size: int) -> Optional[Dict[str, float]]:
        """Rank 0 gets losses per example of the global batch and the other metrics per counted sequence;
        routing diagnostics, already means, are averaged over steps and ranks."""
        if self.total is None:
            return None
        total = self.total
        if ctx.world_size > 1:
            dist.reduce(total, dst=0)
        values = dict(zip(self.keys, total.tolist()))
        steps, self.total, self.steps = self.steps, None, 0
        count = max(values["count"], 1)
        def divisor(key: str) -> float:
            if key.startswith("routing/"):
                return steps * ctx.world_size
            return global_batch_size * steps if key.endswith("loss") else count
        return {f"train/{k}": v / divisor(k) for k, v in values.items()}


ROUTING_LOG_SAMPLES = 10


def routing_log_lines(outputs: Dict[str, torch.Tensor], act_step: int, topk: Optional[int]) -> List[dict]:
    """One line per sample (the first few), level and controller call: its alphas and top heads."""
    lines = []
    for key, alphas in sorted(outputs.items()):
        if not key.startswith("routing_alphas_"):
            continue
        level = key[len("routing_alphas_"):]
        alphas = alphas[:ROUTING_LOG_SAMPLES].float().cpu()  # [samples, calls, heads]
        top_heads = alphas.argsort(dim=-1, descending=True)[..., :topk or alphas.shape[-1]]
        for sample in range(alphas.shape[0]):
            for call in range(alphas.shape[1]):
                lines.append(dict(act_step=act_step, sample=sample, level=level, call=call,
                                  alphas=[round(a, 6) for a in alphas[sample, call].tolist()],
                                  top_heads=top_heads[sample, call].tolist()))
    return lines


def evaluate(state: TrainState, loader, metadata, ctx: DistributedContext, save_outputs: Sequence[str] = (),
             outputs_path: Optional[str] = None, routing_log_path: Optional[str] = None
             ) -> Optional[Dict[str, Dict[str, float]]]:
    """Run every test example for `halt_max_steps` steps; rank 0 gets per-set metrics divided by count.

    With routing on, rank 0 also writes `routing_log_path` (JSON lines): the first batch's routing of up
    to 10 samples at every ACT step.
    """
    set_index = {name: i for i, name in enumerate(metadata.sets)}
    metric_keys, metric_sums = None, None
    saved: Dict[str, List[torch.Tensor]] = {}
    log_routing = state.routing is not None and routing_log_path is not None and ctx.is_main
    routing_lines: List[dict] = []
    return_keys = [*save_outputs, *(f"routing_alphas_{level}" for level in ("H", "L"))]
    with torch.inference_mode():
        for set_name, batch, _ in loader:
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            carry = state.model.initial_carry(batch)
            act_step = 0
            while True:
                carry, _, metrics, outputs, all_halted = state.model(carry=carry, batch=batch, return_keys=return_keys)
                act_step += 1
                if log_routing:
                    routing_lines.extend(routing_log_lines(outputs, act_step, state.routing.routing.topk))
                if all_halted:
                    break
            if log_routing:
                checkpointing.write_jsonl(routing_log_path, routing_lines)
                log_routing = False  # the first batch only
            for collection in (batch, outputs):
                for k, v in collection.items():
                    if k in save_outputs:
                        saved.setdefault(k, []).append(v.cpu())
            # Routing diagnostics are logged in training; evaluation writes the routing log instead.
            metrics = {k: v for k, v in metrics.items() if not k.startswith("routing/")}
            if metric_keys is None:
                metric_keys = sorted(metrics)
                metric_sums = torch.zeros(len(set_index), len(metric_keys), dtype=torch.float64, device=ctx.device)
            metric_sums[set_index[set_name]] += torch.stack([metrics[k].to(torch.float64) for k in metric_keys])

    if saved and outputs_path is not None:
        checkpointing.atomic_torch_save({k: torch.cat(v) for k, v in saved.items()}, f"{outputs_path}.{ctx.rank}")
    if metric_sums is None:
        return None
    if ctx.world_size > 1:
        dist.reduce(metric_sums, dst=0)
    if not ctx.is_main:
        return None
    result = {}
    for set_name, i in set_index.items():
        values = dict(zip(metric_keys, metric_sums[i].tolist()))
        count = values.pop("count")
        result[set_name] = {k: v / count if count else float("nan") for k, v in values.items()}
    return result


def _gather_to_main(obj: Any, ctx: DistributedContext) -> Optional[List[Any]]:
    if ctx.world_size == 1:
        return [obj]
    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def save_full_state(state: TrainState, config: PretrainConfig, ctx: DistributedContext) -> None:
    """Write everything needed to continue exactly: weights, optimizers, counters, each rank's carry and RNG."""
    per_rank = {
        "carry": map_tensors(state.carry, lambda t: t.cpu()),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None,
    }
    gathered = _gather_to_main(per_rank, ctx)
    if ctx.is_main:
        checkpointing.save_train_state(config.checkpoint_path, {
            "model": state.base_model.state_dict(),
            "optimizers": [o.state_dict() for o in state.optimizers],
            "step": state.step, "rounds_done": state.rounds_done,
            "batches_done_in_round": state.batches_done_in_round,
            "world_size": ctx.world_size, "per_rank": gathered,
        })


def restore_full_state(state: TrainState, resume: str, ctx: DistributedContext) -> None:
    saved = checkpointing.load_train_state(resume)
    if saved["world_size"] != ctx.world_size:
        raise ConfigError(f"resume: the state was saved by {saved['world_size']} processes; "
                          f"run with the same number ({ctx.world_size} now)")
    load_model_weights(state.base_model, saved["model"])
    for optimizer, optimizer_state in zip(state.optimizers, saved["optimizers"]):
        optimizer.load_state_dict(optimizer_state)
    state.step, state.rounds_done = saved["step"], saved["rounds_done"]
    state.batches_done_in_round = saved["batches_done_in_round"]
    mine = saved["per_rank"][ctx.rank]
    state.carry = map_tensors(mine["carry"], lambda t: t.to(ctx.device))
    torch.set_rng_state(mine["torch_rng"])
    if mine["cuda_rng"] is not None:
        torch.cuda.set_rng_state(mine["cuda_rng"], ctx.device)


def log_train_metrics(accumulator: TrainMetricsAccumulator, logger: Optional[MetricsLogger], state: TrainState,
                      config: PretrainConfig, ctx: DistributedContext) -> None:
    reduced = accumulator.reduce(ctx, config.global_batch_size)
    if logger is not None and reduced is not None:
        step = min(state.step, state.total_steps)
        lr = learning_rate(step, config.lr, config.lr_warmup_steps, state.total_steps, config.lr_min_ratio)
        logger.log({**reduced, "train/lr": lr}, step=step)


def run_training(config: PretrainConfig, ctx: DistributedContext) -> Optional[Dict[str, Dict[str, float]]]:
    """Train for `epochs` in rounds of `eval_interval` epochs, evaluating after each; returns the last eval."""
    ensure_dataset(config, ctx)
    torch.manual_seed(config.seed + ctx.rank)
    train_loader, train_metadata = create_loader(config, "train", ctx, test_set_mode=False,
                                                 epochs_per_iter=config.epochs_per_round)
    eval_loader, eval_metadata = create_loader(config, "test", ctx, test_set_mode=True, epochs_per_iter=1)

    state = create_train_state(config, train_metadata, ctx)
    if config.resume:
        restore_full_state(state, config.resume, ctx)
    # The loader's round counter seeds each round's shuffle; continue it where the resumed run stopped.
    train_loader.dataset.iters = state.rounds_done * len(train_metadata.sets)

    logger = None
    if ctx.is_main:
        checkpointing.write_config(config.checkpoint_path, config.model_dump())
        logger = MetricsLogger(config.checkpoint_path, config.project_name, config.run_name, config.model_dump(),
                               total_steps=state.total_steps, initial_step=state.step)
        logger.log({"num_params": sum(p.numel() for p in state.base_model.parameters())}, step=state.step)

    accumulator = TrainMetricsAccumulator()
    eval_metrics = None
    for _ in range(state.rounds_done, config.num_rounds):
        state.model.train()
        for batch_index, (_, batch, global_batch_size) in enumerate(train_loader):
            if batch_index < state.batches_done_in_round:
                continue  # fast-forward to where a mid-round resume stopped
            metrics = train_step(state, batch, config, ctx, global_batch_size)
            state.batches_done_in_round += 1
            if metrics is not None:
                accumulator.add(metrics)
            if state.step % config.log_interval == 0:
                log_train_metrics(accumulator, logger, state, config, ctx)
            if config.checkpoint_interval and state.step % config.checkpoint_interval == 0:
                save_full_state(state, config, ctx)
        state.rounds_done += 1
        state.batches_done_in_round = 0
        if state.rounds_done == config.num_rounds:
            log_train_metrics(accumulator, logger, state, config, ctx)  # the last, partial log interval

        state.model.eval()
        outputs_path = os.path.join(config.checkpoint_path, f"step_{state.step}_all_preds")
        eval_metrics = evaluate(state, eval_loader, eval_metadata, ctx, config.eval_save_outputs, outputs_path,
                                routing_log_path=os.path.join(config.checkpoint_path, f"routing_{state.step}.jsonl"))
        if logger is not None and eval_metrics is not None:
            logger.log(flatten_eval_metrics(eval_metrics), step=min(state.step, state.total_steps))
            logger.progress.write(f"evaluation at step {state.step}: {eval_metrics}")
        if ctx.is_main and (config.checkpoint_every_eval or state.rounds_done == config.num_rounds):
            checkpointing.save_model_weights(config.checkpoint_path, state.step, state.model.state_dict())
        save_full_state(state, config, ctx)

    if logger is not None:
        logger.close()
    return eval_metrics
