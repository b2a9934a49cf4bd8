"""Training-step and evaluation throughput on random data: `python benchmarks/train_step.py --task sudoku`.

Times the full step that pretrain.py runs (ACT forward with the Q target, backward, sign-SGD and
Adam-atan2) at a task's published shapes, and prints steps/s and peak GPU memory as one JSON line.
`--compare-plain` times the plain path (`fast_path=false`) and the fast path in one process, from the same
initial weights, one after the other (the first freed before the second starts, so each peak is its own),
and prints both with their ratio. `--eval` also times evaluation (every test sequence for `halt_max_steps`
ACT steps) in test sequences per second. Under torchrun it measures the distributed step (gradient sums
and embedding all-gather included) at the given per-GPU batch. `--barrier-dir DIR --barrier-size K` makes
K processes started together (benchmarks/concurrent_runs.py) wait for each other after their warm-up, so
that all of them time the same interval. `--grad-accum-steps N` splits each step into N
micro-batches (gradient accumulation), so the peak memory it prints can be read against N.

`--arch-config NAME` times config/arch/NAME.yaml (default hrm_v1, the published HRM), as `arch=NAME` composes
it, with `--arch` JSON overrides on top. The architectures at the settings of their releases' runs:

    python benchmarks/train_step.py --task sudoku --arch-config trm_mlp
    python benchmarks/train_step.py --task sudoku --arch-config trm
    python benchmarks/train_step.py --task maze --arch-config trm --arch '{"L_cycles": 4}'
    python benchmarks/train_step.py --task sudoku --arch-config transformer
"""
import argparse
import contextlib
import gc
import glob
import json
import os
import time

import torch

from command_line import OneLineArgumentParser, run_cli
from dataset.atomic_file import write_text
from dataset.format import PuzzleDatasetMetadata
from models.attention import resolve_backend
from pretrain import compose_config
from training import fast_path
from training.config import load_config
from training.distributed import setup_distributed, teardown_distributed
from training.evaluation import evaluate
from training.grad_accumulation import check_grad_accum_steps
from training.loop import create_train_state, train_step
from training.metrics import TrainMetrics

# Dataset shapes of the published tasks: (seq_len, vocab_size, num_puzzle_identifiers).
TASK_SHAPES = {"sudoku": (81, 11, 1), "maze": (900, 6, 1), "arc": (900, 12, 960_000)}
# Per-GPU batches of the published runs (global batch 768 over 8 GPUs for maze, one GPU's worth for Sudoku).
DEFAULT_BATCH = {"sudoku": 768, "maze": 96, "arc": 96}

SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
BARRIER_TIMEOUT_S = 1800  # the slowest process's start-up and compilation


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASK_SHAPES), default="sudoku")
    parser.add_argument("--batch-size", type=int, default=None, help="per-GPU batch (default: the task's published one)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="sequence length (default: the task's), e.g. 144 for 12x12 mazes")
    parser.add_argument("--steps", type=int, default=50, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation happens here)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--plain", action="store_true", help="time only the plain path (fast_path=false)")
    parser.add_argument("--compare-plain", action="store_true", help="time the plain and the fast path")
    parser.add_argument("--eval", action="store_true", help="also time evaluation")
    parser.add_argument("--eval-batches", type=int, default=4, help="timed evaluation batches")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--sdpa-backend", choices=sorted(SDPA_BACKENDS), default=None,
                        help="restrict PyTorch SDPA to one kernel")
    parser.add_argument("--inductor-options", default="{}", help="JSON of extra Inductor options for the fast path")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--arch-config", default="hrm_v1", help="config/arch/<name>.yaml to time (default hrm_v1)")
    parser.add_argument("--arch", default="{}", help="JSON of arch overrides, e.g. '{\"hidden_size\": 64}'")
    parser.add_argument("--barrier-dir", default=None, help="with --barrier-size: a folder the processes that "
                                                            "time together share")
    parser.add_argument("--barrier-size", type=int, default=1, help="processes to wait for after the warm-up")
    parser.add_argument("--grad-accum-steps", type=int, default=1,
                        help="micro-batches per step (gradient accumulation: peak memory falls with it)")
    args = parser.parse_args(argv)
    args.arch = json_object(parser, "--arch", args.arch)
    args.inductor_options = json_object(parser, "--inductor-options", args.inductor_options)
    return args


def json_object(parser: argparse.ArgumentParser, flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        parser.error(f"{flag} {text!r}: not valid JSON ({e.msg})")
    if not isinstance(value, dict):
        parser.error(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value


def wait_at_barrier(folder: str, parties: int, label: str) -> None:
    """Leave this process's mark in `folder`, then wait until `parties` processes have left one for `label`."""
    write_text(os.path.join(folder, f"{label}-{os.getpid()}.ready"), "")
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(glob.glob(os.path.join(glob.escape(folder), f"{label}-*.ready"))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{parties} processes did not reach {folder} within {BARRIER_TIMEOUT_S} s")
        time.sleep(0.05)


def random_batches(count, batch_size, seq_len, vocab_size, num_identifiers, device):
    # Seeded, so runs of other settings (e.g. --grad-accum-steps) train on the same batches.
    generator = torch.Generator().manual_seed(0)
    batches = [{"inputs": torch.randint(1, vocab_size, (batch_size, seq_len), dtype=torch.int32, generator=generator),
                "labels": torch.randint(1, vocab_size, (batch_size, seq_len), dtype=torch.int32, generator=generator),
                "puzzle_identifiers": torch.randint(0, num_identifiers, (batch_size,), dtype=torch.int32,
                                                    generator=generator)}
               for _ in range(count)]
    return [{k: v.pin_memory() for k, v in b.items()} for b in batches] if device.type == "cuda" else batches


def synchronize(ctx):
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(ctx):
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if ctx.device.type == "cuda" else None


def measure(args, ctx, fast: bool, shapes, batches):
    """Build a train state (seeded: the same initial weights for either path) and time it."""
    seq_len, vocab_size, num_identifiers = shapes
    arch = dict(compose_config([f"arch={args.arch_config}"])["arch"], forward_dtype=args.dtype,
                attention_backend=args.attention_backend, **args.arch)
    global_batch = args.batch_size * ctx.world_size
    config = load_config(dict(arch=arch, data_path="unused", global_batch_size=global_batch, epochs=1, lr=1e-4,
                              lr_min_ratio=1.0, lr_warmup_steps=2000, weight_decay=1.0, beta1=0.9, beta2=0.95,
                              puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0, compile=not args.no_compile,
                              fast_path=fast, checkpoint_path="unused", grad_accum_steps=args.grad_accum_steps))
    check_grad_accum_steps(config.grad_accum_steps, global_batch, ctx.world_size)
    steps = args.warmup + args.steps
    metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size,
                                     seq_len=seq_len, num_puzzle_identifiers=num_identifiers,
                                     total_groups=global_batch * steps, mean_puzzle_examples=1, sets=["all"])
    torch.manual_seed(ctx.rank)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    state = create_train_state(config, metadata, ctx)
    state.model.train()
    start_time = time.perf_counter()
    for step in range(args.warmup):
        train_step(state, batches[step % len(batches)], config, ctx, global_batch)
    synchronize(ctx)
    warmup_seconds = time.perf_counter() - start_time
    if args.barrier_dir is not None:
        wait_at_barrier(args.barrier_dir, args.barrier_size, "fast" if fast else "plain")
    last_step = TrainMetrics()
    start = time.perf_counter()
    for step in range(args.steps):
        train_step(state, batches[step % len(batches)], config, ctx, global_batch,
                   last_step if step == args.steps - 1 else None)
    synchronize(ctx)
    elapsed = time.perf_counter() - start
    figures = dict(path="fast" if isinstance(state.model, fast_path.GraphReplayedModel) else "plain",
                   steps_per_second=round(args.steps / elapsed, 3), warmup_seconds=round(warmup_seconds, 1),
                   peak_memory_gib=peak_memory_gib(ctx),
                   num_params=sum(p.numel() for p in state.base_model.parameters()),
                   final_lm_loss=last_step.reduce(ctx, global_batch)["train/lm_loss"])
    if args.eval:
        eval_batches = random_batches(2, args.batch_size, seq_len, vocab_size, num_identifiers, ctx.device)
        loader = [("all", eval_batches[i % 2], global_batch) for i in range(args.eval_batches)]
        evaluate(state.model, loader[:1], metadata, ctx)  # compiles and records the evaluation graphs
        synchronize(ctx)
        start = time.perf_counter()
        evaluate(state.model, loader, metadata, ctx)
        synchronize(ctx)
        figures.update(eval_sequences_per_second=round(len(loader) * global_batch / (time.perf_counter() - start), 1))
    del state
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return figures


def main(argv=None) -> None:
    args = parse_args(argv)
    args.batch_size = args.batch_size or DEFAULT_BATCH[args.task]
    fast_path.FAST_PATH_OPTIONS.update(args.inductor_options)
    ctx = setup_distributed()
    seq_len, vocab_size, num_identifiers = TASK_SHAPES[args.task]
    shapes = (args.seq_len or seq_len, vocab_size, num_identifiers)
    batches = random_batches(4, args.batch_size, *shapes, ctx.device)
    with (torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, SDPA_BACKENDS[args.sdpa_backend]))
          if args.sdpa_backend else contextlib.nullcontext()):
        paths = [False, True] if args.compare_plain else [not args.plain]
        runs = [measure(args, ctx, fast, shapes, batches) for fast in paths]
    if ctx.is_main:
        result = dict(task=args.task, seq_len=shapes[0], arch=args.arch_config, world_size=ctx.world_size,
                      per_gpu_batch=args.batch_size,
                      grad_accum_steps=args.grad_accum_steps, dtype=args.dtype,
                      attention_backend=resolve_backend(args.attention_backend), sdpa_backend=args.sdpa_backend,
                      inductor_options=fast_path.FAST_PATH_OPTIONS,
                      device=torch.cuda.get_device_name() if ctx.device.type == "cuda" else "cpu",
                      routing=args.arch.get("routing", {}).get("controller", "none"), runs=runs,
                      compiled_graphs=torch._dynamo.utils.counters["stats"]["unique_graphs"],
                      cudagraph_skips=torch._dynamo.utils.counters["inductor"]["cudagraph_skips"])
        if len(runs) == 2:
            result["speedup"] = round(runs[1]["steps_per_second"] / runs[0]["steps_per_second"], 3)
            if args.eval:
                result["eval_speedup"] = round(runs[1]["eval_sequences_per_second"] /
                                               runs[0]["eval_sequences_per_second"], 3)
        print(json.dumps(result), flush=True)
    teardown_distributed()


if __name__ == "__main__":
    run_cli(main)
