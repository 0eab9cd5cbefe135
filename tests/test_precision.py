"""bf16 autocast on the CPU (the GPU's default precision, run here): finite gradients close to float32, and a
second-order alpha step that is as exact as float32 because it runs in float32."""

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dist_darts.spaces.cnn import ops
from dist_darts.architect import Architect
from dist_darts.spaces.cnn.supernet import Network

bf16_autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)


def _cosine(a, b):
    a, b = torch.cat([t.double().flatten() for t in a]), torch.cat([t.double().flatten() for t in b])
    return F.cosine_similarity(a, b, 0).item(), ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("k,d,s,p", [(5, 2, 1, 4), (3, 2, 1, 2), (5, 2, 2, 4)])
def test_depthwise_conv_weight_gradient_under_bf16_autocast(k, d, s, p):
    """oneDNN's own bf16 channels_last backward of a dilated stride-1 depthwise conv returns unwritten memory as
    the weight gradient from 32x32 inputs on; DepthwiseConv2d's must be bf16-close to float64."""
    torch.manual_seed(0)
    conv = ops.DepthwiseConv2d(4, k, s, p, d)
    x = torch.randn(8, 4, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    with bf16_autocast():
        y = conv(x)
    g = torch.randn(y.shape)
    gx, gw = torch.autograd.grad(y, [x, conv.weight], g.to(y.dtype))
    ref = F.conv2d(x.double(), conv.weight.double(), None, s, p, d, 4)
    ref_gx, ref_gw = torch.autograd.grad(ref, [x, conv.weight], g.double())
    for a, b, what in [(gx, ref_gx, "input"), (gw, ref_gw, "weight")]:
        cos, rel = _cosine([a], [b])
        assert cos > 0.999 and rel < 2e-2, (what, cos, rel)


@pytest.mark.parametrize("seed", range(4))
def test_bf16_supernet_gradients_are_finite_and_close_to_fp32(seed):
    torch.manual_seed(seed)
    net = Network(4, 10, 3).train().to(memory_format=torch.channels_last)
    ref = copy.deepcopy(net)
    x, y = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (8,))

    def grads(n, bf16):
        with bf16_autocast(enabled=bf16):
            logits = n(x).float()
        return torch.autograd.grad(F.cross_entropy(logits, y), n.arch_parameters() + n.weights())

    low, exact = grads(net, True), grads(ref, False)
    names = net.arch_parameter_names() + [n for n, _ in net.named_weights()]
    assert all(torch.isfinite(g).all() for g in low), [n for n, g in zip(names, low) if not torch.isfinite(g).all()]
    # measured for seeds 0-3: alpha gradient 0.981-0.994, all 0.989-0.993, worst dil_conv_5x5 depthwise 0.966
    assert _cosine(low[:2], exact[:2])[0] > 0.97
    assert _cosine(low, exact)[0] > 0.98
    for a, b, name in zip(low, exact, names):
        if name.endswith("op.1.weight") and "._ops.7." in name:  # dil_conv_5x5's depthwise weights
            assert _cosine([a], [b])[0] > 0.9, name


def _architect(net, autocast=None):
    w_opt = torch.optim.SGD(net.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    for p in net.weights():
        w_opt.state[p]["momentum_buffer"] = torch.full_like(p, 0.01)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    return Architect(net, nn.CrossEntropyLoss(), a_opt, w_opt, 0.9, 3e-4, unrolled=True, autocast=autocast)


def test_unrolled_alpha_step_under_bf16_autocast_matches_float64():
    """The second-order alpha gradient under the job's bf16 autocast against the same code in float64. (Run in
    bf16 throughout, as before, it measured cosine 0.38-0.83 and relative error 0.57-1.26 on 3-5 cells at 16x16.)"""
    torch.manual_seed(0)
    net = Network(4, 10, 3).train()
    ref = copy.deepcopy(net).double()
    xt, yt = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    xv, yv = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    low, _ = _architect(net, bf16_autocast).alpha_gradients(xt, yt, xv, yv, 0.025)
    with bf16_autocast():  # an autocast around the call (as a job's step might have) changes nothing either
        outer, _ = _architect(copy.deepcopy(net), bf16_autocast).alpha_gradients(xt, yt, xv, yv, 0.025)
    exact, _ = _architect(ref).alpha_gradients(xt.double(), yt, xv.double(), yv, 0.025)
    for grads in (low, outer):
        cos, rel = _cosine(grads, exact)
        assert cos >= 0.99 and rel <= 0.1, (cos, rel)
