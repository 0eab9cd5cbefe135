"""The search methods: how the alphas weigh the candidate ops, and what each anti-collapse method changes.

Every method is plain DARTS plus one small change, with the defaults of its authors' code:

- darts: softmax over the ops of each edge (Liu et al.).
- darts-minus (DARTS-, Chu et al.): an auxiliary skip connection on every edge, outside the mixture, scaled by
  beta = 1 - epoch / epochs, so skip_connect no longer needs to win the alphas to pass the signal on.
- beta-darts (beta-DARTS, Ye et al.): the alpha step's loss gains lambda * mean over edges of
  logsumexp(alphas) over the 7 ops other than 'none' (its authors' DARTS space), lambda = 50 * epoch / epochs. The authors' architect has 50 * epoch / 100 for their
  100-epoch NAS-Bench-201 search (the only path of theirs that runs: their DARTS-space script crashes), which is
  this linear rise from 0 to 50 over the search; over a 50-epoch search the literal 100 would stop at 24.5.
- sdarts-rs (SDARTS-RS, Chen & Hsieh): the weight step sees softmax(alphas) + U(-eps, eps), clipped to [0, 1] and
  renormalised per edge, eps rising linearly from 0.03 to 0.3 over the search; the alpha step sees no noise.
  Like beta-DARTS it searches the 7 ops other than 'none' (the authors' DARTS space, sota/cnn/spaces.py s5), and
  its noise is drawn over those 7 alone (the authors' stream of uniforms).
- fair-darts (FairDARTS, Chu et al.): independent sigmoids instead of the softmax over the 7 ops other than 'none'
  (the authors' op set), and the alpha step's loss gains 10 * the zero-one loss -mean((sigmoid(alphas) - 0.5)^2)
  over those 7. The cell is derived by the original top-2 rule on the sigmoids: the authors' threshold_sparse
  parse takes the same two edges per node but drops an edge whose best sigmoid is below 0.85, leaving nodes
  with fewer than two inputs, which the genotype format (two per node) does not hold.
- drnas (DrNAS, Chen et al.): the op weights of the 7 ops other than 'none' (the authors' op set) are a sample of
  Dirichlet(elu(alphas) + 1) in every training forward (weight and alpha steps; the pathwise gradient reaches the
  concentration as torch.distributions.Dirichlet.rsample's does, the authors' estimator); evaluation uses the Dirichlet's mean. Its default regulariser is the L2 penalty on the alphas,
  which is the alpha optimiser's weight decay (1e-3, as DARTS's); the cell is derived from the softmax of the
  alphas over the 7 ops, as the authors do.

A method whose authors search without 'none' keeps the alphas' 8 columns (genotype and alpha files keep their
format): the 'none' column gets weight 0 in every forward and in the derivation, so no gradient reaches it. In a
space whose cell is read off with 'none' among the ops (NAS-Bench-201), every method searches 'none' too
(`with_none`), as the benchmark's DARTS and DrNAS's authors' NAS-Bench-201 code do.

Random draws come from the `generator` the caller hands in: seeded alike on every rank, they make the noise of
sdarts-rs and the samples of drnas identical on all ranks, so the alphas stay identical under DDP. The network
draws one sample per phase of a step (supernet.Network.sampling): the second-order step's four passes and the
micro-batches of --accumulate all see it, so its finite difference measures the weights' change, not noise.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .spaces.cnn.genotype import NONE_INDEX, without_none
from .method_table import TABLE, MethodInfo

# phases of a search step in which a network's forward runs; None = evaluation (deterministic weights)
WEIGHT_STEP, ALPHA_STEP = "weights", "alphas"


class Darts:
    """Plain DARTS; the base every method changes one part of. Its `name` is its row's in method_table.TABLE."""

    derivation = "softmax"  # what genotype.derive ranks (its `mixing`): a softmax or the sigmoids of the alphas
    auxiliary_skip = False  # does every edge carry DARTS-'s extra skip connection
    stochastic = False  # does a forward draw random numbers (then the caller hands in a generator)
    searches_none = True  # False: the authors search the 7 ops other than 'none', whose weight is then 0

    def mix(self, alphas: torch.Tensor, phase: str | None, generator: torch.Generator | None, epoch: int,
            epochs: int) -> torch.Tensor:
        """The op weights of each edge (rows of `alphas`) for a forward in `phase`."""
        return self.weights(alphas)

    def with_none(self) -> Darts:
        """This method over a space where its authors search 'none' too (NAS-Bench-201: the benchmark's DARTS and
        DrNAS's 201-space code weigh all 5 of its ops, 'none' included, and derive the cell from all 5)."""
        method = copy.copy(self)
        method.searches_none = True
        return method

    def searched_columns(self, alphas: torch.Tensor) -> list[int]:
        """The columns of the ops the method searches: all, or those other than 'none' (any space keeps 'none'
        first)."""
        return [i for i in range(alphas.shape[-1]) if self.searches_none or i != NONE_INDEX]

    def searched(self, alphas: torch.Tensor) -> torch.Tensor:
        return alphas[:, self.searched_columns(alphas)]

    def op_set(self, t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """t over the ops the method searches: the 'none' column set to `fill` where it searches without 'none'."""
        return t if self.searches_none else without_none(t, fill)

    def weights(self, alphas: torch.Tensor) -> torch.Tensor:
        """The deterministic op weights: evaluation, statistics."""
        return F.softmax(self.op_set(alphas, float("-inf")), dim=-1)

    def penalty(self, alphas: list[torch.Tensor], epoch: int, epochs: int) -> torch.Tensor | None:
        """The term the alpha step adds to the validation loss (None: none)."""
        return None

    def skip_coefficient(self, epoch: int, epochs: int) -> float:
        """The weight of the auxiliary skip connection (methods with auxiliary_skip only)."""
        return 0.0


class DartsMinus(Darts):
    auxiliary_skip = True

    def skip_coefficient(self, epoch: int, epochs: int) -> float:
        return 1.0 - epoch / epochs


class BetaDarts(Darts):
    derivation = "softmax-without-none"
    searches_none = False
    LAMBDA_MAX = 50.0  # lambda rises linearly from 0 to this over the search

    def penalty(self, alphas, epoch, epochs):
        lam = self.LAMBDA_MAX * epoch / epochs
        return lam * torch.cat([torch.logsumexp(self.searched(a), dim=-1) for a in alphas]).mean()


class SdartsRS(Darts):
    derivation = "softmax-without-none"
    stochastic = True
    searches_none = False
    EPSILON_START, EPSILON_END = 0.03, 0.3

    def epsilon(self, epoch: int, epochs: int) -> float:
        return self.EPSILON_START + (self.EPSILON_END - self.EPSILON_START) * epoch / epochs

    def mix(self, alphas, phase, generator, epoch, epochs):
        if phase != WEIGHT_STEP:
            return self.weights(alphas)
        with torch.no_grad():  # the perturbed weights are data for the weight step, as the authors' in-place noise
            eps = self.epsilon(epoch, epochs)
            w = self.weights(alphas)
            noise = torch.zeros_like(w)
            searched = self.searched_columns(w)
            noise[:, searched] = torch.empty_like(w[:, searched]).uniform_(-eps, eps, generator=generator)
            noisy = (w + noise).clamp_(0, 1)
            empty = noisy.sum(-1) == 0  # every op clipped to 0: the edge keeps its strongest op alone
            noisy[empty] = F.one_hot(w[empty].argmax(-1), w.shape[-1]).to(w.dtype)
            return noisy / noisy.sum(-1, keepdim=True)


class FairDarts(Darts):
    derivation = "sigmoid"
    searches_none = False
    ZERO_ONE_WEIGHT = 10.0

    def weights(self, alphas):
        return self.op_set(torch.sigmoid(alphas))

    def penalty(self, alphas, epoch, epochs):
        sig = torch.sigmoid(torch.cat([self.searched(a).reshape(-1) for a in alphas]))
        return -self.ZERO_ONE_WEIGHT * ((sig - 0.5) ** 2).mean()


class DrNAS(Darts):
    derivation = "softmax-without-none"
    stochastic = True
    searches_none = False

    @staticmethod
    def concentration(alphas: torch.Tensor) -> torch.Tensor:
        return F.elu(alphas) + 1

    def weights(self, alphas):
        c = self.op_set(self.concentration(alphas))
        return c / c.sum(-1, keepdim=True)

    def mix(self, alphas, phase, generator, epoch, epochs):
        if phase is None:
            return self.weights(alphas)
        concentration = self.searched(self.concentration(alphas))
        with torch.no_grad():  # a Dirichlet sample as normalised Gamma draws: torch's Gamma takes a generator
            gammas = torch._standard_gamma(concentration.float(), generator=generator)  # one stream at any dtype
            gammas = gammas.clamp_min(torch.finfo(gammas.dtype).tiny)  # all-zero draws would divide 0 by 0
            sample = (gammas / gammas.sum(-1, keepdim=True)).to(concentration.dtype)
        sample = _DirichletSample.apply(concentration, sample)  # its gradient in the alphas' precision
        columns = torch.tensor(self.searched_columns(alphas), device=alphas.device)
        return sample.new_zeros(alphas.shape).index_copy(1, columns, sample).to(alphas.dtype)  # 'none' weighs 0


class _DirichletSample(torch.autograd.Function):
    """A Dirichlet sample drawn beforehand, differentiated as torch.distributions.Dirichlet.rsample differentiates
    its own (torch's implicit reparameterisation, `_dirichlet_grad`), which the DrNAS authors' code uses: the
    gradient through normalised Gamma draws is another unbiased estimator, and differs for one and the same sample."""

    @staticmethod
    def forward(ctx, concentration, sample):
        ctx.save_for_backward(sample, concentration)
        return sample.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        sample, concentration = ctx.saved_tensors
        total = concentration.sum(-1, keepdim=True).expand_as(concentration)
        d_sample = torch._dirichlet_grad(sample, concentration, total)
        return d_sample * (grad - (sample * grad).sum(-1, keepdim=True)), None


def _build(name: str, info: MethodInfo) -> Darts:
    method = globals()[info.cls]()
    method.name = name
    return method


METHODS = {name: _build(name, info) for name, info in TABLE.items()}
