"""The alpha gradients against the original DARTS architect (fixture) and an independent reference."""

import copy

import pytest
import torch
import torch.nn as nn

from dist_darts.architect import Architect
from dist_darts.spaces.cnn.supernet import Network


def _from_fixture(ref):
    c = ref["config"]
    net = Network(c["C"], c["num_classes"], c["layers"])
    net.load_state_dict(ref["state_dict"], strict=False)
    with torch.no_grad():
        net.alphas_normal.copy_(ref["alphas_normal"])
        net.alphas_reduce.copy_(ref["alphas_reduce"])
    w_opt = torch.optim.SGD(net.weights(), c["eta"], momentum=c["momentum"], weight_decay=c["weight_decay"])
    for p, buf in zip(net.weights(), ref["momentum_buffers"]):
        w_opt.state[p]["momentum_buffer"] = buf.clone()
    a_opt = torch.optim.Adam(net.arch_parameters(), c["arch_learning_rate"], betas=(0.5, 0.999),
                             weight_decay=c["arch_weight_decay"])
    return net.train(), w_opt, a_opt, c


@pytest.mark.parametrize("unrolled", [False, True])
def test_alpha_gradients_match_the_original(fixtures_dir, unrolled):
    ref = torch.load(fixtures_dir / "original_search.pt", weights_only=True)
    net, w_opt, a_opt, c = _from_fixture(ref)
    arch = Architect(net, nn.CrossEntropyLoss(), a_opt, w_opt, c["momentum"], c["weight_decay"], unrolled=unrolled)
    before = [w.clone() for w in net.weights()]
    grads, _ = arch.alpha_gradients(ref["input_train"], ref["target_train"], ref["input_valid"],
                                    ref["target_valid"], c["eta"])
    key = "unrolled_grad" if unrolled else "first_order_grad"
    for g, name in zip(grads, ("normal", "reduce")):
        expected = ref[f"{key}_{name}"]
        # finite differences in float32: agreement to ~1e-5 of gradients of size ~0.1-0.4
        assert torch.allclose(g, expected, atol=1e-4, rtol=1e-3), (name, (g - expected).abs().max())
    assert all(torch.equal(a, b) for a, b in zip(before, net.weights()))  # weights untouched


def test_unrolled_gradient_matches_exact_reference_on_smooth_tiny_net():
    """An independent reference: the exact second-order gradient by double backprop on a smooth network.

    With a smooth loss the finite-difference Hessian-vector product converges to the exact one, so both must
    agree closely (float64).
    """
    torch.manual_seed(0)

    class Tiny(nn.Module):  # alphas mix two smooth 'ops'; the weights are a linear layer
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.alphas = nn.Parameter(torch.randn(2))

        def forward(self, x):
            w = torch.softmax(self.alphas, 0)
            return self.lin(w[0] * torch.tanh(x) + w[1] * torch.sin(x))

        def arch_parameters(self):
            return [self.alphas]

        def named_weights(self):
            return list(self.lin.named_parameters(prefix="lin"))

    net = Tiny().double()
    xt, yt = torch.randn(8, 4, dtype=torch.double), torch.randint(0, 3, (8,))
    xv, yv = torch.randn(8, 4, dtype=torch.double), torch.randint(0, 3, (8,))
    lr, mom, wd = 0.1, 0.9, 3e-4
    w_opt = torch.optim.SGD([p for _, p in net.named_weights()], lr, momentum=mom, weight_decay=wd)
    for _, p in net.named_weights():
        w_opt.state[p]["momentum_buffer"] = torch.randn_like(p)
    crit = nn.CrossEntropyLoss()
    arch = Architect(net, crit, torch.optim.Adam(net.arch_parameters()), w_opt, mom, wd, unrolled=True, r=1e-4)
    (g,), _ = arch.alpha_gradients(xt, yt, xv, yv, lr)

    # exact: d/dalpha L_val(w - lr*(mom*buf + dL_train/dw(w, alpha) + wd*w), alpha), by double backprop
    names, ws = zip(*net.named_weights())
    gw = torch.autograd.grad(crit(net(xt), yt), ws, create_graph=True)
    unrolled = {n: w - lr * (mom * w_opt.state[w]["momentum_buffer"] + g_ + wd * w) for n, w, g_ in zip(names, ws, gw)}
    logits = torch.func.functional_call(net, unrolled, (xv,), strict=False)
    exact, = torch.autograd.grad(crit(logits, yv), net.alphas)
    assert torch.allclose(g, exact, atol=1e-7, rtol=1e-5), (g, exact)


def test_unrolled_step_leaves_the_virtual_pass_off_the_bn_statistics():
    """As in the original, the passes at w, w + R v and w - R v update the model's BatchNorm statistics and the
    validation pass at the virtual weights w' does not (the original ran it on a throwaway copy)."""
    torch.manual_seed(0)
    net = Network(4, 10, 3).train()
    copy_net = copy.deepcopy(net)
    w_opt = torch.optim.SGD(net.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    arch = Architect(net, nn.CrossEntropyLoss(), torch.optim.Adam(net.arch_parameters(), 3e-4), w_opt, 0.9, 3e-4,
                     unrolled=True)
    xt, yt = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    xv, yv = 5 + 3 * torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))  # stats far from the training batch's
    arch.step(xt, yt, xv, yv, 0.025)
    with torch.no_grad():
        for _ in range(3):  # the three training passes, at w (R v moves the weights by 1e-2 in norm: close)
            copy_net(xt)
    for (name, buf), expected in zip(net.named_buffers(), copy_net.buffers()):
        if name.endswith("num_batches_tracked"):
            assert buf.item() == 3, name
        else:
            assert torch.allclose(buf, expected, rtol=1e-2, atol=1e-3), (name, (buf - expected).abs().max())
