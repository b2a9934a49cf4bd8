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

from command_line import MissingInputError, UserError
from models import checkpoint as model_checkpoint
from models.config_validation import ConfigError
from training.distributed import DistributedContext
from training.train_state import TrainState, join_and_split_carries

CONFIG_FILE = "all_config.yaml"
TRAIN_STATE_FILE = model_checkpoint.TRAIN_STATE_FILE


class RunFolderError(UserError):
    """A run-folder file cannot be written or read; the message names the file and the reason."""


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path to write; it replaces `path` only if the block succeeds.

    A failed write (read-only folder, full disk, a path under a file) is a one-line RunFolderError and
    leaves the previous `path`, if any, untouched."""
    tmp_path = f"{path}.tmp"
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        raise RunFolderError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def atomic_torch_save(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp_path:
        torch.save(obj, tmp_path)


def write_jsonl(path: str, rows: List[dict]) -> None:
    with atomic_path(path) as tmp_path, open(tmp_path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def make_run_folder(run_dir: str) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None


def write_config(run_dir: str, config_dict: Dict[str, Any]) -> None:
    make_run_folder(run_dir)
    with atomic_path(os.path.join(run_dir, CONFIG_FILE)) as tmp_path, open(tmp_path, "w") as f:
        yaml.safe_dump(config_dict, f, sort_keys=True)


def read_config(run_dir: str) -> Dict[str, Any]:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise MissingInputError(f"{path} not found: a run folder holds all_config.yaml beside its step_N files")
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise RunFolderError(f"{path} cannot be read ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise RunFolderError(f"{path} does not hold a config (got {type(values).__name__})")
    return values


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


def save_train_state(run_dir: str, state: TrainState, ctx: DistributedContext, run_info: Dict[str, Any]) -> str:
    """Write `train_state.pt`: the shared state, every rank's own state and `run_info` (the config and the
    dataset's fingerprint, checked on resume): all that resume needs to continue exactly.

    Every rank must call it (the per-rank states are gathered); rank 0 writes, atomically.
    """
    per_rank = _gather_to_main(state.rank_state_dict(ctx.device), ctx)
    path = os.path.join(run_dir, TRAIN_STATE_FILE)
    if ctx.is_main:
        atomic_torch_save({**state.state_dict(), "run": run_info, "world_size": ctx.world_size,
                           "per_rank": per_rank}, path)
    return path


def load_saved_state(resume: str) -> Dict[str, Any]:
    """Read a training state (`resume=`: a run folder or its train_state.pt) on the CPU."""
    path = resolve_resume_path(resume)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a torch file: pickle, zip and EOF errors vary by damage
        raise ConfigError(f"resume: {path} cannot be read as a training state "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    missing = [key for key in ("model", "optimizers", "progress", "run", "world_size", "per_rank")
               if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise ConfigError(f"resume: {path} is not a training state of this version (missing {', '.join(missing)})")
    return saved


def restore_train_state(saved: Dict[str, Any], state: TrainState, ctx: DistributedContext) -> None:
    """Load a saved training state into `state`, this rank's own state included.

    The process count may differ from the saving run's: the ACT carries are joined and re-split (each
    rank holds a contiguous slice of the global batch), and rank r takes saved rank r's random generators
    (a new rank beyond the saved count keeps its fresh seed, so its halting exploration draws differ)."""
    state.load_state_dict(saved)
    saved_world_size = saved["world_size"]
    per_rank = saved["per_rank"]
    if saved_world_size == ctx.world_size:
        state.load_rank_state_dict(per_rank[ctx.rank], ctx.device)
        return
    carries = [rank_state["carry"] for rank_state in per_rank]
    carry = None if any(c is None for c in carries) else join_and_split_carries(carries, ctx.world_size, ctx.rank)
    own = per_rank[ctx.rank] if ctx.rank < saved_world_size else state.rank_state_dict(ctx.device)
    state.load_rank_state_dict(dict(own, carry=carry), ctx.device)


def run_folder_of(resume: str) -> str:
    """The run folder of `resume=` (the folder itself, or the folder holding the state file)."""
    return resume if os.path.isdir(resume) else os.path.dirname(os.path.abspath(resume))


def resolve_resume_path(resume: str) -> str:
    """Accept a run folder (holding train_state.pt) or the state file itself."""
    path = os.path.join(resume, TRAIN_STATE_FILE) if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise MissingInputError(f"resume: no training state at {path}")
    return path
