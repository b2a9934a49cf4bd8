"""Smoke run of a routing controller: a few iterations on random input with temperature annealing.

    python puzzle_tools/routing_smoke.py --controller hrm --iterations 12 --T 4 --topk 3 --heads 8 --d-model 64

Each iteration routes a batch of random sequences over random per-head outputs, adds the routed mixture
to the hidden state (so routing feeds back into the next call, as in a model), and prints one line:

    iter   3  entropy 1.0875  max_prob 0.4278  temp 1.458  top_heads 1,5,2  H-update

`entropy` and `max_prob` are the batch means of the routing entropy and of the largest weight, `top_heads`
the heads with the largest batch-mean weights, and `H-update` marks a call in which any sequence's slow
state updated (hrm: every T-th call; hrm_act: when the halting signal says so). The temperature at
iteration i is max(temperature_min, temperature_init * decay^i).
"""
from __future__ import annotations

import argparse

import torch

from command_line import OneLineArgumentParser, run_cli
from models.routing import (DEFAULT_TEMPERATURE_INIT, DEFAULT_TEMPERATURE_MIN, ACTHRMPointerController,
                            HRMPointerController, PointerOverHeadsController)


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--controller", choices=["classical", "hrm", "hrm_act"], default="hrm")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--T", type=int, default=4, help="hrm: the slow state updates every T calls")
    parser.add_argument("--max-ponders", type=int, default=20, help="hrm_act: forced slow update after this many")
    parser.add_argument("--topk", type=int, default=None, help="keep the k largest weights (default: all heads)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--temperature-init", type=float, default=DEFAULT_TEMPERATURE_INIT)
    parser.add_argument("--temperature-min", type=float, default=DEFAULT_TEMPERATURE_MIN)
    parser.add_argument("--temperature-decay", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.d_model % args.heads != 0:
        parser.error(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    return args


def build_controller(args: argparse.Namespace) -> torch.nn.Module:
    shared = dict(topk=args.topk, temperature_init=args.temperature_init, temperature_min=args.temperature_min)
    if args.controller == "classical":
        return PointerOverHeadsController(args.d_model, args.heads, **shared)
    if args.controller == "hrm":
        return HRMPointerController(args.d_model, args.heads, T=args.T, **shared)
    return ACTHRMPointerController(args.d_model, args.heads, max_ponders=args.max_ponders, **shared)


@torch.no_grad()
def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    controller = build_controller(args).eval()
    batch, length, head_dim = args.batch_size, args.seq_len, args.d_model // args.heads
    hidden = torch.randn(batch, length, args.d_model)
    head_outputs = torch.randn(batch, length, args.heads, head_dim)
    n_top = min(args.topk or 3, args.heads)

    state = None
    for iteration in range(args.iterations):
        # The controller floors the temperature at its temperature_min.
        controller.set_temperature(args.temperature_init * args.temperature_decay ** iteration)
        alphas, state, aux = controller(hidden, head_outputs, state=state)
        # Weighted heads, concatenated back to the model width, as the attention output before o_proj.
        hidden = hidden + (alphas[:, None, :, None] * head_outputs).flatten(2) / args.heads

        stats = aux.diagnostics()
        top_heads = alphas.mean(0).topk(n_top).indices.tolist()
        slow_update = stats.slow_updates is not None and stats.slow_updates.item() > 0
        print(f"iter {iteration:3d}  entropy {stats.entropy_mean.item():.4f}  "
              f"max_prob {stats.top1_share.item():.4f}  temp {stats.temperature.item():.3f}  "
              f"top_heads {','.join(map(str, top_heads))}" + ("  H-update" if slow_update else ""))


if __name__ == "__main__":
    run_cli(main)
