"""The run's best weights on ARC: `step_best`, the weights of the evaluation with the highest pass@2 so far."""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import torch

from training import run_folder
from training.metrics import BEST_CHECKPOINT_METRIC


class BestCheckpoint:
    """Keeps `step_best` and `best.json` (its step and scores) in a run folder; a resumed run goes on from the
    best its folder records. Ties keep the earlier weights."""

    def __init__(self, run_dir: str, resumed: bool):
        self.run_dir = run_dir
        record = run_folder.read_best_record(run_dir) if resumed else None
        self.best: Optional[float] = None
        if record is not None:
            self.best = record.get(BEST_CHECKPOINT_METRIC)
            # Without its score, any later evaluation would replace step_best, better or not.
            if isinstance(self.best, bool) or not isinstance(self.best, (int, float)):
                raise run_folder.RunFolderError(
                    f"{os.path.join(run_dir, run_folder.BEST_RECORD_FILE)}: expected the number "
                    f"{BEST_CHECKPOINT_METRIC!r} of {run_folder.BEST_WEIGHTS_FILE}, found {self.best!r}")

    def consider(self, step: int, figures: Dict[str, float],
                 model_state: Callable[[], Dict[str, torch.Tensor]]) -> bool:
        """Write `model_state()` as step_best if `figures` (an evaluation's logged ARC figures) beat the best;
        returns whether they did."""
        value = figures[BEST_CHECKPOINT_METRIC]
        if self.best is not None and value <= self.best:
            return False
        run_folder.save_best_weights(self.run_dir, {"step": step, **figures}, model_state())
        self.best = value
        return True
