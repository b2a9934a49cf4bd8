"""Run folders: the config file, reference-compatible `step_N` weights, and the full training state for resume
(gathered from every process, written by rank 0, each component saving and loading its own state dict).

Every file is written to a temporary name and renamed into place, so a crash never leaves a torn file.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
import yaml

from models.config_validation import ConfigError
from training.distributed import DistributedContext
from training.train_state import TrainState

CONFIG_FILE = "all_config.yaml"
TRAIN_STATE_FILE = "train_state.pt"


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path to write; it replaces `path` only if the block succeeds."""
    tmp_path = f"{path}.tmp"
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_torch_save(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp_path:
        torch.save(obj, tmp_path)


def write_jsonl(path: str, rows: List[dict]) -> None:
    with atomic_path(path) as tmp_path, open(tmp_path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def write_config(run_dir: str, config_dict: Dict[str, Any]) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with atomic_path(os.path.join(run_dir, CONFIG_FILE)) as tmp_path, open(tmp_path, "w") as f:
        yaml.safe_dump(config_dict, f, sort_keys=True)


def read_config(run_dir: str) -> Dict[str, Any]:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a run folder holds all_config.yaml beside its step_N files")
    with open(path) as f:
        return yaml.safe_load(f)


def save_model_weights(run_dir: str, step: int, model_state: Dict[str, torch.Tensor]) -> str:
    """Write `step_<step>`: the model's state dict, loadable by the reference release."""
    path = os.path.join(run_dir, f"step_{step}")
    atomic_torch_save(model_state, path)
    return path


def _gather_to_main(obj: Any, ctx: DistributedContext) -> Optional[List[Any]]:
    if ctx.world_size == 1:
        return [obj]
    gathered = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def save_train_state(run_dir: str, state: TrainState, ctx: DistributedContext) -> None:
    """Write `train_state.pt`: the shared state plus every rank's own, all that resume needs to continue exactly.

    Every rank must call it (the per-rank states are gathered); rank 0 writes.
    """
    per_rank = _gather_to_main(state.rank_state_dict(ctx.device), ctx)
    if ctx.is_main:
        atomic_torch_save({**state.state_dict(), "world_size": ctx.world_size, "per_rank": per_rank},
                          os.path.join(run_dir, TRAIN_STATE_FILE))


def restore_train_state(resume: str, state: TrainState, ctx: DistributedContext) -> None:
    """Load `resume` (a run folder or its train_state.pt) into `state`, this rank's own state included."""
    saved = torch.load(resolve_resume_path(resume), map_location="cpu", weights_only=False)
    if saved["world_size"] != ctx.world_size:
        raise ConfigError(f"resume: the state was saved by {saved['world_size']} processes; "
                          f"run with the same number ({ctx.world_size} now)")
    state.load_state_dict(saved)
    state.load_rank_state_dict(saved["per_rank"][ctx.rank], ctx.device)


def resolve_resume_path(resume: str) -> str:
    """Accept a run folder (holding train_state.pt) or the state file itself."""
    path = os.path.join(resume, TRAIN_STATE_FILE) if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume: no training state at {path}")
    return path
