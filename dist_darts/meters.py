"""What a task measures while it trains, as sums kept on the device: images (loss, top-1, top-5: Meter) and
language (loss and perplexity: LossMeter); each task names its meter, so the driver knows no task's metrics.
And the evaluation of a (sharded) image loader averaged over all ranks."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from .distributed import all_reduce_sum
from .parallel import to_memory_format


class Meter:
    """Sums of loss, top-1, top-5 and count, kept on the device (no host sync per step)."""

    def __init__(self, device, state: torch.Tensor | None = None):
        self.sums = state.to(device) if state is not None else torch.zeros(4, device=device, dtype=torch.float64)

    @torch.no_grad()
    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """loss_sum: the loss summed over the batch's real samples (evaluation loaders pad with label -100)."""
        valid = labels >= 0
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = (top5 == labels[:, None]) & valid[:, None]
        self.sums += torch.stack([loss_sum.detach().double(), hit[:, 0].sum().double(),
                                  hit.any(dim=1).sum().double(), valid.sum().double()])

    def global_averages(self) -> dict:
        sums = all_reduce_sum(self.sums.clone())
        loss, top1, top5, n = sums.tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "count": int(n)}

    def shown(self) -> dict:
        """This rank's running averages for the progress line (read where the loop synchronises anyway)."""
        loss, top1, _, n = self.sums.tolist()
        return {"loss": loss / max(n, 1.0), "top1": 100.0 * top1 / max(n, 1.0)}


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # a diverged loss reads as a huge perplexity, not an overflow


class LossMeter:
    """Sums of loss and count for language models: their logits (a vocabulary wide) are never ranked."""

    def __init__(self, device, state: torch.Tensor | None = None):
        self.sums = state.to(device) if state is not None else torch.zeros(2, device=device, dtype=torch.float64)

    @torch.no_grad()
    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.sums[0] += loss_sum.detach().double()
        self.sums[1] += labels.numel()  # a host scalar: no copy to the device each step

    def global_averages(self) -> dict:
        loss, n = all_reduce_sum(self.sums.clone()).tolist()
        loss /= max(n, 1.0)
        return {"loss": loss, "perplexity": perplexity(loss), "count": int(n)}

    def shown(self) -> dict:
        loss, n = self.sums.tolist()
        loss /= max(n, 1.0)
        return {"loss": loss, "ppl": perplexity(loss)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, autocast=contextlib.nullcontext, max_steps: int = 0,
             channels_last: bool | None = None, batch_statistics: bool = False) -> dict:
    """Loss, top-1 and top-5 over the whole (sharded) loader, averaged over all ranks; batches are put in the
    job's memory format when channels_last is given. batch_statistics: BatchNorm normalises by each batch's own
    statistics, as in training (DARTS-PT's measurements), and its running statistics are left as they were."""
    was_training = model.training
    saved = [b.clone() for b in model.buffers()] if batch_statistics else []
    model.train(batch_statistics)
    meter = Meter(next(model.parameters()).device)
    criterion = nn.CrossEntropyLoss(ignore_index=-100, reduction="sum")  # a batch may be all padding
    loader.set_epoch(0)
    for step, (x, y) in enumerate(loader):
        if max_steps and step >= max_steps:
            break
        with autocast():
            out = model(x if channels_last is None else to_memory_format(x, channels_last))
        logits = (out[0] if isinstance(out, tuple) else out).float()
        meter.update(criterion(logits, y), logits, y)
    for buffer, value in zip(model.buffers(), saved):
        buffer.copy_(value)
    model.train(was_training)
    return meter.global_averages()
