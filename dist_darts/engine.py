"""What every job shares: set-up (process group, seeds, run folder, logging, precision), model preparation (device,
memory format, SyncBN, DDP, compile), the memory estimate before the first step, metrics and evaluation,
checkpoint plumbing, replica checks.

The pieces a benchmark or a notebook needs (autocast_factory, prepare_model, evaluate, Meter) take plain
arguments, not a Job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import config as config_io
from .checkpoint import previous_path, tensor_bytes
from .distributed import (DistEnv, all_gather_object, all_reduce_sum, barrier, close_distributed, convert_gloo_sync_bn,
    init_distributed, seed_everything)
from .logs import log, log_to_file, setup_logging
from .runfolder import RunFolderError, RunFolderLock, atomic_write, checkpoint_path, claim, default_output

# called on every rank after an epoch's checkpoint is written: (metrics, checkpoint path); Ray reports through it
EpochHook = Callable[[dict, Path], None]
SYNC_BN_BELOW = 32  # images per rank under which a multi-GPU job normalises over the global batch by default


@dataclass
class Job:
    cfg: object
    env: DistEnv
    run_dir: Path
    autocast: object  # a factory of autocast contexts: the loops never branch on precision
    scaler: torch.amp.GradScaler
    lock: RunFolderLock | None = None  # rank 0's hold on the run folder, for the job's life
    created: bool = False  # whether this run made the run folder (a refused start removes it again)
    writer: object = None
    committed: bool = False
    resolved: dict = field(default_factory=dict)  # values the task derived at start, config.yaml's resolved section
    started: float = field(default_factory=time.time)

    def commit(self) -> None:
        """Every check has passed: write config.yaml, start log.txt and TensorBoard. Before this, a job has
        written nothing into its run folder, so a refused start leaves it as it was."""
        if self.committed:
            return
        self.committed = True
        if self.env.is_main:
            atomic_write(self.run_dir / "config.yaml", config_io.dump(self.cfg, self.resolved))
            log_to_file(self.run_dir / "log.txt")
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def scalar(self, tag: str, value, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.lock is not None:
            self.lock.release()
            if self.created and not self.committed and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()


def autocast_factory(precision: str, device: torch.device) -> tuple[Callable, str]:
    """(factory of autocast contexts, resolved precision); "auto" is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return functools.partial(torch.autocast, device.type, dtype=dtype), precision


class StoppedAsAsked(Exception):
    """--stop-after-step was reached: every rank stops at the same step, its checkpoint written (exit code 0)."""


def run_job(cfg, body: Callable, *args):
    """start_job, body(job, *args), and the clean-up every job needs, whatever happens."""
    try:
        job = start_job(cfg)
    except BaseException:
        close_distributed(wait_for_peers=False)
        raise
    finished = False
    try:
        result = body(job, *args)
        finished = True
        return result
    except StoppedAsAsked:
        finished = True
        raise
    finally:
        job.close()
        close_distributed(wait_for_peers=finished)


