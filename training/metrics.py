"""Metric accumulation: device-side sums over steps (training) or test batches (evaluation), reduced across
processes only when reported."""
from __future__ import annotations

import enum
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from models.losses import StepMetrics
from models.routing import RoutingOutput
from training.arc_score import ArcScores
from training.distributed import DistributedContext

# Prefix of the training figures' logged names (`train/<name>`).
TRAIN_PREFIX = "train/"
# Prefix of the logged names of an evaluation on a sample of the test split (`eval_max_examples`):
# `sample/<set>/<name>`; an evaluation of the whole split logs `<set>/<name>`.
EVAL_SAMPLE_PREFIX = "sample/"

# The logged name of each RoutingDiagnostics field: the names runs have always logged, so older run
# folders still plot and sweep.
_ROUTING_LOGGED_NAMES = {"entropy_mean": "routing_entropy_mean", "entropy_std": "routing_entropy_std",
                         "herfindahl": "head_herfindahl", "top1_share": "top1_share", "temperature": "temperature",
                         "slow_updates": "n_H_updates", "ponder_cost": "ponder_cost"}


def routing_metric_name(diagnostic: str, level: str) -> str:
    """The name a level's routing diagnostic (a `RoutingDiagnostics` field) is logged under, after `train/`:
    routing_metric_name("top1_share", "H") == "routing/top1_share_H"."""
    return f"routing/{_ROUTING_LOGGED_NAMES[diagnostic]}_{level}"


def arc_metrics(scores: Optional[ArcScores]) -> Dict[str, float]:
    """An evaluation's ARC scores by their logged names, `arc/<figure>` (`arc/pass@2`); none for other tasks."""
    return {f"arc/{figure}": value for figure, value in scores.figures().items()} if scores is not None else {}


# The logged figure `step_best` is chosen by (the highest; the first of equals).
BEST_CHECKPOINT_METRIC = "arc/pass@2"


def logged_routing_levels(names: Iterable[str], diagnostic: str) -> List[str]:
    """The levels (sorted) whose `diagnostic` is among the logged `names` (after `train/`): the inverse of
    routing_metric_name, so readers of logs need not know which levels a model routes."""
    prefix = routing_metric_name(diagnostic, "")
    return sorted(name[len(prefix):] for name in names if name.startswith(prefix) and len(name) > len(prefix))


# Routing diagnostics that count over a step's sequences (not means): a step's micro-batches add up.
_ROUTING_COUNTS = ("slow_updates", "ponder_cost")


class Reduction(enum.Enum):
    PER_SEQUENCE = "per_sequence"  # a sum over finished sequences: divided by their count
    PER_EXAMPLE = "per_example"  # a sum over the batch: divided by the global batch size and the steps
    PER_STEP = "per_step"  # a count per step and process: averaged over both
    MEAN = "mean"  # already a mean per call (step, or micro-batch) and process: averaged over both


def named_step_metrics(metrics: StepMetrics, routing: Optional[RoutingOutput]
                       ) -> List[Tuple[str, torch.Tensor, Reduction]]:
    """A training step's figures as (logged name, value, reduction), names as the reference logs them."""
    named = [("count", metrics.count, Reduction.PER_SEQUENCE)]
    named += [(name, value, Reduction.PER_SEQUENCE) for name, value in metrics.per_sequence.items()]
    named += [(name, value, Reduction.PER_EXAMPLE) for name, value in metrics.losses.items()]
    if routing is not None:
        named += [(routing_metric_name(diagnostic, level), value,
                   Reduction.PER_STEP if diagnostic in _ROUTING_COUNTS else Reduction.MEAN)
                  for level, level_routing in routing.levels.items()
                  for diagnostic, value in level_routing.diagnostics.figures().items()]
    return sorted(named, key=lambda item: item[0])  # the same order on every rank


class TrainMetrics:
    """Sums step metrics on the device and reduces them only when logged, so steps never wait for the host."""

    def __init__(self):
        self.names: Optional[List[str]] = None
        self.reductions: Optional[List[Reduction]] = None
        self.total: Optional[torch.Tensor] = None
        self.calls = 0
        self.micro_batches = 1

    def add(self, metrics: StepMetrics, routing: Optional[RoutingOutput], micro_batches: int = 1) -> None:
        """Add one step's figures or, with gradient accumulation, one of its `micro_batches` parts' (added
        once per part): sums and counts add up over a step's parts, means are averaged over them."""
        named = named_step_metrics(metrics, routing)
        if self.names is None:
            self.names = [name for name, _, _ in named]
            self.reductions = [reduction for _, _, reduction in named]
        values = torch.stack([value.to(torch.float64) for _, value, _ in named])
        self.total = values if self.total is None else self.total + values
        self.calls += 1
        self.micro_batches = micro_batches

    def reduce(self, ctx: DistributedContext, global_batch_size: int) -> Optional[Dict[str, float]]:
        """Rank 0 gets `train/<name>` figures since the last call (other ranks get them too, unreduced).

        The per-sequence figures (accuracies, steps) are averages over the sequences that halted: in an
        interval where none did, they are left out, since no sequence stands behind them (not 0.0)."""
        if self.total is None:
            return None
        total = self.total
        if ctx.world_size > 1:
            dist.reduce(total, dst=0)
        values = dict(zip(self.names, total.tolist()))
        calls, self.total, self.calls = self.calls, None, 0
        steps = calls // self.micro_batches
        divisors = {Reduction.PER_SEQUENCE: values["count"],
                    Reduction.PER_EXAMPLE: global_batch_size * steps,
                    Reduction.PER_STEP: steps * ctx.world_size,
                    Reduction.MEAN: calls * ctx.world_size}
        return {TRAIN_PREFIX + name: values[name] / divisors[reduction]
                for name, reduction in zip(self.names, self.reductions) if divisors[reduction]}


class EvalMetrics:
    """Per-set sums of an evaluation's metrics; every figure is reported per counted sequence, as the
    reference reports evaluation losses too."""

    def __init__(self, set_names: Sequence[str], device: torch.device):
        self.set_index = {name: i for i, name in enumerate(set_names)}
        self.device = device
        self.names: Optional[List[str]] = None
        self.sums: Optional[torch.Tensor] = None

    def add(self, set_name: str, metrics: StepMetrics) -> None:
        values = {"count": metrics.count, **metrics.per_sequence, **metrics.losses}
        if self.names is None:
            self.names = sorted(values)
            self.sums = torch.zeros(len(self.set_index), len(self.names), dtype=torch.float64, device=self.device)
        self.sums[self.set_index[set_name]] += torch.stack([values[name].to(torch.float64) for name in self.names])

    def reduce(self, ctx: DistributedContext) -> Optional[Dict[str, Dict[str, float]]]:
        """`{set: {name: value}}` on rank 0 (None elsewhere, or when nothing was evaluated)."""
        if self.sums is None:
            return None
        if ctx.world_size > 1:
            dist.reduce(self.sums, dst=0)
        if not ctx.is_main:
            return None
        result = {}
        for set_name, i in self.set_index.items():
            values = dict(zip(self.names, self.sums[i].tolist()))
            count = values.pop("count")
            result[set_name] = {k: v / count if count else float("nan") for k, v in values.items()}
        return result
