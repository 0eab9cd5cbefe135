"""Signs that a search is collapsing onto parameter-free operations, measured every epoch.

- The parameter-free ops (skip_connect, pools) in the derived cells: DARTS+ stops a search once the normal cell
  holds more than 2 skip_connects.
- The dominant eigenvalue of the validation loss's Hessian with respect to the alphas: RobustDARTS shows it grows
  as a search degenerates. Estimated by power iteration on Hessian-vector products; each product is a central
  finite difference of the alpha gradient (as the second-order architect's Hessian term), in float64, because the
  fast search path (custom depthwise backward, alpha weights folded into BatchNorm) is differentiable once, not
  twice.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

from .genotype import Genotype

PARAMETER_FREE = ("skip_connect", "max_pool_3x3", "avg_pool_3x3")
MAX_SKIPS = 2  # DARTS+: more skip_connects than this in the normal cell is collapse
EIGENVALUE_GROWTH = 1.3  # warn once the eigenvalue exceeds its minimum so far by this factor (RobustDARTS' ratio
                         # criterion compares epoch averages; this is the same test on single epochs)


def parameter_free(gene: list) -> int:
    """Edges of a cell whose op has no weights."""
    return sum(op in PARAMETER_FREE for op, _ in gene)


def cell_counts(genotype: Genotype) -> dict:
    return {"param_free_normal": parameter_free(genotype.normal),
            "param_free_reduce": parameter_free(genotype.reduce),
            "skip_normal": sum(op == "skip_connect" for op, _ in genotype.normal)}


def signals(counts: dict, eigenvalues: list) -> dict[str, str]:
    """This epoch's collapse signals, by the --early-stop rule that acts on each ("skips", "eigenvalue"), as a
    message; eigenvalues: every estimate so far, this epoch's last (empty when none was made this epoch)."""
    out = {}
    if counts["skip_normal"] > MAX_SKIPS:
        out["skips"] = (f"the normal cell holds {counts['skip_normal']} skip_connects (DARTS+ calls more than "
                        f"{MAX_SKIPS} collapse)")
    if len(eigenvalues) > 1 and eigenvalues[-1] > EIGENVALUE_GROWTH * min(eigenvalues[:-1]) > 0:
        out["eigenvalue"] = (f"the alphas' Hessian eigenvalue grew to {eigenvalues[-1]:.4g}, "
                             f"{eigenvalues[-1] / min(eigenvalues[:-1]):.2f}x its minimum (RobustDARTS: the search is "
                             "degenerating)")
    return out


def _alpha_gradient(model: nn.Module, criterion, x, y, alphas: list, average: Callable) -> list:
    loss = criterion(model(x), y)
    return average(list(torch.autograd.grad(loss, alphas)))


def hessian_eigenvalue(model: nn.Module, criterion, x: torch.Tensor, y: torch.Tensor, iterations: int = 20,
                       average: Callable = lambda grads: grads, r: float = 1e-5, seed: int = 0) -> float:
    """The dominant eigenvalue of d^2 L_val / d alpha^2 on the batch (x, y), BatchNorm in training mode as the
    alpha step sees it; `model` itself is not touched.

    The products run on a float64 copy of the network: the ReLUs and max-pools make the alpha gradient piecewise
    smooth, and a finite difference over a step that crosses their kinks is far off (measured on a tiny supernet:
    a 1e-3 step is off by more than 10x the product's size, a 1e-5 step agrees with double backward to 1e-9),
    while a 1e-5 step in float32 would be lost in rounding. `average` averages a list of tensors over ranks: each
    rank's batch is part of one global batch, and every rank gets the same eigenvalue. The start vector comes from
    `seed`, the same on every rank.
    """
    probe = copy.deepcopy(model).double()
    x = x.double() if x.is_floating_point() else x
    alphas = list(probe.arch_parameters())
    start = [a.detach().clone() for a in alphas]
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(a.shape, generator=g, dtype=torch.float64).to(a.device) for a in alphas]
    eigenvalue = 0.0

    def gradient_at(sign: float) -> list:
        with torch.no_grad():
            for a, a0, t in zip(alphas, start, v):
                a.copy_(a0 + sign * r * t)
        return _alpha_gradient(probe, criterion, x, y, alphas, average)

    for _ in range(iterations):
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        v = [t / norm for t in v]
        hv = [(p - m) / (2 * r) for p, m in zip(gradient_at(1.0), gradient_at(-1.0))]
        eigenvalue = float(sum((h * t).sum() for h, t in zip(hv, v)))  # Rayleigh quotient, ||v|| = 1
        v = hv
    return eigenvalue
