"""Metric sinks of the main rank: Weights & Biases, `metrics.jsonl` in the run folder, and the progress bar."""
from __future__ import annotations

import json
import netrc
import os
import time
from typing import Any, Dict, Optional

import torch
import tqdm

from training.metrics import EVAL_SAMPLE_PREFIX
from training.run_folder import METRICS_FILE, FileWriteError, append_text


def _wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """`WANDB_MODE` when set; otherwise online if credentials exist, else offline (never a login prompt)."""
    return os.environ.get("WANDB_MODE") or ("online" if _wandb_credentials_present() else "offline")


def _to_number(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


class MetricsLogger:
    """Writes every logged figure to W&B and `metrics.jsonl`, and drives a tqdm bar with loss and steps/s.

    Each train log also gets steps/s, tokens/s (`tokens_per_step`: global batch x sequence length) and, on
    CUDA, the peak GPU memory so far (GiB, of this process)."""

    def __init__(self, run_dir: str, project: str, run_name: str, config: Dict[str, Any], total_steps: int,
                 initial_step: int = 0, tokens_per_step: int = 0):
        os.makedirs(run_dir, exist_ok=True)
        self.jsonl_path = os.path.join(run_dir, METRICS_FILE)
        self.wandb_run = None
        mode = wandb_mode()
        if mode != "disabled":
            import wandb
            try:
                self.wandb_run = wandb.init(project=project, name=run_name, config=config, mode=mode, dir=run_dir,
                                            settings=wandb.Settings(x_disable_stats=True, init_timeout=60))
            except Exception as e:  # an unreachable server must not stop training
                print(f"W&B unavailable ({type(e).__name__}: {e}); logging to {METRICS_FILE} only")
        self.progress = tqdm.tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True)
        self.last_time, self.last_step = time.perf_counter(), initial_step
        self.tokens_per_step = tokens_per_step

    def log(self, metrics: Dict[str, Any], step: int) -> None:
        metrics = {k: _to_number(v) for k, v in metrics.items()}
        now = time.perf_counter()
        if step > self.last_step and "train/lm_loss" in metrics:
            # Training-time figures of the interval since the last log: throughput and peak GPU memory.
            metrics["train/steps_per_second"] = (step - self.last_step) / (now - self.last_time)
            metrics["train/tokens_per_second"] = metrics["train/steps_per_second"] * self.tokens_per_step
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                metrics["train/peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
            self.last_time, self.last_step = now, step
            self.progress.set_postfix(loss=f"{metrics['train/lm_loss']:.4f}",
                                      steps_per_s=f"{metrics['train/steps_per_second']:.2f}")
        self.progress.update(step - self.progress.n)
        try:
            append_text(self.jsonl_path, json.dumps({"step": step, **metrics}) + "\n")  # a whole row or none
        except FileWriteError:
            self.end_progress_line()
            raise
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def end_progress_line(self) -> None:
        """Close the bar, ending its line, so that an error printed next is a line of its own."""
        self.progress.close()

    def close(self) -> None:
        self.progress.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


# The figures an evaluation summary shows, in this order (README: "Seeing results" explains each).
SUMMARY_COLUMNS = (("accuracy", "accuracy"), ("exact_accuracy", "exact"), ("steps", "ACT steps"),
                   ("q_halt_accuracy", "Q-halt acc."), ("lm_loss", "LM loss"))


def format_evaluation(step: int, metrics: Dict[str, Dict[str, float]],
                      arc_figures: Optional[Dict[str, float]] = None, sample: bool = False) -> str:
    """A compact table of one evaluation (`sample`: of a sample of the test split): a row per set, the
    summary columns; then the ARC scores, if any."""
    width = max(len("set"), *(len(name) for name in metrics))
    header = "  ".join([f"{'set':<{width}}", *(f"{title:>11}" for _, title in SUMMARY_COLUMNS)])
    rows = ["  ".join([f"{name:<{width}}", *(f"{values.get(key, float('nan')):>11.4f}" for key, _ in SUMMARY_COLUMNS)])
            for name, values in metrics.items()]
    if arc_figures:
        rows.append("  ".join(f"{name} {value:.4f}" for name, value in arc_figures.items()))
    title = f"evaluation at step {step}" + (" (eval_max_examples sample)" if sample else "")
    return "\n".join([title, header, *rows])


def flatten_eval_metrics(metrics: Optional[Dict[str, Dict[str, float]]], sample: bool = False) -> Dict[str, float]:
    """`{set: {name: value}}` -> `{"<set>/<name>": value}` as logged, or `sample/<set>/<name>` for an
    evaluation on a sample of the test split."""
    prefix = EVAL_SAMPLE_PREFIX if sample else ""
    return {f"{prefix}{set_name}/{name}": value
            for set_name, values in (metrics or {}).items() for name, value in values.items()}
