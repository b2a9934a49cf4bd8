"""Evaluate a checkpoint: `python evaluate.py --checkpoint checkpoints/<project>/<run>/step_N`.

Reads `all_config.yaml` beside the checkpoint (ours, the HRM reference's or the TRM release's), runs every
test example for `halt_max_steps` steps and prints per-set metrics as JSON on stdout. Also runs under torchrun.
The reference form `python evaluate.py checkpoint=PATH` works too, and a run's `train_state.pt` is
accepted as the checkpoint.

For ARC datasets (those with `test_puzzles.json`) the predictions voting needs are saved by default as
`step_N_all_preds.<rank>` beside the checkpoint (`--no-save-predictions` turns that off, and
`--save-predictions` turns it on for any task); `--arc-vote` then scores them with puzzle_tools/arc_vote.py
(and `--submission FILE` writes the ARC Prize submission.json).
"""
import argparse
import contextlib
import json
import os
import sys
from typing import List, Optional

import torch.distributed as dist

from command_line import MissingInputError, OneLineArgumentParser, exit_status, run_cli
from dataset.format import metadata_file, read_metadata
from models.checkpoint import load_model_weights
from models.config_validation import ConfigError
from training import run_folder
from training.run_folder import FileWriteError
from training.build import create_loader, create_model
from training.config import from_release_run_config, load_config
from training.distributed import setup_distributed, teardown_distributed
from training.ema import WeightEMA
from training.evaluation import PREDICTION_OUTPUTS, SAVABLE_OUTPUTS, evaluate_with_outputs
from training.fast_path import prepare_model

DEFAULT_VOTE_KS = (1, 2, 10, 100, 1000)


def parse_args(argv):
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a step_N file of a run folder (ours or the reference's), or its "
                                             "train_state.pt")
    parser.add_argument("--data-path", help="evaluate on this dataset folder instead of the run's data_path")
    parser.add_argument("--save-outputs", default="",
                        help="comma-separated outputs to save beside the checkpoint as step_N_all_preds.<rank>: any of "
                             + ", ".join(SAVABLE_OUTPUTS) + " (preds: the argmax tokens)")
    parser.add_argument("--save-predictions", action=argparse.BooleanOptionalAction, default=None,
                        help="also save what scoring and voting need (" + ", ".join(PREDICTION_OUTPUTS) +
                             "); default: on for ARC datasets, off otherwise")
    parser.add_argument("--arc-vote", action="store_true",
                        help="after evaluating, vote over the augmented versions and print pass@K and the ARC Prize "
                             "score under the key arc_vote (needs an ARC dataset)")
    parser.add_argument("--submission", metavar="FILE",
                        help="with --arc-vote, also write the ARC Prize submission.json here")
    parser.add_argument("--vote-k", type=int, nargs="+", default=list(DEFAULT_VOTE_KS), metavar="K",
                        help=f"the K of pass@K with --arc-vote (default {' '.join(map(str, DEFAULT_VOTE_KS))})")
    parser.add_argument("--global-batch-size", type=int, help="override the run's global batch size (memory)")
    parser.add_argument("--no-compile", action="store_true", help="do not torch.compile on CUDA")
    # The reference's Hydra-style `checkpoint=PATH` is accepted as a positional argument.
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key != "checkpoint" or not value:
            parser.error(f"unrecognised argument {item!r}; use --checkpoint PATH")
        args.checkpoint = value
    if not args.checkpoint:
        parser.error("--checkpoint PATH is required")
    if args.global_batch_size is not None and args.global_batch_size <= 0:
        parser.error(f"--global-batch-size must be positive, got {args.global_batch_size}")
    if args.submission and not args.arc_vote:
        parser.error("--submission needs --arc-vote")
    if any(k <= 0 for k in args.vote_k):
        parser.error("--vote-k values must be positive")
    args.save_outputs = [name for name in args.save_outputs.split(",") if name]
    unknown = [name for name in args.save_outputs if name not in SAVABLE_OUTPUTS]
    if unknown:
        parser.error(f"--save-outputs: unknown output(s) {', '.join(unknown)}; choose from {', '.join(SAVABLE_OUTPUTS)}")
    return args


def find_data_path(data_path: str, run_dir: str) -> str:
    """The run's dataset folder: `data_path` as recorded (relative to where training ran), else the same
    relative path from each folder above the run folder (runs live in `checkpoints/<project>/<run>`)."""
    if os.path.isabs(data_path) or os.path.isdir(data_path):
        return data_path
    tried = [os.path.abspath(data_path)]
    folder = os.path.abspath(run_dir)
    while os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
        candidate = os.path.join(folder, data_path)
        if os.path.isdir(candidate):
            return candidate
        tried.append(candidate)
    raise ConfigError(f"the run's data_path {data_path!r} was not found (tried {', '.join(tried[:4])}"
                      f"{' and more' if len(tried) > 4 else ''}); pass --data-path DIR")


