"""What a person reads while a job runs: the logger, progress of long work, and the summary table at the end.

With a terminal, progress is a tqdm bar showing the running loss and the ETA of the whole run; without one
(Slurm, Ray, a pipe, log.txt) it is a plain log line every --log-interval steps, so logs hold no carriage returns.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path

log = logging.getLogger("dist_darts")


def setup_logging(log_file: Path | None, is_main: bool) -> None:
    """INFO to stdout (and to log_file) on the main process; other ranks only warn. Without log_file, the lines
    are kept until log_to_file names one (a job writes no file before its checks have passed)."""
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    log.addHandler(stream)
    if is_main and log_file is not None:
        log_to_file(log_file)
    elif is_main:
        log.addHandler(logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1))


def log_to_file(log_file: Path) -> None:
    """From now on also write to log_file (appending), starting with the lines kept since setup_logging."""
    file = logging.FileHandler(log_file)
    file.setFormatter(log.handlers[0].formatter)
    for kept in [h for h in log.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        kept.setTarget(file)
        kept.close()  # flushes the kept lines into the file
        log.removeHandler(kept)
    log.addHandler(file)


def summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line] + [f"{k:<{width}}  {v}" for k, v in rows] + [line])


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of one epoch: a bar on a terminal, plain lines every `interval` steps elsewhere.

    `update(step, values)` is called after every step; `values` (loss, top-1) only at log intervals, where the
    caller has synchronised with the device anyway. The ETA of the whole run extrapolates the steps done in
    this process so far over every step left in the run.
    """

    def __init__(self, desc: str, epoch: int, epochs: int, steps: int, start_step: int, images_per_step: int,
                 interval: int, enabled: bool, tty: bool | None = None):
        self.desc, self.epoch, self.epochs, self.steps = desc, epoch, epochs, steps
        self.start_step, self.images_per_step, self.interval = start_step, images_per_step, interval
        self.enabled = enabled
        self.started = time.time()
        self.bar = None
        if enabled and (sys.stdout.isatty() if tty is None else tty):
            from tqdm import tqdm
            self.bar = tqdm(total=steps, initial=start_step, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                            dynamic_ncols=True, file=sys.stdout)

    def rates(self, step: int) -> tuple[float, float, float]:
        """(images/s, ETA of this epoch, ETA of the run) after `step` steps of this epoch."""
        done = step - self.start_step
        per_step = (time.time() - self.started) / max(done, 1)
        left_epoch = self.steps - step
        left_run = left_epoch + (self.epochs - self.epoch - 1) * self.steps
        return self.images_per_step / per_step, left_epoch * per_step, left_run * per_step

    def update(self, step: int, values: dict | None = None) -> None:
        """`step` steps of this epoch are done."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if values:
                _, _, eta_run = self.rates(step)
                self.bar.set_postfix_str(" ".join(f"{k} {v:.4g}" for k, v in values.items())
                                         + f" | run ETA {duration(eta_run)}", refresh=False)
            return
        if values:
            images_s, eta_epoch, eta_run = self.rates(step)
            shown = " ".join(f"{k} {v:.4f}" for k, v in values.items())
            log.info("%s %d/%d step %d/%d | %s | %.1f img/s | ETA epoch %s, run %s", self.desc, self.epoch + 1,
                     self.epochs, step, self.steps, shown, images_s, duration(eta_epoch), duration(eta_run))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
