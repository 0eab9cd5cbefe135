"""The fast search path against the plain one: same outputs, gradients and BN statistics.

Fast path: depthwise convs with a two-conv CPU backward (ops.DepthwiseConv2d), each MixedOp's ReLU shared by its
conv ops, each alpha weight folded into its op's final BN (ops.scaled_batch_norm), in-place sums, channels_last
parameters and inputs (as the jobs run on the CPU). Plain path: the original's structure,
``sum(w * op(x) for every op, 'none' included)`` with stock F.conv2d, NCHW: written out below, and built with
``Network(..., fold_alphas=False, fast_depthwise=False)``. Tolerances: float64 runs agree to 1e-9 (only the summation order differs); float32 to ~1e-5
relative; bf16 autocast to 3e-2 relative (bf16 keeps 8 bits of mantissa).
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dist_darts.spaces.cnn import ops
from dist_darts.architect import Architect
from dist_darts.spaces.cnn.genotype import PRIMITIVES
from dist_darts.spaces.cnn.supernet import MixedOp, Network


def plain_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A module's output computed the plain way: stock F.conv2d for depthwise convs, nn.Module forwards else."""
    if isinstance(m, ops.DepthwiseConv2d):
        return F.conv2d(x, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, (ops.ReLUConvBN, ops.DilConv, ops.SepConv)):
        return plain_forward(m.op, x)
    if isinstance(m, nn.Sequential):
        for child in m:
            x = plain_forward(child, x)
        return x
    if isinstance(m, ops.FactorizedReduce):
        x = F.relu(x)
        # the original's stride-2 convs on x and on x shifted by one pixel
        halves = [F.conv2d(x, m.conv_1.weight, stride=2), F.conv2d(x[:, :, 1:, 1:], m.conv_2.weight, stride=2)]
        return m.bn(torch.cat(halves, dim=1))
    return m(x)