def check_same_task(run_data_path: Optional[str], data_path: str) -> None:
    """Refuse a dataset whose sequences or vocabulary differ from those the run trained on."""
    if run_data_path is None or not os.path.isfile(metadata_file(run_data_path, "test")):
        return  # the run's own dataset is gone: the weights' shapes are the remaining check
    trained, given = read_metadata(run_data_path, "test"), read_metadata(data_path, "test")
    for field in ("seq_len", "vocab_size"):
        if getattr(trained, field) != getattr(given, field):
            raise ConfigError(f"--data-path {data_path}: {field} is {getattr(given, field)}, but the model was "
                              f"trained on {getattr(trained, field)} ({run_data_path}): another task")


def outputs_to_save(args, data_path: str) -> List[str]:
    is_arc = os.path.isfile(os.path.join(data_path, "test_puzzles.json"))
    save_predictions = args.save_predictions if args.save_predictions is not None else is_arc or args.arc_vote
    extra = [name for name in PREDICTION_OUTPUTS if save_predictions and name not in args.save_outputs]
    return [*args.save_outputs, *extra]


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ctx = setup_distributed()

    def run() -> None:
        if not os.path.isfile(args.checkpoint):
            raise MissingInputError(f"checkpoint {args.checkpoint} not found")
        run_dir = os.path.dirname(os.path.abspath(args.checkpoint))
        values = from_release_run_config(run_folder.read_config(run_dir))
        run_data_path = None
        try:
            run_data_path = find_data_path(str(values.get("data_path")), run_dir)
        except ConfigError:
            if not args.data_path:
                raise
        values["data_path"] = args.data_path or run_data_path
        # A resumed or interrupted run's config names its state; evaluation needs neither, and runs whole batches.
        values.update(resume=None, checkpoint_path=run_dir, grad_accum_steps=1)
        if args.global_batch_size:
            values["global_batch_size"] = args.global_batch_size
        if args.no_compile:
            values["compile"] = False
        config = load_config(values)
        checkpoint = run_folder.read_evaluated_weights(args.checkpoint)
        loader, metadata = create_loader(config, "test", ctx, test_set_mode=True, epochs_per_iter=1)
        if args.data_path:
            check_same_task(run_data_path, args.data_path)
        model = create_model(config, metadata, ctx)
        load_model_weights(model, checkpoint.weights)
        average = None
        if checkpoint.weight_average is not None:
            # The training state of an ema=true run: evaluate the average, as its evaluations and step_N did.
            average = WeightEMA(model, config.ema_rate)
            average.load_state_dict(checkpoint.weight_average)
            if ctx.is_main:
                print(f"evaluating the weight average (ema) of {args.checkpoint}, as step_N files hold it",
                      file=sys.stderr)
        save_outputs = outputs_to_save(args, config.data_path)
        prefix = checkpoint.predictions_prefix
        with average.applied() if average is not None else contextlib.nullcontext():
            evaluation = evaluate_with_outputs(prepare_model(model, config, ctx.device), loader, metadata, ctx,
                                               save_outputs)
        metrics = evaluation.metrics
        if ctx.is_main and not args.arc_vote:
            print(json.dumps(metrics, indent=2), flush=True)  # before the predictions: a full disk keeps them
        try:
            if save_outputs:
                run_folder.write_predictions(prefix, ctx.rank, evaluation.outputs)
        except FileWriteError:
            if ctx.is_main and args.arc_vote:
                print(json.dumps(metrics, indent=2), flush=True)  # the figures, without the vote that needed the files
            raise
        if save_outputs and ctx.is_main:
            print(f"saved {', '.join(save_outputs)} to {prefix}.<rank> ({ctx.world_size} file(s))", file=sys.stderr)
        if args.arc_vote and ctx.world_size > 1:
            dist.barrier()  # every rank's predictions are written
        if ctx.is_main and args.arc_vote:
            from puzzle_tools.arc_vote import vote
            votes = vote(config.data_path, prefix, args.vote_k, args.submission)
            print(json.dumps(dict(metrics, arc_vote=votes), indent=2))

    try:
        return exit_status(run)
    finally:
        teardown_distributed()


def cli() -> None:
    """Console-script entry point (`hrm-evaluate`)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
