"""Our networks against outputs of the original DARTS code (fixtures made by tests/fixtures/README.md's recipe)."""

import pytest
import torch

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.spaces.cnn.model import NetworkCIFAR, NetworkImageNet, from_nni_state_dict
from dist_darts.spaces.cnn.supernet import Network


def _load(fixtures_dir, name):
    return torch.load(fixtures_dir / name, weights_only=True)


@pytest.mark.parametrize("name,cls", [("original_cifar.pt", NetworkCIFAR), ("original_imagenet.pt", NetworkImageNet)])
def test_original_checkpoint_gives_same_logits(fixtures_dir, name, cls):
    ref = _load(fixtures_dir, name)
    c = ref["config"]
    net = cls(c["C"], c["num_classes"], c["layers"], c["auxiliary"], c["genotype"])
    net.load_state_dict(ref["state_dict"], strict=True)
    net.eval()
    with torch.no_grad():
        logits, aux = net(ref["input"])
    assert aux is None
    assert (logits - ref["logits"]).abs().max().item() <= 1e-5


def test_original_supernet_state_logits_and_genotype(fixtures_dir):
    ref = _load(fixtures_dir, "original_search.pt")
    c = ref["config"]
    net = Network(c["C"], c["num_classes"], c["layers"])
    missing, unexpected = net.load_state_dict(ref["state_dict"], strict=False)
    assert sorted(missing) == ["alphas_normal", "alphas_reduce"] and not unexpected
    with torch.no_grad():
        net.alphas_normal.copy_(ref["alphas_normal"])
        net.alphas_reduce.copy_(ref["alphas_reduce"])
    assert [n for n, _ in net.named_weights()] == ref["weight_names"]  # same parameter order as the original
    with torch.no_grad():
        logits = net.train()(ref["input"])
    assert (logits - ref["logits"]).abs().max().item() <= 1e-5
    assert gt.to_dict(net.genotype()) == ref["genotype"]


def test_nni_state_dict_loads_with_same_logits(fixtures_dir):
    ref = _load(fixtures_dir, "nni_cifar.pt")
    c = ref["config"]
    g = gt.from_nni_dict(ref["arch"])
    assert g == gt.DARTS_V2
    net = NetworkCIFAR(c["width"], c["num_classes"], c["num_cells"], c["auxiliary"], g)
    net.load_state_dict(from_nni_state_dict(ref["state_dict"], c["num_cells"]), strict=True)
    with torch.no_grad():
        logits, _ = net.eval()(ref["input"])
    assert torch.allclose(logits, ref["logits"], atol=1e-4, rtol=1e-5)


def test_nni_renaming_rules():
    sd = {"stages.1.1.ops.2.0.0.1.weight": 1, "stages.2.0.ops.0.1.conv_1.weight": 2,
          "stages.0.0.preprocessor.pre1.1.weight": 3, "stages.2.0.preprocessor.pre0.bn.running_mean": 4,
          "stem.0.weight": 5, "stages.1.0.ops.3.1.4.weight": 6}
    assert from_nni_state_dict(sd, layers=8) == {
        "cells.3._ops.4.op.1.weight": 1, "cells.5._ops.1.conv_1.weight": 2, "cells.0.preprocess1.op.1.weight": 3,
        "cells.5.preprocess0.bn.running_mean": 4, "stem.0.weight": 5, "cells.2._ops.7.op.4.weight": 6}
