"""The search methods (dist_darts.methods): each one's defining equation against an independent computation on a
tiny supernet, its derivation, its noise identical on 2 gloo ranks, and an exact resume mid-search."""

import contextlib
import inspect
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from dist_darts.spaces.cnn import genotype as gt
from dist_darts import search
from dist_darts.architect import Architect
from dist_darts.config import SearchConfig
from dist_darts.job import StoppedAsAsked
from dist_darts.methods import ALPHA_STEP, METHODS, WEIGHT_STEP
from dist_darts.spaces.cnn.ops import FactorizedReduce, Identity
from dist_darts.spaces.cnn.supernet import MixedOp, Network
from helpers import assert_same_state, free_port, model_state

EDGES, OPS = 14, len(gt.PRIMITIVES)


def _net(method, fold_alphas=True, seed=0):
    torch.manual_seed(seed)
    net = Network(4, 10, 3, method=method, fold_alphas=fold_alphas)
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_()  # far from uniform, so the methods' weights differ
    return net.double()


def _batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _alpha_grads(net, penalty_epoch=None, epochs=10):
    arch = Architect(net, nn.CrossEntropyLoss(), torch.optim.Adam(net.arch_parameters()),
                     torch.optim.SGD(net.weights(), 0.1), 0.9, 3e-4)
    if penalty_epoch is not None:
        arch.penalty = lambda: net.method.penalty([net.alphas_normal, net.alphas_reduce], penalty_epoch, epochs)
    x, y = _batch()
    grads, _ = arch.alpha_gradients(x, y, x, y, 0.1)
    return grads


def test_config_offers_exactly_the_methods():
    import dataclasses
    field = next(f for f in dataclasses.fields(SearchConfig) if f.name == "method")
    assert field.metadata["choices"] == tuple(METHODS) and field.default == "darts"


