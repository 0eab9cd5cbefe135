"""The recurrent search's alpha update (the original rnn/architect.py), a subclass of the convolutional one's."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...architect import Architect, Average, no_average


def clip_gradients(grads: list, max_norm: float) -> tuple[list, torch.Tensor]:
    """The recurrent architect's clip, as the original rnn/ code's: scaled to `max_norm` only when their norm
    exceeds it, but the coefficient max_norm / (norm + 1e-6) is returned either way (its second-order term
    multiplies by it even when it is above 1)."""
    coef = max_norm / (torch.nn.utils.get_total_norm(grads) + 1e-6)
    return ([g * coef for g in grads] if coef < 1 else list(grads)), coef


class RecurrentArchitect(Architect):
    """The alpha update of the recurrent search (the original rnn/architect.py): the losses carry hidden states.

    The validation loss starts from the validation hidden state and hands its new one on (the next validation
    batch starts from it); the training losses start from the training hidden state. Second order differs from
    the convolutional step where the original does: the virtual step is plain SGD on the clipped training
    gradient (no momentum), the tied embedding (= decoder) weight takes no virtual step (the original rebuilds the
    virtual model from a state dict whose stale decoder.weight overwrites the stepped embedding), the Hessian's
    vector is clipped too, and the implicit term is scaled by the training clip coefficient.
    """

    def __init__(self, model: nn.Module, arch_optimizer: torch.optim.Optimizer, weight_decay: float, clip: float,
                 unrolled: bool = False, average: Average = no_average, autocast=None, r: float = 0.01):
        super().__init__(model, torch.nn.functional.nll_loss, arch_optimizer, None, 0.0, weight_decay,
                         unrolled=unrolled, average=average, autocast=autocast, r=r)
        self.clip = clip
        self.tied = next(i for i, w in enumerate(self.weights) if w is model.encoder.weight)

    def _hidden_loss(self, hidden, x, y, weights=None, buffers=None, fp32=False):
        """(mean token NLL, next hidden) of tokens x (seq_len, batch) with targets y from `hidden`."""
        with torch.autocast(x.device.type, enabled=False) if fp32 else self.autocast():
            log_prob, hidden_next = self._forward((x, hidden), weights, buffers)
        return self.criterion(log_prob.float().view(-1, log_prob.size(2)), y.reshape(-1)), hidden_next

    def step(self, hidden_train, x_train, y_train, hidden_val, x_val, y_val, lr: float):
        """One Adam step of the alphas; returns (validation loss, the validation hidden state it ends in)."""
        grads, loss, hidden_next = self.alpha_gradients(hidden_train, x_train, y_train, hidden_val, x_val, y_val,
                                                        lr)
        self.apply_gradients(grads)
        return loss.detach(), [h.detach() for h in hidden_next]

    def alpha_gradients(self, hidden_train, x_train, y_train, hidden_val, x_val, y_val, lr: float):
        """(alpha gradients averaged over ranks, validation loss, next validation hidden state)."""
        if not self.unrolled:
            loss, hidden_next = self._hidden_loss(hidden_val, x_val, y_val, [w.detach() for w in self.weights])
            return self.average(list(torch.autograd.grad(loss, self.arch_params))), loss, hidden_next
        with torch.autocast(x_train.device.type, enabled=False):
            return self._unrolled_gradients(hidden_train, x_train, y_train, hidden_val, x_val, y_val, lr)

    def _unrolled_gradients(self, hidden_train, x_train, y_train, hidden_val, x_val, y_val, lr):
        loss_train, _ = self._hidden_loss(hidden_train, x_train, y_train, fp32=True)
        g_train, coef = clip_gradients(self.average(list(torch.autograd.grad(loss_train, self.weights))),
                                       self.clip)
        del loss_train
        with torch.no_grad():
            unrolled = [w - lr * (g + self.weight_decay * w) for w, g in zip(self.weights, g_train)]
            unrolled[self.tied] = self.weights[self.tied].clone()
        unrolled = [u.requires_grad_() for u in unrolled]
        del g_train

        scratch = {name: b.clone() for name, b in self.model.named_buffers()}  # w' must not move the real stats
        loss_val, hidden_next = self._hidden_loss(hidden_val, x_val, y_val, unrolled, scratch, fp32=True)
        n_arch = len(self.arch_params)
        grads = self.average(list(torch.autograd.grad(loss_val, list(self.arch_params) + unrolled)))
        d_alpha, (vector, _) = grads[:n_arch], clip_gradients(grads[n_arch:], self.clip)
        del unrolled, grads

        eps = self.r / torch.nn.utils.get_total_norm(vector)
        with torch.no_grad():
            w_plus = [w + eps * v for w, v in zip(self.weights, vector)]
            w_minus = [w - eps * v for w, v in zip(self.weights, vector)]
        g_plus = torch.autograd.grad(self._hidden_loss(hidden_train, x_train, y_train, w_plus, fp32=True)[0],
                                     self.arch_params)
        g_minus = torch.autograd.grad(self._hidden_loss(hidden_train, x_train, y_train, w_minus, fp32=True)[0],
                                      self.arch_params)
        hessian = self.average([(p - m) / (2 * eps) for p, m in zip(g_plus, g_minus)])
        return ([a - lr * coef * h for a, h in zip(d_alpha, hessian)], loss_val.detach(),
                [h.detach() for h in hidden_next])
