"""What `--hessian-every` costs: one estimate of the dominant Hessian eigenvalue in the alphas
(dist_darts.collapse.hessian_eigenvalue, 20 power-iteration steps on one validation batch) against the search
steps of an epoch, timed in the same process on the same batches.

    python benchmarks/hessian_cost.py                          # C=8, 5 cells, batch 32, 1st order, 3 repeats
    python benchmarks/hessian_cost.py --init-channels 16 --layers 8 --batch-size 64 --device cuda

The share of an epoch is the estimate's seconds over --epoch-steps search steps (default 390: the paper's
CIFAR-10 epoch at batch 64). Synthetic batches of CIFAR size: only the time is measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _bench.supernet_cost_arguments(p, "per step and for the estimate (default 32)")
    p.add_argument("--epoch-steps", type=int, default=390, help="steps per epoch for the share (default 390)")
    p.add_argument("--steps", type=int, default=5, help="timed search steps per repeat (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="repeats, alternating steps and estimates (default 3)")
    args = p.parse_args()

    import torch.nn as nn
    from dist_darts.collapse import hessian_eigenvalue

    device, model, batches, autocast, precision = _bench.supernet_with_batches(args)
    step = _bench.darts_search_step(model, model, args.order, autocast, batches)
    criterion = nn.CrossEntropyLoss()
    step()  # warm-up
    hessian_eigenvalue(model, criterion, batches[2], batches[3], iterations=1)
    step_seconds, estimate_seconds = [], []
    for _ in range(args.repeats):
        step_seconds.append(_bench.seconds_per_call(step, args.steps, device))
        estimate_seconds.append(_bench.seconds_per_call(
            lambda: hessian_eigenvalue(model, criterion, batches[2], batches[3]), 1, device))
    per_step, per_estimate = statistics.median(step_seconds), statistics.median(estimate_seconds)
    share = per_estimate / (args.epoch_steps * per_step)
    header = ["supernet", "batch", "precision", "s per search step", "s per estimate", "estimate in steps",
              f"share of a {args.epoch_steps}-step epoch"]
    row = [f"C={args.init_channels}, {args.layers} cells, order {args.order}", str(args.batch_size), precision,
           f"{per_step:.3f}", f"{per_estimate:.2f}", f"{per_estimate / per_step:.1f}", f"{100 * share:.1f} %"]
    markdown = _bench.table(header, [row])
    print(markdown)
    _bench.record("hessian_cost", args.device, {"step_seconds": step_seconds, "estimate_seconds": estimate_seconds,
                                                "args": vars(args)},
                  "Hessian eigenvalue estimate vs search steps",
                  f"median of {args.repeats} repeats ({args.steps} steps each, then one estimate of 20 "
                  f"power-iteration steps in float64)\n\n{markdown}\n")


if __name__ == "__main__":
    main()
