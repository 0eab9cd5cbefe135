"""The recurrent alpha gradient of dist_darts.spaces.rnn.architect.RecurrentArchitect against the original
rnn/architect.py's own numbers (fixture original_rnn_architect.pt, see fixtures/README.md).

The rules that differ from the convolutional architect, each observable in the fixture:
R1 the virtual step's training gradient is clipped to `clip` (0.25) and has no momentum term (plain SGD);
R2 the tied embedding (= decoder) weight takes no virtual step (the original's stale decoder.weight);
R3 the validation loss starts from the validation hidden state and hands its new hidden state on;
R4 the Hessian-vector product's vector is clipped too, R = r / ||clipped vector||, from the training hidden state;
R5 the implicit term is scaled by eta times the training clip coefficient (even when that exceeds 1).
"""

import pytest
import torch

from dist_darts.spaces.rnn.architect import RecurrentArchitect
from dist_darts.spaces.rnn.networks import RNNModelSearch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ref_model(fixtures_dir):
    ref = torch.load(fixtures_dir / "original_rnn_architect.pt", weights_only=True)
    c = ref["config"]
    model = RNNModelSearch(c["ntoken"], c["ninp"], c["nhid"], c["nhidlast"], 0.0, 0.0, 0.0, 0.0, 0.0)
    model.load_state_dict(ref["state_dict"], strict=False)
    with torch.no_grad():
        model.alphas.copy_(ref["alphas"])
    return ref, model.train()


def _gradient(ref, model, eta, unrolled):
    c = ref["config"]
    a_opt = torch.optim.Adam(model.arch_parameters(), 3e-3, weight_decay=1e-3)
    architect = RecurrentArchitect(model, a_opt, c["wdecay"], c["clip"], unrolled=unrolled, r=c["r"])
    grads, _, hidden = architect.alpha_gradients([ref["hidden_train"]], ref["input_train"], ref["target_train"],
                                                 [ref["hidden_valid"]], ref["input_valid"], ref["target_valid"], eta)
    return grads[0], hidden[0]


@pytest.mark.parametrize("eta", [20.0, 0.5])
def test_second_order_gradient_and_hidden_are_the_originals(ref_model, eta):
    ref, model = ref_model
    want = ref["results"][f"order2_eta{eta:g}"]
    grad, hidden = _gradient(ref, model, eta, unrolled=True)
    scale = want["alpha_grad"].abs().max().item()
    assert (grad - want["alpha_grad"]).abs().max().item() <= 1e-3 * scale
    assert (hidden - want["hidden_next"]).abs().max().item() <= 1e-5
    # the first-order gradient is far from it: the implicit term is really there
    first, _ = _gradient(ref, model, eta, unrolled=False)
    assert eta < 1 or (first - want["alpha_grad"]).abs().max().item() > 1e-2 * scale


def test_first_order_gradient_and_hidden_are_the_originals(ref_model):
    ref, model = ref_model
    want = ref["results"]["order1_eta20"]
    grad, hidden = _gradient(ref, model, 20.0, unrolled=False)
    assert (grad - want["alpha_grad"]).abs().max().item() <= 1e-5 * max(1.0, want["alpha_grad"].abs().max().item())
    assert (hidden - want["hidden_next"]).abs().max().item() <= 1e-5


def test_the_weights_and_real_statistics_are_left_as_they_were(ref_model):
    ref, model = ref_model
    before = {k: v.clone() for k, v in model.state_dict().items() if k != "alphas"}
    _gradient(ref, model, 20.0, unrolled=True)
    after = model.state_dict()
    for k, v in before.items():
        if "running" not in k and "num_batches" not in k:  # the perturbed passes move BN stats, as the original's
            assert torch.equal(v, after[k]), k
