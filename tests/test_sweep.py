"""`dist-darts sweep` on a real local Ray runtime: all three stages, a killed worker, a killed driver."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.config import ConfigError, SweepConfig
from dist_darts.spaces.rnn import genotype as rgt
from helpers import checkpoint_step, env_for_subprocess

pytestmark = pytest.mark.slow  # whole sweeps on a real Ray runtime

pytest.importorskip("ray")

TINY_SWEEP = ["sweep", "--seeds", "2", "--dataset", "digits", "--layers", "3", "--init-channels", "4",
              "--batch-size", "16", "--steps-per-epoch", "3", "--checkpoint-steps", "1", "--search-epochs", "2",
              "--select-epochs", "1", "--final-epochs", "1", "--repeats", "2", "--cpus-per-worker", "0.5",
              "--max-failures", "2"]


def _ray_train_workers() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _wait(predicate, proc, what, timeout=400):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended (exit {proc.returncode}) while waiting for {what}:\n"
                                 f"{proc.stdout.read()[-3000:] if proc.stdout else ''}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sweep_survives_a_killed_worker_and_a_killed_driver(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dist_darts", *TINY_SWEEP, "--output", str(out)]
    # its own session: killing the group takes the driver's private Ray runtime down with it, like a crash
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env_for_subprocess(), start_new_session=True)
    try:
        checkpoints = [out / "search" / f"seed_{s}" / "checkpoints" / "last.pt" for s in (0, 1)]
        # both trials have a checkpoint: whichever worker dies, its retry has something to resume from
        _wait(lambda: all((checkpoint_step(c) or (0, 0)) >= (0, 1) for c in checkpoints), driver, "checkpoints")
        workers = _ray_train_workers()
        assert workers, "no Ray Train worker process found"
        for pid in workers:  # workers lost mid-trial: Ray retries, the retries resume
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # its trial just ended
                pass

        log = out / "sweep.log"
        _wait(lambda: log.is_file() and "stage 2/3" in log.read_text(), driver, "stage 1 to finish")
        finished = {s: (out / "search" / f"seed_{s}" / "result.json").stat().st_mtime for s in (0, 1)}
        os.killpg(driver.pid, signal.SIGKILL)  # the driver dies between stages
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()

    search_logs = [(out / "search" / f"seed_{s}" / "log.txt").read_text() for s in (0, 1)]
    assert any("resumed from" in text for text in search_logs), "the retried trial did not resume"

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env_for_subprocess(),
                             timeout=900, start_new_session=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "stage search: finished earlier, restoring" in resumed.stdout
    for s in (0, 1):  # finished search trials were not run again
        assert (out / "search" / f"seed_{s}" / "result.json").stat().st_mtime == finished[s]

    report = json.loads((out / "report.json").read_text())
    assert {"winner", "trials", "final"} <= report.keys()
    assert [t["seed"] for t in report["trials"]] == [0, 1]
    # the paper's protocol: the winner has the best validation top-1 of the selection retrains (a hold-out of the
    # training images); the test split is read by the final retrains only
    best = max(report["trials"], key=lambda t: (t["select_val_top1"], -t["seed"]))
    assert report["winner"]["seed"] == best["seed"]
    assert report["winner"]["genotype"] == best["genotype"]
    assert len(report["final"]["runs"]) == 2 and report["final"]["std"] >= 0.0
    assert 0.0 <= report["final"]["mean"] <= 100.0 and report["final"]["metric"] == "test_top1"
    assert set(report["splits"]) == {"search_val_top1", "select_val_top1", "test_top1", "test_top5"}
    for s in (0, 1):
        selected = out / "select" / f"seed_{s}"
        if selected.is_dir():  # never the test split, and best.pt chosen on the hold-out
            metrics = json.loads((selected / "metrics.json").read_text())
            assert metrics["test_top1"] is None and metrics["best_val_top1"] is not None
            config = (selected / "config.yaml").read_text()
            assert "val_portion: 0.1" in config and "evaluate_test: false" in config
    md = (out / "report.md").read_text()
    assert "| seed |" in md and "**winner**" in md and "method darts, derivation original" in md
    for t in report["trials"]:  # the collapse count per seed, to compare a sweep per method seed by seed
        assert t["param_free_normal"] == sum(op in ("skip_connect", "max_pool_3x3", "avg_pool_3x3")
                                             for op, _ in gt.from_dict(t["genotype"]).normal)
        assert f"| {t['param_free_normal']}/8 |" in md
        assert {"noise_scale_weights", "noise_scale_alphas"} <= t.keys()  # issue 26: B_noise per seed
    assert "B_noise weights / alphas" in md
    assert (out / "winner_normal.png").exists() and (out / "selection.png").exists()
    # each trial's reports as they arrived: one line each, in the sweep's log and on its console, no Tune tables
    log_text = (out / "sweep.log").read_text()
    for pattern in (r"search seed_[01]: epoch \d+/\d+ \| val top-1 [\d.]+ % \| ETA \d+:\d\d:\d\d",
                    r"select seed_[01]: epoch \d+/\d+ \| val top-1 [\d.]+ % \(best [\d.]+ %\) \| ETA \d+:\d\d:\d\d",
                    r"final repeat_[01]: epoch \d+/\d+ \| train top-1 [\d.]+ % \| ETA \d+:\d\d:\d\d"):
        assert re.search(pattern, log_text), pattern
    assert re.search(r"final repeat_[01]: epoch", resumed.stdout)
    assert log_text.index("stage 2/3") < re.search("select seed_", log_text).start() < log_text.index("stage 3/3")
    assert "Trial status" not in resumed.stdout and "\r" not in log_text


RNN_SIZES = "dataset: pydoc\nbatch-size: 8\nbptt: 10\nemsize: 16\nnhid: 16\nsteps-per-epoch: 3\n" \
            "eval-batch-size: 4\n"


def test_recurrent_sweep_ranks_by_perplexity(tmp_path):
    """--space rnn: the three stages with the recurrent jobs, the winner the lowest selection val perplexity, the
    final test perplexity from the workers' report after each retrain."""
    (tmp_path / "search.yaml").write_text(RNN_SIZES)
    (tmp_path / "retrain.yaml").write_text(RNN_SIZES + "test-batch-size: 4\n")
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dist_darts", "sweep", "--space", "rnn", "--seeds", "2", "--search-epochs", "1",
           "--select-epochs", "1", "--final-epochs", "1", "--repeats", "2", "--cpus-per-worker", "0.5",
           "--search", str(tmp_path / "search.yaml"), "--retrain", str(tmp_path / "retrain.yaml"),
           "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env_for_subprocess(), timeout=900,
                          start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["search"] == {"space": "rnn", "dataset": "pydoc", "unrolled": False}
    trials = report["trials"]
    assert [t["seed"] for t in trials] == [0, 1]
    for t in trials:
        rgt.recurrent_from_dict(t["genotype"])  # a valid recurrent cell
        assert t["genotype"] == rgt.recurrent_to_dict(rgt.load_recurrent(str(out / "search" / f"seed_{t['seed']}" /
                                                                           "genotype.json")))
        assert math.isfinite(t["search_val_perplexity"]) and t["params"] > 0
    best = min(trials, key=lambda t: (t["select_val_perplexity"], t["seed"]))
    assert report["winner"]["seed"] == best["seed"] and report["winner"]["genotype"] == best["genotype"]
    final = report["final"]
    assert final["metric"] == "test_perplexity" and len(final["runs"]) == 2
    for i, run in enumerate(final["runs"]):  # each repeat's own metrics.json (3 steps: no quality asked of it)
        metrics = json.loads((out / "final" / f"repeat_{i}" / "metrics.json").read_text())
        assert run["test_perplexity"] == pytest.approx(metrics["test_perplexity"]) and run["params"] > 0
    assert final["mean"] == pytest.approx(sum(r["test_perplexity"] for r in final["runs"]) / 2)
    md = (out / "report.md").read_text()
    assert "| seed | search val perplexity | selection val perplexity |" in md and "**winner**" in md
    assert "Final test perplexity over 2 run(s)" in md
    assert (out / "winner_recurrent.png").exists() and (out / "selection.png").exists()
    log_text = (out / "sweep.log").read_text()
    for pattern in (r"search seed_[01]: epoch 1/1 \| val perplexity [\d.]+ \| ETA",
                    r"final repeat_[01]: epoch 1/1 \| val perplexity [\d.]+ \(best [\d.]+\) \| ETA"):
        assert re.search(pattern, log_text), pattern


