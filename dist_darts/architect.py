"""The alpha update of DARTS: first order, or second order through an unrolled virtual weight step.

Gradients here come from ``torch.autograd.grad``, which DistributedDataParallel never all-reduces, so every
gradient that feeds an update is averaged over ranks explicitly, one flat all-reduce per gradient set: the
virtual step's weight gradient, the validation gradients (alphas and w'), and the finite-difference term.
The weights are never changed in place: the unrolled and perturbed weights are passed with functional_call.
A method's penalty on the alphas (beta-DARTS, FairDARTS) depends on the alphas alone, so its gradient is added to
either order's as it is, after the averaging: the alphas, and so the penalty, are the same on every rank.

The second-order step runs in float32 whatever the autocast: its finite difference perturbs the weights by
R / ||v|| (~1e-5 per weight), far below bf16's rounding step, and v = dL_val/dw' feeds it, so under bf16 the
alpha gradient is mostly noise (cosine 0.43 to a float64 reference on a 5-cell supernet). The validation pass at
the virtual weights w' runs on copies of the BatchNorm buffers, as the original's throwaway model did.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn
from torch.func import functional_call

Average = Callable[[list], list]  # averages a list of tensors over ranks in place


def no_average(tensors):
    """One process: nothing to average."""
    return tensors


class Architect:
    def __init__(self, model: nn.Module, criterion: Callable, arch_optimizer: torch.optim.Optimizer,
                 weight_optimizer: torch.optim.Optimizer, momentum: float, weight_decay: float,
                 unrolled: bool = False, average: Average = no_average, autocast=None, r: float = 0.01):
        self.model = model  # the plain module, never the DDP wrapper
        self.criterion = criterion
        self.arch_optimizer = arch_optimizer
        self.weight_optimizer = weight_optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.unrolled = unrolled
        self.average = average
        self.autocast = autocast or contextlib.nullcontext  # a factory of autocast contexts
        self.r = r
        self.arch_params = model.arch_parameters()
        self.weight_names, self.weights = zip(*model.named_weights())
        self.penalty: Callable[[], torch.Tensor | None] = lambda: None  # the method's term on the alphas, if any
        # told the alphas' squared gradient norm on this rank and over all ranks (the noise-scale monitor), if set
        self.observe_average: Callable[[torch.Tensor, torch.Tensor], None] | None = None

    def _loss(self, x, y, weights=None, buffers=None, fp32=False):
        """The loss at `weights` (default: the module's own) with `buffers` (default: the module's own), under
        the job's autocast or, with fp32, under none whatever the caller's."""
        with torch.autocast(x.device.type, enabled=False) if fp32 else self.autocast():
            logits = self._forward((x,), weights, buffers)
        return self.criterion(logits.float(), y)

    def _forward(self, args: tuple, weights=None, buffers=None):
        """The model's output on `args` at `weights` (default: its own) with `buffers` (default: its own)."""
        if weights is None:
            return self.model(*args)
        tensors = dict(zip(self.weight_names, weights))
        if buffers is not None:
            tensors.update(buffers)
        return functional_call(self.model, tensors, args, strict=False)

    def step(self, x_train, y_train, x_val, y_val, lr: float, micro_batches: int = 1) -> torch.Tensor:
        """One Adam step of the alphas; returns the validation loss (a tensor, not synced to the host)."""
        grads, loss = self.alpha_gradients(x_train, y_train, x_val, y_val, lr, micro_batches)
        self.apply_gradients(grads)
        return loss.detach()

    def with_penalty(self, grads: list) -> list:
        """grads plus the gradient of the method's penalty on the alphas."""
        penalty = self.penalty()
        if penalty is None:
            return grads
        extra = torch.autograd.grad(penalty, self.arch_params, allow_unused=True)
        return [g if e is None else g + e for g, e in zip(grads, extra)]

    def apply_gradients(self, grads) -> None:
        """One step of the alpha optimizer along `grads` (already averaged over ranks)."""
        for p, g in zip(self.arch_params, grads):
            p.grad = g
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)

    def alpha_gradients(self, x_train, y_train, x_val, y_val, lr: float, micro_batches: int = 1):
        """The alphas' gradients (averaged over ranks, plus the method's penalty's) and the validation loss. With
        micro_batches N the batches are split into N equal parts whose gradients are averaged: the whole batch's
        gradient in N passes of a smaller memory footprint (in second order, each of its three gradients)."""
        if not self.unrolled:
            # detached weights: autograd then skips every weight gradient, custom Functions' included (their
            # ctx.needs_input_grad would otherwise ask for the depthwise convs' weight gradients)
            grads, loss = self._mean_gradients(x_val, y_val, self.arch_params, micro_batches,
                                               [w.detach() for w in self.weights])
            return self.with_penalty(self._average_alphas(grads, len(grads))), loss  # one all-reduce, whatever N
        with torch.autocast(x_train.device.type, enabled=False):  # the backward passes too
            grads, loss = self._unrolled_gradients(x_train, y_train, x_val, y_val, lr, micro_batches)
        return self.with_penalty(grads), loss

    def _average_alphas(self, grads: list, count: int) -> list:
        """self.average(grads), whose first `count` are the alphas' gradients: their squared norm before (this
        rank's batch) and after (all ranks') goes to observe_average."""
        if self.observe_average is None:
            return self.average(grads)
        local = torch.nn.utils.get_total_norm(grads[:count]).double() ** 2
        grads = self.average(grads)
        self.observe_average(local, torch.nn.utils.get_total_norm(grads[:count]).double() ** 2)
        return grads

    def _mean_gradients(self, x, y, wrt: list, micro_batches: int, weights=None, buffers=None, fp32=False):
        """Gradients of the loss on (x, y) with respect to `wrt`, and the loss, as means over `micro_batches`
        equal parts of the batch, each part's graph freed before the next is built."""
        grads, loss = None, 0.0
        for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
            part = self._loss(xs, ys, weights, buffers, fp32) / micro_batches
            g = torch.autograd.grad(part, wrt)
            grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
            loss = loss + part.detach()
        return grads, loss

    def _unrolled_gradients(self, x_train, y_train, x_val, y_val, lr, micro_batches=1):
        # virtual step w' = w - lr * (momentum * buf + dL_train/dw + wd * w), as the SGD step would take it
        g_train, _ = self._mean_gradients(x_train, y_train, self.weights, micro_batches, fp32=True)
        g_train = self.average(g_train)
        with torch.no_grad():
            unrolled = []
            for w, g in zip(self.weights, g_train):
                d = g + self.weight_decay * w
                buf = self.weight_optimizer.state.get(w, {}).get("momentum_buffer")
                if buf is not None:
                    d = d + self.momentum * buf
                unrolled.append((w - lr * d).requires_grad_())
        del g_train

        scratch = {name: b.clone() for name, b in self.model.named_buffers()}  # w' must not move the real stats
        n_arch = len(self.arch_params)
        grads, loss_val = self._mean_gradients(x_val, y_val, list(self.arch_params) + unrolled, micro_batches,
                                               unrolled, scratch, fp32=True)
        grads = self._average_alphas(grads, n_arch)
        d_alpha, d_unrolled = grads[:n_arch], grads[n_arch:]
        del unrolled

        # finite-difference Hessian-vector product: (dL_train/dalpha(w + R v) - (w - R v)) / 2R, v = dL_val/dw'
        eps = self.r / torch.cat([g.reshape(-1) for g in d_unrolled]).norm()
        with torch.no_grad():
            w_plus = [w + eps * v for w, v in zip(self.weights, d_unrolled)]
            w_minus = [w - eps * v for w, v in zip(self.weights, d_unrolled)]
        g_plus, _ = self._mean_gradients(x_train, y_train, self.arch_params, micro_batches, w_plus, fp32=True)
        g_minus, _ = self._mean_gradients(x_train, y_train, self.arch_params, micro_batches, w_minus, fp32=True)
        hessian = self.average([(p - m) / (2 * eps) for p, m in zip(g_plus, g_minus)])
        return [a - lr * h for a, h in zip(d_alpha, hessian)], loss_val
