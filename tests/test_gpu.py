"""On a CUDA GPU: the search and retrain steps make no host-device synchronisation (loss, metrics and the
divergence check stay on the device until a log interval), and a one-rank NCCL group works. Skipped without a
GPU; benchmarks/gpu_check.py runs them first."""

import pytest
import torch
import torch.nn as nn

from dist_darts.architect import Architect
from dist_darts.job import autocast_factory
from dist_darts.meters import Meter
from dist_darts.parallel import prepare_model
from dist_darts.spaces.cnn.genotype import DARTS_V2
from dist_darts.spaces.cnn.model import NetworkCIFAR
from dist_darts.search import search_step
from dist_darts.spaces.cnn.supernet import Network
from dist_darts.train import WeightEMA, train_step

pytestmark = pytest.mark.gpu


def batches(device, n=16, classes=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g).pin_memory().to(device, non_blocking=True)
    y = torch.randint(0, classes, (n,), generator=g).pin_memory().to(device, non_blocking=True)
    return x, y


def no_sync(step, steps=3):
    step()  # the first step may allocate, pick cuDNN algorithms, build optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("unrolled", [False, True])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_search_step_makes_no_host_sync(unrolled, precision):
    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    model, train_model = prepare_model(Network(8, 10, 3), device)
    autocast, _ = autocast_factory(precision, device)
    criterion = nn.CrossEntropyLoss()
    w_opt = torch.optim.SGD(model.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    architect = Architect(model, criterion, a_opt, w_opt, 0.9, 3e-4, unrolled=unrolled, autocast=autocast)
    train, val = batches(device), batches(device)
    meter = Meter(device)

    def step():
        out = search_step(model, train_model, architect, w_opt, criterion, (train, val), 0.025, 5.0, autocast)
        meter.update(out.loss * out.labels.numel(), out.logits, out.labels)

    no_sync(step)


def test_retrain_step_with_ema_makes_no_host_sync():
    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    model, train_model = prepare_model(NetworkCIFAR(8, 10, 5, True, DARTS_V2), device)
    model.drop_path_prob = 0.2
    autocast, _ = autocast_factory("bf16", device)
    optimizer = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    ema = WeightEMA(model, 0.999)
    criterion = nn.CrossEntropyLoss()
    batch = batches(device)
    meter = Meter(device)

    def step():
        out = train_step(model, train_model, optimizer, scaler, criterion, batch, 5.0, 0.4, autocast, ema)
        meter.update(out.loss * out.labels.numel(), out.logits, out.labels)

    no_sync(step)


def test_one_rank_nccl_group(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        t = torch.ones(3, device="cuda")
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0, 1.0]
    finally:
        dist.destroy_process_group()
