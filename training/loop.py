"""The training loop, as the reference runs it: rounds of `eval_interval` epochs of train steps, each round
followed by an evaluation, the run folder's files and the full training state."""
from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from dataset.format import PuzzleDatasetMetadata, read_identifiers_if_present
from models.config_validation import ConfigError
from training import checkpointing, resume, run_folder
from training.arc_score import ArcScorer
from training.best_checkpoint import BestCheckpoint
from training.build import (check_splits_agree, count_train_batches, create_loader, create_model, ensure_dataset,
                            read_metadata)
from training.config import PretrainConfig
from training.distributed import DistributedContext, broadcast_from_main, sum_gradients
from training.ema import WeightEMA
from training.evaluation import evaluate_and_score
from training.fast_path import prepare_model
from training.init_from import init_from_checkpoint
from training.metrics import TrainMetrics, arc_metrics
from training.metrics_log import MetricsLogger, flatten_eval_metrics, format_evaluation
from training.grad_accumulation import check_grad_accum_steps, choose_grad_accum_steps, micro_batches
from training.optimization import (build_optimizers, clip_gradient_norm, freeze_network, keep_micro_batch_gradients,
                                   learning_rate)
from training.preemption import StopRequest, TrainingInterrupted
from training.routing_schedule import RoutingSchedule
from training.train_state import TrainState, join_rows


@dataclass
class FinishedRun:
    """A run that trained to its end: its folder, its last step and its last evaluation (main rank only)."""
    run_dir: str
    step: int
    eval_metrics: Optional[Dict[str, Dict[str, float]]]


def total_train_steps(config: PretrainConfig, metadata: PuzzleDatasetMetadata) -> int:
    """The reference's step count (a round's final short batch is dropped, so the last 1-2 are never taken)."""
    return int(config.epochs * metadata.total_groups * metadata.mean_puzzle_examples / config.global_batch_size)


def steps_that_will_run(config: PretrainConfig, total_steps: int) -> int:
    """What the progress bar counts to: the batches the rounds yield (each drops its last short batch, so
    often fewer than `total_steps`), at most `total_steps`."""
    return count_train_batches(config, at_most=total_steps)


def refuse_empty_run(config: PretrainConfig, metadata: PuzzleDatasetMetadata, steps: int) -> None:
    """A run that would take no step would only report success: say which numbers make it empty."""
    if steps > 0:
        return
    if not metadata.sets:
        raise ConfigError(f"data_path: the train split of {config.data_path!r} has no sets: the run would take 0 steps")
    examples = metadata.total_groups * metadata.mean_puzzle_examples * config.epochs_per_round
    separately = f" (its {len(metadata.sets)} sets are drawn separately)" if len(metadata.sets) > 1 else ""
    raise ConfigError(f"the run would take 0 steps: global_batch_size ({config.global_batch_size}) is more than "
                      f"a round of the train split yields{separately}: {examples:g} examples = {metadata.total_groups} "
                      f"groups x {metadata.mean_puzzle_examples:g} examples x {config.epochs_per_round} epoch(s) per "
                      f"round; lower global_batch_size or train more epochs per round")


def create_train_state(config: PretrainConfig, metadata: PuzzleDatasetMetadata, ctx: DistributedContext) -> TrainState:
    total_steps = total_train_steps(config, metadata)
    base_model = create_model(config, metadata, ctx)
    if config.init_from and not config.resume:  # a resumed run takes its weights from its training state
        initialized = init_from_checkpoint(base_model, config.init_from, config.init_from_identifiers,
                                           config.data_path)
        if ctx.is_main:
            print(initialized.summary(), flush=True)
    if ctx.world_size > 1:
        broadcast_from_main(list(base_model.parameters()) + list(base_model.buffers()))
    routing = RoutingSchedule(base_model, config.routing, total_steps) if base_model.routers() else None
    groups = base_model.parameter_groups()
    if config.freeze_weights:
        groups = freeze_network(groups)
    return TrainState(model=prepare_model(base_model, config, ctx.device), base_model=base_model,
                      optimizers=build_optimizers(groups, config, ctx.world_size),
                      total_steps=total_steps, routing=routing, shared_weights=groups.weights,
                      ema=WeightEMA(base_model, config.ema_rate) if config.ema else None)


