"""The search supernet's ImageNet stem against PC-DARTS' ImageNet search network (model_search_imagenet.py), from
figures and a tiny network its code produced (tests/fixtures/README.md's recipe), and which input sides run."""

import pytest
import torch

from dist_darts.spaces.cnn.supernet import Network, cell_sides, choose_stem, fits

# PC-DARTS' ImageNet search network at its defaults (C=16, 1000 classes, 8 cells, K=2), read from its code
PCDARTS_IMAGENET_WEIGHTS = 956_512
PCDARTS_IMAGENET_STEM_WEIGHTS = 31_992


def _fixture(fixtures_dir):
    return torch.load(fixtures_dir / "pcdarts_imagenet_search.pt", weights_only=True)


def _shapes(net, x):
    seen = {}
    names = [n for n in ("stem0", "stem1") if hasattr(net, n)]
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, list(o.shape)))
             for n in names]
    hooks += [c.register_forward_hook(lambda m, i, o, n=f"cells.{k}": seen.__setitem__(n, list(o.shape)))
              for k, c in enumerate(net.cells)]
    with torch.no_grad():
        seen["logits"] = list(net(x).shape)
    for h in hooks:
        h.remove()
    return seen


def test_defaults_equal_pcdarts_imagenet_search_network(fixtures_dir):
    ref = _fixture(fixtures_dir)["default"]
    assert (ref["weights"], ref["stem_weights"]) == (PCDARTS_IMAGENET_WEIGHTS, PCDARTS_IMAGENET_STEM_WEIGHTS)
    c = ref["config"]
    net = Network(c["C"], c["num_classes"], c["layers"], partial_channels=2, stem="imagenet").train()
    assert sum(p.numel() for p in net.weights()) == PCDARTS_IMAGENET_WEIGHTS
    assert sum(p.numel() for n, p in net.named_weights() if n.startswith("stem")) == PCDARTS_IMAGENET_STEM_WEIGHTS
    assert [i for i, cell in enumerate(net.cells) if cell.reduction] == ref["reductions"]
    assert _shapes(net, torch.zeros(2, 3, c["image_size"], c["image_size"])) == ref["shapes"]  # 224 -> 56 -> 28


@pytest.mark.parametrize("fold_alphas", [False, True])
def test_tiny_network_gives_pcdarts_logits(fixtures_dir, fold_alphas):
    ref = _fixture(fixtures_dir)["tiny"]
    c = ref["config"]
    net = Network(c["C"], c["num_classes"], c["layers"], partial_channels=2, stem="imagenet",
                  fold_alphas=fold_alphas).train()
    assert [n for n, _ in net.named_weights()] == ref["weight_names"]  # the same names in the same order
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(ref["weights"], net.weights())
        for name in net.arch_parameter_names():
            getattr(net, name).copy_(ref[name])
    assert _shapes(net, ref["input"]) == ref["shapes"]
    with torch.no_grad():
        logits = net(ref["input"])
    assert (logits - ref["logits"]).abs().max().item() <= 1e-5


def test_auto_stem_and_the_sides_that_run():
    assert [choose_stem("auto", s) for s in (32, 111, 112, 224)] == ["cifar", "cifar", "imagenet", "imagenet"]
    assert choose_stem("cifar", 224) == "cifar"
    assert cell_sides(224, "imagenet") == (56, 28) and cell_sides(144, "imagenet") == (36, 18)
    assert not fits(144, "imagenet") and fits(144, "cifar") and fits(128, "imagenet") and fits(160, "imagenet")
    for stem in ("cifar", "imagenet"):
        for side in (30, 36, 64, 66, 72, 96):
            net = Network(4, 3, 3, stem=stem).train()
            if fits(side, stem):
                assert net(torch.zeros(2, 3, side, side)).shape == (2, 3)
            else:
                with pytest.raises(RuntimeError):
                    net(torch.zeros(2, 3, side, side))
