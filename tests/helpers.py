"""Shared helpers for the tests that run whole jobs in subprocesses."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

# tiny but real: the embedded digits data, a 3-cell network
TINY_SEARCH = ["--dataset", "digits", "--layers", "3", "--init-channels", "4", "--batch-size", "16",
               "--workers", "0", "--seed", "0", "--log-interval", "1"]
TINY_RETRAIN = ["--dataset", "digits", "--layers", "3", "--init-channels", "4", "--batch-size", "16",
                "--workers", "0", "--seed", "0", "--no-auxiliary", "--log-interval", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for_subprocess() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dist_darts", *args], capture_output=True, text=True,
                          env=env_for_subprocess(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def torchrun(nproc: int, *args, extra=(), timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", *extra, "-m", "dist_darts", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_for_subprocess(), timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def kill_when(proc: subprocess.Popen, ready, timeout=300, sig=signal.SIGKILL) -> None:
    """SIGKILL proc as soon as ready() is true."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (exit {proc.returncode}) before it could be killed")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting to kill")
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    proc.wait()


def _children_of_every_process() -> dict[int, list[int]]:
    kids = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while we looked
        kids.setdefault(parent, []).append(int(stat.parent.name))
    return kids


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    return _children_of_every_process().get(pid, [])


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (read from /proc)."""
    kids, found, todo = _children_of_every_process(), [], [pid]
    while todo:
        found.append(todo.pop())
        todo += kids.get(found[-1], [])
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_tree(proc: subprocess.Popen, timeout=60) -> None:
    """SIGKILL a process and all its descendants at once, as a crashed machine would, and wait until none is left.

    torchrun starts each rank in a session of its own, so killing the agent's process group would leave the ranks
    running: the tree is frozen (SIGSTOP, so nothing new is started), then killed.
    """
    os.kill(proc.pid, signal.SIGSTOP)
    tree = [proc.pid]
    for _ in range(3):  # a child forked just before its parent stopped shows up on the next look
        for pid in process_tree(proc.pid):
            if pid not in tree:
                tree.append(pid)
                os.kill(pid, signal.SIGSTOP)
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + timeout
    while any(_alive(pid) for pid in tree):
        assert time.time() < deadline, "killed processes did not end"
        time.sleep(0.05)


def checkpoint_step(path: Path):
    """(epoch, step) of a checkpoint, or None while there is none."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["epoch"], state["step"]


def model_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Smooth(nn.Module):
    """No batch statistics: a batch split into micro-batches or over ranks must give exactly the whole batch's
    gradients and step."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 4)
        self.alphas = nn.Parameter(torch.randn(3))

    def forward(self, x):
        w = torch.softmax(self.alphas, 0)
        return self.lin(w[0] * torch.tanh(x) + w[1] * torch.sin(x) + w[2] * x)

    def arch_parameters(self):
        return [self.alphas]

    def named_weights(self):
        return list(self.lin.named_parameters(prefix="lin"))

    def weights(self):
        return list(self.lin.parameters())

    @contextlib.contextmanager
    def sampling(self, phase, generator):  # plain DARTS: no noise to draw in either phase of a step
        yield
