"""benchmarks/train_step.py on the CPU: it times the architecture `--arch-config` names, as `arch=` composes it."""
import importlib.util
import json
import os

import pytest
from omegaconf import OmegaConf

from models import build_model, parse_arch

from conftest import REPO_ROOT
from tiny_runs import arch_config


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_step_benchmark",
                                                  os.path.join(REPO_ROOT, "benchmarks", "train_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, sizes", [("trm_mlp", dict(L_layers=1, H_cycles=2, L_cycles=1)),
                                         ("transformer", dict(H_layers=1))])
def test_the_named_architecture_is_timed(name, sizes, capsys):
    tiny = dict(hidden_size=32, num_heads=2, halt_max_steps=2, puzzle_emb_ndim=0, **sizes)
    load_benchmark().main(["--task", "sudoku", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--dtype",
                           "float32", "--no-compile", "--arch-config", name, "--arch", json.dumps(tiny)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["arch"] == name and printed["device"] == "cpu"
    [run] = printed["runs"]
    assert run["steps_per_second"] > 0
    # The model timed is config/arch/<name>.yaml with the overrides (Sudoku: 81 cells, 11 tokens, 1 puzzle).
    arch = parse_arch(OmegaConf.to_container(OmegaConf.merge(arch_config(name), tiny, dict(forward_dtype="float32")),
                                             resolve=True))
    model = build_model(arch, batch_size=4, seq_len=81, vocab_size=11, num_puzzle_identifiers=1)
    assert run["num_params"] == sum(p.numel() for p in model.parameters())


def test_seq_len_sets_the_length_timed(capsys):
    # Learned positions hold one row of hidden_size floats per position, so the parameter count shows the length.
    tiny = dict(hidden_size=32, num_heads=2, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1, halt_max_steps=1,
                puzzle_emb_ndim=0, pos_encodings="learned")
    runs = {}
    for seq_len in (None, 36):
        extra = [] if seq_len is None else ["--seq-len", str(seq_len)]
        load_benchmark().main(["--task", "sudoku", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--dtype",
                               "float32", "--no-compile", "--arch", json.dumps(tiny), *extra])
        printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        runs[printed["seq_len"]] = printed["runs"][0]["num_params"]
    assert runs[81] - runs[36] == (81 - 36) * 32
