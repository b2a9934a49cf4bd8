"""Starting a new run from another run's weights (`init_from`): the network's weights as they are, and the
puzzle embedding's rows matched to this dataset's puzzles by identifier name, since two datasets number
their puzzles differently (a puzzle's row is its identifier id)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from command_line import MissingInputError
from dataset.format import IDENTIFIERS_FILE, read_identifier_list, read_identifiers_if_present
from models.checkpoint import CheckpointError, load_model_weights, puzzle_embedding_key
from models.config_validation import ConfigError
from training import run_folder
from training.ema import WeightEMA


@dataclass
class InitializedFrom:
    """Where a new run's weights came from and how its puzzle-embedding rows were filled."""
    path: str  # the weights file read
    copied_rows: int  # rows taken from the checkpoint
    new_rows: int  # rows of puzzles the checkpoint does not have: the model's own initial values
    by_name: bool  # rows matched by identifier name (else by index, the sizes being equal)

    def summary(self) -> str:
        how = "matched by identifier name" if self.by_name else "taken by index (no identifier list)"
        return (f"init_from {self.path}: puzzle-embedding rows {how}: {self.copied_rows} copied, "
                f"{self.new_rows} new")


def checkpoint_weights(path: str, model: nn.Module) -> Dict[str, torch.Tensor]:
    """The weights a checkpoint's run evaluated: a step_N file's, or a train_state.pt's (its weight average,
    for a run with ema=true, as its step_N files hold)."""
    checkpoint = run_folder.read_evaluated_weights(path)
    if checkpoint.weight_average is None:
        return checkpoint.weights
    return {**checkpoint.weights, **WeightEMA.named_average(model, checkpoint.weight_average)}


def checkpoint_identifiers(path: str, identifiers_file: Optional[str]) -> Optional[List[str]]:
    """The identifier names of the checkpoint's dataset: `init_from_identifiers`, else the list its run folder
    keeps beside it; None when neither exists."""
    if identifiers_file is not None:
        return read_identifier_list(identifiers_file, ConfigError)
    return run_folder.read_identifiers(os.path.dirname(os.path.abspath(path)))


def dataset_identifiers(data_path: str, num_rows: int) -> Optional[List[str]]:
    names = read_identifiers_if_present(data_path)
    if names is not None and len(names) != num_rows:
        raise ConfigError(f"data_path: {os.path.join(data_path, IDENTIFIERS_FILE)} lists {len(names)} identifiers, "
                          f"but the dataset has {num_rows} (num_puzzle_identifiers)")
    return names


def matched_rows(saved: torch.Tensor, fresh: torch.Tensor, saved_names: List[str],
                 names: List[str]) -> Tuple[torch.Tensor, int]:
    """The table for `names`: each name's row from `saved` (rows named `saved_names`) where it has one, else
    its row of `fresh`, which is filled in place (the table can be gigabytes); and the number of rows taken
    from `saved`. A name listed twice in `saved_names` takes its first row."""
    saved_row = {}
    for row, name in enumerate(saved_names):
        saved_row.setdefault(name, row)
    rows = [(row, saved_row[name]) for row, name in enumerate(names) if name in saved_row]
    table = fresh.detach()
    if rows:
        new_index, saved_index = (torch.tensor(index) for index in zip(*rows))
        table[new_index.to(table.device)] = saved[saved_index].to(table.device, table.dtype)
    return table, len(rows)


def init_from_checkpoint(model: nn.Module, init_from: str, identifiers_file: Optional[str],
                         data_path: str) -> InitializedFrom:
    """Load the weights of `init_from` (a step_N file, a train_state.pt or a run folder: its latest weights)
    into `model`, the new run's freshly initialised model. Every weight but the puzzle embedding must have
    the model's shape; the embedding's rows are matched by name to the dataset's identifiers."""
    if not os.path.exists(init_from):
        raise MissingInputError(f"init_from: {init_from} not found")
    path = run_folder.latest_weights_path(init_from)
    weights = checkpoint_weights(path, model)
    key = puzzle_embedding_key(model)
    copied, by_name = 0, False
    if key is not None and key in weights:
        saved, fresh = weights[key], model.state_dict()[key]
        if saved.shape[1:] != fresh.shape[1:]:
            raise CheckpointError(f"init_from {path}: {key} has shape {tuple(saved.shape)} in the checkpoint and "
                                  f"{tuple(fresh.shape)} in the model")
        saved_names = checkpoint_identifiers(path, identifiers_file)
        names = dataset_identifiers(data_path, len(fresh))
        if saved_names is not None and len(saved_names) != len(saved):
            source = identifiers_file or run_folder.identifiers_path(os.path.dirname(os.path.abspath(path)))
            raise ConfigError(f"init_from: {source} lists {len(saved_names)} identifiers, but the puzzle embedding "
                              f"of {path} has {len(saved)} rows")
        if saved_names is not None and names is not None:
            table, copied = matched_rows(saved, fresh, saved_names, names)
            weights, by_name = dict(weights, **{key: table}), True
        elif len(saved) != len(fresh):
            missing = "this dataset has no identifiers.json" if saved_names is not None else (
                "it has no identifiers.json beside it to match them by name; give its dataset's list with "
                "init_from_identifiers=PATH/identifiers.json")
            raise ConfigError(f"init_from {path}: its puzzle embedding has {len(saved)} rows and this dataset "
                              f"{len(fresh)} identifiers, and {missing}")
        else:
            copied = len(saved)
    try:
        load_model_weights(model, weights)
    except CheckpointError as e:
        raise CheckpointError(f"init_from {path}: {e}") from None
    rows = len(model.state_dict()[key]) if key is not None else 0
    return InitializedFrom(path, copied, rows - copied, by_name)
