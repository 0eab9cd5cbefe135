"""What the gradient noise-scale monitor (`--noise-scale`, dist_darts/noise_scale.py) costs per search step.

One process: every --noise-scale-every steps an extra pass (the alphas' gradients on two halves of the validation
batch, the weights' on two halves of the training batch). Timed here as a step measured every time against an
unmeasured step, alternating, in the same process on the same batches; the share at an interval N is the probe's
extra time over N steps. Several ranks: the monitor adds, per step, the squared norm of each gradient bucket
before its all-reduce and two norms of the alphas' gradients; timed here as those norms over one step's gradients
against the step (the all-reduces themselves are DDP's and the architect's own).

    python benchmarks/noise_scale_cost.py                         # C=8, 5 cells, batch 32, 1st order
    python benchmarks/noise_scale_cost.py --order 2
    python benchmarks/noise_scale_cost.py --init-channels 16 --layers 8 --batch-size 64 --device cuda

Synthetic batches of CIFAR size: only the time is measured.
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
    _bench.supernet_cost_arguments(p, "images per step (default 32)")
    p.add_argument("--every", type=int, default=200, help="the interval whose share is reported (default 200, "
                                                          "--noise-scale-every's default)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per repeat and kind (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="repeats, alternating the kinds (default 3)")
    args = p.parse_args()

    import torch.nn as nn
    from dist_darts.noise_scale import NoiseScaleMonitor, squared_norm

    device, model, batches, autocast, precision = _bench.supernet_with_batches(args)
    monitor = NoiseScaleMonitor(model, nn.CrossEntropyLoss(), autocast, args.batch_size, 1, 1, 1, device)
    plain = _bench.darts_search_step(model, model, args.order, autocast, batches)
    measured = _bench.darts_search_step(model, model, args.order, autocast, batches, noise=monitor)
    weights = model.weights()

    def ranks_extra():  # what the hook and the architect add on a rank: squared norms of the gradients
        float(squared_norm(p.grad for p in weights) + squared_norm(model.arch_parameters()))

    def timed(fn, steps):
        return _bench.seconds_per_call(fn, steps, device)

    plain(), measured()  # warm-up
    times = {"plain": [], "measured": [], "norms": []}
    for _ in range(args.repeats):
        times["plain"].append(timed(plain, args.steps))
        times["measured"].append(timed(measured, args.steps))
        times["norms"].append(timed(ranks_extra, 20))
    step, probed, norms = (statistics.median(times[k]) for k in ("plain", "measured", "norms"))
    probe = probed - step
    header = ["supernet", "batch", "precision", "s per step", "s per probe", "probe in steps",
              f"one process, every {args.every} steps", "several ranks, every step"]
    row = [f"C={args.init_channels}, {args.layers} cells, order {args.order}", str(args.batch_size), precision,
           f"{step:.3f}", f"{probe:.3f}", f"{probe / step:.2f}", f"{100 * probe / (args.every * step):.2f} %",
           f"{100 * norms / step:.3f} %"]
    markdown = _bench.table(header, [row])
    print(markdown)
    _bench.record("noise_scale_cost", args.device, {"seconds": times, "args": vars(args)},
                  "Gradient noise-scale monitor vs search steps",
                  f"median of {args.repeats} repeats of {args.steps} steps each, measured and unmeasured steps "
                  f"alternating\n\n{markdown}\n")


if __name__ == "__main__":
    main()
