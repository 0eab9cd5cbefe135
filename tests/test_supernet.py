import torch
import torch.nn as nn

from dist_darts.spaces.cnn.genotype import PRIMITIVES
from dist_darts.spaces.cnn.supernet import MixedOp, Network, channel_shuffle


def test_shapes_and_parameter_groups():
    net = Network(8, 10, 5)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    arch = net.arch_parameters()
    assert [tuple(a.shape) for a in arch] == [(14, 8), (14, 8)]
    arch_ids = {id(a) for a in arch}
    assert not arch_ids & {id(p) for p in net.weights()}
    assert len(net.weights()) + len(arch) == len(list(net.parameters()))
    assert sum(1 for c in net.cells if c.reduction) == 2 and net.cells[1].reduction and net.cells[3].reduction


def test_search_bn_has_no_affine_weights():
    net = Network(8, 10, 3)
    for name, m in net.cells.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert not m.affine, name


def test_pooling_ops_carry_bn_in_search():
    op = MixedOp(8, 1)
    for primitive, module in zip(PRIMITIVES, op._ops):
        if "pool" in primitive:
            assert isinstance(module, nn.Sequential) and isinstance(module[1], nn.BatchNorm2d)


def test_skipping_none_keeps_output_and_alpha_gradients():
    torch.manual_seed(0)
    op = MixedOp(8, 2)
    x = torch.randn(2, 8, 8, 8)
    alphas = torch.randn(8, requires_grad=True)
    w = torch.softmax(alphas, -1)
    out = op(x, w)
    reference = sum(wi * o(x) for wi, o in zip(w, op._ops))  # the original: every op, 'none' included
    assert torch.allclose(out, reference, atol=1e-6)
    g1, = torch.autograd.grad(out.square().sum(), alphas)
    alphas2 = alphas.detach().clone().requires_grad_()
    w2 = torch.softmax(alphas2, -1)
    g2, = torch.autograd.grad(sum(wi * o(x) for wi, o in zip(w2, op._ops)).square().sum(), alphas2)
    assert torch.allclose(g1, g2, atol=1e-5)


def test_alpha_gradients_flow():
    net = Network(8, 10, 3)
    loss = nn.functional.cross_entropy(net(torch.randn(2, 3, 16, 16)), torch.tensor([1, 2]))
    loss.backward()
    for a in net.arch_parameters():
        assert a.grad is not None and a.grad.abs().sum() > 0


def test_genotype_from_network():
    net = Network(8, 10, 3)
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_normal[:, PRIMITIVES.index("dil_conv_5x5")] = 1.0
    g = net.genotype()
    assert all(op == "dil_conv_5x5" for op, _ in g.normal)


def test_partial_channel_mode():
    torch.manual_seed(0)
    net = Network(8, 10, 5, partial_channels=4)
    assert [n for n in net.arch_parameter_names()] == ["alphas_normal", "alphas_reduce", "betas_normal",
                                                         "betas_reduce"]
    assert net.cells[0]._ops[0]._ops[4].op[1].in_channels == 2  # sep conv on C/K channels
    out = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert net.betas_normal.grad is not None and net.betas_normal.grad.abs().sum() > 0
    net.genotype()


def test_channel_shuffle_is_a_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


def test_channel_shuffle_keeps_channels_last():
    x = torch.randn(2, 8, 3, 5)
    cl = x.contiguous(memory_format=torch.channels_last)
    out = channel_shuffle(cl, 4)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.equal(out, channel_shuffle(x, 4))
    op = MixedOp(8, 2, partial_channels=4).to(memory_format=torch.channels_last)  # a PC-DARTS edge
    y = op(torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last), torch.rand(len(PRIMITIVES)))
    assert y.is_contiguous(memory_format=torch.channels_last)
