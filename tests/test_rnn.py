"""Recurrent DARTS networks against outputs of the original code (fixtures: tests/fixtures/README.md's recipe)."""

import pytest
import torch
import torch.nn.functional as F

from dist_darts.spaces.rnn import genotype as rgt
from dist_darts.spaces.rnn.networks import RNNModel, RNNModelSearch, detach_hidden


pytestmark = pytest.mark.usefixtures("one_thread")


def _load(fixtures_dir, name):
    return torch.load(fixtures_dir / name, weights_only=True)


def _build(ref, search=False):
    c = ref["config"]
    args = (c["ntoken"], c["ninp"], c["nhid"], c["nhidlast"], c["dropout"], c["dropouth"], c["dropoutx"],
            c["dropouti"], c["dropoute"])
    torch.manual_seed(c["seed"])
    return RNNModelSearch(*args) if search else RNNModel(*args, genotype="RNN_" + c["genotype"])


def _loss(ref, out):
    """The fixture's loss: NLL plus the original train.py's temporal (beta) and activation (alpha) terms."""
    log_prob, _, raw, dropped = out
    return (F.nll_loss(log_prob.view(-1, log_prob.size(2)), ref["target"])
            + 1e-3 * (raw[-1][1:] - raw[-1][:-1]).pow(2).mean() + 2.0 * dropped[-1].pow(2).mean())


def _max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(params=["original_rnn_darts_v2.pt", "original_rnn_enas.pt", "original_rnn_search.pt"])
def case(request, fixtures_dir):
    ref = _load(fixtures_dir, request.param)
    return ref, _build(ref, search="search" in request.param)


def test_seeded_construction_gives_the_originals_initial_weights(case):
    ref, model = case
    state = model.state_dict()
    extra = set(state) - set(ref["init_state_dict"])
    assert extra == ({"alphas"} if isinstance(model, RNNModelSearch) else set())
    for key, value in ref["init_state_dict"].items():
        assert torch.equal(state[key], value), key
    if isinstance(model, RNNModelSearch):
        assert torch.equal(model.alphas.detach(), ref["init_alphas"])


def test_original_state_dict_gives_same_eval_log_probs_and_hidden(case):
    ref, model = case
    if isinstance(model, RNNModelSearch):
        missing, unexpected = model.load_state_dict(ref["state_dict"], strict=False)
        assert missing == ["alphas"] and not unexpected
        with torch.no_grad():
            model.alphas.copy_(ref["alphas"])
    else:
        model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        log_prob, hidden = model.eval()(ref["input"], [ref["hidden"]])
    assert isinstance(hidden, list) and len(hidden) == 1 and hidden[0].shape == ref["hidden"].shape
    assert _max_diff(log_prob, ref["eval_log_prob"]) <= 1e-5
    assert _max_diff(hidden[0], ref["eval_hidden"]) <= 1e-5


def test_training_mode_math_and_gradients_match_the_original(case):
    """Same seed, same dropout masks: the train-mode outputs, the AR/TAR loss and every gradient agree."""
    ref, model = case
    model.load_state_dict(ref["init_state_dict"], strict=False)
    params = list(model.named_parameters()) if not isinstance(model, RNNModelSearch) else (
        model.named_weights() + [("alphas", model.alphas)])
    if isinstance(model, RNNModelSearch):
        with torch.no_grad():
            model.alphas.copy_(ref["alphas"])
    model.train()
    torch.manual_seed(3)
    out = model(ref["input"], [ref["hidden"].clone()], return_h=True)
    assert _max_diff(out[0], ref["train_log_prob"]) <= 1e-5
    assert _max_diff(out[1][0], ref["train_hidden"]) <= 1e-5
    assert _max_diff(out[2][0], ref["train_raw_output"]) <= 1e-5
    assert _max_diff(out[3][0], ref["train_output"]) <= 1e-5
    loss = _loss(ref, out)
    assert abs(loss.item() - ref["train_loss"].item()) <= 1e-5
    grads = torch.autograd.grad(loss, [p for _, p in params])
    assert sorted(ref["grads"]) == sorted(n for n, _ in params)
    for (name, _), g in zip(params, grads):
        scale = max(1.0, ref["grads"][name].abs().max().item())
        assert _max_diff(g, ref["grads"][name]) <= 1e-5 * scale, name
    # the search BN's running statistics moved exactly as the original's (9 updates per time step)
    state = model.state_dict()
    for key, value in ref["state_dict"].items():
        assert _max_diff(state[key], value) <= 1e-6, key


