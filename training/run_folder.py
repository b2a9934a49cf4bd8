"""The run folder `checkpoints/<project>/<run>/`: the names of its files, and reading and writing each of them.

While a run writes into it, it holds `run.lock`, locked by that run's process. It holds `all_config.yaml`
(the run's config), `identifiers.json` (its dataset's puzzle identifier names: which puzzle each row of the
weights' puzzle embedding is), `step_N` (the model's state dict, loadable by the reference
release), `train_state.pt` (all that resume needs), `metrics.jsonl` (one row per log), the saved evaluation
outputs `step_N_all_preds.<rank>` and the routing logs `routing_N.jsonl`; on ARC datasets also `step_best`
(the weights of the best evaluation by pass@2) and `best.json` (which step that was, and its scores). Every file is written under a
temporary name and renamed into place, so a crash never leaves a torn file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
import yaml

from command_line import MissingInputError, UserError
from dataset.atomic_file import FileWriteError, append_text, atomic_path, write_text
from dataset.format import IDENTIFIERS_FILE, read_identifier_list
from dataset.text_file import read_json, read_text, read_yaml
from models.checkpoint import CheckpointError, strip_compiled_prefix
from training.train_state import TrainProgress

__all__ = ["FileWriteError", "append_text", "atomic_path", "write_text"]  # the atomic writers, for training and the tools

CONFIG_FILE = "all_config.yaml"
TRAIN_STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = "run.lock"
BEST_WEIGHTS_FILE = "step_best"
BEST_RECORD_FILE = "best.json"
# What a new run deletes from a folder it may overwrite: the files runs write, and temporary leftovers.
RUN_FILE_PATTERNS = ("step_*", TRAIN_STATE_FILE, CONFIG_FILE, METRICS_FILE, IDENTIFIERS_FILE, BEST_RECORD_FILE,
                     "routing_*.jsonl", "*.tmp")
# The files that make a folder hold a run (one that died before its first save left neither).
RUN_MARKER_PATTERNS = ("step_*", TRAIN_STATE_FILE)


class RunFolderError(UserError):
    """A run-folder file cannot be created or read; the message names the file and the reason."""


def weights_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, f"step_{step}")


def save_tensors(path: str, obj: Any) -> str:
    """`torch.save` under a temporary name, renamed into place when whole."""
    with atomic_path(path) as tmp_path:
        torch.save(obj, tmp_path)
    return path


def predictions_prefix(run_dir: str, step: int) -> str:
    """Saved evaluation outputs go to `<prefix>.<rank>`."""
    return os.path.join(run_dir, f"step_{step}_all_preds")


def write_predictions(prefix: str, rank: int, outputs: Dict[str, torch.Tensor]) -> str:
    """Write one process's saved evaluation outputs (name -> rows) to `<prefix>.<rank>`."""
    return save_tensors(f"{prefix}.{rank}", outputs)


def routing_log_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, f"routing_{step}.jsonl")


def is_train_state_file(path: str) -> bool:
    return os.path.basename(path) == TRAIN_STATE_FILE


def run_folder_of(resume: str) -> str:
    """The run folder of `resume=` (the folder itself, or the folder holding the state file)."""
    return resume if os.path.isdir(resume) else os.path.dirname(os.path.abspath(resume))


def resolve_resume_path(resume: str) -> str:
    """Accept a run folder (holding train_state.pt) or the state file itself."""
    path = train_state_path(resume) if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise MissingInputError(f"resume: no training state at {path}")
    return path


def make_run_folder(run_dir: str) -> None:
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------------------
# run.lock