def test_darts_minus_adds_a_decaying_skip_connection_on_every_edge():
    torch.manual_seed(0)
    for stride, expected in ((1, Identity), (2, FactorizedReduce)):
        op = MixedOp(4, stride, auxiliary_skip=True).double().train()
        assert isinstance(op.auxiliary_skip, expected)
        x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
        w = torch.softmax(torch.randn(OPS, dtype=torch.float64), -1)
        skip = torch.tensor(0.3, dtype=torch.float64)
        mixture = sum(wi * o(x) for wi, o in zip(w, op._ops))  # the original's edge
        assert torch.allclose(op(x, w, skip), mixture + 0.3 * op.auxiliary_skip(x))
        assert torch.allclose(op.add_skip(op.accumulate(x, w), x, skip), mixture + 0.3 * op.auxiliary_skip(x))
    method = METHODS["darts-minus"]
    assert [method.skip_coefficient(e, 4) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
    # the fast path (alphas folded into BatchNorm, in-place sums) gives the plain path's output
    fast, plain = _net("darts-minus"), _net("darts-minus", fold_alphas=False)
    plain.load_state_dict(fast.state_dict())
    for net in (fast, plain):
        net.set_epoch(3, 10)
    assert float(fast.skip_coefficient) == pytest.approx(0.7)
    x, _ = _batch()
    assert torch.allclose(fast(x), plain(x), atol=1e-10)
    # at the end of the schedule the network is plain DARTS's
    darts = _net("darts", fold_alphas=False)
    darts.load_state_dict({k: v for k, v in fast.state_dict().items() if "auxiliary_skip" not in k})
    fast.set_epoch(10, 10)
    assert torch.allclose(fast(x), darts(x), atol=1e-10)


def test_beta_darts_penalty_gradient_is_lambda_softmax_over_the_edges():
    net = _net("beta-darts")
    plain = _alpha_grads(net)
    with_penalty = _alpha_grads(net, penalty_epoch=6)
    lam = 50 * 6 / 10  # 0 -> 50 over the search's 10 epochs
    none = gt.PRIMITIVES.index("none")
    for a, g0, g1 in zip(net.arch_parameters(), plain, with_penalty):
        # d/dalpha of lam * mean over all 2 x 14 edges of logsumexp(alpha_edge) over the authors' 7 ops (no
        # 'none') = lam * their softmax / 28, and nothing on 'none''s column
        searched = a.detach().clone()
        searched[:, none] = float("-inf")
        assert torch.allclose(g1 - g0, lam * torch.softmax(searched, -1) / (2 * EDGES), atol=1e-12)
        assert torch.equal(g0[:, none], torch.zeros(EDGES, dtype=g0.dtype))  # 'none' is not in the mixture


def test_fair_darts_mixes_by_sigmoids_and_adds_the_zero_one_loss():
    net = _net("fair-darts", fold_alphas=False)
    x, y = _batch()
    reference = _net("darts", fold_alphas=False)
    reference.load_state_dict(net.state_dict())
    reference.mixing_weights = lambda a, cell: torch.sigmoid(a)  # the same network with sigmoids put in by hand
    assert torch.allclose(net(x), reference(x), atol=1e-12)
    plain, with_penalty = _alpha_grads(net), _alpha_grads(net, penalty_epoch=0)
    n = 2 * EDGES * (OPS - 1)  # the authors' 7 ops: 'none' is not searched
    none = gt.PRIMITIVES.index("none")
    for a, g0, g1 in zip(net.arch_parameters(), plain, with_penalty):
        s = torch.sigmoid(a.detach())
        # d/dalpha of -10 * mean((sigmoid - 0.5)^2) over the n alphas of the 7 ops; nothing on 'none''s column
        expected = -10 * 2 * (s - 0.5) * s * (1 - s) / n
        expected[:, none] = 0
        assert torch.allclose(g1 - g0, expected, atol=1e-12)
        assert torch.equal(g0[:, none], torch.zeros(EDGES, dtype=g0.dtype))  # 'none' adds nothing to the forward


def test_fair_darts_derives_from_the_sigmoids():
    a = torch.full((EDGES, OPS), -5.0)
    sep, skip, pool = (gt.PRIMITIVES.index(o) for o in ("sep_conv_3x3", "skip_connect", "max_pool_3x3"))
    # node 0's edge 0: one strong op among weak ones (softmax favours it); edge 1: two strong ops (a sigmoid
    # keeps each strong, a softmax halves them)
    a[0, sep] = 2.0
    a[1, skip] = a[1, pool] = 2.2
    softmax_cell = gt.derive(a, a.clone())
    sigmoid_cell = gt.derive(a, a.clone(), mixing="sigmoid")
    assert softmax_cell.normal[0] == ("sep_conv_3x3", 0)
    assert sigmoid_cell.normal[0] == ("max_pool_3x3", 1)
    net = Network(4, 10, 3, method="fair-darts")
    with torch.no_grad():
        net.alphas_normal.copy_(a)
        net.alphas_reduce.copy_(a)
    assert net.genotype() == sigmoid_cell
    with pytest.raises(gt.GenotypeError):
        gt.derive(a, a, mixing="gumbel")


def test_sdarts_rs_perturbs_softmax_in_the_weight_step_only():
    method = METHODS["sdarts-rs"]
    alphas = torch.randn(EDGES, OPS, dtype=torch.float64)
    assert method.epsilon(0, 10) == pytest.approx(0.03) and method.epsilon(5, 10) == pytest.approx(0.165)
    draw = method.mix(alphas, WEIGHT_STEP, torch.Generator().manual_seed(3), 5, 10)
    # independently, over the authors' 7 ops (no 'none'): their softmax + U(-eps, eps) from the same stream,
    # clipped to [0, 1], renormalised per edge; 'none' keeps weight 0
    none = gt.PRIMITIVES.index("none")
    searched = [i for i in range(OPS) if i != none]
    softmax = torch.softmax(alphas[:, searched], -1)
    noise = torch.empty(EDGES, OPS - 1, dtype=torch.float64).uniform_(-0.165, 0.165,
                                                                      generator=torch.Generator().manual_seed(3))
    expected = (softmax + noise).clamp(0, 1)
    assert torch.allclose(draw[:, searched], expected / expected.sum(-1, keepdim=True), atol=1e-12)
    assert torch.equal(draw[:, none], torch.zeros(EDGES, dtype=draw.dtype))
    assert not draw.requires_grad
    for phase in (ALPHA_STEP, None):  # the alpha step and evaluation see the plain softmax over the 7
        plain = method.mix(alphas, phase, torch.Generator().manual_seed(3), 5, 10)
        assert torch.allclose(plain[:, searched], softmax, atol=1e-12) and torch.equal(plain, method.weights(alphas))
    # the network draws it inside sampling(WEIGHT_STEP, generator) only
    net = _net("sdarts-rs")
    net.set_epoch(5, 10)
    with net.sampling(WEIGHT_STEP, torch.Generator().manual_seed(3)):
        assert torch.allclose(net.mixing_weights(net.alphas_normal, "normal"), method.mix(
            net.alphas_normal, WEIGHT_STEP, torch.Generator().manual_seed(3), 5, 10))
    assert torch.equal(net.mixing_weights(net.alphas_normal, "normal"), method.weights(net.alphas_normal))


def test_drnas_samples_the_dirichlet_and_evaluates_at_its_mean():
    method = METHODS["drnas"]
    alphas = torch.randn(3, OPS, dtype=torch.float64, requires_grad=True)
    full = F.elu(alphas.detach()) + 1
    none = gt.PRIMITIVES.index("none")
    concentration = full.clone()
    concentration[:, none] = 0  # the authors' 7 ops: 'none' is not searched
    mean = concentration / concentration.sum(-1, keepdim=True)
    assert torch.allclose(method.mix(alphas, None, None, 0, 1), mean)
    samples = torch.stack([method.mix(alphas, WEIGHT_STEP, g, 0, 1).detach()
                           for g in [torch.Generator().manual_seed(i) for i in range(4000)]])
    assert torch.allclose(samples.sum(-1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(samples.mean(0), mean, atol=0.01)  # the Dirichlet's mean
    # and its variance, mean_i (1 - mean_i) / (sum + 1)
    assert torch.allclose(samples.var(0), mean * (1 - mean) / (concentration.sum(-1, keepdim=True) + 1), atol=0.003)
    one = method.mix(alphas, ALPHA_STEP, torch.Generator().manual_seed(1), 0, 1)
    assert torch.equal(one, method.mix(alphas, ALPHA_STEP, torch.Generator().manual_seed(1), 0, 1))  # seeded
    one[0, 1].backward()
    assert alphas.grad.abs().sum() > 0  # the pathwise gradient reaches the concentration
    assert torch.equal(alphas.grad[:, none], torch.zeros(3, dtype=alphas.dtype))  # but not 'none''s
    # torch's own Dirichlet over the 7, drawn from the same stream: the same sample ('none' draws nothing)
    searched = [i for i in range(OPS) if i != none]
    torch.manual_seed(7)
    reference = torch.distributions.Dirichlet(full[:, searched].float()).sample()
    torch.manual_seed(7)
    ours = method.mix(alphas, WEIGHT_STEP, torch.default_generator, 0, 1)
    assert torch.allclose(ours[:, searched].detach().float(), reference, atol=1e-6)


def test_drnas_differentiates_its_sample_as_the_authors_rsample(monkeypatch):
    """The DrNAS authors differentiate torch.distributions.Dirichlet(...).rsample(); for one and the same sample
    ours gives the same gradient to the alphas (normalised Gamma draws differentiated through would not)."""
    method = METHODS["drnas"]
    none = gt.PRIMITIVES.index("none")
    searched = [i for i in range(OPS) if i != none]
    alphas = torch.randn(EDGES, OPS, requires_grad=True)
    upstream = torch.randn(EDGES, OPS)
    ours = method.mix(alphas, ALPHA_STEP, torch.Generator().manual_seed(4), 0, 1)
    (ours * upstream).sum().backward()
    theirs = alphas.detach().clone().requires_grad_(True)
    drawn = ours.detach()[:, searched]
    monkeypatch.setattr(torch, "_sample_dirichlet", lambda concentration, *args, **kwargs: drawn.clone())
    sample = torch.distributions.Dirichlet(F.elu(theirs[:, searched]) + 1).rsample()
    (sample * upstream[:, searched]).sum().backward()
    assert torch.allclose(alphas.grad, theirs.grad, atol=1e-6)
    assert torch.equal(alphas.grad[:, none], torch.zeros(EDGES))


def test_drnas_derives_from_the_softmax_over_its_seven_ops():
    a = torch.full((EDGES, OPS), -5.0)
    none, sep, dil = (gt.PRIMITIVES.index(o) for o in ("none", "sep_conv_3x3", "dil_conv_3x3"))
    # node 1's inputs (edges 2-4): edge 2 has the strongest op of all but a far stronger 'none', which a softmax
    # over all 8 ops lets swamp it (it ranks last); over the 7 it ranks first
    a[2, sep], a[2, none] = 1.0, 10.0
    a[3, dil] = 0.5
    assert gt.derive(a, a.clone()).normal[2:4] == [("dil_conv_3x3", 1), ("max_pool_3x3", 2)]
    seven = gt.derive(a, a.clone(), mixing="softmax-without-none")
    assert seven.normal[2:4] == [("sep_conv_3x3", 0), ("dil_conv_3x3", 1)]
    net = Network(4, 10, 3, method="drnas")
    with torch.no_grad():
        net.alphas_normal.copy_(a)
        net.alphas_reduce.copy_(a)
    assert net.genotype() == seven


def _noise_worker(rank, port, out, method):
    torch.set_num_threads(1)  # two ranks on a small machine: more threads each stall for each other
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    seeds = []
    step = search.search_step

    def recording_step(*args):
        generator = inspect.signature(step).bind(*args).arguments.get("generator")
        seeds.append(None if generator is None else generator.initial_seed())
        return step(*args)

    search.search_step = recording_step
    cfg = SearchConfig(dataset="digits", layers=3, init_channels=4, batch_size=8, workers=0, epochs=2,
                       steps_per_epoch=2, method=method, output=os.path.join(out, "run"), log_interval=10**6)
    result = search.run(cfg)  # fails if the ranks' weights or alphas differ (check_replicas, every epoch)
    torch.save({"seeds": seeds, "genotype": gt.to_dict(result.genotype)}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["darts-minus", "beta-darts", "sdarts-rs", "fair-darts", "drnas"])
def test_two_gloo_ranks_agree(tmp_path, method):
    mp.spawn(_noise_worker, args=(free_port(), str(tmp_path), method), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0 == r1  # the same noise seeds at every step, the same cell
    if METHODS[method].stochastic:
        assert len(set(r0["seeds"])) == 4  # a fresh draw each step
    else:
        assert r0["seeds"] == [None] * 4


@pytest.mark.parametrize("method", [m for m in METHODS if m != "darts"])  # darts's: test_resume, test_torchrun
def test_resume_mid_epoch_is_exact(tmp_path, method):
    def cfg(name, **kw):
        return SearchConfig(dataset="digits", layers=3, init_channels=4, batch_size=8, workers=0, epochs=2,
                            steps_per_epoch=3, checkpoint_steps=1, method=method, output=str(tmp_path / name),
                            log_interval=10**6, **kw)

    search.run(cfg("straight"))
    with pytest.raises(StoppedAsAsked):
        search.run(cfg("crashed", stop_after_step=4))  # epoch 1, step 1 of 3, checkpointed
    search.run(cfg("crashed", resume=True))
    assert_same_state(model_state(tmp_path / "straight"), model_state(tmp_path / "crashed"))


def _fixed_sample_second_order(net, x_train, y_train, x_val, y_val, lr, wd, seed, r=0.01):
    """DARTS's second-order alpha gradient written out, each of its four passes drawing from a freshly seeded
    generator: the formula with one fixed sample."""
    names, weights = zip(*net.named_weights())
    alphas = net.arch_parameters()

    def loss(ws, x, y):
        with net.sampling(ALPHA_STEP, torch.Generator().manual_seed(seed)):
            logits = torch.func.functional_call(net, dict(zip(names, ws)), (x,), strict=False)
            return F.cross_entropy(logits.float(), y)  # the loss in float32, as the architect's

    g_train = torch.autograd.grad(loss(weights, x_train, y_train), weights)
    unrolled = [(w - lr * (g + wd * w)).detach().requires_grad_() for w, g in zip(weights, g_train)]
    grads = torch.autograd.grad(loss(unrolled, x_val, y_val), list(alphas) + unrolled)
    d_alpha, v = grads[:len(alphas)], grads[len(alphas):]
    eps = r / torch.cat([t.reshape(-1) for t in v]).norm()
    g_plus = torch.autograd.grad(loss([w + eps * t for w, t in zip(weights, v)], x_train, y_train), alphas)
    g_minus = torch.autograd.grad(loss([w - eps * t for w, t in zip(weights, v)], x_train, y_train), alphas)
    return [a - lr * (p - m) / (2 * eps) for a, p, m in zip(d_alpha, g_plus, g_minus)]


@pytest.mark.parametrize("method", ["drnas", "sdarts-rs"])
def test_second_order_uses_one_sample_for_all_four_passes(method):
    net = _net(method)
    lr, wd = 0.1, 3e-4
    arch = Architect(net, nn.CrossEntropyLoss(), torch.optim.Adam(net.arch_parameters()),
                     torch.optim.SGD(net.weights(), lr), 0.9, wd, unrolled=True)
    (x_train, y_train), (x_val, y_val) = _batch(0), _batch(1)
    with net.sampling(ALPHA_STEP, torch.Generator().manual_seed(5)):
        ours, _ = arch.alpha_gradients(x_train, y_train, x_val, y_val, lr)
    expected = _fixed_sample_second_order(net, x_train, y_train, x_val, y_val, lr, wd, seed=5)
    for a, b in zip(ours, expected):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_forwards_in_one_sampling_block_draw_one_sample():
    net = _net("drnas")
    x, _ = _batch()
    generator = torch.Generator().manual_seed(2)
    with net.sampling(WEIGHT_STEP, generator):
        first, second = net(x), net(x)
    assert torch.equal(first, second)
    with net.sampling(WEIGHT_STEP, generator):  # the next block (the next phase or step): a new sample
        assert not torch.allclose(net(x), first)


@pytest.mark.parametrize("unrolled", [False, True])
@pytest.mark.parametrize("method", ["drnas", "sdarts-rs"])
def test_accumulation_is_the_whole_batch_with_its_one_sample(method, unrolled):
    """The supernet in eval mode normalises with fixed statistics, so micro-batches must reproduce the whole batch's
    step exactly, noise included: one sample for the alpha step and one for the weight step."""
    (x_train, y_train), (x_val, y_val) = _batch(0, n=8), _batch(1, n=8)
    states = []
    for accumulate in (1, 4):
        net = _net(method).eval()
        net.set_epoch(3, 10)
        w_opt = torch.optim.SGD(net.weights(), 0.1, momentum=0.9, weight_decay=3e-4)
        arch = Architect(net, nn.CrossEntropyLoss(), torch.optim.Adam(net.arch_parameters(), 0.01), w_opt, 0.9,
                         3e-4, unrolled=unrolled)
        search.search_step(net, net, arch, w_opt, nn.CrossEntropyLoss(), ((x_train, y_train), (x_val, y_val)), 0.1,
                           5.0, contextlib.nullcontext, False, accumulate,
                           generator=torch.Generator().manual_seed(9))
        states.append(net.state_dict())
    assert not torch.equal(states[0]["alphas_normal"], _net(method).alphas_normal)  # the step moved the alphas
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], rtol=1e-7, atol=1e-10), k


def test_a_method_brings_its_authors_settings_unless_given(tmp_path):
    import yaml
    from dist_darts import config
    from dist_darts.config import ConfigError, build

    def built(yaml_values=None, **overrides):
        return build(SearchConfig, yaml_values, {"dataset": "digits", **overrides})

    darts = built()
    assert built(method="darts") == darts  # plain DARTS: the dataclass defaults, the paper's
    fair = built(method="fair-darts")  # xiaomi-automl/FairDARTS fairdarts/train_search.py, architect.py
    assert (fair.batch_size, fair.base_batch_size, fair.learning_rate, fair.learning_rate_min) == (128, 128, 0.005,
                                                                                                   0.001)
    assert (fair.arch_learning_rate, fair.arch_beta1, fair.arch_beta2, fair.arch_weight_decay) == (3e-3, 0.9, 0.999,
                                                                                                   1e-3)
    drnas = built(method="drnas")  # xiangning-chen/DrNAS DARTS-space/train_search.py, architect.py
    assert (drnas.learning_rate, drnas.learning_rate_min, drnas.arch_learning_rate, drnas.arch_beta1) == (
        0.1, 0.0, 6e-4, 0.5)
    # a key given on the command line or in the YAML file wins over the method's
    assert built(method="fair-darts", arch_learning_rate=1e-3).arch_learning_rate == 1e-3
    assert built({"arch_beta1": 0.5}, method="fair-darts").arch_beta1 == 0.5
    assert built({"method": "drnas"}).learning_rate == 0.1
    with pytest.raises(ConfigError, match="partial-channels: DrNAS's progressive learning"):
        built(method="drnas", partial_channels=4)
    # the run prints them and writes them to config.yaml's resolved section, as the run has them
    cfg = built(method="fair-darts", batch_size=8, layers=3, init_channels=4, workers=0, epochs=1, steps_per_epoch=1,
                output=str(tmp_path / "run"), log_interval=10**6)
    search.run(cfg)
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())[config.RESOLVED]
    assert resolved["method_settings"] == {"batch_size": 8, "base_batch_size": 128, "learning_rate": 0.005,
                                           "arch_learning_rate": 3e-3, "arch_beta1": 0.9}
    assert resolved["arch_learning_rate"] == pytest.approx(3e-3 * 8 / 128)  # the linear rule from its base batch
    assert "--method fair-darts settings (its authors' unless given)" in (tmp_path / "run" / "log.txt").read_text()
