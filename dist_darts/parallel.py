"""A model made ready for the job's devices: memory format, SyncBatchNorm, DDP (the alphas kept out of its buckets),
torch.compile; and the check that every rank's replica is still bit-identical. Plain arguments (prepare_model),
so benchmarks and notebooks use it without a job.
"""

from __future__ import annotations

import hashlib
import warnings

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import tensor_bytes
from .distributed import DistEnv, all_gather_object, convert_gloo_sync_bn
from .job import Job
from .logs import log

SYNC_BN_BELOW = 32  # images per rank under which a multi-GPU job normalises over the global batch by default


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
