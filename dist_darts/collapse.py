"""Signs that a search is collapsing onto parameter-free operations, measured every epoch, and the two published
rules that end a search on them.

- The parameter-free ops (skip_connect, pools) in the derived cells: DARTS+ (Liang et al. 2019, criterion 1) stops
  a search once the normal cell holds two or more skip_connects; the cell at that point is the result.
- The largest eigenvalue of the validation loss's Hessian with respect to the alphas: RobustDARTS (Zela et al.
  2020) shows it grows as a search degenerates, and stops when a local average of the estimates exceeds an earlier
  one by a factor (local_average_stop, its authors' EVLocalAvg). Estimated by power iteration on Hessian-vector
  products; each product is a central finite difference of the alpha gradient (as the second-order architect's
  Hessian term), in float64, because the fast search path (custom depthwise backward, alpha weights folded into
  BatchNorm) is differentiable once, not twice.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from .spaces.cnn.genotype import Genotype

PARAMETER_FREE = ("skip_connect", "max_pool_3x3", "avg_pool_3x3")
DARTS_PLUS_SKIPS = 2  # DARTS+'s criterion 1: this many skip_connects or more in the normal cell is collapse


class LocalAverageRule(NamedTuple):
    """RobustDARTS's early stop (automl/RobustDARTS: src/utils.py:31-140 EVLocalAvg; its defaults
    src/search/args.py:61-64)."""
    window: int = 5  # estimates per local average
    delta: int = 4  # the local average compared with is this many estimates earlier
    factor: float = 1.3  # stop when the newer local average exceeds the earlier one by more than this factor
    start_epoch: int = 10  # the earliest epoch (counted from 0) the search may be rolled back to


def parameter_free(gene: list) -> int:
    """Edges of a cell whose op has no weights."""
    return sum(op in PARAMETER_FREE for op, _ in gene)


def cell_counts(genotype: Genotype) -> dict:
    return {"param_free_normal": parameter_free(genotype.normal),
            "param_free_reduce": parameter_free(genotype.reduce),
            "skip_normal": sum(op == "skip_connect" for op, _ in genotype.normal)}


def local_average_stop(epochs: list[int], eigenvalues: list[float],
                       rule: LocalAverageRule = LocalAverageRule()) -> tuple[int, float] | None:
    """RobustDARTS's rule after the latest estimate: (the epoch to roll back to, the ratio) when it fires, else None.

    The local average after the k-th estimate is the mean of the last min(k, window) estimates, counted once half
    a window of them exists, and belongs to the estimate window // 2 before the k-th (the centre of a full
    window). The rule compares the newest local average with the one `delta` estimates earlier, once the earlier
    one's epoch is at least start_epoch, and fires when their ratio exceeds `factor`; the search's result is then
    the genotype of the earlier local average's epoch. `epochs`: the 0-based epoch of each estimate, evenly spaced."""
    n, first = len(eigenvalues), math.ceil(rule.window / 2)
    back = n - 1 - rule.window // 2 - rule.delta  # the estimate at the centre of the earlier local average
    if n - rule.delta < first or back < 0 or epochs[back] < rule.start_epoch:
        return None

    def local_average(k):
        return sum(eigenvalues[max(0, k - rule.window):k]) / min(k, rule.window)

    ratio = local_average(n) / local_average(n - rule.delta)
    return (epochs[back], ratio) if ratio > rule.factor else None


def signals(counts: dict, epoch: int, estimates: list[tuple[int, float]] | None,
            rule: LocalAverageRule = LocalAverageRule()) -> dict[str, tuple[str, int]]:
    """This epoch's (0-based `epoch`) collapse signals, by the --early-stop rule that acts on each ("skips",
    "eigenvalue"): a message and the epoch whose genotype the search keeps if the rule ends it. estimates: every
    (epoch, eigenvalue) so far when one was made this epoch, else None."""
    out = {}
    if counts["skip_normal"] >= DARTS_PLUS_SKIPS:
        out["skips"] = (f"the normal cell holds {counts['skip_normal']} skip_connects (DARTS+ stops at "
                        f"{DARTS_PLUS_SKIPS} or more)", epoch)
    fired = estimates and local_average_stop([e for e, _ in estimates], [v for _, v in estimates], rule)
    if fired:
        back, ratio = fired
        out["eigenvalue"] = (f"the local average of the alphas' Hessian eigenvalue grew {ratio:.2f}x over "
                             f"{rule.delta} estimates (RobustDARTS: above {rule.factor}x, the search is "
                             f"degenerating; it rolls back to epoch {back + 1})", back)
    return out


def _alpha_gradient(model: nn.Module, criterion, x, y, alphas: list, average: Callable) -> list:
    loss = criterion(model(x), y)
    return average(list(torch.autograd.grad(loss, alphas)))


def hessian_eigenvalue(model: nn.Module, criterion, x: torch.Tensor, y: torch.Tensor, iterations: int = 20,
                       average: Callable = lambda grads: grads, r: float = 1e-5, seed: int = 0) -> float:
    """The largest (algebraic, as RobustDARTS's max of the eigenvalues) eigenvalue of d^2 L_val / d alpha^2 on the
    batch (x, y), BatchNorm in training mode as the alpha step sees it; `model` itself is not touched. Power
    iteration finds the eigenvalue of largest magnitude; when that is negative, a second run on the shifted
    Hessian finds the largest.

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

    def random_vector() -> list:
        return [torch.randn(a.shape, generator=g, dtype=torch.float64).to(a.device) for a in alphas]

    def gradient_at(v: list, sign: float) -> list:
        with torch.no_grad():
            for a, a0, t in zip(alphas, start, v):
                a.copy_(a0 + sign * r * t)
        return _alpha_gradient(probe, criterion, x, y, alphas, average)

    def hessian_product(v: list) -> list:
        return [(p - m) / (2 * r) for p, m in zip(gradient_at(v, 1.0), gradient_at(v, -1.0))]

    dominant = _power_iteration(hessian_product, random_vector(), iterations)
    if dominant >= 0:  # the eigenvalue of largest magnitude is the largest one
        return dominant
    # the dominant one is negative: H - dominant * I has the same eigenvectors, all its eigenvalues >= 0, and its
    # dominant one is the largest of H's minus `dominant`
    shifted = _power_iteration(lambda v: [h - dominant * t for h, t in zip(hessian_product(v), v)],
                               random_vector(), iterations)
    return shifted + dominant


def _power_iteration(product: Callable[[list], list], v: list, iterations: int) -> float:
    """The eigenvalue of largest magnitude of the symmetric operator `product`, from the start vector v."""
    eigenvalue = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        v = [t / norm for t in v]
        hv = product(v)
        eigenvalue = float(sum((h * t).sum() for h, t in zip(hv, v)))  # Rayleigh quotient, ||v|| = 1
        v = hv
    return eigenvalue
