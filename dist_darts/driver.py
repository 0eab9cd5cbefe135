"""The one epoch driver of every training job: the epoch and step loops, resume, checkpoints, metrics, history,
progress, the divergence check and the per-epoch hook. A job is a Task: its step function and what it does at
an epoch's end; a new search space or method is a new Task, not a branch in here.

A checkpoint holds the task's state (model, optimizers, schedules, ...) beside the driver's own (epoch, step,
metrics, history, every rank's RNG state and running sums), so a resumed run continues bit for bit and reports
exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import torch

from . import checkpoint as ckpt_io
from . import config as config_io
from .distributed import all_gather_object, average_buffers_, barrier, world_size
from .job import EpochHook, Job, StoppedAsAsked
from .logs import Progress, log
from .runfolder import atomic_write, best_checkpoint_path, checkpoint_path


class Diverged(RuntimeError):
    """A non-finite loss: the run stops with one line (exit code 1) and its last checkpoint intact."""


@dataclass
class StepOutput:
    """What a step function returns; nothing in it has been copied to the host."""
    loss: torch.Tensor  # the training loss (detached scalar)
    logits: torch.Tensor
    labels: torch.Tensor
    scalars: dict = field(default_factory=dict)  # TensorBoard tag -> scalar tensor, written at log intervals


@dataclass
class EpochEnd:
    """What a task reports at an epoch's end."""
    metrics: dict  # handed to the epoch hook (Ray) and kept in the checkpoint
    row: dict  # this epoch's row of history.json
    scalars: dict  # TensorBoard tag -> value at this epoch
    line: str  # the epoch's log line
    is_best: bool = False  # also write checkpoints/best.pt
    stop: str | None = None  # why the job ends after this epoch (an --early-stop rule fired), else None


class Task(Protocol):
    kind: str  # "search" or "retrain": the checkpoint's kind
    model: torch.nn.Module  # the plain (unwrapped) network
    resume_keys: tuple  # config fields a resume must not change
    epochs: int  # how many epochs the driver runs
    steps: int  # steps per epoch
    images_per_step: int  # over all ranks, for images/s
    metrics: dict  # the metrics before any epoch finished
    meter: type  # what a step measures (meters.Meter for images, LossMeter for language): meter(device, state)

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def identity(self) -> dict: ...  # what the run trains (e.g. the resolved genotype): a resume must match it
    def begin_epoch(self, epoch: int, start_step: int) -> Iterable: ...
    def step(self, batch) -> StepOutput: ...
    def end_epoch(self, epoch: int, train_stats: dict) -> EpochEnd: ...


class _Divergence:
    """The first step whose loss (or any step scalar) was not finite, tracked on the device: read only where
    the loop synchronises anyway (log intervals, checkpoints, epoch ends), and agreed on by every rank."""

    def __init__(self, device):
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def observe(self, global_step: int, out: StepOutput) -> None:
        values = torch.stack([out.loss.float(), *(v.detach().float() for v in out.scalars.values())])
        bad = ~torch.isfinite(values).all()
        self.first = torch.where(bad & (self.first < 0), torch.full_like(self.first, global_step), self.first)

    def check(self, steps: int, checkpoint: Path) -> None:
        first = self.first.clone()
        if world_size() > 1:
            import torch.distributed as dist
            first = torch.where(first < 0, torch.full_like(first, 2**62), first)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            first = torch.where(first == 2**62, torch.full_like(first, -1), first)
        step = int(first)
        if step >= 0:
            epoch, in_epoch = divmod(step - 1, steps)
            kept = f"last good checkpoint {checkpoint}" if checkpoint.is_file() else "no checkpoint written yet"
            raise Diverged(f"non-finite loss at epoch {epoch + 1} step {in_epoch + 1} (the run diverged; {kept}): "
                           "try a lower --learning-rate, a smaller --grad-clip, or --precision fp32")


