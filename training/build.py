"""Builds what a run needs from its config: the dataset check, data loaders, the model and its compilation.

Shared by training (`pretrain.py`) and evaluation (`evaluate.py`), so both see data and model alike.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import List, Optional

import torch.distributed as dist
from torch import nn

import dataset
import dataset.format
from dataset.format import DatasetFormatError, PuzzleDatasetMetadata
from dataset.puzzle_dataset import create_dataloader, train_batches
from models import build_model
from models.config_validation import ConfigError
from training.config import PretrainConfig
from training.distributed import DistributedContext


# The folder holding the `dataset` package: the repository, or site-packages in an installed copy.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(dataset.__file__)))


def build_command_argv(command: str) -> List[str]:
    """`data_build_command` as arguments for Python; a relative script path (`dataset/build_maze_dataset.py`)
    not found from the working directory is taken from the project, so runs started elsewhere can build."""
    argv = shlex.split(command)
    if argv and argv[0].endswith(".py") and not os.path.isabs(argv[0]) and not os.path.exists(argv[0]):
        argv[0] = os.path.join(PROJECT_ROOT, argv[0])
    return argv


def ensure_dataset(config: PretrainConfig, ctx: DistributedContext) -> None:
    """Check that data_path holds a dataset; build it first when the config asks to."""
    marker = dataset.format.metadata_file(config.data_path, "train")
    if not os.path.isfile(marker) and config.auto_build_data and config.data_build_command:
        if ctx.is_main:
            print(f"building the dataset: {config.data_build_command}", flush=True)
            built = subprocess.run([sys.executable, *build_command_argv(config.data_build_command)])
            if built.returncode != 0:
                raise ConfigError(f"building the dataset failed (exit code {built.returncode}): "
                                  f"python {config.data_build_command}")
        if ctx.world_size > 1:
            dist.barrier()
    if not os.path.isfile(marker):
        command = config.data_build_command or f"dataset/build_<task>_dataset.py --output-dir {config.data_path}"
        raise ConfigError(f"data_path {config.data_path!r} holds no dataset (missing {marker}); "
                          f"build it with: python {command}")


def _dataset_error(config: PretrainConfig, error: DatasetFormatError) -> ConfigError:
    hint = f"; rebuild it with: python {config.data_build_command}" if config.data_build_command else ""
    return ConfigError(f"data_path: {error}{hint}")


def read_metadata(config: PretrainConfig, split: str) -> PuzzleDatasetMetadata:
    try:
        return dataset.format.read_metadata(config.data_path, split)
    except DatasetFormatError as e:
        raise _dataset_error(config, e) from None


def check_splits_agree(config: PretrainConfig, train: PuzzleDatasetMetadata) -> None:
    """The model is sized by the train split (`train`, its metadata): the test split must have its sequence
    length, and tokens and puzzle identifiers within its vocabulary and identifier count, or evaluation fails
    after a round."""
    test = read_metadata(config, "test")
    problems = []
    if test.seq_len != train.seq_len:
        problems.append(f"seq_len {test.seq_len}, the train split's {train.seq_len}")
    if test.vocab_size > train.vocab_size:
        problems.append(f"vocab_size {test.vocab_size}, more than the train split's {train.vocab_size}")
    if test.num_puzzle_identifiers > train.num_puzzle_identifiers:
        problems.append(f"num_puzzle_identifiers {test.num_puzzle_identifiers}, more than the train split's "
                        f"{train.num_puzzle_identifiers}")
    if problems:
        hint = f"; rebuild it with: python {config.data_build_command}" if config.data_build_command else ""
        raise ConfigError(f"data_path: the test split does not fit the train split "
                          f"({dataset.format.metadata_file(config.data_path, 'test')}: {'; '.join(problems)}){hint}")


def count_train_batches(config: PretrainConfig, at_most: int) -> int:
    """The batches the run's rounds of the train split yield, up to `at_most` (`train_batches`)."""
    try:
        return train_batches(config.data_path, "train", config.seed, config.global_batch_size, config.epochs_per_round,
                             config.num_rounds, at_most=at_most)
    except DatasetFormatError as e:
        raise _dataset_error(config, e) from None


def create_loader(config: PretrainConfig, split: str, ctx: DistributedContext, test_set_mode: bool,
                  epochs_per_iter: int, start_round: int = 0, max_examples: Optional[int] = None):
    """This rank's loader of `split` and its metadata (`max_examples`: a test pass walks a fixed sample of
    that many examples); a bad dataset folder is a ConfigError with a hint."""
    if config.global_batch_size % ctx.world_size != 0:
        raise ConfigError(f"invalid config: global_batch_size ({config.global_batch_size}) must be divisible by "
                          f"the number of processes ({ctx.world_size})")
    try:
        return create_dataloader(config.data_path, split, seed=config.seed, global_batch_size=config.global_batch_size,
                                 test_set_mode=test_set_mode, epochs_per_iter=epochs_per_iter, rank=ctx.rank,
                                 world_size=ctx.world_size, start_round=start_round, max_examples=max_examples)
    except DatasetFormatError as e:
        raise _dataset_error(config, e) from None


def create_model(config: PretrainConfig, metadata: PuzzleDatasetMetadata, ctx: DistributedContext) -> nn.Module:
    """The loss-head-wrapped model for this dataset, sized for this rank's micro-batches, on the device."""
    micro_batch = config.global_batch_size // ctx.world_size // config.grad_accum_steps
    return build_model(config.arch, batch_size=micro_batch, seq_len=metadata.seq_len,
                       vocab_size=metadata.vocab_size,
                       num_puzzle_identifiers=metadata.num_puzzle_identifiers).to(ctx.device)