def test_nb201_sweep_ranks_its_cells_by_top1(tmp_path):
    """--space nb201: the three stages with the NAS-Bench-201 jobs; the trials carry their cell's arch string and
    collapse count, the winner is the best selection val top-1."""
    from dist_darts.spaces import nb201
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dist_darts", "sweep", "--space", "nb201", "--seeds", "2", "--dataset", "digits",
           "--layers", "1", "--init-channels", "4", "--batch-size", "16", "--steps-per-epoch", "3",
           "--search-epochs", "1", "--select-epochs", "1", "--final-epochs", "1", "--cpus-per-worker", "0.5",
           "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env_for_subprocess(), timeout=900,
                          start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["space"] == "nb201" and report["search"]["method"] == "darts"
    for t in report["trials"]:
        arch = nb201.from_dict(t["genotype"])
        assert arch == nb201.load(str(out / "search" / f"seed_{t['seed']}" / "genotype.json"))
        assert t["param_free"] == sum(op in ("none", "skip_connect", "avg_pool_3x3") for op in nb201.parse_arch(arch))
    best = max(report["trials"], key=lambda t: (t["select_val_top1"], -t["seed"]))
    assert report["winner"]["seed"] == best["seed"]
    assert nb201.load(str(out / "final" / "genotype.json")) == nb201.from_dict(best["genotype"])
    assert report["final"]["metric"] == "test_top1" and len(report["final"]["runs"]) == 1
    assert "| seed | search val top-1 | param-free edges |" in (out / "report.md").read_text()
    assert (out / "winner.png").exists()


