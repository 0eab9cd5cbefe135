"""The epoch driver every job runs on: progress without a terminal, divergence, what a resume checks."""

import json

import torch

from dist_darts import config, driver, train
from dist_darts.data import build_loaders
from dist_darts.job import run_job
from helpers import TINY_RETRAIN, TINY_SEARCH, cli, model_state

TINY = {"dataset": "digits", "layers": 3, "init_channels": 4, "batch_size": 16, "workers": 0, "auxiliary": False}


def test_without_a_terminal_progress_is_plain_lines(tmp_path):
    proc = cli("search", *TINY_SEARCH, "--epochs", "1", "--steps-per-epoch", "3", "--log-interval", "1",
               "--output", str(tmp_path))
    log_txt = (tmp_path / "log.txt").read_text()
    for text in (proc.stdout, log_txt):
        assert "\r" not in text
        lines = [ln for ln in text.splitlines() if " search 1/1 step " in ln]
        assert [ln.split(" step ")[1].split(" ")[0] for ln in lines] == ["1/3", "2/3", "3/3"]
        assert all("loss " in ln and "top1 " in ln and "img/s" in ln and "ETA epoch" in ln for ln in lines)


def test_a_diverging_run_stops_with_one_line_and_exit_1(tmp_path):
    proc = cli("retrain", *TINY_RETRAIN, "--epochs", "1", "--steps-per-epoch", "3", "--learning-rate", "1e38",
               "--output", str(tmp_path), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "dist-darts: non-finite loss at epoch 1 step 2 (the run diverged; no checkpoint written yet): try a lower "
        "--learning-rate, a smaller --grad-clip, or --precision fp32"]


class PoisonedRetrain(train.RetrainTask):
    """The real retrain, whose loss turns non-finite at one step of the second epoch."""

    def begin_epoch(self, epoch, start_step):
        self.epoch, self.at = epoch, start_step
        return super().begin_epoch(epoch, start_step)

    def step(self, batch):
        out = super().step(batch)
        self.at += 1
        if self.epoch == 1 and self.at == 2:
            out.loss = out.loss * float("nan")
        return out


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config.build(config.RetrainConfig, {}, dict(TINY, epochs=2, steps_per_epoch=3, log_interval=100,
                                                       output=str(tmp_path)))

    def body(job):
        task = PoisonedRetrain(job, build_loaders(job.cfg, job.env, "retrain"), train.gt.load("DARTS_V2"))
        return driver.run_epochs(job, task)

    try:
        run_job(cfg, body)
        raise AssertionError("the poisoned run did not stop")
    except driver.Diverged as e:
        assert str(e).startswith("non-finite loss at epoch 2 step 2 (the run diverged; last good checkpoint ")
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(torch.isfinite(t).all() for t in model_state(tmp_path).values() if t.is_floating_point())
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1]


def test_resume_checks_the_genotype_the_file_now_holds(tmp_path):
    from dist_darts.spaces.cnn import genotype as gt
    geno = tmp_path / "cell.json"
    gt.save(gt.DARTS_V2, geno)
    args = ["retrain", *TINY_RETRAIN, "--genotype", str(geno), "--epochs", "1", "--steps-per-epoch", "2",
            "--output", str(tmp_path / "run")]
    cli(*args)
    gt.save(gt.DARTS_V1, geno)  # same path, another cell
    proc = cli(*args, "--resume", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "was trained with another genotype than this run's" in proc.stderr


def test_ctrl_c_ends_a_job_with_one_line_and_a_resumable_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys

    from helpers import checkpoint_step, env_for_subprocess, kill_when
    out = tmp_path / "run"
    args = ["search", *TINY_SEARCH, "--epochs", "2", "--steps-per-epoch", "6", "--checkpoint-steps", "1",
            "--output", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "dist_darts", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env_for_subprocess())
    last = out / "checkpoints" / "last.pt"
    kill_when(proc, lambda: (checkpoint_step(last) or (0, 0)) >= (0, 2), sig=signal.SIGINT)
    stderr = proc.stderr.read()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("dist-darts: interrupted")
    resumed = cli(*args, "--resume")
    assert "resumed from" in resumed.stdout


def test_stop_after_step_ends_with_one_line_and_a_checkpoint_that_resumes_exactly(tmp_path):
    """--stop-after-step inside an epoch and at an epoch's end: exit 0, one line, a checkpoint at that step; the
    resumed runs end where an uninterrupted one does."""
    args = ["retrain", *TINY_RETRAIN, "--epochs", "2", "--steps-per-epoch", "3", "--log-interval", "100"]
    cli(*args, "--output", str(tmp_path / "straight"))
    for stop, where in ((2, (0, 2)), (3, (1, 0))):
        out = tmp_path / f"stopped{stop}"
        proc = cli(*args, "--output", str(out), "--stop-after-step", str(stop))
        assert proc.stdout.strip().splitlines()[-1].startswith(f"dist-darts: stopped after step {stop} as "
                                                                "--stop-after-step asked")
        state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
        assert (state["epoch"], state["step"]) == where and not (out / "metrics.json").exists()
        cli(*args, "--output", str(out), "--resume")
        straight, resumed = model_state(tmp_path / "straight"), model_state(out)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight)
        assert (json.loads((out / "history.json").read_text())
                == json.loads((tmp_path / "straight" / "history.json").read_text()))
