"""torchrun with 2 gloo ranks on CPU: identical replicas, world-size checks, a killed rank survived."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import (TINY_SEARCH, checkpoint_step, children, cli, env_for_subprocess, free_port, kill_tree,
                     torchrun)

pytestmark = pytest.mark.slow  # torchrun jobs of several processes


def test_two_ranks_stay_bit_identical_in_a_second_order_search(tmp_path):
    # first order under torchrun: the killed-and-resumed test below checks its replicas every epoch
    proc = torchrun(2, "search", *TINY_SEARCH, "--unrolled", "--epochs", "1", "--steps-per-epoch", "3",
                    "--output", str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2 and len(result["replica_digest"]) == 64  # digests compared across ranks
    assert "ranks diverged" not in proc.stdout + proc.stderr
    # a resume with another world size is refused in one line
    bad = cli("search", *TINY_SEARCH, "--unrolled", "--epochs", "2", "--steps-per-epoch", "3", "--output", str(tmp_path),
              "--resume", check=False)
    assert bad.returncode == 2 and "written by 2 ranks but this run has 1" in bad.stderr


def test_max_restarts_survives_a_killed_rank(tmp_path):
    args = ["search", *TINY_SEARCH, "--epochs", "2", "--steps-per-epoch", "4", "--checkpoint-steps", "1",
            "--output", str(tmp_path), "--resume"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "dist_darts", *args]
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env_for_subprocess())
    ckpt = tmp_path / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while (checkpoint_step(ckpt) or (0, 0))[1] < 1:
        assert agent.poll() is None and time.time() < deadline, "run ended before a rank could be killed"
        time.sleep(0.05)
    workers = children(agent.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    output, _ = agent.communicate(timeout=600)
    assert agent.returncode == 0, output[-4000:]
    assert "resumed from" in output
    assert (tmp_path / "genotype.json").exists()


def test_two_ranks_killed_mid_epoch_then_resumed_report_the_uninterrupted_history(tmp_path):
    """Every rank's running sums are checkpointed: the resumed epoch's train loss and top-1 are exactly those of
    a run that was never killed."""
    args = ["search", *TINY_SEARCH, "--epochs", "1", "--steps-per-epoch", "4", "--checkpoint-steps", "1",
            "--deterministic"]
    torchrun(2, *args, "--output", str(tmp_path / "straight"))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "dist_darts", *args, "--output", str(out)]
    agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for_subprocess())
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while (checkpoint_step(ckpt) or (0, 0))[1] < 2:
        assert agent.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    kill_tree(agent)  # the agent and both ranks at once
    assert checkpoint_step(ckpt)[0] == 0  # killed inside the epoch
    torchrun(2, *args, "--output", str(out), "--resume")
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert json.loads((out / "history.json").read_text()) == straight
