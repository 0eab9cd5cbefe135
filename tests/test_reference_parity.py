"""Our networks against outputs of the original DARTS code (fixtures made by tests/fixtures/README.md's recipe)."""

import pytest
import torch

from dist_darts import genotype as gt
from dist_darts.model import NetworkCIFAR, NetworkImageNet
from dist_darts.supernet import Network


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
