"""The gradient noise scale B_noise = tr(Sigma) / |G|^2 of the weights and of the alphas (McCandlish et al. 2018,
"An Empirical Model of Large-Batch Training", appendix A.1): well below it a larger global batch cuts the steps a
search needs nearly in proportion, at it half as much (twice the ideal's epochs), far above it hardly at all.

From the squared gradient norms at two batch sizes b < B, unbiased estimates of the two parts are

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

each smoothed by an exponential moving average, as the paper does; B_noise is the ratio of the two averages (the
ratio of one step's estimates is dominated by its noisy denominator).

Where the two norms come from:
- several ranks: each rank's own gradient (b = batch per rank x accumulate) and the all-reduced one (B = b x
  ranks), every step. A DDP communication hook takes the weights' local squared norm from the buckets before
  their all-reduce, the architect the alphas' before and after its explicit average. The averages are linear in
  the local norm, so each rank keeps its own and they are averaged over ranks only when read or saved: no extra
  collective per step.
- one process: every `every` steps an extra pass at the step's weights over the --accumulate micro-batches (two
  halves of the batch without accumulation), B_big their union; it runs on a copy of the BatchNorm statistics,
  of the RNG state and of the method's generator, and never touches .grad, so the step itself is unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.func import functional_call

from .distributed import all_reduce_mean_
from .methods import ALPHA_STEP

DECAY = 0.9  # per measurement: the averages span about the last 10 measurements


def estimates(small_sq, big_sq, b_small: float, b_big: float):
    """Unbiased (|G|^2, tr(Sigma)) from the squared gradient norms at batch sizes b_small < b_big."""
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    return g2, trace


def squared_norm(tensors) -> torch.Tensor:
    return torch.nn.utils.get_total_norm(list(tensors)).double() ** 2


class NoiseScale:
    """The moving averages of one parameter group's |G|^2 and tr(Sigma) estimates, kept on the device (no host
    sync per step). Both start at zero: their common bias (1 - DECAY^n) cancels in the ratio."""

    def __init__(self, device, decay: float = DECAY):
        self.decay = decay
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # averaged |G|^2, tr(Sigma); measurements

    def add(self, small_sq: torch.Tensor, big_sq: torch.Tensor, b_small: float, b_big: float) -> None:
        parts = torch.stack(estimates(small_sq.double(), big_sq.double(), b_small, b_big))
        self.sums[:2].mul_(self.decay).add_(parts, alpha=1 - self.decay)
        self.sums[2] += 1

    def value(self) -> float | None:
        """B_noise, or None before any measurement or while either average is not positive (one part is still
        below what these two batch sizes can resolve from the other)."""
        g2, trace, count = self.sums.tolist()
        return trace / g2 if count and g2 > 0 and trace > 0 else None


class NoiseScaleMonitor:
    """B_noise of the weights and of the alphas along a search; see the module's docstring."""

    def __init__(self, model, criterion, autocast, batch_size: int, accumulate: int, world_size: int, every: int,
                 device: torch.device):
        self.model, self.criterion, self.autocast, self.every = model, criterion, autocast, every
        self.weights, self.alphas = NoiseScale(device), NoiseScale(device)
        self.world_size = world_size
        if world_size > 1:
            self.parts = 0  # no extra pass: the ranks' own gradients are the small batches
            self.b_small = batch_size * accumulate
            self.b_big = self.b_small * world_size
        else:
            self.parts = accumulate if accumulate > 1 else 2
            self.b_small = batch_size if accumulate > 1 else batch_size // 2
            self.b_big = self.b_small * self.parts
        self.local_sq = torch.zeros((), dtype=torch.float64, device=device)  # this rank's weights', this step

    @property
    def measurable(self) -> bool:
        return self.b_small >= 1

    def due(self, step_index: int) -> bool:
        """Whether this step measures: every step on several ranks, every `every`-th with the extra pass."""
        return self.measurable and (self.world_size > 1 or step_index % self.every == 0)

    # several ranks: the weights' local norm from DDP's buckets, the alphas' from the architect's average

    def attach(self, train_model, architect) -> None:
        """On several ranks, catch the local norms on their way into the all-reduces: DDP's buckets (train_model,
        possibly compiled) and the architect's average of the alphas' gradients."""
        if self.world_size > 1:
            getattr(train_model, "_orig_mod", train_model).register_comm_hook(None, self.comm_hook)
            architect.observe_average = self.alphas_reduced

    def comm_hook(self, state, bucket):
        """DDP's all-reduce of a gradient bucket, after adding its squared norm to this rank's local sum."""
        buffer = bucket.buffer()
        self.local_sq += buffer.double().pow(2).sum()
        buffer.mul_(1.0 / self.world_size)  # as DDP's own reduction scales each gradient by 1/N before the sum
        return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])

    def weights_reduced(self, total_norm: torch.Tensor) -> None:
        """The all-reduced weights' gradient norm (the clip's), paired with the buckets' local norm."""
        if self.world_size > 1:
            self.weights.add(self.local_sq, total_norm.double() ** 2, self.b_small, self.b_big)
            self.local_sq.zero_()

    def alphas_reduced(self, local_sq: torch.Tensor, global_sq: torch.Tensor) -> None:
        self.alphas.add(local_sq, global_sq, self.b_small, self.b_big)

    # one process: an extra pass over the micro-batches

    def probe(self, params: list, x, y, phase: str, generator: torch.Generator | None) -> None:
        """Measure `params`' gradients (the alphas on a validation batch, the weights on a training batch) over
        self.parts equal micro-batches of (x, y), leaving the step's state as it was."""
        if self.world_size > 1:
            return
        group = self.alphas if phase == ALPHA_STEP else self.weights
        n = self.b_small * self.parts
        buffers = [b.clone() for b in self.model.buffers()]
        noise_state = None if generator is None else generator.get_state()
        devices = [x.device] if x.device.type == "cuda" else []
        # the alphas' pass on detached weights, as the architect's: autograd then skips every weight gradient
        fixed = ({n: w.detach() for n, w in self.model.named_weights()} if phase == ALPHA_STEP else None)
        small_sq, total = 0.0, None
        with torch.random.fork_rng(devices=devices), self.model.sampling(phase, generator):
            for xs, ys in zip(x[:n].chunk(self.parts), y[:n].chunk(self.parts)):
                with self.autocast():
                    out = self.model(xs) if fixed is None else functional_call(self.model, fixed, (xs,), strict=False)
                    loss = self.criterion(out.float(), ys)
                grads = torch.autograd.grad(loss, params)
                small_sq = small_sq + squared_norm(grads) / self.parts
                total = list(grads) if total is None else [t + g for t, g in zip(total, grads)]
        group.add(small_sq, squared_norm(t / self.parts for t in total), self.b_small, self.b_big)
        for buffer, saved in zip(self.model.buffers(), buffers):
            buffer.copy_(saved)
        if generator is not None:
            generator.set_state(noise_state)

    # reading

    def _averaged(self) -> None:
        """Every rank's averages replaced by their mean over ranks (a no-op on one process)."""
        all_reduce_mean_([self.weights.sums, self.alphas.sums])

    def values(self) -> dict:
        """{"noise_scale_weights": ..., "noise_scale_alphas": ...} over all ranks (a collective under DDP)."""
        self._averaged()
        return {"noise_scale_weights": self.weights.value(), "noise_scale_alphas": self.alphas.value()}

    def state_dict(self) -> dict:
        self._averaged()  # the same on every rank, so a resume continues where every rank was
        return {"weights": self.weights.sums.cpu(), "alphas": self.alphas.sums.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.weights.sums.copy_(state["weights"])
        self.alphas.sums.copy_(state["alphas"])


def suggestion(values: dict, global_batch: int, per_rank: int, world_size: int) -> str:
    """The end-of-search advice: what ran, what B_noise says, how many ranks of this per-rank batch would pay."""
    measured = [v for v in (values["noise_scale_weights"], values["noise_scale_alphas"]) if v is not None]
    if not measured:
        return f"global batch {global_batch}; no noise-scale measurement yet"
    critical = min(measured)  # both take a step per batch: the smaller bounds the useful batch
    ranks = max(1, math.floor(critical / per_rank))
    change = ("as many as now" if ranks == world_size else
              f"{ranks - world_size} more than now" if ranks > world_size else f"{world_size - ranks} fewer than now")
    ratio = global_batch / critical
    more = ", ".join(f"{k}x {epochs_factor(global_batch, k * global_batch, critical):.2f}" for k in (2, 4, 8))
    return (f"global batch {global_batch} is {ratio:.2g}x the smaller measured B_noise ({critical:.0f}): up to about "
            f"{ranks} rank(s) of {per_rank} images per step ({change}) still cut the steps, each needing more epochs "
            f"(twice the ideal's at B_noise); the epochs that reach the same loss at a larger global batch, as a "
            f"multiple of these: {more}")


def epochs_factor(batch: int, larger: int, b_noise: float) -> float:
    """How many times the epochs at `batch` a search at `larger` needs to reach the same loss. McCandlish et al.
    (2018): the steps to a given loss are S_min (1 + B_noise / B), so the images, steps times B, are
    S_min (B + B_noise); their ratio between the two batches is the epochs' (docs/large-batch.md tests it)."""
    return (larger + b_noise) / (batch + b_noise)
