"""Tiny CPU training runs for tests: a small dataset, the overrides of a small model, and run helpers."""
import json
import os
import subprocess
import sys

import numpy as np
from omegaconf import OmegaConf

from command_line import exit_status
from conftest import REPO_ROOT
from dataset.common import atomic_output_dir
from dataset.format import PuzzleDatasetMetadata, save_identifiers, save_split
from training.config import load_config

TINY_OVERRIDES = [
    "global_batch_size=16", "epochs=4", "eval_interval=2", "lr=1e-3", "lr_warmup_steps=2", "log_interval=1",
    "arch.hidden_size=32", "arch.num_heads=2", "arch.H_layers=1", "arch.L_layers=1", "arch.H_cycles=1",
    "arch.L_cycles=2", "arch.halt_max_steps=3", "arch.forward_dtype=float32", "arch.puzzle_emb_ndim=16",
    "plots=false",
]
ENV = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1")


def write_tiny_dataset(path, identifiers=("<blank>", "a", "b", "c")):
    """A copy-the-input-with-a-twist task: 96 train and 32 test sequences of 12 tokens, identifiers named
    `identifiers` (4 by default; the blank one, 0, unused)."""
    rng = np.random.default_rng(0)

    def arrays(n):
        inputs = rng.integers(1, 5, (n, 12)).astype(np.uint8)
        return dict(inputs=inputs, labels=(5 - inputs).astype(np.uint8),
                    puzzle_identifiers=rng.integers(1, len(identifiers), n).astype(np.int32),
                    puzzle_indices=np.arange(n + 1, dtype=np.int32), group_indices=np.arange(n + 1, dtype=np.int32))

    with atomic_output_dir(path) as out:
        for split, n in (("train", 96), ("test", 32)):
            metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=6,
                                             seq_len=12, num_puzzle_identifiers=len(identifiers), total_groups=n,
                                             mean_puzzle_examples=1, sets=["all"])
            save_split(out, split, metadata, {"all": arrays(n)})
        save_identifiers(out, list(identifiers))
    return path


def run_pretrain(args, launcher=(sys.executable,), **kwargs):
    return subprocess.run([*launcher, "pretrain.py", *args], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600, **kwargs)


def pretrain_in_process(args, capsys):
    """pretrain.py's exit status and stderr lines for `args`, run in this process (no interpreter start-up),
    through the same `exit_status` as its command line."""
    import pretrain
    status = exit_status(lambda: pretrain.main(list(args)))
    return status, capsys.readouterr().err.strip().splitlines()


def pretrain_with_fault(fault, number, args):
    """The command line of pretrain.py with a fault injected at a fixed point (tests/pretrain_with_fault.py)."""
    return [sys.executable, os.path.join("tests", "pretrain_with_fault.py"), fault, str(number), *args]


def torchrun(processes):
    """The launcher of a `processes`-process gloo run; --standalone picks a free port."""
    return (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes))


def arch_config(name):
    """config/arch/<name>.yaml merged over the arch files its `defaults` list names, as Hydra composes it."""
    arch = OmegaConf.load(os.path.join(REPO_ROOT, "config", "arch", f"{name}.yaml"))
    parents = [parent for parent in arch.pop("defaults", []) if parent != "_self_"]
    return OmegaConf.merge(*(arch_config(parent) for parent in parents), arch)


def make_config(data_path, *overrides, arch="hrm_v1"):
    """The validated training config pretrain.py would build from these overrides (tiny model)."""
    base = OmegaConf.load(os.path.join(REPO_ROOT, "config", "cfg_pretrain.yaml"))
    base.pop("defaults")
    base.arch = arch_config(arch)
    # The tiny sizes of the keys this architecture has (the transformer baseline has no L level).
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("arch.") or o.split("=")[0][len("arch."):] in base.arch]
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist([f"data_path={data_path}", *tiny, *overrides]))
    return load_config(OmegaConf.to_container(merged, resolve=True))


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(rows):
    return {row["step"]: row["train/lm_loss"] for row in rows if "train/lm_loss" in row}


def assert_evaluate_reproduces_final_evaluation(weights_path, rows, capsys):
    """evaluate.py on the run's last weights prints the losses and exact accuracy its last evaluation logged."""
    import evaluate
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(weights_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    final = [row for row in rows if "all/lm_loss" in row][-1]
    for key in ("lm_loss", "q_halt_loss", "exact_accuracy"):
        assert abs(printed["all"][key] - final[f"all/{key}"]) < 1e-6, key
