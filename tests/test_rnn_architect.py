"""The recurrent alpha gradient of the original rnn/architect.py, re-implemented here from its rules on our
search network, against the original's own numbers (fixture original_rnn_architect.pt, see fixtures/README.md).

This is the specification a recurrent mode of dist_darts.architect must meet; the rules that differ from the
CNN architect are marked (R1..R5) in `unrolled_alpha_gradient`.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from dist_darts.rnn import RNNModelSearch
from test_rnn import one_thread  # noqa: F401 (autouse: one torch thread)


def _loss(model, names, weights, hidden, x, y):
    log_prob, hidden_next = functional_call(model, dict(zip(names, weights)), (x, hidden), strict=False)
    return F.nll_loss(log_prob.view(-1, log_prob.size(2)), y), hidden_next


def _clip(grads, max_norm):
    """The original's clip: scales only when the norm exceeds max_norm, but returns the coefficient either way."""
    coef = max_norm / (torch.cat([g.reshape(-1) for g in grads]).norm() + 1e-6)
    return [g * coef for g in grads] if coef < 1 else list(grads), coef


def unrolled_alpha_gradient(model, ref, eta, tied_weight_steps=False):
    c = ref["config"]
    names, weights = map(list, zip(*model.named_weights()))
    hidden_train, hidden_valid = [ref["hidden_train"]], [ref["hidden_valid"]]
    xt, yt, xv, yv = ref["input_train"], ref["target_train"], ref["input_valid"], ref["target_valid"]
    loss, _ = _loss(model, names, weights, hidden_train, xt, yt)
    # R1: the virtual step's training gradient is clipped to `clip` (0.25); no momentum term (plain SGD)
    g_train, coef = _clip(torch.autograd.grad(loss, weights), c["clip"])
    with torch.no_grad():
        unrolled = [w - eta * (g + c["wdecay"] * w) for w, g in zip(weights, g_train)]
        if not tied_weight_steps:
            # R2: the original rebuilds the model from a state dict in which the tied decoder.weight still holds
            # the old embedding and is loaded after it: the embedding (= decoder) weight takes no virtual step
            unrolled[names.index("encoder.weight")] = weights[names.index("encoder.weight")].clone()
    unrolled = [u.requires_grad_() for u in unrolled]
    # R3: the validation loss starts from the validation hidden state; its new hidden state is what the step
    # hands on (the next validation batch starts from it)
    loss_val, hidden_next = _loss(model, names, unrolled, hidden_valid, xv, yv)
    grads = torch.autograd.grad(loss_val, [model.alphas] + unrolled)
    d_alpha, d_unrolled = grads[0], grads[1:]
    # R4: the Hessian-vector product's vector dL_val/dw' is clipped to `clip` too; R = r / ||clipped vector||;
    # both perturbed training losses start from the training hidden state
    vector, _ = _clip(d_unrolled, c["clip"])
    eps = c["r"] / torch.cat([v.reshape(-1) for v in vector]).norm()
    with torch.no_grad():
        plus = [w + eps * v for w, v in zip(weights, vector)]
        minus = [w - eps * v for w, v in zip(weights, vector)]
    (g_plus,) = torch.autograd.grad(_loss(model, names, plus, hidden_train, xt, yt)[0], [model.alphas])
    (g_minus,) = torch.autograd.grad(_loss(model, names, minus, hidden_train, xt, yt)[0], [model.alphas])
    # R5: the implicit term is scaled by eta times the training clip coefficient (even when that exceeds 1)
    return d_alpha - eta * coef * (g_plus - g_minus) / (2 * eps), hidden_next[0]


@pytest.fixture
def ref_model(fixtures_dir):
    ref = torch.load(fixtures_dir / "original_rnn_architect.pt", weights_only=True)
    c = ref["config"]
    model = RNNModelSearch(c["ntoken"], c["ninp"], c["nhid"], c["nhidlast"], 0.0, 0.0, 0.0, 0.0, 0.0)
    model.load_state_dict(ref["state_dict"], strict=False)
    with torch.no_grad():
        model.alphas.copy_(ref["alphas"])
    return ref, model.train()


@pytest.mark.parametrize("eta", [20.0, 0.5])
def test_second_order_gradient_and_hidden_follow_the_originals_rules(ref_model, eta):
    ref, model = ref_model
    want = ref["results"][f"order2_eta{eta:g}"]
    grad, hidden = unrolled_alpha_gradient(model, ref, eta)
    scale = want["alpha_grad"].abs().max().item()
    assert (grad - want["alpha_grad"]).abs().max().item() <= 1e-3 * scale
    assert (hidden - want["hidden_next"]).abs().max().item() <= 1e-5
    if eta == 20.0:  # stepping the tied embedding as well gives another gradient: R2 is observable
        other, _ = unrolled_alpha_gradient(model, ref, eta, tied_weight_steps=True)
        assert (other - want["alpha_grad"]).abs().max().item() > 1e-2 * scale


def test_first_order_gradient_and_hidden(ref_model):
    ref, model = ref_model
    want = ref["results"]["order1_eta20"]
    log_prob, hidden = model(ref["input_valid"], [ref["hidden_valid"]])
    loss = F.nll_loss(log_prob.view(-1, log_prob.size(2)), ref["target_valid"])
    (grad,) = torch.autograd.grad(loss, [model.alphas])
    assert (grad - want["alpha_grad"]).abs().max().item() <= 1e-5 * max(1.0, want["alpha_grad"].abs().max().item())
    assert (hidden[0] - want["hidden_next"]).abs().max().item() <= 1e-5
    assert (grad - ref["results"]["order2_eta20"]["alpha_grad"]).abs().max() > 1e-6
