"""The memory estimate before a job's first step: bytes autograd saves per image, measured on narrow copies of the
network, the step's peak from them, the device's free memory, and a refusal in one line that names what fits.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .distributed import all_gather_object
from .errors import ConfigError
from .job import Job
from .logs import log

class MemoryEstimateError(ConfigError):
    """A step that would not fit in the device's free memory: one line, exit code 2, before the first step."""


# a step's peak over the bytes its forward saves for backward (gradients in flight, the optimizer's temporaries):
# 1.13 to 1.32 measured on the CPU for supernets (first and second order, PC-DARTS), 1.10 for retrain networks
ACTIVATION_PEAK = 1.3


def saved_activation_bytes(build: Callable[[], nn.Module], image_size: int, half: bool = False) -> int:
    """Bytes autograd keeps for the backward of one training-mode forward of one image through `build()`, counted
    once per storage (views and tensors saved by several ops share one), on the CPU (under bf16 autocast with
    `half`: 2-byte activations as under bf16 or fp16 on a GPU).

    The global RNG is left as it was, so the job's own model is drawn from the same random state as without this.
    """
    storages = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.random.fork_rng(devices=[]):
        model = build().train()
        x = torch.zeros(2, 3, image_size, image_size)  # BN in training mode needs two values a channel
        with (torch.autocast("cpu", dtype=torch.bfloat16, enabled=half),
              torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)):
            model(x)
    return sum(storages.values()) // 2


def affine_at(f: Callable[[int], float], x: int, x1: int, x2: int) -> float:
    """f(x) for an f affine in x, from f(x1) and f(x2) when x > x2 (activations in the channel count: measuring
    narrow networks is cheap); f(x) itself otherwise."""
    if x <= x2:
        return f(x)
    y1, y2 = f(x1), f(x2)
    return y1 + (x - x1) * (y2 - y1) / (x2 - x1)


def step_memory(params: int, weight_copies: float, activations: float, batch_size: int, image_size: int) -> int:
    """Estimated peak bytes of one training step on one rank: `weight_copies` fp32 copies of the `params`
    parameters (weights, gradients, optimizer state, ...), the activations of a batch (`activations` bytes saved
    per image) with the backward's overhead, and the two input batches a search step holds."""
    return int(4 * params * weight_copies + ACTIVATION_PEAK * activations * batch_size
               + 2 * 4 * batch_size * 3 * image_size ** 2)


def available_memory(device: torch.device) -> int:
    """Bytes this process can still allocate on `device`: the GPU's free memory plus what PyTorch's caching
    allocator holds unused; on the CPU the kernel's MemAvailable, or the cgroup's remaining limit where lower
    (Slurm and containers)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    return available


def check_memory(job: Job, estimate: int, what: str, estimate_at: Callable[[int], int] | None = None) -> None:
    """Log the step's estimated peak memory per rank and refuse (MemoryEstimateError on every rank alike) when
    a rank's device cannot hold it; CPU ranks on one host share its memory. With `estimate_at` (the estimate as
    a function of the batch per rank) the refusal names the largest batch that fits."""
    cfg, device = job.cfg, job.env.device
    ranks = all_gather_object((socket.gethostname(), str(device), available_memory(device)))
    short = None
    for host, dev, free in ranks:
        sharing = sum(1 for h, d, _ in ranks if (h, d) == (host, dev)) if device.type == "cpu" else 1
        if estimate * sharing > free:
            short = (host, dev, free, sharing)
            break
    log.info("memory estimate: %s per rank for one %s step (batch %d, %d initial channels, %d layers); %s free on %s",
             gib(estimate), what, cfg.batch_size, cfg.init_channels, cfg.layers, gib(ranks[job.env.rank][2]), device)
    if short is not None:
        host, dev, free, sharing = short
        need = f"{gib(estimate * sharing)} for {sharing} ranks" if sharing > 1 else gib(estimate)
        advice = "lower --batch-size, --init-channels or --layers"
        if estimate_at is not None and estimate_at(1) * sharing <= free:
            largest = _largest_fitting(estimate_at, cfg.batch_size, free / sharing)
            advice = (f"--batch-size {largest} fits (about {gib(estimate_at(largest))} per rank; --accumulate keeps "
                      "the global batch), or lower --init-channels or --layers")
        elif estimate_at is not None:
            advice = "not even --batch-size 1 fits: lower --init-channels or --layers"
        raise MemoryEstimateError(
            f"memory: one {what} step needs about {need} (batch {cfg.batch_size}, {cfg.init_channels} initial "
            f"channels, {cfg.layers} layers) but {dev} on host {host} has only {gib(free)} free: {advice}")


def _largest_fitting(estimate_at: Callable[[int], int], high: int, free: float) -> int:
    """The largest batch below high whose estimate fits in free, given that batch 1's does (the estimate grows
    with the batch: bisection)."""
    low = 1
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if estimate_at(mid) <= free else (low, mid)
    return low


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
