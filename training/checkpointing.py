"""Run folders: the config file, reference-compatible `step_N` weights, and the full training state for resume.

Every file is written to a temporary name and renamed into place, so a crash never leaves a torn file.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Dict, Iterator, List

import torch
import yaml

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


def save_train_state(run_dir: str, state: Dict[str, Any]) -> str:
    path = os.path.join(run_dir, TRAIN_STATE_FILE)
    atomic_torch_save(state, path)
    return path


def resolve_resume_path(resume: str) -> str:
    """Accept a run folder (holding train_state.pt) or the state file itself."""
    path = os.path.join(resume, TRAIN_STATE_FILE) if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume: no training state at {path}")
    return path


def load_train_state(resume: str) -> Dict[str, Any]:
    return torch.load(resolve_resume_path(resume), map_location="cpu", weights_only=False)