def plain_mixed(op: MixedOp, x, weights):
    """The original MixedOp: every op, 'none' included, weighted and summed."""
    k = op.partial_channels
    x_op = x if k == 1 else x[:, : x.shape[1] // k]
    out = sum(w * plain_forward(o, x_op) for w, o in zip(weights, op._ops))
    if k == 1:
        return out
    bypass = x[:, x.shape[1] // k:]
    if op.stride == 2:
        bypass = F.max_pool2d(bypass, 2, 2)
    from dist_darts.spaces.cnn.supernet import channel_shuffle
    return channel_shuffle(torch.cat([out, bypass], dim=1), k)


def plain_network_forward(net: Network, x):
    """Network.forward in the original's structure (NCHW, plain sums)."""
    from dist_darts.spaces.cnn.genotype import edge_weights
    w_normal, w_reduce = F.softmax(net.alphas_normal, dim=-1), F.softmax(net.alphas_reduce, dim=-1)
    e_normal = e_reduce = None
    if net.partial_channels > 1:
        e_normal, e_reduce = edge_weights(net.betas_normal, net._steps), edge_weights(net.betas_reduce, net._steps)
    s0 = s1 = plain_forward(net.stem, x)
    for cell in net.cells:
        weights, edges = (w_reduce, e_reduce) if cell.reduction else (w_normal, e_normal)
        states = [plain_forward(cell.preprocess0, s0), plain_forward(cell.preprocess1, s1)]
        offset = 0
        for _ in range(cell._steps):
            s = sum((1 if edges is None else edges[offset + j]) * plain_mixed(cell._ops[offset + j], h,
                                                                               weights[offset + j])
                    for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        s0, s1 = s1, torch.cat(states[-cell._multiplier:], dim=1)
    return net.classifier(net.global_pooling(s1).flatten(1))


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def _assert_close(a, b, rtol, atol, what):
    assert a.shape == b.shape, what
    err = (a.float() - b.float()).abs().max().item()
    scale = b.float().abs().max().item()
    assert err <= atol + rtol * scale, f"{what}: max error {err:.3g} at scale {scale:.3g}"


# ---- depthwise conv -------------------------------------------------------------------------------------------

DARTS_DEPTHWISE = [(3, 1, 1, 1), (5, 1, 1, 2), (3, 2, 1, 2), (5, 2, 1, 4),   # stride 1: sep/dil convs
                   (3, 1, 2, 1), (5, 1, 2, 2), (3, 2, 2, 2), (5, 2, 2, 4),   # stride 2 (reduction edges)
                   (7, 1, 1, 3), (7, 1, 2, 3), (5, 1, 1, 1), (5, 2, 2, 3)]   # sep 7x7 (retrain), odd paddings


@pytest.mark.parametrize("k,d,s,p", DARTS_DEPTHWISE)
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_conv_matches_conv2d(k, d, s, p, channels_last):
    torch.manual_seed(0)
    conv = ops.DepthwiseConv2d(6, k, s, p, d).double()
    x = torch.randn(3, 6, 11, 14, dtype=torch.double)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = conv(x)
    ref = F.conv2d(x, conv.weight, None, s, p, d, 6)
    assert torch.equal(y, ref)  # the forward is F.conv2d itself
    g = torch.randn_like(y)
    for a, b, what in zip(_grads((y * g).sum(), [x, conv.weight]), _grads((ref * g).sum(), [x, conv.weight]),
                          ["input grad", "weight grad"]):
        _assert_close(a, b, 1e-12, 1e-12, what)


def test_depthwise_conv_float32_and_chunked_weight_grad():
    """float32 at the search's shapes, with a batch large enough for the weight gradient to come in chunks."""
    torch.manual_seed(0)
    conv = ops.DepthwiseConv2d(16, 5, 1, 4, 2)
    x = torch.randn(40, 16, 32, 32, requires_grad=True)  # 40 x 16 x 32 x 32 > 2^19: three chunks
    g = torch.randn(40, 16, 32, 32)
    fast = _grads((conv(x) * g).sum(), [x, conv.weight])
    ref = _grads((F.conv2d(x, conv.weight, None, 1, 4, 2, 16) * g).sum(), [x, conv.weight])
    for a, b, what in zip(fast, ref, ["input grad", "weight grad"]):
        _assert_close(a, b, 1e-5, 1e-6, what)


def test_depthwise_conv_keeps_conv2d_state_dict():
    conv = ops.DepthwiseConv2d(8, 5, 2, 4, 2)
    plain = nn.Conv2d(8, 8, 5, stride=2, padding=4, dilation=2, groups=8, bias=False)
    assert isinstance(conv, nn.Conv2d)
    assert {k: v.shape for k, v in conv.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def test_depthwise_conv_double_backward():
    """The custom backward is built from differentiable ops, so second derivatives still flow."""
    torch.manual_seed(0)
    conv = ops.DepthwiseConv2d(3, 5, 1, 2).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: ops._DepthwiseConv2d.apply(x, w, 1, 2, 1), (x, conv.weight))
    assert torch.autograd.gradgradcheck(lambda x, w: ops._DepthwiseConv2d.apply(x, w, 2, 4, 2), (x, conv.weight))


# ---- scaled batch norm ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("affine,momentum,training", [(False, 0.1, True), (True, 0.1, True), (False, None, True),
                                                      (False, 0.1, False)])
def test_scaled_batch_norm_is_scale_times_bn(affine, momentum, training):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5, affine=affine, momentum=momentum).double().train(training)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    ref_bn = copy.deepcopy(bn)
    x = torch.randn(4, 5, 6, 6, dtype=torch.double, requires_grad=True)
    alpha = torch.randn(3, dtype=torch.double, requires_grad=True)
    for _ in range(2):  # twice: the running statistics and the counter move the same way
        y = ops.scaled_batch_norm(bn, x, alpha.softmax(0)[1])
        ref = alpha.softmax(0)[1] * ref_bn(x)
    _assert_close(y, ref, 1e-12, 1e-12, "output")
    params = [x, alpha] + list(bn.parameters())
    ref_params = [x, alpha] + list(ref_bn.parameters())
    g = torch.randn_like(y)
    for a, b in zip(_grads((y * g).sum(), params), _grads((ref * g).sum(), ref_params)):
        _assert_close(a, b, 1e-12, 1e-12, "gradient")
    for name, buf in bn.named_buffers():
        assert torch.allclose(buf, dict(ref_bn.named_buffers())[name], rtol=1e-12, atol=1e-12), name


