"""SIGKILL in the middle of an epoch, then --resume: the run ends exactly where an uninterrupted one does."""

import subprocess
import sys

import pytest

from helpers import (TINY_RETRAIN, TINY_SEARCH, assert_same_state, checkpoint_step, cli, env_for_subprocess,
                     kill_when, model_state)

JOBS = {
    "search-1st": ["search", *TINY_SEARCH],
    "search-2nd": ["search", *TINY_SEARCH, "--unrolled"],
    "retrain": ["retrain", *TINY_RETRAIN, "--drop-path-prob", "0.3", "--cutout", "8"],  # drop path draws RNG
}
COMMON = ["--epochs", "2", "--steps-per-epoch", "4", "--checkpoint-steps", "1", "--deterministic"]


@pytest.mark.parametrize("job", list(JOBS))
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path, job):
    args = JOBS[job] + COMMON
    cli(*args, "--output", str(tmp_path / "straight"))

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dist_darts", *args, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for_subprocess())
    ckpt = out / "checkpoints" / "last.pt"
    kill_when(proc, lambda: (checkpoint_step(ckpt) or (0, 0))[1] >= 2)  # inside epoch 0, after step 2
    epoch, step = checkpoint_step(ckpt)
    assert not (out / ("genotype.json" if job.startswith("search") else "metrics.json")).exists()
    resumed = cli(*args, "--output", str(out), "--resume")
    assert f"resumed from {ckpt} at epoch {epoch} step {step}" in resumed.stdout
    assert_same_state(model_state(tmp_path / "straight"), model_state(out))
