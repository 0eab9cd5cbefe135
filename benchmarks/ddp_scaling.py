"""Weak scaling of the DARTS search step with DistributedDataParallel: 1 rank vs N ranks, same batch per rank.

Each rank runs dist_darts.search's step exactly as the job does: the supernet's weights under DDP (the alphas
outside DDP's buckets), the Architect's gradients averaged over ranks with one flat all-reduce each
(dist_darts.distributed.all_reduce_mean_), the weight step through the DDP wrapper. The process group comes
from dist_darts.distributed.init_distributed (gloo on the CPU, NCCL on GPUs). The 1-rank group and the N-rank
group are both started up front and step alternately, so both meet the same machine load.

    efficiency = (N-rank images/s) / (N x 1-rank images/s) = 1-rank step time / N-rank step time

A third group, N independent 1-rank processes stepping at the same moments without a process group, is the
control: its efficiency is what the machine allows N processes at all (shared memory bandwidth, caches, power),
so DDP's own cost is the gap between the control and the N-rank group.

On the CPU every rank runs `--threads` torch threads (default 1), the 1-rank baseline too; on GPUs each rank
has its own GPU (LOCAL_RANK) and N defaults to the number of GPUs.

    python benchmarks/ddp_scaling.py [--nproc 2] [--order 1] [--batch-size 64] [--threads 1]
    python benchmarks/ddp_scaling.py --device cuda              # 1 -> all GPUs of the machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import torch  # noqa: E402


def worker(cfg):
    from dist_darts.distributed import all_reduce_mean_, close_distributed, init_distributed
    from dist_darts.job import autocast_factory
    from dist_darts.parallel import prepare_model
    from dist_darts.spaces.cnn.supernet import Network

    torch.set_num_threads(cfg["threads"])
    env = init_distributed(cfg["device"])
    device = env.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg["seed"])  # identical initial replicas, as the search's seeding gives
    model = Network(cfg["C"], 10, cfg["layers"])
    model, train_model = prepare_model(model, device, world_size=env.world_size, exclude=tuple(model.arch_parameters()))
    model.train()
    autocast, _ = autocast_factory("auto", device)
    g = torch.Generator().manual_seed(1000 + env.rank)  # every rank its own shard of data
    b = cfg["batch"]
    xt, xv = (torch.randn(b, 3, 32, 32, generator=g).to(device) for _ in range(2))
    yt, yv = (torch.randint(0, 10, (b,), generator=g).to(device) for _ in range(2))

    step = _bench.darts_search_step(model, train_model, cfg["order"], autocast, (xt, yt, xv, yv),
                                    average=all_reduce_mean_)
    _bench.serve(step, device, b * env.world_size)
    close_distributed()


class Group:
    """The ranks of one process group, each a _bench.Worker; a step is all ranks stepping together."""

    def __init__(self, cfg, nproc, threads, independent=False):
        port = _free_port()
        self.name = f"{nproc} independent processes" if independent else f"{nproc} rank(s)"
        self.nproc = nproc
        self.ranks = []
        for rank in range(nproc):
            env = _bench.worker_env(threads)
            env.update(RANK="0" if independent else str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE="1" if independent else str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            self.ranks.append(_bench.Worker(__file__, dict(cfg, name=f"{self.name} rank {rank}"), env, wait=False))
        for w in self.ranks:  # all ranks must be up before any can finish joining the group
            w.wait_ready()
        self.walls = []

    def step(self, timed):
        for w in self.ranks:
            w.send("step")
        replies = [w.collect(timed) for w in self.ranks]
        wall = max(r["wall"] for r in replies)  # the group's step ends when its slowest rank's does
        if timed:
            self.walls.append(wall)
        return wall

    def finish(self):
        return [w.finish() for w in self.ranks]


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _bench.add_common_arguments(p, threads_default=1, threads_help="torch threads per rank (default 1)")
    p.add_argument("--nproc", type=int, help="ranks of the scaled run (default: GPUs on cuda, 2 on cpu)")
    p.add_argument("--order", type=int, default=1, choices=[1, 2], help="DARTS order (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="per rank (default 64)")
    p.add_argument("--init-channels", type=int, default=16, help="C (default 16)")
    p.add_argument("--layers", type=int, default=8, help="cells (default 8)")
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.nproc is None:
        args.nproc = torch.cuda.device_count() if args.device == "cuda" else 2
    if args.device == "cpu" and args.nproc * args.threads > len(os.sched_getaffinity(0)):
        print(f"warning: {args.nproc} ranks x {args.threads} threads > {len(os.sched_getaffinity(0))} cores")

    cfg = {"order": args.order, "batch": args.batch_size, "C": args.init_channels, "layers": args.layers,
           "device": args.device, "threads": args.threads, "seed": 0}
    # the 1-rank group races each N-process group in turn: all three alive at once would hold 5 x 5.5 GiB at
    # batch 64, more than a 24 GiB machine has
    one = Group(cfg, 1, args.threads)
    measured = []  # (name, processes, walls, peak memory per process)
    ratio = {}
    for independent in (False, True):
        other = Group(cfg, args.nproc, args.threads, independent)
        one.walls = []
        for r in range(args.warmup + args.steps):
            for grp in ((one, other) if r % 2 == 0 else (other, one)):
                wall = grp.step(timed=r >= args.warmup)
                print(f"  round {r + 1}/{args.warmup + args.steps} {grp.name}: {wall:.2f} s"
                      + ("" if r >= args.warmup else " (warm-up)"), flush=True)
        ratio[independent] = _bench.med(one.walls) / _bench.med(other.walls)
        measured += [(f"1 rank (racing {other.name})", 1, one.walls, None),
                     (other.name, args.nproc, other.walls, max(m["peak_delta_bytes"] for m in other.finish()))]
    one_memory = one.finish()[0]["peak_delta_bytes"]
    measured = [(name, n, walls, one_memory if peak is None else peak) for name, n, walls, peak in measured]
    efficiency, control_efficiency = ratio[False], ratio[True]
    rows = [[name, f"{n * args.batch_size}", f"{_bench.med(walls):.2f}", f"{min(walls):.2f} - {max(walls):.2f}",
             f"{n * args.batch_size / _bench.med(walls):.1f}", _bench.gib(peak)] for name, n, walls, peak in measured]
    mem_label = "peak GPU mem per rank GiB" if args.device == "cuda" else "peak RSS delta per rank GiB"
    text = _bench.table(["processes", "global batch", "step s (median)", "min - max", "images/s", mem_label], rows)
    text += (f"\n\nWeak-scaling efficiency 1 -> {args.nproc} ranks: {100 * efficiency:.1f} %; the control "
             f"({args.nproc} independent processes, no communication): {100 * control_efficiency:.1f} %")
    print(text)
    if args.no_record:
        return
    backend = "NCCL" if args.device == "cuda" else "gloo"
    cfg_line = (f"Search step, order {args.order}, C={args.init_channels}, {args.layers} cells, batch "
                f"{args.batch_size} per rank, 32x32; DDP over {backend} on {args.device}"
                + (", bf16 autocast" if args.device == "cuda" else "") + ", channels_last"
                + f"; {args.threads} torch thread(s) per rank, the 1-rank run included. Median of {args.steps} timed "
                f"steps after {args.warmup} warm-up step(s); the 1-rank group takes turns step by step with each "
                "N-process group; a group's step time is its slowest process's. efficiency = (N-rank images/s) / "
                "(N x 1-rank images/s).")
    _bench.record("ddp_scaling", args.device, {"config": vars(args), "efficiency": efficiency,
                                               "control_efficiency": control_efficiency, "results": [
        {"group": name, "processes": n, "wall_s": walls, "median_s": _bench.med(walls),
         "images_per_s": n * args.batch_size / _bench.med(walls), "peak_delta_bytes": peak}
        for name, n, walls, peak in measured]}, f"DDP weak scaling 1 -> {args.nproc} ranks", cfg_line + "\n\n" + text)


if __name__ == "__main__":
    main()