# ---- MixedOp and the whole network --------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_matches_the_original_sum(stride):
    torch.manual_seed(0)
    op = MixedOp(8, stride).double()
    ref_op = copy.deepcopy(op)
    x = torch.randn(4, 8, 12, 12, dtype=torch.double, requires_grad=True)
    alphas = torch.randn(len(PRIMITIVES), dtype=torch.double, requires_grad=True)
    out = op(x, alphas.softmax(0))
    ref = plain_mixed(ref_op, x, alphas.softmax(0))
    _assert_close(out, ref, 1e-12, 1e-12, "output")
    g = torch.randn_like(out)
    fast = _grads((out * g).sum(), [x, alphas] + list(op.parameters()))
    plain = _grads((ref * g).sum(), [x, alphas] + list(ref_op.parameters()))
    for a, b, what in zip(fast, plain, ["x", "alphas"] + [n for n, _ in op.named_parameters()]):
        _assert_close(a, b, 1e-10, 1e-12, what)
    for (name, buf), ref_buf in zip(op.named_buffers(), ref_op.buffers()):
        assert torch.allclose(buf.double(), ref_buf.double(), rtol=1e-12, atol=1e-12), name


def test_mixed_op_accumulates_into_a_given_tensor():
    torch.manual_seed(0)
    op = MixedOp(8, 1).double()
    x = torch.randn(2, 8, 6, 6, dtype=torch.double)
    w = torch.rand(len(PRIMITIVES), dtype=torch.double)
    base = torch.randn(2, 8, 6, 6, dtype=torch.double)
    ref = base + plain_mixed(copy.deepcopy(op), x, w)
    out = op.accumulate(x, w, base.clone())
    _assert_close(out, ref, 1e-12, 1e-12, "accumulated sum")


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def _network_pair(partial_channels=1, dtype=torch.double):
    """The fast network, channels_last, and an NCHW copy for the plain path."""
    torch.manual_seed(0)
    net = Network(8, 10, 5, partial_channels=partial_channels).to(dtype).train()
    return net.to(memory_format=torch.channels_last), copy.deepcopy(net)


def _plain_network(net):
    """The same weights in a Network built with both speed-ups switched off, NCHW."""
    plain = Network(net._C, net._num_classes, net._layers, partial_channels=net.partial_channels,
                    fold_alphas=False, fast_depthwise=False).to(net.alphas_normal.dtype).train()
    plain.load_state_dict(net.state_dict())
    return plain.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("partial_channels", [1, 4])
def test_network_fast_path_matches_plain(partial_channels):
    net, ref_net = _network_pair(partial_channels)
    torch.manual_seed(1)
    x = torch.randn(6, 3, 16, 16, dtype=torch.double)
    y = torch.randint(0, 10, (6,))
    loss = F.cross_entropy(net(channels_last(x)), y)
    ref_loss = F.cross_entropy(plain_network_forward(ref_net, x), y)
    _assert_close(loss, ref_loss, 1e-12, 1e-12, "loss")
    names = [n for n, _ in net.named_parameters()]
    for a, b, name in zip(_grads(loss, list(net.parameters())), _grads(ref_loss, list(ref_net.parameters())), names):
        _assert_close(a, b, 1e-9, 1e-12, name)
    for (name, buf), ref_buf in zip(net.named_buffers(), ref_net.buffers()):
        assert torch.allclose(buf.double(), ref_buf.double(), rtol=1e-10, atol=1e-12), name


def _norm_rel(a, b):
    a, b = torch.cat([t.double().flatten() for t in a]), torch.cat([t.double().flatten() for t in b])
    return ((a - b).norm() / b.norm()).item()


