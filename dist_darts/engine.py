"""What the search and retrain jobs share: job set-up, precision, DDP wrapping, metrics, evaluation, resume."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint as ckpt_io
from . import config as config_io
from .distributed import DistEnv, all_gather_object, all_reduce_sum, barrier, init_distributed, seed_everything

log = logging.getLogger("dist_darts")

# called on every rank after an epoch's checkpoint is written: (metrics, checkpoint path); Ray reports through it
EpochHook = Callable[[dict, Path], None]


@dataclass
class Job:
    cfg: object
    env: DistEnv
    run_dir: Path
    autocast: object  # a factory of autocast contexts: the loops never branch on precision
    scaler: torch.amp.GradScaler
    writer: object = None
    started: float = field(default_factory=time.time)

    def scalar(self, tag: str, value, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _setup_logging(run_dir: Path, is_main: bool) -> None:
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if is_main:
        file = logging.FileHandler(run_dir / "log.txt")
        file.setFormatter(fmt)
        log.addHandler(file)


def start_job(cfg) -> Job:
    """Join the process group, seed, make the run folder (rank 0 writes config.yaml), pick the precision."""
    env = init_distributed(cfg.device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(cfg.seed)
    run_dir = Path(cfg.output)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_io.save(cfg, str(run_dir / "config.yaml"))
    barrier()
    _setup_logging(run_dir, env.is_main)

    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if env.device.type == "cuda" else "fp32"
    if precision == "fp32":
        autocast = contextlib.nullcontext
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        autocast = functools.partial(torch.autocast, env.device.type, dtype=dtype)
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")

    writer = None
    if env.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tensorboard"))
    log.info("run folder %s | %d rank(s) on %s | precision %s", run_dir, env.world_size, env.device, precision)
    return Job(cfg, env, run_dir, autocast, scaler, writer)


def prepare_model(model: nn.Module, job: Job, exclude: tuple = ()) -> tuple[nn.Module, nn.Module]:
    """Move to the device (channels_last unless turned off), optionally SyncBN and compile; wrap in DDP with several
    ranks.

    Parameters in `exclude` (the alphas) stay out of DDP's gradient buckets: their gradients are averaged
    explicitly, because DDP does not see gradients taken with torch.autograd.grad.
    Returns (plain module, module to call for training).
    """
    cfg, env = job.cfg, job.env
    if cfg.sync_bn:
        if env.device.type != "cuda":
            raise config_io.ConfigError("sync-bn: SyncBatchNorm needs GPUs (PyTorch refuses CPU modules)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # on the CPU too: PyTorch's channels_last pooling and BN kernels are several times faster than its NCHW ones
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    model = model.to(env.device, memory_format=memory_format)
    train_model = model
    if env.world_size > 1:
        for p in exclude:
            p.requires_grad_(False)  # DDP registers only parameters that require grad at construction
        train_model = DDP(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
        # on the CPU, 1x1 and depthwise weight gradients can come with strides that differ from their
        # parameters' only in size-1 dimensions (the same memory layout): DDP copies such a gradient into its
        # bucket (a few MB per step, measured in benchmarks/ddp_scaling.py) and warns; nothing is wrong
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        for p in exclude:
            p.requires_grad_(True)
    if cfg.compile:
        train_model = torch.compile(train_model)
    return model, train_model


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
def evaluate(model: nn.Module, loader, job: Job, max_steps: int = 0) -> dict:
    """Loss, top-1 and top-5 over the whole (sharded) loader, averaged over all ranks."""
    was_training = model.training
    model.eval()
    meter = Meter(job.env.device)
    criterion = nn.CrossEntropyLoss(ignore_index=-100, reduction="sum")  # a batch may be all padding
    loader.set_epoch(0)
    for step, (x, y) in enumerate(loader):
        if max_steps and step >= max_steps:
            break
        with job.autocast():
            out = model(x)
        logits = (out[0] if isinstance(out, tuple) else out).float()
        meter.update(criterion(logits, y), logits, y)
    model.train(was_training)
    return meter.global_averages()


def progress(total: int, initial: int, job: Job, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, disable=not job.env.is_main, dynamic_ncols=True,
                leave=False, file=sys.stdout)


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.pt"


def resume_state(job: Job, kind: str, keys: tuple[str, ...]) -> dict | None:
    """The latest checkpoint of the run folder when --resume is given (checked against this run), else None."""
    path = checkpoint_path(job.run_dir)
    if not job.cfg.resume:
        return None
    seen = all_gather_object(path.is_file())
    if any(seen) and not all(seen):  # half the ranks resuming and half starting over would diverge
        blind = [r for r, s in enumerate(seen) if not s]
        raise ckpt_io.CheckpointError(f"checkpoint {path} is missing on rank(s) {blind}: put --output on storage "
                                      "every node mounts at the same path")
    if not path.is_file():
        log.warning("--resume: no checkpoint in %s yet; starting from scratch", path.parent)
        return None
    state = ckpt_io.load(path, kind)
    ckpt_io.check_compatible(state, path, job.env.world_size, config_io.to_dict(job.cfg), keys)
    return state


def write_checkpoint(job: Job, path: Path, state: dict, meter: Meter | None) -> None:
    """Gather every rank's RNG state and let rank 0 write atomically; all ranks call this."""
    rngs = all_gather_object(ckpt_io.rng_state())
    if job.env.is_main:
        state = dict(state, format=ckpt_io.FORMAT, world_size=job.env.world_size, rng=rngs,
                     config=config_io.to_dict(job.cfg), meter=None if meter is None else meter.sums.cpu())
        ckpt_io.save_atomic(state, path)
    barrier()


def restore_rng(state: dict, job: Job) -> None:
    ckpt_io.set_rng_state(state["rng"][job.env.rank])


def replica_digest(tensors) -> str:
    """SHA-256 of the exact bytes of these tensors: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())  # any memory format
    return h.hexdigest()


def check_replicas(tensors) -> str:
    """Fail loudly if the ranks' copies (weights and alphas) are no longer bit-identical; returns the digest."""
    digests = all_gather_object(replica_digest(tensors))
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks diverged: their weights/alphas differ (digests {sorted(set(digests))})")
    return digests[0]


def summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}}  {v}" for k, v in rows] + [line])
