"""Training-step throughput on random data: `python benchmarks/train_step.py --task sudoku`.

Times the full step that pretrain.py runs (ACT forward with the Q target, backward, sign-SGD and
Adam-atan2) at a task's published shapes, and prints steps/s and peak GPU memory. Under torchrun it
measures the distributed step (gradient sums and embedding all-gather included) at the given per-GPU batch.
"""
import argparse
import json
import time

import torch

from command_line import OneLineArgumentParser, run_cli
from dataset.common import PuzzleDatasetMetadata
from models.attention import resolve_backend
from training.config import load_config
from training.distributed import setup_distributed, teardown_distributed
from training.loop import create_train_state, train_step

# Dataset shapes of the published tasks: (seq_len, vocab_size, num_puzzle_identifiers).
TASK_SHAPES = {"sudoku": (81, 11, 1), "maze": (900, 6, 1), "arc": (900, 12, 960_000)}

ARCH = dict(name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
            loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
            halt_exploration_prob=0.1, halt_max_steps=16, H_cycles=2, L_cycles=2, H_layers=4, L_layers=4,
            hidden_size=512, num_heads=8, expansion=4, puzzle_emb_ndim=512, pos_encodings="rope")


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASK_SHAPES), default="sudoku")
    parser.add_argument("--batch-size", type=int, default=768, help="per-GPU batch")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation happens here)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--arch", default="{}", help="JSON of arch overrides, e.g. '{\"hidden_size\": 64}'")
    args = parser.parse_args(argv)
    try:
        args.arch = json.loads(args.arch)
    except json.JSONDecodeError as e:
        parser.error(f"--arch {args.arch!r}: not valid JSON ({e.msg})")
    if not isinstance(args.arch, dict):
        parser.error(f"--arch: expected a JSON object of arch keys, got {type(args.arch).__name__}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    ctx = setup_distributed()
    seq_len, vocab_size, num_identifiers = TASK_SHAPES[args.task]
    arch = dict(ARCH, forward_dtype=args.dtype, attention_backend=args.attention_backend, **args.arch)
    global_batch = args.batch_size * ctx.world_size
    config = load_config(dict(arch=arch, data_path="unused", global_batch_size=global_batch, epochs=1, lr=1e-4,
                              lr_min_ratio=1.0, lr_warmup_steps=2000, weight_decay=1.0, beta1=0.9, beta2=0.95,
                              puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0, compile=not args.no_compile,
                              checkpoint_path="unused"))
    steps = args.warmup + args.steps
    metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
                                     seq_len=seq_len, num_puzzle_identifiers=num_identifiers,
                                     total_groups=global_batch * steps, mean_puzzle_examples=1, sets=["all"])
    torch.manual_seed(ctx.rank)
    state = create_train_state(config, metadata, ctx)
    state.model.train()
    batches = [{"inputs": torch.randint(1, vocab_size, (args.batch_size, seq_len), dtype=torch.int32),
                "labels": torch.randint(1, vocab_size, (args.batch_size, seq_len), dtype=torch.int32),
                "puzzle_identifiers": torch.randint(0, num_identifiers, (args.batch_size,), dtype=torch.int32)}
               for _ in range(4)]
    if ctx.device.type == "cuda":
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]

    def synchronize():
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()

    for step in range(args.warmup):
        train_step(state, batches[step % 4], config, ctx, global_batch)
    synchronize()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for step in range(args.steps):
        result = train_step(state, batches[step % 4], config, ctx, global_batch)
    synchronize()
    elapsed = time.perf_counter() - start
    if ctx.is_main:
        result = dict(task=args.task, world_size=ctx.world_size, per_gpu_batch=args.batch_size,
                      compiled=state.model is not state.base_model, dtype=args.dtype,
                      attention_backend=resolve_backend(args.attention_backend),
                      device=torch.cuda.get_device_name() if ctx.device.type == "cuda" else "cpu",
                      steps_per_second=round(args.steps / elapsed, 3),
                      peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if ctx.device.type == "cuda" else None,
                      final_lm_loss=float(result.metrics.losses["lm_loss"]) / global_batch,
                      routing=arch.get("routing", {}).get("controller", "none"),
                      compiled_graphs=torch._dynamo.utils.counters["stats"]["unique_graphs"])
        print(json.dumps(result))
    teardown_distributed()


if __name__ == "__main__":
    run_cli(main)
