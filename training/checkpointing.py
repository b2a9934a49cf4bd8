"""The full training state across processes: gathered from every rank into one `train_state.pt`, and
restored into a run of the same or another process count."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

from training import run_folder
from training.distributed import DistributedContext, gather_to_main
from training.run_folder import SavedTrainState
from training.train_state import TrainState, join_and_split_carries


def save_train_state(run_dir: str, state: TrainState, ctx: DistributedContext, config: Dict[str, Any],
                     data_fingerprint: str) -> str:
    """Write `train_state.pt`: the shared state, every rank's own state, the config and the dataset's
    fingerprint (both checked on resume).

    Every rank must call it (the per-rank states are gathered); rank 0 writes, atomically.
    """
    per_rank = gather_to_main(state.rank_state_dict(ctx.device), ctx)
    path = run_folder.train_state_path(run_dir)
    if ctx.is_main:
        run_folder.write_train_state(run_dir, SavedTrainState(
            model=state.base_model.state_dict(), optimizers=[o.state_dict() for o in state.optimizers],
            progress=dataclasses.replace(state.progress), per_rank=per_rank, config=config,
            data_fingerprint=data_fingerprint, ema=state.ema.state_dict() if state.ema is not None else None))
    return path


def restore_train_state(saved: SavedTrainState, state: TrainState, ctx: DistributedContext) -> None:
    """Load a saved training state into `state`, this rank's own state included.

    The process count may differ from the saving run's: the ACT carries are joined and re-split (each
    rank holds a contiguous slice of the global batch), and rank r takes saved rank r's random generators
    (a new rank beyond the saved count keeps its fresh seed, so its halting exploration draws differ)."""
    state.load_saved(saved)
    if saved.world_size == ctx.world_size:
        state.load_rank_state_dict(saved.per_rank[ctx.rank], ctx.device)
        return
    carries = [rank_state["carry"] for rank_state in saved.per_rank]
    carry = None if any(c is None for c in carries) else join_and_split_carries(carries, ctx.world_size, ctx.rank)
    own = saved.per_rank[ctx.rank] if ctx.rank < saved.world_size else state.rank_state_dict(ctx.device)
    state.load_rank_state_dict(dict(own, carry=carry), ctx.device)
