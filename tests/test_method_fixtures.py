"""One search step of each method against a fixture from its authors' own code (tests/fixtures/README.md says how
each `<method>_step.pt` was made). Every setting of the step (learning rates, Adam's betas, weight decays, clip,
epoch) is taken from the fixture, which recorded what the authors' code ran with, never from dist-darts's defaults.

A step here is dist-darts's `search.search_step` (the alpha step through `Architect`, then the weight step) on
`supernet.Network`. The authors' weights are stored flat, in their `named_parameters()` order, with names and
shapes; a few names differ from ours and are renamed (DARTS-'s `auxiliary_op` is our `auxiliary_skip`).

SDARTS-RS and beta-DARTS (their `sota/cnn/spaces.py` space s5), FairDARTS and DrNAS search the DARTS space
without `none` (7 ops). Their 7-op network is embedded in ours, whose MixedOp skips `none` altogether: our ops 1..7
are theirs 0..6, and `none`'s alpha is NONE_ALPHA, whose softmax weight (e^-30 of the others') and sigmoid (9e-14)
are far below float32's resolution. A method that zeroes `none`'s weight itself (its op set without `none`, in
the alphas' 8 columns) needs no more than this embedding. The SDARTS-RS weight step is compared once our noise is
drawn over its 7 ops only: the authors' 14x7 uniform draws, normal cell then reduce, are what a generator seeded
with `noise_seed` gives over 7 columns (`test_sdarts_rs_noise_matches_the_authors_draws`), while ours draws 14x8.

DrNAS's samples are differentiated as torch.distributions.Dirichlet.rsample differentiates them
(`_dirichlet_grad`, as the authors' code does): through the normalised Gamma draws instead, the alpha gradient of
the same sample was 16 % (normal) and 30 % (reduce) of its norm away from the fixture's. Their MixedOp's own BatchNorm
after pooling is commented out (`pool_batchnorm` False in the fixture's config), yet the whole step matches DARTS's
network with it (and is 0.13 away without it): the pooling ops their code runs bring one of their own. It also skips an op whose sampled weight is
exactly 0, which changes nothing but that op's BatchNorm statistics (a Dirichlet sample is 0 only by underflow).
"""

import contextlib
import re

import pytest
import torch
import torch.nn as nn

from dist_darts.architect import Architect
from dist_darts.meters import evaluate
from dist_darts.spaces.cnn.genotype import PRIMITIVES
from dist_darts.methods import ALPHA_STEP, METHODS, WEIGHT_STEP
from dist_darts.spaces.cnn.projection import Projection
from dist_darts.search import search_step
from dist_darts.spaces.cnn.supernet import Network

# float32 on both sides; the authors' sum over ops and ours (alphas folded into BN, in-place sums) round differently
ATOL, RTOL = 2e-5, 1e-4
NONE_ALPHA = -30.0  # `none`'s alpha where the authors have no `none`: its weight is 0 to float32


def _load(fixtures_dir, name):
    return torch.load(fixtures_dir / name, weights_only=True)


def _weights(ref, rename=lambda name: name) -> dict:
    """name -> tensor of the authors' weights in `ref["weights"]` (a flat vector), under our names."""
    tensors, offset = {}, 0
    for name, shape in zip(ref["weight_names"], ref["weight_shapes"]):
        n = torch.Size(shape).numel()
        tensors[rename(name)] = ref["weights"][offset:offset + n].view(shape)
        offset += n
    assert offset == ref["weights"].numel()
    return tensors


def _unflatten(ref, flat, rename=lambda name: name) -> dict:
    return _weights({**ref, "weights": flat}, rename)


def _network(ref, method, rename, without_none) -> Network:
    """Our supernet holding the fixture's weights and alphas (with a `none` column where theirs have none)."""
    c = ref["config"]
    net = Network(c["C"], c["num_classes"], c["layers"], method=method)
    ours = dict(net.named_weights())
    theirs = _weights(ref, rename)
    assert set(ours) == set(theirs)  # every weight of either network has its counterpart
    with torch.no_grad():
        for name, w in theirs.items():
            ours[name].copy_(w)
        for cell in ("normal", "reduce"):
            alphas = ref[f"alphas_{cell}"]
            getattr(net, f"alphas_{cell}").copy_(_with_none_column(alphas) if without_none else alphas)
    return net


