"""Preemption: SIGTERM (what cluster schedulers send) and SIGINT (Ctrl-C) become a request to stop after
the current step, so the loop can write the full training state before the process exits."""
from __future__ import annotations

import signal
from typing import Optional

import torch
import torch.distributed as dist

from training.distributed import DistributedContext

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving its state; `exit_code` follows the shell's 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Records the first stop signal; a second one interrupts at once (the previous handlers come back).

    Use as a context manager around the loop. With several processes every rank must agree on the step to
    stop at, so `should_stop` synchronises (an all-reduce) only when asked to, every few steps.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self._restore()  # a second Ctrl-C stops at once

    def should_stop(self, ctx: DistributedContext, synchronise: bool) -> bool:
        """Whether to stop now. Alone, whenever a signal came; with several processes, only at a
        synchronising call, and then on every rank when any rank received one."""
        if ctx.world_size == 1:
            return self.signum is not None
        if not synchronise:
            return False
        received = torch.tensor([self.signum or 0], dtype=torch.int64, device=ctx.device)
        dist.all_reduce(received, op=dist.ReduceOp.MAX)
        if received.item() and self.signum is None:
            self.signum = int(received.item())
        return bool(received.item())
