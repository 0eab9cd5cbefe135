"""The memory estimate made before the first step: close to the measured peak, and a refusal when it cannot fit."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dist_darts.memory import available_memory, saved_activation_bytes
from dist_darts.spaces.cnn.supernet import Network
from helpers import cli, env_for_subprocess

# one step in a fresh process: the peak resident memory of the step over the memory before it (VmHWM - VmRSS)
MEASURE = r"""
import contextlib, json, sys
from types import SimpleNamespace
import torch, torch.nn as nn
from dist_darts.spaces.cnn import genotype as gt
from dist_darts.architect import Architect
from dist_darts.spaces.cnn.model import build_network
from dist_darts.search import search_memory, search_step
from dist_darts.spaces.cnn.supernet import Network
from dist_darts.train import retrain_memory, train_step

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

kind, C, layers, batch, size, unrolled, K = sys.argv[1], *map(int, sys.argv[2:])
torch.manual_seed(0)
criterion = nn.CrossEntropyLoss()
def images():
    return torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
if kind == "search":
    cfg = SimpleNamespace(init_channels=C, layers=layers, batch_size=batch, unrolled=bool(unrolled), partial_channels=K)
    model = Network(C, 10, layers, partial_channels=K)
    estimate = search_memory(cfg, model, 10, size, "fp32", 1)
    w = torch.optim.SGD(model.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, criterion, torch.optim.Adam(model.arch_parameters()), w, 0.9, 3e-4,
                          unrolled=cfg.unrolled)
    batches = (images(), images())
    step = lambda: search_step(model, model, architect, w, criterion, batches, 0.025, 5.0, contextlib.nullcontext)
else:
    genotype = gt.load("DARTS_V2")
    cfg = SimpleNamespace(init_channels=C, layers=layers, batch_size=batch, auxiliary=True, ema_decay=0)
    model = build_network(genotype, 10, size, layers, C, True)
    estimate = retrain_memory(cfg, model, genotype, 10, size, "fp32", 1)
    w = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batches = images()
    step = lambda: train_step(model, model, w, scaler, criterion, batches, 5.0, 0.4, contextlib.nullcontext)
model.to(memory_format=torch.channels_last)
before = status("VmRSS")
step()
print(json.dumps({"estimate": estimate, "peak": status("VmHWM") - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("args", [
    ("search", 8, 3, 8, 32, 0, 1),  # first order
    ("search", 8, 3, 4, 32, 1, 1),  # second order
    ("search", 8, 3, 8, 32, 0, 4),  # PC-DARTS
    ("search", 4, 3, 2, 64, 0, 1),  # measured on 32-px images and scaled by the area
    ("retrain", 12, 5, 16, 32, 0, 1),  # measured with 4 and 8 channels and extrapolated
])
def test_estimate_is_close_to_the_measured_peak(args):
    proc = subprocess.run([sys.executable, "-c", MEASURE, *map(str, args)], capture_output=True, text=True,
                          env=env_for_subprocess(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.splitlines()[-1])
    assert 0.7 < r["estimate"] / r["peak"] < 1.6, r


def test_the_estimate_leaves_the_random_state_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert saved_activation_bytes(lambda: Network(4, 10, 3), 8) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_available_memory_on_the_cpu():
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert 0 < available_memory(torch.device("cpu")) <= total


def test_a_step_that_cannot_fit_is_refused_with_one_line(tmp_path):
    out = tmp_path / "run"
    proc = cli("search", "--dataset", "synthetic", "--layers", "5", "--init-channels", "8", "--batch-size", "8192",
               "--workers", "0", "--epochs", "1", "--output", str(out), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "GiB" in lines[0] and "free" in lines[0] and "--batch-size" in lines[0], lines[0]
    assert "memory estimate" in proc.stdout
    assert not out.exists()  # refused before the run folder got its first file


def test_cpu_ranks_of_one_host_share_its_memory(monkeypatch):
    from dist_darts import memory
    job = SimpleNamespace(cfg=SimpleNamespace(batch_size=64, init_channels=16, layers=8),
                          env=SimpleNamespace(device=torch.device("cpu"), rank=0))
    two_ranks = [("node1", "cpu", 3 * 2**30), ("node1", "cpu", 3 * 2**30)]
    monkeypatch.setattr(memory, "all_gather_object", lambda mine: two_ranks)
    memory.check_memory(job, 2**30, "search")  # 2 x 1 GiB of 3 GiB
    with pytest.raises(memory.MemoryEstimateError, match=r"4\.00 GiB for 2 ranks .* node1 has only 3\.00 GiB"):
        memory.check_memory(job, 2 * 2**30, "search")
    one_each = [("node1", "cpu", 3 * 2**30), ("node2", "cpu", 3 * 2**30)]
    monkeypatch.setattr(memory, "all_gather_object", lambda mine: one_each)
    memory.check_memory(job, 2 * 2**30, "search")
