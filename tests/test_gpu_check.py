"""benchmarks/gpu_check.py at toy size on the CPU: every part of the GPU check runs and passes (on a GPU it is
run by hand, at the paper's sizes)."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import env_for_subprocess

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_the_cpu():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--toy",
                           "--steps", "1", "--warmup", "1", "--no-record"], capture_output=True, text=True,
                          env=env_for_subprocess(), cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "ok   gpu-marked tests:" in out and "(no GPU: skipped)" in out
    assert "ok   2-step fp32 search stays finite" in out and "ok   2-step fp32 retrain stays finite" in out
    assert "ok   2-step fp32 nb201 search stays finite" in out and "ok   2-step fp32 nb201 retrain stays finite" in out
    assert "ok   ImageNet search recipe (toy size) runs: 128 px, 2 epochs" in out
    for name in ("search order 1 batch 8 fp32", "search order 2 batch 8 bf16", "retrain DARTS_V2 batch 8 eager",
                 "retrain DARTS_V2 batch 8 torch.compile"):
        assert f"| {name} |" in out, name
    assert "n/a (CPU)" in out