def run_epochs(job: Job, task: Task, on_epoch: EpochHook | None = None) -> dict:
    """Train task for task.epochs epochs (resuming from the run folder with --resume); returns the metrics
    of the last epoch."""
    cfg, env = job.cfg, job.env
    last = checkpoint_path(job.run_dir)
    start_epoch, start_step, metrics, history, meter_sums, stopped = 0, 0, task.metrics, [], None, None
    state = resume_state(job, task)
    if state is not None:
        task.load_state_dict(state)
        start_epoch, start_step, metrics = state["epoch"], state["step"], state.get("metrics") or metrics
        history, stopped = state["history"], state.get("stopped")
        meter_sums = state["meters"][env.rank] if start_step else None
        ckpt_io.set_rng_state(state["rng"][env.rank])
        log.info("resumed from %s at epoch %d step %d", last, start_epoch, start_step)
    job.commit()
    divergence = _Divergence(env.device)

    def save(path, epoch, step, meter):
        divergence.check(task.steps, last)  # never replace a good checkpoint with a diverged state
        average_buffers_(task.model)  # BN running statistics drift apart per rank: checkpoint their mean
        state = task.state_dict()
        if not all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()):
            raise Diverged(f"non-finite weights after epoch {epoch + 1 if step else epoch} step {step or task.steps} (the run "
                           f"diverged; {path} kept as it was): try a lower --learning-rate or a smaller --grad-clip")
        rngs = all_gather_object(ckpt_io.rng_state())
        meters = all_gather_object(None if meter is None else meter.sums.cpu())
        if env.is_main:
            ckpt_io.save_atomic(dict(state, kind=task.kind, epoch=epoch, step=step, metrics=metrics,
                                     history=history, stopped=stopped, identity=task.identity(),
                                     format=ckpt_io.FORMAT, world_size=env.world_size, rng=rngs, meters=meters,
                                     config=config_io.to_dict(cfg)), path, keep_previous=path == last)
        barrier()

    final_epoch = start_epoch if stopped else task.epochs  # a run that its --early-stop ended is finished
    for epoch in range(start_epoch, final_epoch):
        meter = task.meter(env.device, meter_sums)
        progress = Progress(task.kind, epoch, task.epochs, task.steps, start_step, task.images_per_step,
                            cfg.log_interval, env.is_main)
        for step, batch in zip(range(start_step, task.steps), task.begin_epoch(epoch, start_step)):
            out = task.step(batch)
            meter.update(out.loss * out.labels.numel(), out.logits, out.labels)
            global_step = epoch * task.steps + step + 1
            divergence.observe(global_step, out)
            shown = None
            if global_step % cfg.log_interval == 0:
                divergence.check(task.steps, last)
                shown = meter.shown()
                for tag, value in out.scalars.items():
                    job.scalar(tag, value.item(), global_step)
            progress.update(step + 1, shown)
            stop_here = global_step == cfg.stop_after_step and step + 1 < task.steps  # an epoch's end stops below
            if stop_here or (cfg.checkpoint_steps and (step + 1) % cfg.checkpoint_steps == 0 and step + 1 < task.steps):
                save(last, epoch, step + 1, meter)
            if stop_here:
                progress.close()
                raise StoppedAsAsked(_stopped_line(global_step, last))
        progress.close()
        start_step, meter_sums = 0, None
        divergence.check(task.steps, last)

        average_buffers_(task.model)  # evaluation on every rank with the same BN statistics
        end = task.end_epoch(epoch, meter.global_averages())
        metrics, stopped = end.metrics, end.stop
        history.append(end.row)
        if env.is_main:
            atomic_write(job.run_dir / "history.json", json.dumps(history, indent=1) + "\n")
            for tag, value in end.scalars.items():
                job.scalar(tag, value, epoch + 1)
            log.info(end.line)
            if stopped:
                log.warning("early stop after epoch %d of %d: %s", epoch + 1, task.epochs, stopped)
        save(last, epoch + 1, 0, None)
        if end.is_best:
            save(best_checkpoint_path(job.run_dir), epoch + 1, 0, None)
        if on_epoch is not None:
            on_epoch(metrics, last)
        if stopped:
            break
        if cfg.stop_after_step == (epoch + 1) * task.steps and epoch + 1 < final_epoch:
            raise StoppedAsAsked(_stopped_line(cfg.stop_after_step, last))
    if start_epoch == final_epoch and on_epoch is not None and "epoch" in metrics:
        on_epoch(metrics, last)  # resumed when already done: report the result again
    return metrics


def _stopped_line(step: int, checkpoint: Path) -> str:
    return f"stopped after step {step} as --stop-after-step asked; {checkpoint} holds it: --resume goes on"


def resume_state(job: Job, task: Task) -> dict | None:
    """The latest checkpoint of the run folder when --resume is given (checked against this run), else None."""
    path = checkpoint_path(job.run_dir)
    if not job.cfg.resume:
        return None
    seen = all_gather_object(path.is_file() or ckpt_io.previous_path(path).is_file())
    if any(seen) and not all(seen):  # half the ranks resuming and half starting over would diverge
        blind = [r for r, s in enumerate(seen) if not s]
        raise ckpt_io.CheckpointError(f"checkpoint {path} is missing on rank(s) {blind}: put --output on storage "
                                      "every node mounts at the same path")
    if not path.is_file() and not ckpt_io.previous_path(path).is_file():
        log.warning("--resume: no checkpoint in %s yet; starting from scratch", path.parent)
        return None
    state, path, note = ckpt_io.load_latest(path, task.kind)  # a corrupted last.pt falls back to the previous one
    if note:
        log.warning(note)
    ckpt_io.check_compatible(state, path, job.env.world_size, config_io.to_dict(job.cfg), task.resume_keys)
    ours, theirs = task.identity(), state.get("identity", {})
    for key in sorted(ours.keys() | theirs.keys()):  # a key on one side only differs too
        if theirs.get(key) != ours.get(key):
            raise ckpt_io.CheckpointError(f"checkpoint {path} was trained with another {key} than this run's "
                                          f"(the file may have changed since): use a new --output or the same {key}")
    return state
