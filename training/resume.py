"""Where a run lives and how it continues: refusing to write a new run over an old one, checking a resumed
run's config against the saved one, and carrying `metrics.jsonl` on without duplicated steps."""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, List, Optional, Tuple

import pydantic

from dataset.common import dataset_fingerprint
from models import parse_arch
from models.checkpoint import strip_compiled_prefix
from models.config_validation import ConfigError
from training import run_folder
from training.config import PretrainConfig
from training.run_folder import SavedTrainState
from training.train_state import TrainState

# Config keys that never change what a run computes: where it is written, how often it logs and saves,
# whether it draws plots, and how it is compiled. `epochs` may grow to extend a run (README: "Resume");
# `data_path` may move, as long as the dataset's contents (its fingerprint) stay the same.
# `eval_interval` may change only as far as the epochs per round (which order the data) stay the same.
# `init_from` only starts a new run: a resumed one takes its weights from its training state.
# `grad_accum_steps` changes only rounding (the carry is saved whole); `eval_max_examples` only the
# evaluations between rounds.
KEYS_FREE_TO_CHANGE = {"project_name", "run_name", "checkpoint_path", "resume", "resume_allow_changes",
                       "overwrite_run", "compile", "fast_path", "plots", "log_interval", "checkpoint_interval",
                       "checkpoint_every_eval", "eval_save_outputs", "data_build_command", "auto_build_data", "epochs", "eval_interval",
                       "data_path", "init_from", "init_from_identifiers", "grad_accum_steps", "eval_max_examples"}


def existing_run_files(run_dir: str) -> List[str]:
    """The files that make `run_dir` hold a run: its training state and `step_N` weights."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(path for pattern in run_folder.RUN_MARKER_PATTERNS
                  for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)))


def refuse_existing_run(config: PretrainConfig) -> None:
    """Refuse a folder that already holds a run, unless `overwrite_run=true` (its files are then cleared by
    `clear_run_files` once every input of the new run has been read)."""
    found = existing_run_files(config.checkpoint_path)
    if found and not config.overwrite_run:
        raise ConfigError(f"checkpoint_path {config.checkpoint_path!r} already holds a run "
                          f"({os.path.basename(found[0])}); continue it with resume={config.checkpoint_path!r}, "
                          f"or start afresh there with overwrite_run=true (deletes its run files)")


def clear_run_files(run_dir: str) -> None:
    """Delete an earlier run's files from `run_dir`. A folder with run files but neither a training state nor
    weights holds no run (one that died before its first save): its leftover logs go too, so the new run's
    metrics.jsonl starts empty."""
    for pattern in run_folder.RUN_FILE_PATTERNS:
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            try:
                os.remove(path)
            except OSError as e:  # a folder in a run file's place, a read-only folder
                raise run_folder.RunFolderError(f"cannot delete {path} of the earlier run in {run_dir}: "
                                                f"{e.strerror or e}") from None


def _flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _with_typed_arch(saved: Dict[str, Any]) -> Dict[str, Any]:
    """The saved config with its arch as the running config holds it (defaults filled in), so an arch saved
    with fewer keys compares equal to the same arch now. An arch this version no longer reads (a key moved
    since) stays as saved: the comparison then names the keys that differ."""
    try:
        return dict(saved, arch=parse_arch(saved.get("arch") or {}).model_dump())
    except ConfigError:
        return saved


def _with_defaults(saved: Dict[str, Any]) -> Dict[str, Any]:
    """The saved config with the top-level keys added since it was saved at their defaults (what the run
    used then), so a run saved before a key existed compares equal to the same run now."""
    defaults = {name: field.get_default(call_default_factory=True) for name, field in PretrainConfig.model_fields.items()
                if not field.is_required()}
    return {**{name: value.model_dump() if isinstance(value, pydantic.BaseModel) else value
               for name, value in defaults.items()}, **saved}


def _allowed(key: str, allowed: List[str]) -> bool:
    return any(key == entry or key.startswith(f"{entry}.") for entry in allowed)


def compare_configs(saved: Dict[str, Any], config: PretrainConfig, saved_fingerprint: Optional[str],
                    fingerprint: str) -> Dict[str, Tuple[Any, Any]]:
    """The deliberate changes (key -> (saved, new)) of a resumed run's config; any other change of a key that
    alters the run's arithmetic is a ConfigError naming each key with both values."""
    old, new = _flatten(_with_typed_arch(_with_defaults(saved))), _flatten(config.model_dump())
    # A misspelt entry would allow nothing and say nothing.
    unknown = [entry for entry in config.resume_allow_changes
               if not any(_allowed(key, [entry]) for key in (*old, *new, "data_path", "eval_interval"))]
    if unknown:
        raise ConfigError(f"resume_allow_changes: {', '.join(map(repr, unknown))} names no config key "
                          f"(give keys such as lr or arch.hidden_size, or a prefix such as routing)")
    differences = {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
                   if old.get(key) != new.get(key) and key not in KEYS_FREE_TO_CHANGE}
    saved_epochs_per_round = saved.get("eval_interval") or saved.get("epochs")
    if saved_epochs_per_round != config.epochs_per_round:
        # Each round's data order is drawn for its epochs; other rounds would reorder the whole run.
        differences["eval_interval"] = (saved.get("eval_interval"), config.eval_interval)
        if saved.get("eval_interval") is None:
            raise ConfigError(f"resume: the saved run is one round of {saved_epochs_per_round} epochs "
                              f"(eval_interval unset); to extend it, add eval_interval={saved_epochs_per_round}")
    if saved_fingerprint is not None and saved_fingerprint != fingerprint:
        # The dataset's contents changed (rebuilt with other settings, or another dataset).
        differences["data_path"] = (f"{saved.get('data_path')} (contents {saved_fingerprint})",
                                    f"{config.data_path} (contents {fingerprint})")
    refused = {key: values for key, values in differences.items()
               if not _allowed(key, config.resume_allow_changes)}
    if refused:
        listed = "; ".join(f"{key}: saved {saved_value!r}, now {new_value!r}"
                           for key, (saved_value, new_value) in refused.items())
        keys = ",".join(refused)
        raise ConfigError(f"resume: the config differs from the saved run's ({listed}); to change "
                          f"{'it' if len(refused) == 1 else 'them'} on purpose add resume_allow_changes=[{keys}]")
    return differences