def resolve_grad_accum_steps(config: PretrainConfig, metadata: PuzzleDatasetMetadata,
                             ctx: DistributedContext) -> PretrainConfig:
    """The config with `grad_accum_steps=auto` made the number it picks, said in one line (other configs
    as they are). Each process tries first steps of its own, on a throwaway state and an all-zero batch; run
    it before seeding the run, whose random numbers the trials draw."""
    if config.grad_accum_steps != "auto":
        return config
    per_rank = config.global_batch_size // ctx.world_size
    alone = DistributedContext(rank=0, world_size=1, device=ctx.device)
    shapes = {"inputs": (per_rank, metadata.seq_len), "labels": (per_rank, metadata.seq_len),
              "puzzle_identifiers": (per_rank,)}

    def first_step(parts: int) -> None:
        trial = config.model_copy(update=dict(global_batch_size=per_rank, grad_accum_steps=parts))
        state = create_train_state(trial, metadata, alone)
        state.model.train()
        train_step(state, {k: torch.zeros(shape, dtype=torch.int32) for k, shape in shapes.items()}, trial, alone,
                   per_rank)
        torch.cuda.synchronize(ctx.device)

    parts, reason = choose_grad_accum_steps(per_rank, ctx.device, first_step)
    if ctx.world_size > 1:
        most = torch.tensor(parts, device=ctx.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        if int(most) != parts:
            parts, reason = int(most), "the most any process needs"
    if ctx.is_main:
        print(f"grad_accum_steps=auto: {parts} ({reason})", flush=True)
    return config.model_copy(update=dict(grad_accum_steps=parts))


def train_step(state: TrainState, batch: Dict[str, torch.Tensor], config: PretrainConfig, ctx: DistributedContext,
               global_batch_size: int, train_metrics: Optional[TrainMetrics] = None) -> bool:
    """One optimisation step, over `grad_accum_steps` micro-batches of `batch`, each adding its figures (on
    the device) to `train_metrics`; False past `total_steps`, where it does nothing."""
    state.progress.step += 1
    step = state.progress.step
    if step > state.total_steps:
        return False
    batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
    if state.carry is None:
        state.carry = state.model.initial_carry(batch)
    if state.routing is not None:
        state.routing.before_step(step)
    parts = config.grad_accum_steps
    carries = []
    for index, (carry, micro_batch, exploration) in enumerate(micro_batches(state.model, state.carry, batch, parts)):
        result = state.model(carry=carry, batch=micro_batch, exploration=exploration)
        carries.append(result.carry)
        ((1 / global_batch_size) * result.loss).backward()
        if index < parts - 1:
            keep_micro_batch_gradients(state.optimizers)
        if train_metrics is not None:  # read now: the fast path's next call reuses the result's memory
            train_metrics.add(result.metrics, result.routing, micro_batches=parts)
    state.carry = carries[0] if parts == 1 else join_rows(carries)
    if ctx.world_size > 1:
        sum_gradients(state.base_model.parameters())
    if state.routing is not None:
        state.routing.before_optimizer_step(step)
    if config.routing.encoder_clip is not None:
        # With or without controllers, so that the arms of a routing A/B are clipped alike.
        clip_gradient_norm(state.shared_weights, config.routing.encoder_clip)
    for optimizer in state.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, group["base_lr"], config.lr_warmup_steps, state.total_steps,
                                        config.lr_min_ratio)
        optimizer.step()
        optimizer.zero_grad()
    if state.ema is not None:
        state.ema.update()
    return True


def log_train_metrics(train_metrics: TrainMetrics, logger: Optional[MetricsLogger], state: TrainState,
                      config: PretrainConfig, ctx: DistributedContext) -> None:
    reduced = train_metrics.reduce(ctx, config.global_batch_size)
    if logger is not None and reduced is not None:
        step = min(state.progress.step, state.total_steps)
        lr = learning_rate(step, config.lr, config.lr_warmup_steps, state.total_steps, config.lr_min_ratio)
        logger.log({**reduced, "train/lr": lr}, step=step)


@dataclass
class RunFolderStart:
    """What a run writes into its folder before its first step. It is decided, and every file it needs is
    read, before anything is written: a refusal or a damaged input leaves the folder as it was."""
    clear: bool  # delete an earlier run's files first (a new run, or a resume into another folder)
    metrics_rows: Optional[List[dict]]  # a resumed run's metrics.jsonl, ending with its resume row
    identifiers: Optional[List[str]]  # the dataset's identifier names, kept as identifiers.json


