"""pretrain.py with one fault injected at a fixed point, so fault tests need no timing luck:
`python tests/pretrain_with_fault.py FAULT N OVERRIDE ...`, run from the repository root.

FAULT is one of:
- `kill-mid-state-write`: SIGKILL during the Nth write of train_state.pt, with its temporary file holding
  half its bytes and the rename not yet done, which is what a kill during `torch.save` leaves;
- `sigint-after-step`: SIGINT to itself right after optimizer step N, as a Ctrl-C there would.
"""
import os
import runpy
import signal
import sys


def kill_mid_state_write(write_number: int) -> None:
    real_replace, writes = os.replace, [0]

    def replace(source, destination):
        if os.path.basename(destination) == "train_state.pt":
            writes[0] += 1
            if writes[0] == write_number:
                with open(source, "r+b") as f:
                    f.truncate(os.path.getsize(source) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, destination)

    os.replace = replace


def sigint_after_step(step: int) -> None:
    import training.loop

    real_train_step = training.loop.train_step

    def train_step(state, *args, **kwargs):
        result = real_train_step(state, *args, **kwargs)
        if state.progress.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    training.loop.train_step = train_step


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())  # the repository root, as for `python pretrain.py`
    fault, number, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    {"kill-mid-state-write": kill_mid_state_write, "sigint-after-step": sigint_after_step}[fault](number)
    sys.argv = ["pretrain.py", *overrides]
    runpy.run_path("pretrain.py", run_name="__main__")
