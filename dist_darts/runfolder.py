"""The run folder's one owner: atomic file writes, leftovers of killed writes, an exclusive lock, fresh-folder checks.

A job claims its folder on rank 0 before it writes anything (`claim`), writes every file with `atomic_write`, and
releases the lock at the end. The checks write nothing: a refused start leaves the folder exactly as it was.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import BinaryIO, Callable, Union

from .errors import ConfigError

LOCK_NAME = ".dist-darts.lock"
TEMP_SUFFIX = ".dist-darts-tmp"
# our temp files, and those of the writer before this module (".last.pt.tmp<pid>")
_TEMP_NAME = re.compile(r"^\..+(\.dist-darts-tmp|\.tmp\d+)$")

Data = Union[str, bytes, Callable[[BinaryIO], None]]


class RunFolderError(ConfigError):
    """A run folder that this run may not use (in use, not empty, contradictory flags). One line, exit 2."""


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in `folder` durable (the entry, not only the file's bytes)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    """A fresh temp name in `path`'s folder (so the rename stays on one file system), one remove_leftover_temps
    recognises."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def atomic_write(path: str | os.PathLike, data: Data, *, verify: Callable[[Path], None] | None = None,
                 previous: str | os.PathLike | None = None) -> None:
    """Write `path` so that it is always either the old file or the whole new one, even after a kill or power loss.

    `data` is text (UTF-8), bytes, or a function that writes to a binary file (`lambda f: torch.save(obj, f)`).
    The new content goes to a temp file in the same folder, is flushed and fsynced, checked by `verify(temp path)`
    if given (an exception there leaves `path` untouched), and renamed over `path`; then the folder is fsynced.
    With `previous`, the old `path` (if any) is first kept as `previous`, so the last good file survives; `path`
    itself exists throughout (a reader never finds it missing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        if previous is not None and path.exists():
            _keep_copy(path, Path(previous))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def _keep_copy(path: Path, previous: Path) -> None:
    """Atomically make `previous` a copy of `path`, leaving `path` in place: a hard link renamed into place (no bytes
    copied), or a real copy on file systems without hard links."""
    tmp = _temp_beside(previous)
    try:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_leftover_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that killed writers left anywhere under `folder`; returns them.

    Only safe while holding the folder's lock (no live writer then); `claim` calls it.
    """
    removed = []
    for p in Path(folder).rglob(".*"):
        if _TEMP_NAME.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _describe(owner: dict) -> str:
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (started {owner.get('started', '?')})"


def _read_owner(fd: int) -> dict | None:
    raw = os.pread(fd, 4096, 0)
    try:
        owner = json.loads(raw)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


class RunFolderLock:
    """An exclusive lock on a run folder (flock on FOLDER/.dist-darts.lock), held by one process for a job's life.

    Rank 0 acquires it for the whole job; the kernel drops it when that process dies, however it dies. The lock file
    records the owner (pid, host, start time): a second run is refused naming it, and a record left by an owner that
    died holding the lock is reported when the next run takes the folder over.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock or raise RunFolderError naming its owner. Returns a note for the log when the previous
        owner died holding it (its record was still there), else None. Creates the folder if needed."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock")
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = _read_owner(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise RunFolderError(f"run folder {self.folder}: cannot lock {self.path} ({os.strerror(e.errno)}); "
                                         "put --output on a file system with file locks") from None
                who = _describe(owner) if owner else "another process that is starting"
                raise RunFolderError(f"run folder {self.folder} is in use by {who}: wait for that run to end, "
                                     "or give this one another --output") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break  # not a file that its last owner unlinked while we opened it
            except FileNotFoundError:
                pass
            os.close(fd)
        stale = _read_owner(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        if stale is None:
            return None
        return (f"run folder {self.folder}: its previous run, {_describe(stale)}, ended without releasing it "
                "(killed or crashed); this run takes it over")

    def release(self) -> None:
        """Give the folder up (removes the lock file); a no-op when not held."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held: a waiting opener then sees a changed inode
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _entries(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise RunFolderError(f"run folder {folder} is a file, not a folder: give another --output")
    return sorted(e.name for e in folder.iterdir() if e.name != LOCK_NAME)


def check_fresh(folder: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Refuse (RunFolderError) a non-empty folder unless the run resumes it or overwrites it. Writes nothing."""
    folder = Path(folder)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: --resume continues the run in "
                             f"{folder}, --overwrite deletes it")
    entries = _entries(folder)
    if not entries or resume:
        return
    if not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunFolderError(f"run folder {folder} is not empty ({shown}): pass --resume to continue its run, "
                             "--overwrite to delete it and start over, or give another --output")
    if "config.yaml" not in entries:  # never empty a folder that a typo in --output named
        raise RunFolderError(f"run folder {folder} is not a dist-darts run folder (no config.yaml): --overwrite "
                             "deletes only run folders; give another --output")


def clear(folder: str | os.PathLike) -> None:
    """Delete everything in `folder` but its lock file (for --overwrite, while holding the lock)."""
    for entry in Path(folder).iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    fsync_folder(folder)


def claim(folder: str | os.PathLike, resume: bool, overwrite: bool) -> tuple[RunFolderLock, list[str]]:
    """On rank 0, as the job's last check: lock the folder (a running owner is named first: whatever else is wrong,
    that run is the reason to wait), check it under the lock, clear it for --overwrite, remove leftover temp files.
    Returns the held lock (release it at the end) and notes for the log. Raises RunFolderError; the lock file it
    made is removed again then (the caller removes a folder that the lock created)."""
    lock = RunFolderLock(folder)
    notes = [lock.acquire()]
    try:
        check_fresh(folder, resume, overwrite)
    except RunFolderError:
        lock.release()
        raise
    if overwrite:
        clear(folder)
    notes += [f"removed {p}, left by a write that was killed" for p in remove_leftover_temps(folder)]
    return lock, [n for n in notes if n]


CHECKPOINTS = "checkpoints"  # a run folder's checkpoints: last.pt (with its previous copy) and best.pt


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / "last.pt"


def best_checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / "best.pt"


def default_evaluate_output(checkpoint: str) -> str:
    """evaluate/NAME in the checkpoint's run folder: the retrain's own metrics.json and config.yaml stay."""
    parent = os.path.dirname(os.path.abspath(checkpoint))
    run_dir = os.path.dirname(parent) if os.path.basename(parent) == CHECKPOINTS else parent
    return os.path.join(run_dir, "evaluate", os.path.splitext(os.path.basename(checkpoint))[0])


def default_output(kind: str, root: str = "runs") -> str:
    """A new run folder per run, as timm does: ROOT/KIND/YYYYmmdd-HHMMSS (with -2, -3, ... if that exists)."""
    base = os.path.join(root, kind, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    candidate, n = base, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate
