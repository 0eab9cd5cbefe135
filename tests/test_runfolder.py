"""The run folder's one owner: atomic writes survive a SIGKILL, one lock per folder across real processes, and
the fresh-folder checks write nothing."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY_SEARCH, cli, env_for_subprocess

from dist_darts.config import ConfigError
from dist_darts.runfolder import (LOCK_NAME, RunFolderError, RunFolderLock, atomic_write, check_fresh, claim,
                                  default_output, remove_leftover_temps)

# a writer that never finishes: 1 MiB chunks of a large file, until it is killed
SLOW_WRITER = """
import sys, time
from dist_darts.runfolder import atomic_write
def write(f):
    while True:
        f.write(b"n" * (1 << 20)); f.flush(); time.sleep(0.01)
atomic_write(sys.argv[1], write)
"""
HOLDER = """
import sys, time
from dist_darts.runfolder import RunFolderLock
RunFolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env_for_subprocess(),
                            stdout=subprocess.PIPE, text=True)


def temps(folder):
    return [p for p in folder.iterdir() if p.name.endswith(".dist-darts-tmp")]


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "history.json"
    atomic_write(target, '{"epoch": 1}\n')
    writer = spawn(SLOW_WRITER, target)
    deadline = time.time() + 60
    while not (temps(tmp_path) and temps(tmp_path)[0].stat().st_size > 8 << 20):
        assert writer.poll() is None and time.time() < deadline, "the writer did not get going"
        time.sleep(0.02)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert target.read_text() == '{"epoch": 1}\n'
    leftover = temps(tmp_path)
    assert len(leftover) == 1
    assert remove_leftover_temps(tmp_path) == leftover and not temps(tmp_path)


def test_verify_and_previous(tmp_path):
    target = tmp_path / "ckpt" / "last.pt"
    atomic_write(target, b"first")

    def refuse(tmp):
        assert tmp.read_bytes() == b"second" and tmp.parent == target.parent
        raise ValueError("bad copy")

    with pytest.raises(ValueError, match="bad copy"):
        atomic_write(target, b"second", verify=refuse)
    assert target.read_bytes() == b"first" and sorted(p.name for p in target.parent.iterdir()) == ["last.pt"]
    atomic_write(target, lambda f: f.write(b"third"), previous=target.with_name("last.prev.pt"))
    assert target.read_bytes() == b"third" and target.with_name("last.prev.pt").read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_keeping_the_previous_never_leaves_the_target_missing(tmp_path, monkeypatch):
    """A reader polling last.pt while it is replaced (a test waiting for a checkpoint, a monitor) always finds it."""
    target = tmp_path / "last.pt"
    atomic_write(target, b"first")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(target.is_file())
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write(target, b"second", previous=tmp_path / "last.prev.pt")
    assert seen and all(seen)
    assert target.read_bytes() == b"second" and (tmp_path / "last.prev.pt").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_one_run_per_folder_across_processes(tmp_path):
    run = tmp_path / "run"
    holder = spawn(HOLDER, run)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as info:
            RunFolderLock(run).acquire()
        message = str(info.value)
        assert f"run folder {run} is in use by pid {holder.pid} on host " in message and "\n" not in message
        assert isinstance(info.value, ConfigError)  # the CLI's one line and exit code 2
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # its owner was killed: the next run takes the folder over and says whose lock it was
    lock = RunFolderLock(run)
    note = lock.acquire()
    assert f"pid {holder.pid} on host" in note and "ended without releasing it" in note
    lock.release()
    assert not (run / LOCK_NAME).exists()
    with RunFolderLock(run) as again:  # a cleanly released folder has no record left
        assert again.path.is_file()


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


