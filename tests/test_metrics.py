"""Training figures as logged: per-sequence averages only where sequences stand behind them."""
import torch

from models.losses import StepMetrics
from training.distributed import DistributedContext
from training.metrics import TrainMetrics, logged_routing_levels, routing_metric_name

CPU = DistributedContext(rank=0, world_size=1, device=torch.device("cpu"))


def step_metrics(count, accuracy_sum, lm_loss_sum):
    return StepMetrics(count=torch.tensor(float(count)),
                       per_sequence={"accuracy": torch.tensor(accuracy_sum), "steps": torch.tensor(3.0 * count)},
                       losses={"lm_loss": torch.tensor(lm_loss_sum)})


def test_an_interval_in_which_no_sequence_halted_logs_no_per_sequence_figure():
    metrics = TrainMetrics()
    metrics.add(step_metrics(0, 0.0, 8.0), None)
    metrics.add(step_metrics(0, 0.0, 4.0), None)
    assert metrics.reduce(CPU, global_batch_size=4) == {"train/lm_loss": 1.5}  # no accuracy of 0.0


def test_per_sequence_figures_average_over_the_sequences_that_halted():
    metrics = TrainMetrics()
    metrics.add(step_metrics(0, 0.0, 8.0), None)
    metrics.add(step_metrics(2, 1.5, 4.0), None)
    assert metrics.reduce(CPU, global_batch_size=4) == {"train/count": 1.0, "train/accuracy": 0.75,
                                                        "train/steps": 3.0, "train/lm_loss": 1.5}


def test_the_routed_levels_are_read_back_from_the_logged_names():
    names = [routing_metric_name("top1_share", level) for level in ("L", "H")] + [
        routing_metric_name("entropy_mean", "L"), routing_metric_name("entropy_std", "H"), "lm_loss",
        "routing/top1_share_"]
    assert logged_routing_levels(names, "top1_share") == ["H", "L"]
    assert logged_routing_levels(names, "entropy_mean") == ["L"]  # entropy_std's name does not count
    assert logged_routing_levels(names, "herfindahl") == []
