"""Train HRM: `python pretrain.py data=sudoku`, or `torchrun --nproc-per-node 8 pretrain.py data=maze`.

Every argument is a Hydra override of the config in config/ (`lr=3e-4 arch.L_cycles=8`, `data=maze`,
`arch=hrm_poh`, `+new_key=value`), composed as the reference's `@hydra.main` composes them. Any mistake,
in an override or in a value, stops with one `error:` line naming it.
"""
import argparse
import logging
import os
import re
import shlex
import sys
from typing import Any, Dict, List

import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from command_line import OneLineArgumentParser, run_cli
from dataset.atomic_file import FileWriteError
from models.config_validation import ConfigError
from puzzle_tools.tool_io import ToolInputError
from training import run_folder
from training.config import load_config
from training.distributed import setup_distributed, teardown_distributed
from training.loop import FinishedRun, run_training
from training.preemption import TrainingInterrupted

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
CONFIG_NAME = "cfg_pretrain"


def one_line(message: str) -> str:
    """Hydra's and OmegaConf's messages on one line, without their debugging hints."""
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith(("Set the environment variable", "Config search path")):
            break
        if line and not line.startswith(("full_key:", "object_type=", "reference_type=")):
            kept.append(line.rstrip("."))
    return "; ".join(kept)


def unparsable_override(overrides: List[str]) -> str:
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException:
            return override
    return " ".join(overrides)


def compose_config(overrides: List[str]) -> Dict[str, Any]:
    """The training config from config/ and the command line's overrides, as plain values."""
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            config = compose(config_name=CONFIG_NAME, overrides=overrides)
        return OmegaConf.to_container(config, resolve=True)
    except MissingConfigException as e:  # e.g. data=mazze
        options = f"; choose from {', '.join(e.options)}" if e.options else ""
        raise ConfigError(f"{str(e).splitlines()[0]}{options}") from None
    except OverrideParseException as e:  # e.g. lr=[1,
        raise ConfigError(f"cannot parse the override {unparsable_override(overrides)!r}: {one_line(str(e))}") from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(one_line(str(e))) from None


def run_summary(run: FinishedRun, draw_plots: bool) -> str:
    """The closing lines of a run: where its weights, metrics and plots are (paths quoted: names have spaces)."""
    run_dir = run.run_dir
    lines = [f"run finished at step {run.step}: {shlex.quote(run_dir)}",
             f"  weights: {shlex.quote(run_folder.weights_path(run_dir, run.step))}",
             f"  metrics: {shlex.quote(os.path.join(run_dir, run_folder.METRICS_FILE))}"]
    if not draw_plots:
        lines.append(f"  plots:   python puzzle_tools/plot_run.py {shlex.quote(run_dir)}")
        return "\n".join(lines)
    # Imported here: matplotlib takes half a second to load, which runs with plots=false need not pay.
    from puzzle_tools.plot_run import plot_runs
    try:
        plots = plot_runs([run_dir], run_dir)
        lines.append(f"  plots:   {' '.join(shlex.quote(path) for path in plots)}")
    except (ToolInputError, FileWriteError) as e:  # matplotlib missing, or the folder not writable
        lines.append(f"  plots:   not drawn ({e}); later: python puzzle_tools/plot_run.py {shlex.quote(run_dir)}")
    return "\n".join(lines)


# Overrides a resumed run must not repeat: it continues in its own folder, over its own run.
NOT_REPEATED_ON_RESUME = ("resume", "checkpoint_path", "overwrite_run")


def hydra_quoted(value: str) -> str:
    """`value` as a double-quoted Hydra string, which may hold spaces, non-ASCII letters and `=,[]'`: quotes
    are escaped, and so are the backslashes before a quote or the closing quote (Hydra's only escapes)."""
    escaped = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ('\\"' if m.group(2) else ""), value)
    return f'"{escaped}"'


def resume_command(run_dir: str, overrides: List[str]) -> str:
    """The shell command that continues the run in `run_dir`: the run's own overrides (the config is checked
    against the saved one), with resume= in place of where it was written."""
    kept = [override for override in overrides  # `key=value`, `+key=value` or `++key=value`
            if override.split("=", 1)[0].lstrip("+~") not in NOT_REPEATED_ON_RESUME]
    return shlex.join(["python", "pretrain.py", *kept, f"resume={hydra_quoted(run_dir)}"])


def parse_overrides(argv: List[str] = None) -> List[str]:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="a Hydra override, e.g. lr=3e-4 or data=maze")
    return parser.parse_args(argv).overrides


def main(argv: List[str] = None) -> int:
    overrides = parse_overrides(argv)
    ctx = setup_distributed()
    # Start-up lines (the attention backend, ...) as the reference logs them, once: other ranks log warnings only.
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING, format="%(message)s", stream=sys.stdout)
    try:
        config = load_config(compose_config(overrides))
        if ctx.world_size > 1:
            # Run names are random: every rank takes rank 0's.
            names = [(config.project_name, config.run_name, config.checkpoint_path)]
            dist.broadcast_object_list(names, src=0)
            config.project_name, config.run_name, config.checkpoint_path = names[0]
        if ctx.is_main:
            print(f"[{ctx.world_size} process(es), device {ctx.device}] run folder: {config.checkpoint_path}", flush=True)
        finished = run_training(config, ctx)
        if finished is not None and ctx.is_main:
            print(run_summary(finished, config.plots), flush=True)
    except TrainingInterrupted as e:  # not a mistake: the state is saved, and the shell sees the signal
        if ctx.is_main:
            print(f"{e}; continue with: {resume_command(config.checkpoint_path, overrides)}", file=sys.stderr)
        return e.exit_code
    finally:
        teardown_distributed()
    return 0


def cli() -> None:
    """Console-script entry point (`hrm-pretrain`)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
