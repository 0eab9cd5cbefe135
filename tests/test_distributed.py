"""Real torch.distributed process groups (gloo, 2 ranks on CPU): gradient averaging in the architect."""

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from dist_darts.architect import Architect
from dist_darts.spaces.cnn import ops
from dist_darts.distributed import (all_reduce_mean_, average_buffers_, close_distributed, init_distributed,
                                    seed_everything, seed_model_randomness)
from dist_darts.spaces.cnn.model import NetworkCIFAR
from helpers import Smooth, TINY_SEARCH, cli, free_port


def _alpha_grads(rank, world_size, unrolled, average):
    torch.manual_seed(1)
    xt, yt = torch.randn(8, 6, dtype=torch.double), torch.randint(0, 4, (8,))
    xv, yv = torch.randn(8, 6, dtype=torch.double), torch.randint(0, 4, (8,))
    shard = slice(rank * 8 // world_size, (rank + 1) * 8 // world_size)
    net = Smooth().double()
    w_opt = torch.optim.SGD([p for _, p in net.named_weights()], 0.1, momentum=0.9, weight_decay=3e-4)
    for _, p in net.named_weights():
        w_opt.state[p]["momentum_buffer"] = torch.full_like(p, 0.01)
    arch = Architect(net, nn.CrossEntropyLoss(), torch.optim.Adam(net.arch_parameters()), w_opt, 0.9, 3e-4,
                     unrolled=unrolled, average=average)
    (g,), _ = arch.alpha_gradients(xt[shard], yt[shard], xv[shard], yv[shard], 0.1)
    return g


def _worker(rank, world_size, port, unrolled, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    env = init_distributed("cpu")
    assert env.world_size == world_size and init_distributed("cpu").rank == rank  # idempotent
    g = _alpha_grads(rank, world_size, unrolled, all_reduce_mean_)
    torch.save(g, os.path.join(out, f"rank{rank}.pt"))
    close_distributed()


@pytest.mark.parametrize("unrolled", [False, True], ids=["first-order", "second-order"])
def test_two_ranks_half_batch_equal_one_rank_full_batch(tmp_path, unrolled):
    mp.spawn(_worker, args=(2, free_port(), unrolled, str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(g0, g1)  # identical on both ranks
    full = _alpha_grads(0, 1, unrolled, lambda t: t)
    assert torch.allclose(g0, full, atol=1e-10, rtol=1e-8), (g0, full)


def test_all_reduce_mean_averages_in_place(tmp_path):
    mp.spawn(_reduce_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"r{r}.pt") for r in range(2))
    assert torch.equal(a[0], torch.full((2, 3), 0.5)) and torch.equal(a[1], torch.full((4,), 0.5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _reduce_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    init_distributed("cpu")
    ts = [torch.full((2, 3), float(rank)), torch.full((4,), float(rank))]
    all_reduce_mean_(ts)
    torch.save(ts, os.path.join(out, f"r{rank}.pt"))
    close_distributed()


def _tiny_retrain_net(seed):
    seed_everything(seed)
    return NetworkCIFAR(4, 10, 3, False, "DARTS_V2").train()


def _drop_path_mask():
    return ops.drop_path(torch.ones(64, 1, 1, 1), 0.5).bool().flatten()


def _shard(rank):
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10 + rank))


def _model_rank_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    init_distributed("cpu")
    net = _tiny_retrain_net(0)
    seed_model_randomness(0, rank)
    mask = _drop_path_mask()
    with torch.no_grad():
        net(_shard(rank))  # a different shard on each rank: the running statistics drift apart
    before = [b.clone() for b in net.buffers()]
    average_buffers_(net)
    torch.save({"weights": [p.detach() for p in net.parameters()], "mask": mask, "before": before,
                "after": list(net.buffers())}, os.path.join(out, f"m{rank}.pt"))
    close_distributed()


def test_per_rank_model_randomness_and_averaged_bn_statistics(tmp_path):
    mp.spawn(_model_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"m{r}.pt") for r in range(2))
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"], r1["weights"]))  # bit-identical weights
    assert not torch.equal(r0["mask"], r1["mask"])  # but each rank its own drop-path masks
    seed_model_randomness(0, 1)
    assert torch.equal(_drop_path_mask(), r1["mask"])  # reproducible for (seed, rank)
    assert any(not torch.equal(a, b) for a, b in zip(r0["before"], r1["before"]))
    for a, b, pre0, pre1 in zip(r0["after"], r1["after"], r0["before"], r1["before"]):
        assert torch.equal(a, b)  # identical on both ranks after averaging
        if a.is_floating_point():
            assert torch.allclose(a, (pre0 + pre1) / 2)
        else:
            assert torch.equal(a, pre0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line_of_bad_input(tmp_path):
    proc = cli("search", *TINY_SEARCH, "--device", "cuda", "--epochs", "1", "--output", str(tmp_path / "run"),
               check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cuda" in proc.stderr