def start_job(cfg) -> Job:
    """Join the process group, seed, claim the run folder (rank 0 locks it for the job's life), pick the precision.
    Nothing is written into the folder until Job.commit()."""
    env = init_distributed(cfg.device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(cfg.seed)
    setup_logging(None, env.is_main)
    if cfg.output is None:  # one new folder per run, named on rank 0 so that every rank uses the same one
        cfg = dataclasses.replace(cfg, output=all_gather_object(default_output(cfg.run_kind))[0])
    run_dir = Path(cfg.output)
    resume = getattr(cfg, "resume", False)
    if env.restart and not resume and any(all_gather_object(_has_checkpoint(run_dir))):
        log.warning("torchrun restart %d: resuming the checkpoint in %s", env.restart, run_dir)
        cfg, resume = dataclasses.replace(cfg, resume=True), True
    lock, created = _claim(run_dir, env, resume, getattr(cfg, "overwrite", False) or not hasattr(cfg, "resume"))
    autocast, precision = autocast_factory(cfg.precision, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")
    log.info("run folder %s | %d rank(s) on %s | precision %s", run_dir, env.world_size, env.device, precision)
    return Job(cfg, env, run_dir, autocast, scaler, lock, created)


def _has_checkpoint(run_dir: Path) -> bool:
    last = checkpoint_path(run_dir)
    return last.is_file() or previous_path(last).is_file()


def _claim(run_dir: Path, env: DistEnv, resume: bool, overwrite: bool) -> tuple[RunFolderLock | None, bool]:
    """Rank 0 checks and locks the folder; its verdict reaches every rank, so all refuse with the same line.
    A job without --resume (evaluate) replaces what its folder holds."""
    lock, created, refusal = None, False, None
    if env.is_main:
        created = not run_dir.exists()
        try:
            lock, notes = claim(run_dir, resume, overwrite)
            for note in notes:
                log.warning(note)
        except RunFolderError as e:
            refusal = str(e)
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
    refusal = all_gather_object(refusal)[0]
    if refusal is not None:
        raise RunFolderError(refusal)
    return lock, created


def use_sync_bn(cfg, env: DistEnv) -> bool:
    """--sync-bn as given, else on for NCCL searches of several ranks (the search then normalises over the global
    batch however it is split over GPUs, so the scaling rules see one batch) and for other NCCL jobs of several
    ranks whose per-rank batch is small."""
    if cfg.sync_bn is not None:
        return cfg.sync_bn
    several_gpus = env.device.type == "cuda" and env.world_size > 1
    return several_gpus and (cfg.run_kind == "search" or cfg.batch_size < SYNC_BN_BELOW)


def prepare_job_model(model: nn.Module, job: Job, exclude: tuple = ()) -> tuple[nn.Module, nn.Module]:
    """prepare_model with the job's settings."""
    cfg, env = job.cfg, job.env
    sync_bn = use_sync_bn(cfg, env)
    if sync_bn and cfg.sync_bn is None:
        log.info("SyncBatchNorm on: %d images per rank on %d GPUs (--no-sync-bn to normalise per rank)",
                 cfg.batch_size, env.world_size)
    return prepare_model(model, env.device, channels_last=cfg.channels_last, sync_bn=sync_bn, compile=cfg.compile,
                         world_size=env.world_size, exclude=exclude)


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool = True, sync_bn: bool = False,
                  compile: bool = False, world_size: int = 1, exclude: tuple = ()) -> tuple[nn.Module, nn.Module]:
    """Move to the device in the memory format the job runs in, optionally SyncBN and compile; wrap in DDP with
    several ranks.

    Parameters in `exclude` (the alphas) stay out of DDP's gradient buckets: their gradients are averaged
    explicitly, because DDP does not see gradients taken with torch.autograd.grad.
    Returns (plain module, module to call for training).
    """
    if sync_bn:  # PyTorch's SyncBatchNorm runs on GPUs only; gloo ranks get the all-reduced one of distributed.py
        model = (nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda"
                 else convert_gloo_sync_bn(model))
    model = model.to(device, memory_format=memory_format(channels_last))
    train_model = model
    if world_size > 1:
        for p in exclude:
            p.requires_grad_(False)  # DDP registers only parameters that require grad at construction
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        # on the CPU, 1x1 and depthwise weight gradients can come with strides that differ from their
        # parameters' only in size-1 dimensions (the same memory layout): DDP copies such a gradient into its
        # bucket (a few MB per step, measured in benchmarks/ddp_scaling.py) and warns; nothing is wrong
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        for p in exclude:
            p.requires_grad_(True)
    if compile:
        train_model = torch.compile(train_model)
    return model, train_model


def memory_format(channels_last: bool) -> torch.memory_format:
    """The one place the memory format is decided: channels_last on GPU and CPU alike (PyTorch's channels_last
    pooling and BN kernels are several times faster than its NCHW ones on the CPU too), unless turned off."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch in the job's memory format (images only; other tensors as they are)."""
    return x.contiguous(memory_format=memory_format(channels_last)) if x.dim() == 4 else x


class Meter:
    """Sums of loss, top-1, top-5 and count, kept on the device (no host sync per step)."""

    def __init__(self, device, state: torch.Tensor | None = None):
        self.sums = state.to(device) if state is not None else torch.zeros(4, device=device, dtype=torch.float64)

    @torch.no_grad()
    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """loss_sum: the loss summed over the batch's real samples (evaluation loaders pad with label -100)."""
        valid = labels >= 0
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = (top5 == labels[:, None]) & valid[:, None]
        self.sums += torch.stack([loss_sum.detach().double(), hit[:, 0].sum().double(),
                                  hit.any(dim=1).sum().double(), valid.sum().double()])

    def global_averages(self) -> dict:
        sums = all_reduce_sum(self.sums.clone())
        loss, top1, top5, n = sums.tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "count": int(n)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, autocast=contextlib.nullcontext, max_steps: int = 0,
             channels_last: bool | None = None, batch_statistics: bool = False) -> dict:
    """Loss, top-1 and top-5 over the whole (sharded) loader, averaged over all ranks; batches are put in the
    job's memory format when channels_last is given. batch_statistics: BatchNorm normalises by each batch's own
    statistics, as in training (DARTS-PT's measurements), and its running statistics are left as they were."""
    was_training = model.training
    saved = [b.clone() for b in model.buffers()] if batch_statistics else []
    model.train(batch_statistics)
    meter = Meter(next(model.parameters()).device)
    criterion = nn.CrossEntropyLoss(ignore_index=-100, reduction="sum")  # a batch may be all padding
    loader.set_epoch(0)
    for step, (x, y) in enumerate(loader):
        if max_steps and step >= max_steps:
            break
        with autocast():
            out = model(x if channels_last is None else to_memory_format(x, channels_last))
        logits = (out[0] if isinstance(out, tuple) else out).float()
        meter.update(criterion(logits, y), logits, y)
    for buffer, value in zip(model.buffers(), saved):
        buffer.copy_(value)
    model.train(was_training)
    return meter.global_averages()


def replica_digest(tensors) -> str:
    """SHA-256 of the exact bytes of these tensors: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(tensor_bytes(t))
    return h.hexdigest()


def check_replicas(tensors) -> str:
    """Fail loudly if the ranks' copies (weights and alphas) are no longer bit-identical; returns the digest."""
    digests = all_gather_object(replica_digest(tensors))
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks diverged: their weights/alphas differ (digests {sorted(set(digests))})")
    return digests[0]


class MemoryEstimateError(config_io.ConfigError):
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
