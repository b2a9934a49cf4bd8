"""The training config: reference keys and defaults plus this project's additions, validated at start-up."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Union

import coolname
import pydantic
import pydantic_core

from models import ArchConfig, parse_arch
from models.config_validation import ConfigError, validate_config
from training.run_folder import CONFIG_FILE, read_config, run_folder_of
from training.evaluation import SAVABLE_OUTPUTS
from training.routing_schedule import RoutingScheduleConfig


# Each rank seeds torch with seed + rank, which must stay below 2**64.
MAX_SEED = 2 ** 63 - 1


class PretrainConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    # Reference keys (names and defaults as in the reference `all_config.yaml`).
    arch: ArchConfig
    data_path: str
    global_batch_size: int = pydantic.Field(gt=0)
    epochs: int = pydantic.Field(gt=0)
    lr: float = pydantic.Field(ge=0)
    lr_min_ratio: float = pydantic.Field(ge=0, le=1)
    lr_warmup_steps: int = pydantic.Field(ge=0)
    weight_decay: float = pydantic.Field(ge=0)
    beta1: float = pydantic.Field(ge=0, lt=1)
    beta2: float = pydantic.Field(ge=0, lt=1)
    puzzle_emb_lr: float = pydantic.Field(ge=0)
    puzzle_emb_weight_decay: float = pydantic.Field(ge=0)
    project_name: Optional[str] = None
    run_name: Optional[str] = None
    checkpoint_path: Optional[str] = None
    seed: int = pydantic.Field(0, ge=0, le=MAX_SEED)
    checkpoint_every_eval: bool = False
    eval_interval: Optional[int] = pydantic.Field(None, gt=0)
    eval_save_outputs: List[str] = []

    # Additions.
    routing: RoutingScheduleConfig = pydantic.Field(default_factory=RoutingScheduleConfig,
                                                    description="training of the routing controllers (arch.routing)")
    compile: bool = pydantic.Field(True, description="torch.compile the model on CUDA (DISABLE_COMPILE=1 also turns it off)")
    fast_path: bool = pydantic.Field(True, description="on CUDA with compile on, without routing: replay the "
                                                       "compiled steps as CUDA graphs (training/fast_path.py); "
                                                       "false runs the plain path")
    log_interval: int = pydantic.Field(10, gt=0, description="steps between logged (host-synchronised) metrics")
    checkpoint_interval: Optional[int] = pydantic.Field(None, gt=0, description="steps between full training-state saves, besides each evaluation")
    resume: Optional[str] = pydantic.Field(None, description="run folder or training-state file to continue from "
                                                             "(in that folder, unless checkpoint_path names another)")
    resume_allow_changes: List[str] = pydantic.Field(
        [], description="config keys (or key prefixes such as `routing`) a resumed run may change on purpose")
    overwrite_run: bool = pydantic.Field(False, description="start a new run in a folder that already holds one, "
                                                            "deleting that run's files first")
    ema: bool = pydantic.Field(False, description="keep an exponential moving average of the weights; evaluation "
                                                  "and step_N use it")
    ema_rate: float = pydantic.Field(0.999, gt=0, lt=1, description="the average's decay per step")
    plots: bool = pydantic.Field(True, description="draw the run's curves into its folder when it finishes "
                                                   "(puzzle_tools/plot_run.py; needs matplotlib)")
    data_build_command: Optional[str] = pydantic.Field(None, description="command that builds data_path; shown when it is missing")
    auto_build_data: bool = pydantic.Field(False, description="run data_build_command when data_path is missing")
    # Smaller GPUs and cheaper evaluation (README: "One GPU, small GPUs").
    grad_accum_steps: Union[int, str] = pydantic.Field(
        1, description="micro-batches per optimizer step (the same update, less memory); auto: the fewest whose "
                       "first step fits in GPU memory")
    eval_max_examples: Optional[int] = pydantic.Field(
        None, gt=0, description="evaluate a fixed sample of this many test examples between rounds; the last "
                                "evaluation covers the whole test split (null: every evaluation does)")

    # Fine-tuning: a new run from another run's weights (training/init_from.py).
    init_from: Optional[str] = pydantic.Field(None, description="a step_N file, a train_state.pt or a run folder "
                                                                "(its latest weights): a new run starts from those "
                                                                "weights, with fresh optimizers at step 0; ignored "
                                                                "on resume")
    init_from_identifiers: Optional[str] = pydantic.Field(
        None, description="the identifiers.json of init_from's dataset, for a checkpoint without one beside it")
    freeze_weights: bool = pydantic.Field(False, description="train only the puzzle embedding")

    @pydantic.field_validator("eval_save_outputs")
    @classmethod
    def _known_outputs(cls, names: List[str]) -> List[str]:
        unknown = [name for name in names if name not in SAVABLE_OUTPUTS]
        if unknown:
            raise ValueError(f"unknown output(s) {', '.join(unknown)}; choose from {', '.join(SAVABLE_OUTPUTS)}")
        return names

    @pydantic.field_validator("grad_accum_steps", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any) -> Union[int, str]:
        if value != "auto" and not (type(value) is int and value > 0):
            raise pydantic_core.PydanticCustomError("positive_or_auto", "must be a positive integer or auto")
        return value

    @pydantic.model_validator(mode="after")
    def _grad_accum_steps_divide_batch(self) -> "PretrainConfig":
        if self.grad_accum_steps != "auto" and self.global_batch_size % self.grad_accum_steps != 0:
            raise ValueError(f"grad_accum_steps ({self.grad_accum_steps}) must divide global_batch_size "
                             f"({self.global_batch_size})")
        return self

    @pydantic.model_validator(mode="after")
    def _eval_interval_divides_epochs(self) -> "PretrainConfig":
        if self.eval_interval is not None and self.epochs % self.eval_interval != 0:
            raise ValueError(f"eval_interval ({self.eval_interval}) must divide epochs ({self.epochs})")
        return self

    @pydantic.model_validator(mode="after")
    def _identifiers_need_init_from(self) -> "PretrainConfig":
        if self.init_from_identifiers is not None and self.init_from is None:
            raise ValueError("init_from_identifiers names the identifiers of init_from's checkpoint: set init_from")
        return self

    @property
    def epochs_per_round(self) -> int:
        """Epochs between evaluations."""
        return self.eval_interval if self.eval_interval is not None else self.epochs

    @property
    def num_rounds(self) -> int:
        return self.epochs // self.epochs_per_round


# Keys of the TRM release's all_config.yaml that only its training reads (its ARC evaluator, when evaluation
# starts, weight freezing, the checkpoint it started from).
RELEASE_TRAINING_ONLY_KEYS = ("evaluators", "min_eval_interval", "freeze_weights", "load_checkpoint")


def from_release_run_config(values: Dict[str, Any]) -> Dict[str, Any]:
    """The config of a TRM release run, as its `all_config.yaml` holds it, in this project's keys for evaluating
    its checkpoints: the dataset it evaluated on (`data_paths_test`, else `data_paths`, one folder) as
    `data_path`, and the keys only its training reads left out. Configs in this project's keys (ours, the
    HRM reference's) come back unchanged."""
    if "data_paths" not in values:
        return values
    values = {k: v for k, v in values.items() if k not in RELEASE_TRAINING_ONLY_KEYS}
    train_paths, test_paths = values.pop("data_paths"), values.pop("data_paths_test", None) or []
    key, paths = ("data_paths_test", test_paths) if test_paths else ("data_paths", train_paths)
    if not isinstance(paths, list) or len(paths) != 1:
        raise ConfigError(f"invalid config: {key}: evaluation reads one dataset folder; the run names {paths!r}")
    values["data_path"] = paths[0]
    return values


