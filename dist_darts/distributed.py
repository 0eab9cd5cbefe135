"""Process-group set-up and collective helpers: torchrun (single and multi-node), Ray Train, or one process.

The one module besides the CLI that reads the environment. Gloo on CPU, NCCL on GPU; LOCAL_RANK picks the GPU.
"""

from __future__ import annotations

import datetime
import gc
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    restart: int = 0  # torchrun's restart attempt (TORCHELASTIC_RESTART_COUNT): > 0 after a failed attempt

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


_OWN_GROUP = False  # whether init_distributed created the group (Ray Train creates and destroys its own)


def _listening_fd(host: str, port: int) -> int | None:
    """A socket listening on MASTER_ADDR:MASTER_PORT only, for rank 0's store, which takes the descriptor over:
    TCPStore's own server listens on every interface, so a store meant for 127.0.0.1 would be reachable from the
    network. None where host is no address of this machine (the store then listens as TCPStore does)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        server = socket.socket(family, kind, proto)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(address)
        server.listen(128)
        return server.detach()
    except OSError:
        return None


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Join (or create) the default process group; idempotent, and a no-op for a single process.

    Under torchrun the store is reached at MASTER_ADDR:MASTER_PORT and keys are prefixed per restart attempt
    (TORCHELASTIC_RESTART_COUNT), so ranks of a restarted attempt never meet stale keys of a failed one.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    restart = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device: cuda asked for, but this machine has no CUDA GPU PyTorch can use "
                          "(use --device cpu or auto)")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)

    if dist.is_available() and dist.is_initialized():  # e.g. Ray Train made the group already
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, restart)
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world_size == 1:
        return DistEnv(0, 1, local_rank, dev, restart)

    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    timeout = datetime.timedelta(seconds=timeout_s)
    # torchrun's agent hosts the store itself; otherwise rank 0 does
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    is_master = rank == 0 and not agent_store
    listen_fd = _listening_fd(host, port) if is_master else None
    store = dist.TCPStore(host, port, world_size, is_master=is_master, timeout=timeout,
                          **({} if listen_fd is None else {"master_listen_fd": listen_fd}))
    store = dist.PrefixStore(f"dist_darts/attempt_{restart}", store)
    dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world_size,
                            timeout=timeout)
    global _OWN_GROUP
    _OWN_GROUP = True
    return DistEnv(rank, world_size, local_rank, dev, restart)


def close_distributed(wait_for_peers: bool = True) -> None:
    """Leave the process group this module joined. wait_for_peers (every rank finished cleanly): meet at a barrier
    first, so no rank tears its gloo connections down while a peer is still completing a collective on them,
    which aborts that peer (SIGABRT). After a failure the peers may never arrive, so the caller passes False."""
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        # A finished job's DistributedDataParallel sits in a reference cycle, and its reducer keeps the group
        # alive: left to interpreter shutdown, the group's gloo threads are destroyed unjoined and the process
        # aborts ("terminate called without an active exception", about 1 run in 12). Free it now, while the
        # group is still whole.
        gc.collect()
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()
    _OWN_GROUP = False


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average tensors over ranks in place with ONE flat all-reduce (not one collective per tensor)."""
    n = world_size()
    if n == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(n)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return tensors


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def average_buffers_(module: nn.Module) -> None:
    """Average the module's floating buffers (BatchNorm running statistics) over ranks in place, so evaluation
    and checkpoints see the same statistics on every rank; integer counters are equal on every rank already."""
    all_reduce_mean_([b for b in module.buffers() if b.is_floating_point()])


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over every rank's batch for CPU (gloo) ranks, where nn.SyncBatchNorm does not run. The batch
    mean and variance come from sums all-reduced with torch.distributed.nn's differentiable all_reduce, so the
    backward pass is the global batch's too: N ranks of B/N images take one process's step at B (up to the
    order of the sums). Outside training, or alone, it is the plain BatchNorm."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x):
        if not self.training or world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # autograd-aware collectives
        dims = [0, *range(2, x.dim())]
        shape = [1, x.size(1)] + [1] * (x.dim() - 2)
        # the global count rides in the sums' all-reduce: one collective fewer per layer and forward
        sums = all_reduce(torch.cat([x.sum(dims), x.new_tensor([float(x.numel() // x.size(1))])]))
        mean, count = sums[:-1] / sums[-1], sums[-1]
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / count  # two passes, as exact as the plain BatchNorm's
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * count / (count - 1), alpha=m)  # unbiased, as PyTorch's
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_gloo_sync_bn(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm layer replaced in place by a GlooSyncBatchNorm holding the same parameters
    and buffers (the same tensors, so optimisers and checkpoints see no difference)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlooSyncBatchNorm):
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            for key, value in list(child._parameters.items()) + list(child._buffers.items()):
                setattr(synced, key, value)
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            convert_gloo_sync_bn(child)
    return module


def all_gather_object(obj) -> list:
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def seed_everything(seed: int) -> None:
    """The same seed on every rank: identical model init; data randomness is seeded per rank by the data layer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_model_randomness(seed: int, rank: int) -> None:
    """Give each rank its own torch generator (drop path, dropout) once the model is built: one GPU with the
    whole batch would draw independent masks for all samples, not the same mask on every shard. Reproducible
    for a given (seed, rank); the weights, built before from the shared seed, stay identical."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0]))