def start_or_resume(config: PretrainConfig, state: TrainState, ctx: DistributedContext,
                    fingerprint: str) -> RunFolderStart:
    """Check the run folder and, for a resumed run, restore its state (its config checked, metrics.jsonl's
    rows to carry on and the resume row prepared) or check that a new one does not start over an old run
    by accident. Nothing is written: `open_run_folder` writes.

    Every rank runs the checks, so a refusal stops them all.
    """
    identifiers = read_identifiers_if_present(config.data_path)
    if not config.resume:
        resume.refuse_existing_run(config)
        return RunFolderStart(clear=True, metrics_rows=None, identifiers=identifiers)
    state_path = run_folder.resolve_resume_path(config.resume)
    saved = run_folder.read_train_state(state_path)
    changes = resume.compare_configs(saved.config, config, saved.data_fingerprint, fingerprint)
    source_dir = run_folder.run_folder_of(config.resume)
    elsewhere = os.path.abspath(source_dir) != os.path.abspath(config.checkpoint_path)
    if elsewhere:
        resume.refuse_existing_run(config)  # continuing elsewhere: no run there
    resume.check_weights_carry_over(saved, state, changes)
    checkpointing.restore_train_state(saved, state, ctx)
    record = {"step": state.progress.step, "event": "resume", "from": state_path,
              "processes": [saved.world_size, ctx.world_size],
              "changed": {key: list(values) for key, values in changes.items()}}
    rows = resume.continued_metrics_rows(source_dir, state.progress.step, record) if ctx.is_main else None
    return RunFolderStart(clear=elsewhere, metrics_rows=rows, identifiers=identifiers)


def open_run_folder(config: PretrainConfig, ctx: DistributedContext, start: RunFolderStart) -> None:
    """Write what a run keeps before its first step: the earlier run's files cleared, metrics.jsonl carried
    on (resumed), the config and the dataset's identifier names (so its weights say which puzzle each
    embedding row is: `init_from` matches them by name). Only rank 0 writes; the others wait for it."""
    if ctx.is_main:
        if start.clear:
            resume.clear_run_files(config.checkpoint_path)
        run_folder.make_run_folder(config.checkpoint_path)
        if start.metrics_rows is not None:
            run_folder.write_jsonl(os.path.join(config.checkpoint_path, run_folder.METRICS_FILE), start.metrics_rows)
        run_folder.write_config(config.checkpoint_path, config.model_dump())
        if start.identifiers is not None:
            run_folder.write_identifiers(config.checkpoint_path, start.identifiers)
    if ctx.world_size > 1:
        dist.barrier()


def lock_run_folder(run_dir: str, ctx: DistributedContext) -> contextlib.AbstractContextManager:
    """Rank 0 locks the run folder for the run's life; every rank learns whether it could, so a refusal
    stops them all."""
    lock, refusal = contextlib.nullcontext(), [None]
    if ctx.is_main:
        try:
            lock = run_folder.RunFolderLock(run_dir)
        except run_folder.RunFolderError as e:
            refusal = [str(e)]
    if ctx.world_size > 1:
        dist.broadcast_object_list(refusal, src=0)
    if refusal[0] is not None:
        raise run_folder.RunFolderError(refusal[0])
    return lock


def run_training(config: PretrainConfig, ctx: DistributedContext) -> Optional[FinishedRun]:
    """Train for `epochs` in rounds of `eval_interval` epochs, evaluating after each; None when the run had
    already finished.

    SIGTERM or SIGINT stops after the current step (with several processes, within `log_interval` steps),
    saves the full state and raises TrainingInterrupted. The run folder stays locked while the run lasts:
    a second run into it is refused.
    """
    ensure_dataset(config, ctx)
    metadata = read_metadata(config, "train")
    check_splits_agree(config, metadata)
    # Counted once: for sets of varying puzzle sizes (ARC) it replays every round's puzzle draws.
    steps_to_run = steps_that_will_run(config, total_train_steps(config, metadata))
    refuse_empty_run(config, metadata, steps_to_run)
    check_grad_accum_steps(config.grad_accum_steps, config.global_batch_size, ctx.world_size)
    with lock_run_folder(config.checkpoint_path, ctx):
        return train_in_run_folder(config, ctx, metadata, steps_to_run)