class Step:
    """A dist-darts network, its optimizers and architect, set up from a fixture's state and settings."""

    def __init__(self, ref, method, rename=lambda name: name, unrolled=False, without_none=False):
        c = self.config = ref["config"]
        self.without_none = without_none
        if without_none:
            rename = _without_none_name
        self.ref, self.rename = ref, rename
        net = self.net = _network(ref, method, rename, without_none)
        net.set_epoch(c["epoch"], c["epochs"])
        self.w_opt = torch.optim.SGD(net.weights(), c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"])
        a_opt = torch.optim.Adam(net.arch_parameters(), c["arch_learning_rate"], betas=tuple(c["arch_betas"]),
                                 weight_decay=c["arch_weight_decay"])
        self.architect = Architect(net, nn.CrossEntropyLoss(), a_opt, self.w_opt, c["momentum"], c["weight_decay"],
                                   unrolled=unrolled)
        # beta-DARTS's lambda: the authors' architect has 50 * epoch / 100 whatever the search's length
        penalty_epochs = c.get("penalty_epochs", c["epochs"])
        self.architect.penalty = lambda: net.method.penalty([net.alphas_normal, net.alphas_reduce], c["epoch"],
                                                            penalty_epochs)
        self.alpha_grads = None
        apply = self.architect.apply_gradients

        def record(grads):  # the alpha gradient the step applies, kept for the comparison
            self.alpha_grads = [g.detach().clone() for g in grads]
            apply(grads)

        self.architect.apply_gradients = record

    def ours(self, alphas):
        """Our alphas (or their gradient) in the authors' layout: the columns of their ops."""
        return alphas[:, 1:] if self.without_none else alphas

    def run(self, generator=None):
        ref, c = self.ref, self.config
        batch = ((ref["input_train"], ref["target_train"]), (ref["input_valid"], ref["target_valid"]))
        self.net.train()
        return search_step(self.net, self.net, self.architect, self.w_opt, nn.CrossEntropyLoss(), batch, c["lr"],
                           c["grad_clip"], contextlib.nullcontext, channels_last=False, generator=generator)


def _close(actual, expected, what):
    assert torch.allclose(actual, expected, atol=ATOL, rtol=RTOL), (what, (actual - expected).abs().max().item())


def _check_alphas(step, expected):
    for i, cell in enumerate(("normal", "reduce")):
        _close(step.ours(step.alpha_grads[i]), expected[f"alpha_grad_{cell}"], f"alpha gradient, {cell}")
        _close(step.ours(getattr(step.net, f"alphas_{cell}").detach()), expected[f"alphas_{cell}_after"],
               f"alphas, {cell}")


def _check_weights(step, expected_flat):
    ours = dict(step.net.named_weights())
    for name, w in _unflatten(step.ref, expected_flat, step.rename).items():
        _close(ours[name].detach(), w, name)


def _without_none_name(name):
    """Op k of the authors' 7-op MixedOp is our op k + 1 (ours has `none` at 0)."""
    return re.sub(r"(cells\.\d+\._ops\.\d+\._ops\.)(\d+)\.", lambda m: f"{m[1]}{int(m[2]) + 1}.", name)


def _with_none_column(alphas):
    return torch.cat([torch.full_like(alphas[:, :1], NONE_ALPHA), alphas], dim=1)


def _darts_minus_name(name):
    return name.replace(".auxiliary_op.", ".auxiliary_skip.")


def test_darts_minus_matches_the_authors_step(fixtures_dir):
    ref = _load(fixtures_dir, "darts_minus_step.pt")
    step = Step(ref, "darts-minus", _darts_minus_name)
    assert step.net.skip_coefficient.item() == pytest.approx(ref["config"]["skip_coefficient"])
    step.run()
    _check_alphas(step, ref["first_order"])
    _check_weights(step, ref["first_order"]["weights_after"])


def test_beta_darts_matches_the_authors_step(fixtures_dir):
    ref = _load(fixtures_dir, "beta_darts_step.pt")
    step = Step(ref, "beta-darts", without_none=True)
    step.run()
    _check_alphas(step, ref["first_order"])
    _check_weights(step, ref["first_order"]["weights_after"])


@pytest.mark.parametrize("order", ["first_order", "second_order"])
def test_sdarts_rs_matches_the_authors_alpha_step(fixtures_dir, order):
    """The alpha step sees no noise, in either order. The weight step's noise the authors drew from the global
    generator seeded with `noise_seed` (their 14x7 uniforms, normal cell then reduce); ours draws the same 14x7
    over its 7 ops from a generator seeded alike, so in first order the weights after the step match too (the
    authors' second-order fixture records the alpha step)."""
    ref = _load(fixtures_dir, "sdarts_rs_step.pt")
    step = Step(ref, "sdarts-rs", unrolled=order == "second_order", without_none=True)
    assert step.net.method.epsilon(ref["config"]["epoch"], ref["config"]["epochs"]) == pytest.approx(
        ref["config"]["epsilon"])
    step.run(torch.Generator().manual_seed(ref["config"]["noise_seed"]))
    _check_alphas(step, ref[order])
    if order == "first_order":
        _check_weights(step, ref[order]["weights_after"])


def test_sdarts_rs_noise_matches_the_authors_draws(fixtures_dir):
    """The perturbed op weights of the weight step, from the alphas after the alpha step and a generator seeded as
    the authors' global one was: their uniform noise, clipping and renormalisation, on their 7 ops."""
    ref = _load(fixtures_dir, "sdarts_rs_step.pt")
    c = ref["config"]
    generator = torch.Generator().manual_seed(c["noise_seed"])
    for cell in ("normal", "reduce"):
        alphas = _with_none_column(ref["first_order"][f"alphas_{cell}_after"])
        noisy = METHODS["sdarts-rs"].mix(alphas, WEIGHT_STEP, generator, c["epoch"], c["epochs"])
        assert torch.equal(noisy[:, 0], torch.zeros(len(alphas)))  # 'none' (our column 0) is not searched
        _close(noisy[:, 1:], ref[f"noisy_weights_{cell}"], cell)


def test_fair_darts_matches_the_authors_step(fixtures_dir):
    """Adam's first step moves each alpha by lr along the sign of its gradient (plus decay), so the alphas after it
    match even while the gradient itself does not (the next test)."""
    ref = _load(fixtures_dir, "fair_darts_step.pt")
    step = Step(ref, "fair-darts", without_none=True)
    step.run()
    for cell in ("normal", "reduce"):
        _close(step.ours(getattr(step.net, f"alphas_{cell}").detach()), ref["first_order"][f"alphas_{cell}_after"],
               f"alphas, {cell}")
    _check_weights(step, ref["first_order"]["weights_after"])


def test_fair_darts_alpha_gradient_matches_the_authors(fixtures_dir):
    ref = _load(fixtures_dir, "fair_darts_step.pt")
    step = Step(ref, "fair-darts", without_none=True)
    step.run()
    _check_alphas(step, ref["first_order"])


def test_drnas_samples_match_the_authors_draws(fixtures_dir):
    """The Dirichlet samples of the alpha step (from the alphas before it) and of the weight step (after it), drawn
    from one generator seeded as the authors' global one was: their 7 ops are our columns 1..7. `none`'s
    concentration elu(NONE_ALPHA) + 1 is exactly 0 in float32, and a Gamma of concentration 0 takes no random
    number, so the generator's sequence is the authors' (with a concentration above 0 it would shift)."""
    ref = _load(fixtures_dir, "drnas_step.pt")
    c, expected = ref["config"], ref["first_order"]
    generator = torch.Generator().manual_seed(c["noise_seed"])
    for phase, alphas, key in ((ALPHA_STEP, "alphas_{}", "alpha_step_sample_{}"),
                               (WEIGHT_STEP, "alphas_{}_after", "weight_step_sample_{}")):
        for cell in ("normal", "reduce"):
            source = ref if phase == ALPHA_STEP else expected
            sample = METHODS["drnas"].mix(_with_none_column(source[alphas.format(cell)]), phase, generator,
                                          c["epoch"], c["epochs"])
            _close(sample[:, 1:], expected[key.format(cell)], f"{phase}, {cell}")


def test_drnas_matches_the_authors_step(fixtures_dir):
    """The whole first-order step: both samples from one generator seeded as the authors' global one, and the
    alpha gradient through each sample as torch.distributions.Dirichlet.rsample gives it. (Their second order does
    not run at C=2: `unrolled_error`.)"""
    ref = _load(fixtures_dir, "drnas_step.pt")
    step = Step(ref, "drnas", without_none=True)
    step.run(torch.Generator().manual_seed(ref["config"]["noise_seed"]))
    _check_alphas(step, ref["first_order"])
    _check_weights(step, ref["first_order"]["weights_after"])


class _OneBatch(list):
    """The fixture's projection batch as a loader for meters.evaluate."""

    def set_epoch(self, epoch):
        pass


def test_darts_pt_operation_decisions_match_the_authors(fixtures_dir):
    """Two operation decisions (an edge of the normal cell, then one of the reduce cell with the normal decision in
    place), each measuring the supernet's accuracy and loss with every op of the edge removed in turn, as
    DARTS-PT's project_op does (train-mode BatchNorm). The authors keep the first op of least accuracy; ours breaks
    ties in accuracy by the higher loss first (projection.py says why), which this fixture's reduce edge shows:
    every removal leaves the same accuracy there."""
    ref = _load(fixtures_dir, "darts_pt_step.pt")
    c = ref["config"]
    assert c["criterion"] == "acc"
    net = _network(ref, "darts", _without_none_name, without_none=True)
    net.projection = Projection(steps=4, seed=0)
    batch = _OneBatch([(ref["input"], ref["target"])])
    measured = []

    def score():
        val = evaluate(net, batch, batch_statistics=True)
        measured.append((val["top1"], val["loss"]))
        return val["top1"], val["loss"]

    for cell in ("normal", "reduce"):
        expected = ref["decisions"][cell]
        measured.clear()
        net.projection._decide_op(cell, expected["edge"], score)
        acc, loss = torch.tensor(measured, dtype=torch.float64).T  # our candidates: ops 1..7, theirs 0..6
        assert torch.allclose(acc, expected["measured"][:, 0].double(), atol=1e-9), cell
        assert torch.allclose(loss, expected["measured"][:, 1].double(), atol=1e-5), cell
        kept = net.projection.op[cell][expected["edge"]]
        least = acc.min()
        if (acc == least).sum() == 1:
            assert kept == expected["op"] + 1, cell
        else:  # theirs: the first op of least accuracy; ours: of those, the one whose removal costs the most loss
            assert expected["op"] == int(torch.nonzero(acc == least)[0])
            assert kept == 1 + max((i for i in range(len(acc)) if acc[i] == least), key=lambda i: loss[i])
            assert PRIMITIVES[kept] != c["primitives"][expected["op"]]


@pytest.mark.parametrize("method, fixture", [("fair-darts", "fair_darts_step.pt"), ("drnas", "drnas_step.pt")])
def test_the_methods_settings_are_what_the_authors_code_ran(fixtures_dir, method, fixture):
    """--method X resolves (method_table.py) to the settings the authors' train_search.py ran the fixture's
    step with: the weights' cosine rate at the fixture's epoch, momentum, weight decay, clip, and Adam's rate,
    betas and weight decay for the alphas."""
    import math

    from dist_darts.config import SearchConfig, build
    c = _load(fixtures_dir, fixture)["config"]
    cfg = build(SearchConfig, overrides={"dataset": "digits", "method": method, "epochs": c["epochs"]})
    cosine = cfg.learning_rate_min + (cfg.learning_rate - cfg.learning_rate_min) * (
        1 + math.cos(math.pi * c["epoch"] / c["epochs"])) / 2
    assert cosine == pytest.approx(c["lr"])
    assert (cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (c["momentum"], c["weight_decay"], c["grad_clip"])
    assert cfg.arch_learning_rate == pytest.approx(c["arch_learning_rate"])
    assert [cfg.arch_beta1, cfg.arch_beta2] == pytest.approx(list(c["arch_betas"]))
    assert cfg.arch_weight_decay == c["arch_weight_decay"]
