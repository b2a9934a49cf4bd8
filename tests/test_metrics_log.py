"""metrics.jsonl on a full disk: the run stops with one line naming the file, whose rows stay whole."""
import json
import os

import pytest

from dataset.atomic_file import FileWriteError, append_text
from full_disk import filling_the_disk
from tiny_runs import pretrain_in_process
from training import metrics_log
from training.metrics_log import MetricsLogger


def fail_from_call(number, monkeypatch):
    """append_text as it behaves when the disk fills at its `number`-th call."""
    calls = []
    full = filling_the_disk(append_text, path_argument=0, room=7)

    def append(*args, **kwargs):
        calls.append(args)
        return (full if len(calls) >= number else append_text)(*args, **kwargs)
    monkeypatch.setattr(metrics_log, "append_text", append)


def test_a_row_that_cannot_be_written_is_an_error_and_leaves_the_file_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = MetricsLogger(str(tmp_path), "project", "run", {}, total_steps=10)
    logger.log({"train/lm_loss": 1.0}, step=1)
    before = (tmp_path / "metrics.jsonl").read_text()
    fail_from_call(1, monkeypatch)
    with pytest.raises(FileWriteError, match="metrics.jsonl: File too large"):
        logger.log({"train/lm_loss": 0.5}, step=2)
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_training_stops_in_one_line_when_metrics_jsonl_cannot_grow(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    fail_from_call(4, monkeypatch)
    run_dir = tmp_path / "run"
    status, err = pretrain_in_process([f"data_path={tiny_dataset}", f"checkpoint_path={run_dir}", "epochs=1", "eval_interval=1",
                                       "global_batch_size=32", "arch.hidden_size=16", "arch.num_heads=1",
                                       "arch.H_layers=1", "arch.L_layers=1", "arch.puzzle_emb_ndim=16",
                                       "arch.halt_max_steps=2", "arch.forward_dtype=float32", "log_interval=1",
                                       "plots=false"], capsys)
    errors = [line for line in err if line.startswith("error: ")]
    assert status == 2 and errors == [f"error: cannot write {run_dir / 'metrics.jsonl'}: File too large"], err
    assert not any("Traceback" in line for line in err)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(row, dict) for row in rows)
    assert not [name for name in os.listdir(run_dir) if name.endswith(".tmp")]