def train_in_run_folder(config: PretrainConfig, ctx: DistributedContext, metadata: PuzzleDatasetMetadata,
                        steps_to_run: int) -> Optional[FinishedRun]:
    config = resolve_grad_accum_steps(config, metadata, ctx)
    torch.manual_seed(config.seed + ctx.rank)
    fingerprint = resume.config_fingerprint(config)
    state = create_train_state(config, metadata, ctx)
    start = start_or_resume(config, state, ctx, fingerprint)
    progress = state.progress
    if progress.rounds_done >= config.num_rounds:
        if ctx.is_main:
            print(f"the run in {config.checkpoint_path!r} already finished (step {progress.step}, "
                  f"{config.epochs} epochs); to train longer, resume it with more epochs", flush=True)
        return None
    train_loader, _ = create_loader(config, "train", ctx, test_set_mode=False, epochs_per_iter=config.epochs_per_round,
                                    start_round=progress.rounds_done)
    eval_loader, eval_metadata = create_loader(config, "test", ctx, test_set_mode=True, epochs_per_iter=1)
    sample_loader = None  # eval_max_examples: the evaluations before the last walk a fixed sample
    if config.eval_max_examples is not None:
        sample_loader, _ = create_loader(config, "test", ctx, test_set_mode=True, epochs_per_iter=1,
                                         max_examples=config.eval_max_examples)

    arc_scorer = ArcScorer.for_dataset(config.data_path)  # each evaluation votes and scores, on ARC datasets
    best = BestCheckpoint(config.checkpoint_path, resumed=bool(config.resume)) if arc_scorer and ctx.is_main else None

    open_run_folder(config, ctx, start)
    logger = None
    if ctx.is_main:
        logger = MetricsLogger(config.checkpoint_path, config.project_name, config.run_name, config.model_dump(),
                               total_steps=steps_to_run,
                               initial_step=progress.step,
                               tokens_per_step=config.global_batch_size * eval_metadata.seq_len)
        logger.log({"num_params": sum(p.numel() for p in state.base_model.parameters())}, step=progress.step)

    train_metrics = TrainMetrics()

    def save_state() -> str:
        return checkpointing.save_train_state(config.checkpoint_path, state, ctx, config.model_dump(), fingerprint)

    def interrupt(stop: StopRequest) -> TrainingInterrupted:
        log_train_metrics(train_metrics, logger, state, config, ctx)  # the steps since the last log
        path = save_state()
        if logger is not None:
            logger.close()
        name = signal.Signals(stop.signum).name
        return TrainingInterrupted(stop.signum, f"stopped by {name} at step {progress.step}; the training state is "
                                                f"in {path!r}")

    eval_metrics = None
    try:
        with StopRequest() as stop:
            for _ in range(progress.rounds_done, config.num_rounds):
                state.model.train()
                for batch_index, (_, batch, global_batch_size) in enumerate(train_loader):
                    if batch_index < progress.batches_done_in_round:
                        continue  # fast-forward to where a mid-round resume stopped
                    train_step(state, batch, config, ctx, global_batch_size, train_metrics)
                    progress.batches_done_in_round += 1
                    at_log_step = progress.step % config.log_interval == 0
                    if at_log_step:
                        log_train_metrics(train_metrics, logger, state, config, ctx)
                    if config.checkpoint_interval and progress.step % config.checkpoint_interval == 0:
                        save_state()
                    if stop.should_stop(ctx, synchronise=at_log_step):
                        raise interrupt(stop)
                progress.rounds_done += 1
                progress.batches_done_in_round = 0
                if progress.rounds_done == config.num_rounds:
                    log_train_metrics(train_metrics, logger, state, config, ctx)  # the last, partial log interval

                step = progress.step
                # A sample's outputs are neither saved nor voted on (no ARC scores, no step_best): they would
                # read as the whole split's.
                sample = sample_loader is not None and progress.rounds_done < config.num_rounds
                with state.ema.applied() if state.ema is not None else contextlib.nullcontext():
                    evaluation = evaluate_and_score(
                        state.model, sample_loader if sample else eval_loader, eval_metadata, ctx,
                        () if sample else config.eval_save_outputs,
                        outputs_path=run_folder.predictions_prefix(config.checkpoint_path, step),
                        routing_log_path=run_folder.routing_log_path(config.checkpoint_path, step),
                        arc_scorer=None if sample else arc_scorer)
                    eval_metrics, arc_figures = evaluation.metrics, arc_metrics(evaluation.arc_scores)
                    if ctx.is_main and (config.checkpoint_every_eval or progress.rounds_done == config.num_rounds):
                        run_folder.save_model_weights(config.checkpoint_path, step, state.model.state_dict())
                    if best is not None and arc_figures:
                        best.consider(min(step, state.total_steps), arc_figures, state.model.state_dict)
                if logger is not None and eval_metrics is not None:
                    logger.log({**flatten_eval_metrics(eval_metrics, sample), **arc_figures},
                               step=min(step, state.total_steps))
                    logger.progress.write(format_evaluation(min(step, state.total_steps), eval_metrics, arc_figures,
                                                            sample))
                save_state()
                if stop.should_stop(ctx, synchronise=True):
                    raise interrupt(stop)
    except BaseException:
        if logger is not None:
            logger.end_progress_line()  # so that the error printed next is a line of its own
        raise
    if logger is not None:
        logger.close()
    return FinishedRun(config.checkpoint_path, min(progress.step, state.total_steps), eval_metrics)