def _first_misfit(saved: SavedTrainState, state: TrainState) -> Optional[str]:
    """The first saved tensor or optimizer group that has no place of its shape in this run's model."""
    saved_weights, weights = strip_compiled_prefix(saved.model), state.base_model.state_dict()
    for key in sorted(set(saved_weights) | set(weights)):
        if key not in weights:
            return f"{key} is saved but this model has none"
        if key not in saved_weights:
            return f"{key} is new in this model"
        if saved_weights[key].shape != weights[key].shape:
            return f"{key} has shape {tuple(saved_weights[key].shape)} saved, {tuple(weights[key].shape)} now"
    saved_groups = [[len(group["params"]) for group in optimizer["param_groups"]] for optimizer in saved.optimizers]
    groups = [[len(group["params"]) for group in optimizer.param_groups] for optimizer in state.optimizers]
    if saved_groups != groups:
        return f"the optimizers' parameter groups hold {saved_groups} tensors saved, {groups} now"
    return None


def check_weights_carry_over(saved: SavedTrainState, state: TrainState, changes: Dict[str, Tuple[Any, Any]]) -> None:
    """An architecture change allowed on resume (resume_allow_changes) must keep every weight's shape, or the
    saved weights cannot carry over: one line names the change and the first tensor that differs."""
    misfit = _first_misfit(saved, state)
    if misfit is None:
        return
    arch_changes = "; ".join(f"{key}: saved {old!r}, now {new!r}" for key, (old, new) in changes.items()
                             if key.startswith("arch."))
    raise ConfigError(f"resume: the saved weights cannot carry over to this architecture"
                      f"{f' ({arch_changes})' if arch_changes else ''}: {misfit}; resume without the change, "
                      f"or train this architecture in a new run")


def config_fingerprint(config: PretrainConfig) -> str:
    return dataset_fingerprint(config.data_path)


def continued_metrics_rows(source_dir: str, step: int, record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A resumed run's metrics.jsonl: the source run's rows up to `step` (later rows came from steps that
    are being run again), followed by `record`, the resume row."""
    source = os.path.join(source_dir, run_folder.METRICS_FILE)
    rows = [row for row in run_folder.read_metrics(source) if row.get("step", 0) <= step] if os.path.isfile(source) else []
    return rows + [record]