def check_moved_routing_keys(values: Dict[str, Any]) -> None:
    """Routing's training settings once lived under `arch.routing`; name their new place."""
    arch_routing = (values.get("arch") or {}).get("routing") or {}
    moved = [key for key in arch_routing if key in RoutingScheduleConfig.model_fields]
    if moved:
        raise ConfigError("invalid config: " + "; ".join(
            f"arch.routing.{key} is a training setting now: use routing.{key}" for key in moved))


def load_config(values: Dict[str, Any]) -> PretrainConfig:
    """Validate a raw config (from Hydra or an `all_config.yaml`), its arch into an ArchConfig, and fill in
    names.

    Any unknown, missing or ill-typed key raises ConfigError naming it.
    """
    check_moved_routing_keys(values)
    # The arch block's class depends on its name, so it is validated first, by that class.
    if isinstance(values.get("arch"), dict):
        values = dict(values, arch=parse_arch(values["arch"]))
    config = validate_config(PretrainConfig, values, prefix="config")
    if config.resume and (config.project_name is None or config.run_name is None):
        # A resumed run keeps its names, as its folder's config records them.
        run_dir = run_folder_of(config.resume)
        if os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
            saved = read_config(run_dir)
            config.project_name = config.project_name or saved.get("project_name")
            config.run_name = config.run_name or saved.get("run_name")
    if config.project_name is None:
        config.project_name = f"{os.path.basename(os.path.normpath(config.data_path)).capitalize()} ACT-torch"
    if config.run_name is None:
        config.run_name = f"{config.arch.name.split('@')[-1]} {coolname.generate_slug(2)}"
    if config.checkpoint_path is None:
        # A resumed run continues in its own folder; a new one gets the reference's folder name.
        config.checkpoint_path = (run_folder_of(config.resume) if config.resume else
                                  os.path.join("checkpoints", config.project_name, config.run_name))
    return config
