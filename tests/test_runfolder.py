"""The run folder's one owner: atomic writes survive a SIGKILL, one lock per folder across real processes, and
the fresh-folder checks write nothing."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import env_for_subprocess

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