def test_settings_of_the_other_space_are_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dist_darts", "sweep", "--space", "rnn", "--layers", "5",
                           "--output", str(tmp_path / "s")], capture_output=True, text=True,
                          env=env_for_subprocess(), timeout=300)
    assert done.returncode == 2 and "layers: not a setting of the rnn space" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_trial_progress_lines_and_eta(monkeypatch):
    from dist_darts import tune
    now = [1000.0]
    monkeypatch.setattr(tune.time, "time", lambda: now[0])
    lines = []
    progress = tune.TrialProgress("search", lines.append)
    trial = SimpleNamespace(trial_id="t0", config={"trial": {"kind": "search", "name": "seed_3",
                                                             "cfg": {"epochs": 10}}})
    progress.on_trial_start(0, [trial], trial)
    now[0] += 60  # resumed at epoch 4: its first report is epoch 5, one epoch after the start
    progress.on_trial_result(0, [trial], trial, {"epoch": 5, "val_top1": 41.256})
    now[0] += 30
    progress.on_trial_result(0, [trial], trial, {"epoch": 6, "val_top1": 43.0})
    progress.on_trial_result(0, [trial], trial, {"training_iteration": 7})  # not an epoch report: no line
    assert lines == ["search seed_3: epoch 5/10 | val top-1 41.26 % | ETA 0:05:00",
                     "search seed_3: epoch 6/10 | val top-1 43.00 % | ETA 0:03:00"]
    retrain = SimpleNamespace(trial_id="t1", config={"trial": {"kind": "retrain", "name": "repeat_0",
                                                               "cfg": {"epochs": 2}}})
    progress.stage = "final"
    progress.on_trial_start(0, [retrain], retrain)
    now[0] += 100
    progress.on_trial_result(0, [retrain], retrain, {"epoch": 1, "train_top1": 90.0})
    assert lines[-1] == "final repeat_0: epoch 1/2 | train top-1 90.00 % | ETA 0:01:40"
    progress.stage = "select"
    progress.on_trial_result(0, [retrain], retrain, {"epoch": 2, "train_top1": 95.0, "val_top1": 90.0,
                                                     "best_val_top1": 91.5})
    assert lines[-1].startswith("select repeat_0: epoch 2/2 | val top-1 90.00 % (best 91.50 %) | ETA")
    recurrent = tune.TrialProgress("search", lines.append, "rnn")
    recurrent.on_trial_start(0, [trial], trial)
    now[0] += 20
    recurrent.on_trial_result(0, [trial], trial, {"epoch": 1, "val_perplexity": 812.345})
    recurrent.on_trial_result(0, [trial], trial, {"final": True, "test_perplexity": 700.0})  # after the job: no line
    assert lines[-1] == "search seed_3: epoch 1/10 | val perplexity 812.35 | ETA 0:03:00"


@pytest.mark.parametrize("seeds,expected", [("3", [0, 1, 2]), ("5,7", [5, 7]), ("11,", [11])])
def test_seed_lists(seeds, expected):
    assert SweepConfig(seeds=seeds).seed_list() == expected


@pytest.mark.parametrize("seeds", ["0", "1,1", "a,b"])
def test_bad_seeds(seeds):
    with pytest.raises(ConfigError, match="seeds"):
        SweepConfig(seeds=seeds)


def test_a_trial_failing_after_its_retries_ends_the_sweep_with_one_line(tmp_path):
    """A batch larger than the search's half of the digits passes every check before Ray (the data is there) and
    fails inside the trial: exit 1, one line naming the trial and its log, no traceback."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "dist_darts", "sweep", "--seeds", "1", "--dataset", "digits", "--layers", "3",
           "--init-channels", "4", "--batch-size", "1000", "--search-epochs", "1", "--max-failures", "0",
           "--cpus-per-worker", "0.5", "--output", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env_for_subprocess(), timeout=900,
                          start_new_session=True)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dist-darts: stage search: trial seed_0 (") and "failed after 0 retries" in last
    log_file = Path(re.search(r"its log: (\S+?)\)", last).group(1))
    assert log_file.is_file()  # its log.txt, or Ray's error.txt when it failed before the job started
    assert "Trial task failed" not in done.stderr  # Tune's traceback of it stays in that file