def test_network_fast_path_float32_at_search_shapes():
    """float32, 32x32 inputs, batch 16: the precision the search runs in, against the float64 plain path.

    The loss agrees to float32 rounding. Gradients differ by more: a ReLU or max-pool whose input lies within
    rounding of 0 (or of a tie) routes the gradient differently in float32 than in float64, and the CPU's
    channels_last batch norm rounds its statistics ~5x more coarsely than the NCHW one, so the fast path meets a
    few more such flips: ~1e-3 of the gradient norm (the plain float32 path: 1e-6 to 4e-4, depending on the draw).
    """
    net, truth = _network_pair(dtype=torch.float32)
    truth = truth.double()
    torch.manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    loss = F.cross_entropy(net(channels_last(x)), y)
    ref_loss = F.cross_entropy(plain_network_forward(truth, x.double()), y)
    _assert_close(loss, ref_loss, 1e-5, 1e-6, "loss")
    grads = _grads(loss, net.arch_parameters() + net.weights())
    ref_grads = _grads(ref_loss, truth.arch_parameters() + truth.weights())
    assert _norm_rel(grads[:2], ref_grads[:2]) < 5e-3  # the alpha gradient
    assert _norm_rel(grads, ref_grads) < 5e-3
    names = net.arch_parameter_names() + [n for n, _ in net.named_weights()]
    for a, b, name in zip(grads, ref_grads, names):
        assert _norm_rel([a], [b]) < 3e-2, name


def test_network_fast_path_under_bf16_autocast():
    """bf16 autocast (the GPU's precision, run here on the CPU) against float32: the fast path is as close to
    float32 as the plain path under the same autocast. bf16 keeps 8 mantissa bits, so both are ~2e-2 off in the
    logits and ~2e-1 in the alpha gradient (a small difference of large terms) at this size."""
    net, ref_net = _network_pair(dtype=torch.float32)
    truth = copy.deepcopy(ref_net)
    torch.manual_seed(1)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))

    def run(n, forward, bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(n, x).float()
        return [logits], list(_grads(F.cross_entropy(logits, y), n.arch_parameters()))

    fast = run(net, lambda n, x: n(channels_last(x)), True)
    plain = run(ref_net, plain_network_forward, True)
    exact = run(truth, plain_network_forward, False)
    for i, what in enumerate(["logits", "alpha gradient"]):
        fast_err, plain_err = _norm_rel(fast[i], exact[i]), _norm_rel(plain[i], exact[i])
        assert fast_err <= 1.5 * plain_err + 2e-2, (what, fast_err, plain_err)


@pytest.mark.parametrize("partial_channels", [1, 4])
def test_network_built_without_speed_ups_is_the_plain_path(partial_channels):
    net, ref_net = _network_pair(partial_channels)
    plain = _plain_network(net)
    assert all(not m.fast_backward for m in plain.modules() if isinstance(m, ops.DepthwiseConv2d))
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.double), torch.randint(0, 10, (4,))
    loss = F.cross_entropy(plain(x), y)
    ref_loss = F.cross_entropy(plain_network_forward(ref_net, x), y)
    _assert_close(loss, ref_loss, 1e-12, 1e-12, "loss")
    for a, b in zip(_grads(loss, list(plain.parameters())), _grads(ref_loss, list(ref_net.parameters()))):
        _assert_close(a, b, 1e-12, 1e-14, "gradient")


@pytest.mark.parametrize("unrolled", [False, True])
def test_architect_alpha_gradients_fast_vs_plain(unrolled):
    """First- and second-order alpha gradients of the whole search step, fast path vs plain path (float64)."""
    net, ref_net = _network_pair()
    torch.manual_seed(2)
    xt, yt = torch.randn(4, 3, 16, 16, dtype=torch.double), torch.randint(0, 10, (4,))
    xv, yv = torch.randn(4, 3, 16, 16, dtype=torch.double), torch.randint(0, 10, (4,))

    def architect(n):
        w_opt = torch.optim.SGD(n.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
        for p in n.weights():
            w_opt.state[p]["momentum_buffer"] = torch.full_like(p, 0.01)
        a_opt = torch.optim.Adam(n.arch_parameters(), 3e-4)
        return Architect(n, nn.CrossEntropyLoss(), a_opt, w_opt, 0.9, 3e-4, unrolled=unrolled)

    fast, _ = architect(net).alpha_gradients(channels_last(xt), yt, channels_last(xv), yv, 0.025)
    # the plain path: the original's MixedOp sum and stock convs, NCHW
    plain, _ = architect(_plain_network(ref_net)).alpha_gradients(xt, yt, xv, yv, 0.025)
    for a, b, name in zip(fast, plain, net.arch_parameter_names()):
        _assert_close(a, b, 1e-7, 1e-10, name)  # 2nd order: finite differences amplify rounding by 1/eps