class RunFolderLock:
    """An exclusive lock on a run folder for the life of a run, so two runs never write into one folder.

    It is an `flock` on `run.lock`, which holds the holder's process id for the refusal message. The kernel
    drops the lock when its process ends, however it ends: a lock left by a killed run never blocks. Forked
    children (data-loader workers) close their copy, so they never keep the lock past the run. Release
    removes the lock file, and the folder too if the lock made it and nothing else was written there."""

    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK_FILE)
        self._made_folder = not os.path.isdir(run_dir)
        make_run_folder(run_dir)
        self._fd: Optional[int] = self._lock()
        os.register_at_fork(after_in_child=self._close_in_child)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def _lock(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunFolderError(f"cannot create the lock file {self.path}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderError(f"the run folder {self.run_dir} is in use by another run (process {holder} "
                                     f"holds {LOCK_FILE}); wait for it to end, or choose another "
                                     f"checkpoint_path") from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed that file on release: lock the one at the path now

    def _close_in_child(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the parent's descriptor keeps the lock
            self._fd = None

    def release(self) -> None:
        if self._fd is None:
            return
        os.remove(self.path)  # while still locked, so no other run holds the file being removed
        os.close(self._fd)
        self._fd = None
        if self._made_folder:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                os.rmdir(self.run_dir)

    def __enter__(self) -> "RunFolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------------------
# all_config.yaml

def write_config(run_dir: str, config_dict: Dict[str, Any]) -> None:
    make_run_folder(run_dir)
    write_text(os.path.join(run_dir, CONFIG_FILE), yaml.safe_dump(config_dict, sort_keys=True))


def read_config(run_dir: str) -> Dict[str, Any]:
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise MissingInputError(f"{path} not found: a run folder holds all_config.yaml beside its step_N files")
    values = read_yaml(path, RunFolderError)
    if not isinstance(values, dict):
        raise RunFolderError(f"{path} does not hold a config (got {type(values).__name__})")
    return values


# ---------------------------------------------------------------------------------------------------------
# identifiers.json

def identifiers_path(run_dir: str) -> str:
    return os.path.join(run_dir, IDENTIFIERS_FILE)


def write_identifiers(run_dir: str, names: List[str]) -> None:
    """Record the dataset's identifier names (id -> name), as its own identifiers.json lists them."""
    write_text(identifiers_path(run_dir), json.dumps(list(names)))


def read_identifiers(run_dir: str) -> Optional[List[str]]:
    """The identifier names a run recorded; None for a run folder without them (older runs, the reference's)."""
    path = identifiers_path(run_dir)
    return read_identifier_list(path, RunFolderError) if os.path.isfile(path) else None


# ---------------------------------------------------------------------------------------------------------
# metrics.jsonl and the other JSON-lines logs

def write_jsonl(path: str, rows: List[dict]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_metrics(path: str) -> List[dict]:
    """The rows of a metrics.jsonl, blank lines skipped.

    Rows are appended whole, newline last, so a crash can tear only an unterminated last line: that one is
    skipped. Any other line that is not a JSON object is a RunFolderError naming the line."""
    rows = []
    lines = read_text(path, RunFolderError).splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines) and not line.endswith("\n")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if torn:
                continue
            raise RunFolderError(f"{path}, line {number}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise RunFolderError(f"{path}, line {number}: expected a JSON object")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# step_N weights

def save_model_weights(run_dir: str, step: int, model_state: Dict[str, torch.Tensor]) -> str:
    """Write `step_<step>`: the model's state dict, loadable by the reference release."""
    return save_tensors(weights_path(run_dir, step), model_state)


def latest_weights_path(path: str) -> str:
    """A weights file as given; for a run folder, its latest weights: the `step_N` of the highest N (what a
    finished run leaves), else its `train_state.pt` (a run stopped before its last evaluation)."""
    if not os.path.isdir(path):
        return path
    steps = [int(name[len("step_"):]) for name in os.listdir(path) if re.fullmatch(r"step_[0-9]+", name)]
    if steps:
        return weights_path(path, max(steps))
    if os.path.isfile(train_state_path(path)):
        return train_state_path(path)
    raise MissingInputError(f"{path} holds no weights (no step_N file and no {TRAIN_STATE_FILE})")


def _first_line(error: Exception) -> str:
    detail = str(error).strip()
    return detail.splitlines()[0][:120] if detail else "no detail"


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """The model weights of a `step_N` file (a plain state dict, ours or the reference's) or of a run's
    `train_state.pt`, on the CPU and without the compile prefix. A missing, truncated or foreign file is a
    one-line error."""
    if not os.path.isfile(path):
        raise MissingInputError(f"checkpoint {path} not found")
    if is_train_state_file(path):
        return strip_compiled_prefix(read_train_state(path).model)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file: zip, pickle and EOF errors vary with the damage
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return strip_compiled_prefix(loaded)


@dataclass
class EvaluatedWeights:
    """What evaluating a checkpoint (a `step_N` file or a run's `train_state.pt`) loads, and where its
    outputs go."""
    weights: Dict[str, torch.Tensor]  # the model's state dict, without the compile prefix
    # The weight average of an ema=true run's train_state.pt (training.ema.WeightEMA's state): what that
    # run evaluated and wrote to step_N. None for step_N files, which already hold it.
    weight_average: Optional[Dict[str, Any]]
    predictions_prefix: str  # `<run>/step_N_all_preds`, N the weights' step


def read_evaluated_weights(path: str) -> EvaluatedWeights:
    if not is_train_state_file(path):
        return EvaluatedWeights(read_weights(path), None, f"{path}_all_preds")
    if not os.path.isfile(path):
        raise MissingInputError(f"checkpoint {path} not found")
    saved = read_train_state(path)
    return EvaluatedWeights(strip_compiled_prefix(saved.model), saved.ema,
                            predictions_prefix(os.path.dirname(path), saved.progress.step))


# ---------------------------------------------------------------------------------------------------------
# step_best and best.json

def save_best_weights(run_dir: str, record: Dict[str, Any], model_state: Dict[str, torch.Tensor]) -> str:
    """Write `step_best` (a state dict, as step_N) and then `best.json`, `record`: its step and scores."""
    path = save_tensors(os.path.join(run_dir, BEST_WEIGHTS_FILE), model_state)
    write_text(os.path.join(run_dir, BEST_RECORD_FILE), json.dumps(record) + "\n")
    return path


def read_best_record(run_dir: str) -> Optional[Dict[str, Any]]:
    """`best.json`: the step and scores of `step_best`; None before a run has one."""
    path = os.path.join(run_dir, BEST_RECORD_FILE)
    if not os.path.isfile(path):
        return None
    record = read_json(path, RunFolderError)
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise RunFolderError(f"{path}: expected a JSON object with the step of {BEST_WEIGHTS_FILE}")
    return record


# ---------------------------------------------------------------------------------------------------------
# train_state.pt

# 1: the fields of SavedTrainState. Files without a version (0) hold the config and the dataset's
# fingerprint under "run", and the process count as "world_size".
# 2: `routing.encoder_clip` clips every model when set; before, it clipped only models with routing
# controllers (and defaulted to 1.0), so an older state of a model without them is read with the clip it
# ran with, null.
TRAIN_STATE_VERSION = 2
_LEGACY_KEYS = ("model", "optimizers", "progress", "run", "world_size", "per_rank")


@dataclass
class SavedTrainState:
    """The contents of `train_state.pt`: all that resume needs to continue a run exactly."""
    model: Dict[str, torch.Tensor]  # the plain model's state dict
    optimizers: List[Dict[str, Any]]  # each optimizer's state dict, in the model's group order
    progress: TrainProgress
    per_rank: List[Dict[str, Any]]  # each process's own state (its ACT carry, random generators), by rank
    config: Dict[str, Any]  # the run's config, as all_config.yaml holds it
    data_fingerprint: Optional[str]  # the dataset's contents, checked on resume
    ema: Optional[Dict[str, Any]] = None  # the weight average, with ema=true
    version: int = TRAIN_STATE_VERSION

    @property
    def world_size(self) -> int:
        """The number of processes of the saving run."""
        return len(self.per_rank)


def train_state_path(run_dir: str) -> str:
    return os.path.join(run_dir, TRAIN_STATE_FILE)


def write_train_state(run_dir: str, saved: SavedTrainState) -> str:
    fields = {f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)}
    return save_tensors(train_state_path(run_dir), dict(fields, progress=dataclasses.asdict(saved.progress)))


def read_train_state(path: str) -> SavedTrainState:
    """Read a `train_state.pt` (of this version or of an older one without a version field) on the CPU."""
    try:
        values = torch.load(path, map_location="cpu", weights_only=False)  # our own format: more than tensors
    except Exception as e:  # truncated or not a torch file: pickle, zip and EOF errors vary by damage
        raise RunFolderError(f"{path} cannot be read as a training state ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(values, dict):
        raise RunFolderError(f"{path} is not a training state (it holds a {type(values).__name__})")
    version = values.get("version", 0)
    if version > TRAIN_STATE_VERSION:
        raise RunFolderError(f"{path} is a training state of a newer version ({version}; this one reads up to "
                             f"{TRAIN_STATE_VERSION})")
    required = _LEGACY_KEYS if version == 0 else [f.name for f in dataclasses.fields(SavedTrainState)
                                                  if f.default is dataclasses.MISSING]
    missing = [key for key in required if key not in values]
    if missing:
        raise RunFolderError(f"{path} is not a training state of this version (missing {', '.join(missing)})")
    if version == 0:
        run = values["run"]
        values = {key: value for key, value in values.items() if key not in ("run", "world_size")}
        values.update(config=run["config"], data_fingerprint=run.get("data_fingerprint"), version=0)
    if version < 2:
        values["config"] = _encoder_clip_as_applied(values["config"])
    progress = TrainProgress(**{name: int(value) for name, value in values.pop("progress").items()})
    return SavedTrainState(progress=progress, **values)


def _encoder_clip_as_applied(config: Dict[str, Any]) -> Dict[str, Any]:
    """A config saved before version 2 with the encoder clip it ran with: none without routing controllers."""
    routing = config.get("routing")
    controller = ((config.get("arch") or {}).get("routing") or {}).get("controller", "none")
    if not isinstance(routing, dict) or routing.get("encoder_clip") is None or controller != "none":
        return config
    return dict(config, routing=dict(routing, encoder_clip=None))