def test_fresh_folder_checks_write_nothing(tmp_path):
    run = tmp_path / "run"
    check_fresh(run, resume=False, overwrite=False)  # missing: fine, and not created
    assert not run.exists()
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("epochs: 1\n")
    (run / "checkpoints" / ".last.pt.tmp4242").write_bytes(b"half")  # the pre-runfolder writer's leftover
    before = snapshot(run)
    for resume, overwrite, expected in ((False, False, "is not empty (checkpoints, config.yaml): pass --resume"),
                                        (True, True, "--resume and --overwrite contradict")):
        with pytest.raises(RunFolderError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            claim(run, resume, overwrite)
        assert snapshot(run) == before
    check_fresh(run, resume=True, overwrite=False)
    lock, notes = claim(run, resume=True, overwrite=False)
    assert notes == [f"removed {run}/checkpoints/.last.pt.tmp4242, left by a write that was killed"]
    lock.release()
    lock, notes = claim(run, resume=False, overwrite=True)
    assert notes == [] and os.listdir(run) == [LOCK_NAME]
    lock.release()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    with pytest.raises(RunFolderError, match="not a dist-darts run folder"):
        claim(tmp_path / "home", resume=False, overwrite=True)
    assert (tmp_path / "home" / "thesis.tex").is_file()


def test_default_output_is_new_per_run(tmp_path):
    first = default_output("search", str(tmp_path))
    assert os.path.dirname(first) == str(tmp_path / "search")
    assert time.strftime("%Y%m%d-") in os.path.basename(first) and len(os.path.basename(first)) == 15
    os.makedirs(first)
    second = default_output("search", str(tmp_path))
    assert second != first and not os.path.exists(second)


# --- the jobs: one owner per run folder, nothing written before every check passed --------------------------

@pytest.mark.slow
def test_a_second_search_into_a_running_ones_folder_is_refused_before_it_writes(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "dist_darts", "search", *TINY_SEARCH, "--epochs", "50",
                              "--output", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env_for_subprocess())
    try:
        deadline = time.time() + 300
        while not (run / "log.txt").is_file():
            assert first.poll() is None and time.time() < deadline, "the first search did not start"
            time.sleep(0.1)
        config = (run / "config.yaml").read_bytes()
        for extra in ((), ("--resume",), ("--overwrite",)):
            second = cli("search", *TINY_SEARCH, "--epochs", "1", "--learning-rate", "0.5", "--output", str(run),
                         *extra, check=False)
            assert second.returncode == 2 and second.stdout == ""
            assert second.stderr.startswith(f"dist-darts: error: run folder {run} is in use by pid {first.pid}")
            assert second.stderr.count("\n") == 1
            assert (run / "config.yaml").read_bytes() == config
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_finished_folders_are_refused_overwritten_or_resumed_and_refusals_change_nothing(tmp_path):
    run = tmp_path / "run"
    tiny = [*TINY_SEARCH, "--steps-per-epoch", "1", "--epochs", "1", "--output", str(run)]
    cli("search", *tiny)
    (run / "old_notes.txt").write_text("left by the earlier run")
    before = snapshot(run)
    refused = cli("search", *tiny, check=False)
    assert refused.returncode == 2 and "is not empty" in refused.stderr and "--overwrite" in refused.stderr
    changed = cli("search", *tiny[:-4], "--epochs", "2", "--output", str(run), "--resume", check=False)
    assert changed.returncode == 2 and "has epochs=1 but this run has 2" in changed.stderr
    assert snapshot(run) == before  # neither config.yaml nor log.txt nor anything else was touched
    cli("search", *tiny, "--overwrite")
    assert not (run / "old_notes.txt").exists() and (run / "genotype.json").is_file()
    assert (run / "log.txt").read_text().count("search finished") == 1  # a new log, not the old one appended

    missing = tmp_path / "never_made"
    bad_data = cli("search", "--dataset", "cifar10", "--data-dir", str(tmp_path / "no_such_data"), "--output",
                   str(missing), check=False)
    assert bad_data.returncode == 2 and "cifar10" in bad_data.stderr
    assert not missing.exists()  # a refused start leaves no folder behind


@pytest.mark.slow
def test_default_run_folders_are_new_per_run(tmp_path):
    tiny = [*TINY_SEARCH, "--steps-per-epoch", "1", "--epochs", "1"]
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "dist_darts", "search", *tiny], cwd=tmp_path, check=True,
                       capture_output=True, env=env_for_subprocess())
    runs = sorted((tmp_path / "runs" / "search").iterdir())
    assert len(runs) == 2 and all((r / "genotype.json").is_file() for r in runs)


def test_a_torchrun_restart_resumes_the_checkpoint_it_finds(tmp_path, monkeypatch, caplog):
    from dist_darts import search
    from dist_darts.config import SearchConfig
    cfg = SearchConfig(dataset="digits", layers=3, init_channels=4, batch_size=16, workers=0, seed=0, epochs=1,
                       steps_per_epoch=1, output=str(tmp_path / "run"))
    first = search.run(cfg)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun sets for the ranks of a second attempt
    again = search.run(cfg)
    assert again.genotype == first.genotype
    log_text = (tmp_path / "run" / "log.txt").read_text()
    assert "torchrun restart 1: resuming the checkpoint in" in log_text and "resumed from" in log_text
