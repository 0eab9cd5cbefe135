"""SIGKILL in the middle of an epoch, then --resume: the run ends exactly where an uninterrupted one does."""

import subprocess
import sys

import pytest

from helpers import (TINY_RETRAIN, TINY_SEARCH, assert_same_state, checkpoint_step, cli, env_for_subprocess,
                     kill_when, model_state)

pytestmark = pytest.mark.slow  # jobs killed and resumed in subprocesses

JOBS = {  # a first-order search killed and resumed: tests/test_torchrun.py, on 2 ranks
    "search-2nd": ["search", *TINY_SEARCH, "--unrolled"],
    "retrain": ["retrain", *TINY_RETRAIN, "--drop-path-prob", "0.3", "--cutout", "8"],  # drop path draws RNG
}
COMMON = ["--epochs", "2", "--steps-per-epoch", "3", "--checkpoint-steps", "1", "--deterministic"]


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


@pytest.mark.parametrize("kind", ["search", "retrain"])
def test_resuming_a_finished_run_reports_its_result_again(tmp_path, kind):
    """A Ray trial restarted after its last epoch (its stage unfinished) must still hand its metrics to Tune."""
    from dist_darts import config, search, train
    cls, run = (config.SearchConfig, search.run) if kind == "search" else (config.RetrainConfig, train.run)
    settings = {"dataset": "digits", "layers": 3, "init_channels": 4, "batch_size": 16, "workers": 0,
                "epochs": 1, "steps_per_epoch": 2, "output": str(tmp_path)}
    if kind == "retrain":
        settings["auxiliary"] = False
    first, again = [], []
    result = run(config.build(cls, {}, settings), on_epoch=lambda m, c: first.append(m))
    resumed = run(config.build(cls, {}, dict(settings, resume=True)), on_epoch=lambda m, c: again.append(m))
    assert len(first) == 1 and again == first
    assert resumed.genotype == result.genotype if kind == "search" else resumed.test_top1 == result.test_top1