def test_search_network_interface(fixtures_dir):
    ref = _load(fixtures_dir, "original_rnn_search.pt")
    model = _build(ref, search=True)
    (alphas,) = model.arch_parameters()
    assert alphas.shape == (36, 5) and alphas is model.alphas and model.arch_parameter_names() == ["alphas"]
    names = [n for n, _ in model.named_weights()]
    assert names == ["encoder.weight", "rnns.0._W0"] + [f"rnns.0._Ws.{i}" for i in range(8)] + ["decoder.bias"]
    assert len(model.weights()) == len(names) and all(w is not alphas for w in model.weights())
    assert model.decoder.weight is model.encoder.weight
    with torch.no_grad():
        model.alphas.copy_(ref["alphas"])
    assert rgt.recurrent_to_dict(model.genotype()) == ref["genotype"]


def test_hidden_state_and_return_h_shapes():
    torch.manual_seed(0)
    model = RNNModel(30, 8, 8, 8, genotype=rgt.RNN_DARTS_V1)
    hidden = model.init_hidden(4)
    assert len(hidden) == 1 and hidden[0].shape == (1, 4, 8) and not hidden[0].any()
    x = torch.randint(0, 30, (5, 4))
    log_prob, hidden, raw, dropped = model.train()(x, hidden, return_h=True)
    assert log_prob.shape == (5, 4, 30) and raw[0].shape == dropped[0].shape == (5, 4, 8)
    assert torch.allclose(log_prob.exp().sum(-1), torch.ones(5, 4), atol=1e-5)
    assert torch.equal(hidden[0][0], raw[0][-1])
    assert not detach_hidden(hidden)[0].requires_grad and hidden[0].requires_grad


def test_ptb_size_has_the_originals_parameter_count():
    with torch.device("meta"):
        model = RNNModel(10000, 850, 850, 850)
    assert sum(p.numel() for p in model.parameters()) == 22_960_000


def test_cell_sizes_must_agree():
    with pytest.raises(ValueError, match="ninp == nhid == nhidlast"):
        RNNModel(10, 8, 8, 16)


def test_functional_call_with_named_weights_keeps_the_tied_decoder():
    """What dist_darts.architect does with a network: weights passed by name (the decoder's tied weight is not
    among them); the first-order alpha gradient through detached weights equals the plain one."""
    from torch.func import functional_call
    torch.manual_seed(0)
    model = RNNModelSearch(40, 8, 8, 8, 0.0, 0.0, 0.0, 0.0, 0.0).train()
    x, y = torch.randint(0, 40, (6, 4)), torch.randint(0, 40, (24,))
    names = [n for n, _ in model.named_weights()]
    assert "decoder.weight" not in names
    weights = {n: w.detach() for n, w in model.named_weights()}
    weights["encoder.weight"] = weights["encoder.weight"] * 2  # the decoder must follow its tied embedding
    with torch.no_grad():
        moved, _ = functional_call(model, weights, (x, model.init_hidden(4)), strict=False)
        model.encoder.weight.mul_(2)
        direct, _ = model(x, model.init_hidden(4))
        model.encoder.weight.div_(2)
    assert torch.allclose(moved, direct, atol=1e-6)
    detached = {n: w.detach() for n, w in model.named_weights()}
    log_prob, _ = functional_call(model, detached, (x, model.init_hidden(4)), strict=False)
    (g_detached,) = torch.autograd.grad(F.nll_loss(log_prob.view(-1, 40), y), model.arch_parameters())
    log_prob, _ = model(x, model.init_hidden(4))
    (g_plain,) = torch.autograd.grad(F.nll_loss(log_prob.view(-1, 40), y), model.arch_parameters())
    assert torch.allclose(g_detached, g_plain, atol=1e-7) and g_plain.abs().sum() > 0
