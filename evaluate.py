"""Evaluate a checkpoint: `python evaluate.py --checkpoint checkpoints/<project>/<run>/step_N`.

Reads `all_config.yaml` beside the checkpoint (ours or a reference run's), runs every test example for
`halt_max_steps` steps and prints per-set metrics as JSON on stdout. Also runs under torchrun.
The reference form `python evaluate.py checkpoint=PATH` works too.
"""
import argparse
import json
import os
import sys

from models.checkpoint import load_model_weights
from models.config_validation import ConfigError
from training import checkpointing
from training.config import load_config
from training.distributed import setup_distributed, teardown_distributed
from training.build import create_loader, create_model, maybe_compile
from training.evaluation import SAVABLE_OUTPUTS, evaluate


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a step_N file of a run folder (ours or the reference's)")
    parser.add_argument("--data-path", help="evaluate on this dataset folder instead of the run's data_path")
    parser.add_argument("--save-outputs", default="",
                        help="comma-separated outputs to save beside the checkpoint as step_N_all_preds.<rank>: any of "
                             + ", ".join(SAVABLE_OUTPUTS))
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
    args.save_outputs = [name for name in args.save_outputs.split(",") if name]
    unknown = [name for name in args.save_outputs if name not in SAVABLE_OUTPUTS]
    if unknown:
        parser.error(f"--save-outputs: unknown output(s) {', '.join(unknown)}; choose from {', '.join(SAVABLE_OUTPUTS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ctx = setup_distributed()
    try:
        if not os.path.isfile(args.checkpoint):
            raise FileNotFoundError(f"checkpoint {args.checkpoint} not found")
        values = checkpointing.read_config(os.path.dirname(os.path.abspath(args.checkpoint)))
        if args.data_path:
            values["data_path"] = args.data_path
        if args.global_batch_size:
            values["global_batch_size"] = args.global_batch_size
        if args.no_compile:
            values["compile"] = False
        config = load_config(values)
        loader, metadata = create_loader(config, "test", ctx, test_set_mode=True, epochs_per_iter=1)
        model = create_model(config, metadata, ctx)
        load_model_weights(model, args.checkpoint)
        metrics = evaluate(maybe_compile(model, config, ctx), loader, metadata, ctx, args.save_outputs,
                           outputs_path=f"{args.checkpoint}_all_preds")
        if ctx.is_main:
            print(json.dumps(metrics, indent=2))
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        teardown_distributed()
    return 0


def cli() -> None:
    """Console-script entry point (`hrm-evaluate`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
