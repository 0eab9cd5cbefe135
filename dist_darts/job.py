"""A job's life: join the process group, seed, claim the run folder, pick the precision, then commit (config.yaml,
log.txt, TensorBoard) and close whatever happens. One run(cfg) per job calls run_job with its body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import config as config_io
from .checkpoint import previous_path
from .distributed import DistEnv, all_gather_object, close_distributed, init_distributed, seed_everything
from .logs import log, log_to_file, setup_logging
from .runfolder import RunFolderError, RunFolderLock, atomic_write, checkpoint_path, claim, default_output

# called on every rank after an epoch's checkpoint is written: (metrics, checkpoint path); Ray reports through it
EpochHook = Callable[[dict, Path], None]


@dataclass
class Job:
    cfg: object
    env: DistEnv
    run_dir: Path
    autocast: object  # a factory of autocast contexts: the loops never branch on precision
    scaler: torch.amp.GradScaler
    lock: RunFolderLock | None = None  # rank 0's hold on the run folder, for the job's life
    created: bool = False  # whether this run made the run folder (a refused start removes it again)
    writer: object = None
    committed: bool = False
    resolved: dict = field(default_factory=dict)  # values the task derived at start, config.yaml's resolved section
    started: float = field(default_factory=time.time)

    def commit(self) -> None:
        """Every check has passed: write config.yaml, start log.txt and TensorBoard. Before this, a job has
        written nothing into its run folder, so a refused start leaves it as it was."""
        if self.committed:
            return
        self.committed = True
        if self.env.is_main:
            atomic_write(self.run_dir / "config.yaml", config_io.dump(self.cfg, self.resolved))
            log_to_file(self.run_dir / "log.txt")
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def scalar(self, tag: str, value, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.lock is not None:
            self.lock.release()
            if self.created and not self.committed and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()


def autocast_factory(precision: str, device: torch.device) -> tuple[Callable, str]:
    """(factory of autocast contexts, resolved precision); "auto" is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext, precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return functools.partial(torch.autocast, device.type, dtype=dtype), precision


class StoppedAsAsked(Exception):
    """--stop-after-step was reached: every rank stops at the same step, its checkpoint written (exit code 0)."""


def run_job(cfg, body: Callable, *args):
    """start_job, body(job, *args), and the clean-up every job needs, whatever happens."""
    try:
        job = start_job(cfg)
    except BaseException:
        close_distributed(wait_for_peers=False)
        raise
    finished = False
    try:
        result = body(job, *args)
        finished = True
        return result
    except StoppedAsAsked:
        finished = True
        raise
    finally:
        job.close()
        close_distributed(wait_for_peers=finished)


def start_job(cfg) -> Job:
    """Join the process group, seed, claim the run folder (rank 0 locks it for the job's life), pick the precision.
    Nothing is written into the folder until Job.commit()."""
    env = init_distributed(cfg.device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(cfg.seed)
    setup_logging(None, env.is_main)
    if cfg.output is None:  # one new folder per run, named on rank 0 so that every rank uses the same one
        cfg = dataclasses.replace(cfg, output=all_gather_object(default_output(cfg.run_kind))[0])
    run_dir = Path(cfg.output)
    resume = getattr(cfg, "resume", False)
    if env.restart and not resume and any(all_gather_object(_has_checkpoint(run_dir))):
        log.warning("torchrun restart %d: resuming the checkpoint in %s", env.restart, run_dir)
        cfg, resume = dataclasses.replace(cfg, resume=True), True
    lock, created = _claim(run_dir, env, resume, getattr(cfg, "overwrite", False) or not hasattr(cfg, "resume"))
    autocast, precision = autocast_factory(cfg.precision, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=precision == "fp16")
    log.info("run folder %s | %d rank(s) on %s | precision %s", run_dir, env.world_size, env.device, precision)
    return Job(cfg, env, run_dir, autocast, scaler, lock, created)


def _has_checkpoint(run_dir: Path) -> bool:
    last = checkpoint_path(run_dir)
    return last.is_file() or previous_path(last).is_file()


def _claim(run_dir: Path, env: DistEnv, resume: bool, overwrite: bool) -> tuple[RunFolderLock | None, bool]:
    """Rank 0 checks and locks the folder; its verdict reaches every rank, so all refuse with the same line.
    A job without --resume (evaluate) replaces what its folder holds."""
    lock, created, refusal = None, False, None
    if env.is_main:
        created = not run_dir.exists()
        try:
            lock, notes = claim(run_dir, resume, overwrite)
            for note in notes:
                log.warning(note)
        except RunFolderError as e:
            refusal = str(e)
            if created and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
    refusal = all_gather_object(refusal)[0]
    if refusal is not None:
        raise RunFolderError(refusal)
    return lock, created
