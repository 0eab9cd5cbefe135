"""NAS-Bench-201's networks and arch strings against the authors' xautodl (fixtures: tests/fixtures/README.md)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dist_darts.architect import Architect
from dist_darts.spaces.cnn.genotype import GenotypeError
from dist_darts.methods import ALPHA_STEP, METHODS, WEIGHT_STEP
from dist_darts.spaces import nb201
from test_packaging import JOB_SIDE, imported_names

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def _load(fixtures_dir, name):
    return torch.load(fixtures_dir / name, weights_only=True)


def _assert_seeded_init(net, state_dict):
    """Every conv and linear parameter of `net` (built right after torch.manual_seed(0)) equals the authors'; the
    fixtures overwrote only BatchNorm entries after their seeded construction."""
    checked = 0
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            for p_name, p in module.named_parameters():
                assert torch.equal(p, state_dict[f"{name}.{p_name}"]), f"{name}.{p_name}"
                checked += 1
    assert checked > 10


@pytest.fixture(scope="module")
def infer_ref():
    return _load(Path(__file__).parent / "fixtures", "xautodl_nb201_infer.pt")


@pytest.fixture(scope="module")
def search_ref():
    return _load(Path(__file__).parent / "fixtures", "xautodl_nb201_search.pt")


EVERY_OP = "|avg_pool_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


@pytest.mark.parametrize("arch", [BEST, EVERY_OP])
def test_evaluation_network_loads_the_authors_state_dict_and_gives_their_logits(infer_ref, arch):
    c, ref = infer_ref["config"], infer_ref["archs"][arch]
    torch.manual_seed(0)
    net = nb201.Network(c["C"], c["N"], arch, c["num_classes"])
    _assert_seeded_init(net, ref["state_dict"])
    net.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        assert torch.allclose(net.eval()(infer_ref["input"]), ref["logits"], rtol=0, atol=1e-6)
        assert torch.allclose(net.train()(infer_ref["input"]), ref["train_logits"], rtol=0, atol=1e-6)


def _search_network(ref):
    c = ref["config"]
    torch.manual_seed(0)
    net = nb201.SearchNetwork(c["C"], c["N"], c["num_classes"])
    _assert_seeded_init(net, ref["state_dict"])
    state = dict(ref["state_dict"])
    state["alphas"] = state.pop("arch_parameters")  # the one name that differs: arch_parameters() is a method here
    net.load_state_dict(state, strict=True)
    return net


def test_search_network_gives_the_authors_logits_gradient_and_cell(search_ref):
    net = _search_network(search_ref)
    assert torch.equal(net.alphas, search_ref["alphas"])
    assert net.arch_parameters() == [net.alphas] and net.arch_parameter_names() == ["alphas"]
    assert [n for n, _ in net.named_weights()] == [k for k, v in net.named_parameters() if k != "alphas"]
    x, y = search_ref["input"], search_ref["target"]
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), search_ref["eval_logits"], rtol=0, atol=1e-6)
    logits = net.train()(x)
    assert torch.allclose(logits, search_ref["logits"], rtol=0, atol=1e-6)
    grad, = torch.autograd.grad(nn.functional.cross_entropy(logits, y), net.arch_parameters())
    assert torch.allclose(grad, search_ref["alpha_grad"], rtol=1e-5, atol=1e-7)
    assert net.genotype() == search_ref["genotype"]


def test_search_cells_batch_norms_have_no_affine_parameters_or_statistics():
    net = nb201.SearchNetwork(4, 1, 10)
    cell_bns = [m for cell in net.cells if isinstance(cell, nb201.networks.SearchCell)
                for m in cell.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(cell_bns) == 3 * 6 * 2  # three cells, six edges, two convs each
    assert all(not bn.affine and not bn.track_running_stats for bn in cell_bns)


def test_derive_equals_the_authors_on_random_alphas(search_ref):
    derived = [nb201.derive(a) for a in search_ref["derive_alphas"]]
    assert derived == search_ref["derive_arch_strs"]
    net = nb201.SearchNetwork(4, 1, 10)
    with torch.no_grad():
        net.alphas.copy_(search_ref["derive_alphas"][0])
    assert net.genotype() == search_ref["derive_arch_strs"][0]


def test_derive_keeps_none():
    alphas = torch.zeros(6, 5)
    alphas[:, 0] = 1.0
    assert nb201.derive(alphas) == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    with pytest.raises(GenotypeError, match=r"expected shape \(6, 5\)"):
        nb201.derive(torch.zeros(14, 8))


def test_arch_string_round_trip_and_errors():
    ops = nb201.parse_arch(BEST)
    assert ops == ["nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3"]
    assert nb201.format_arch(ops) == BEST
    for bad, why in [("|nor_conv_3x3~0|", "needs 3 nodes"),
                     ("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
                     ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "must come from node 0"),
                     ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 needs 2 edges"),
                     ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "node 1 must be written")]:
        with pytest.raises(GenotypeError, match=why) as e:
            nb201.parse_arch(bad)
        assert "\n" not in str(e.value)


def test_genotype_json(tmp_path):
    path = tmp_path / "genotype.json"
    nb201.save(BEST, path)
    assert json.loads(path.read_text()) == {"arch_str": BEST}
    assert nb201.load(path) == nb201.load(BEST) == nb201.load({"arch_str": BEST}) == BEST
    (tmp_path / "bad.json").write_text('{"arch_str": "|x~0|"}')
    with pytest.raises(GenotypeError, match="bad.json"):
        nb201.load(tmp_path / "bad.json")
    with pytest.raises(GenotypeError, match="neither an arch string"):
        nb201.load(tmp_path / "missing.json")


def test_network_accepts_genotype_json(tmp_path):
    nb201.save(BEST, tmp_path / "genotype.json")
    assert nb201.Network(4, 1, tmp_path / "genotype.json", 10).arch_str == BEST


@pytest.mark.parametrize("unrolled", [False, True])
def test_architect_steps_the_alphas(unrolled):
    torch.manual_seed(0)
    net = nb201.SearchNetwork(4, 1, 10)
    w_opt = torch.optim.SGD(net.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    arch = Architect(net, nn.CrossEntropyLoss(), a_opt, w_opt, 0.9, 3e-4, unrolled=unrolled)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    before = net.alphas.detach().clone()
    loss = arch.step(x, y, x, y, 0.025)
    assert torch.isfinite(loss) and not torch.equal(before, net.alphas)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_mixes_the_alphas(method):
    torch.manual_seed(0)
    net = nb201.SearchNetwork(4, 1, 10, method=method).train()
    net.set_epoch(1, 4)
    x = torch.randn(2, 3, 16, 16)
    for phase in (WEIGHT_STEP, ALPHA_STEP):
        with net.sampling(phase, torch.Generator().manual_seed(0)):
            logits = net(x)
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()  # the alpha step's forward reaches the alphas under every method
    assert torch.isfinite(net.alphas.grad).all() and net.alphas.grad.abs().sum() > 0


def test_darts_minus_skip_adds_the_edges_input():
    torch.manual_seed(0)
    net = nb201.SearchNetwork(4, 1, 10, method="darts-minus").train()
    plain = nb201.SearchNetwork(4, 1, 10).train()
    plain.load_state_dict(net.state_dict())
    net.set_epoch(4, 4)  # the skip's coefficient is 1 - epoch / epochs = 0 at the end
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), plain(x))
        net.set_epoch(0, 4)
        assert not torch.allclose(net(x), plain(x))


def test_draw_cell(tmp_path):
    text = nb201.draw(EVERY_OP, tmp_path / "cell.svg").read_text()
    for label in ("avg_pool_3x3", "nor_conv_1x1", "skip_connect", "nor_conv_3x3", ">3<"):
        assert label in text, label
    assert ">none<" not in text


@pytest.mark.parametrize("module", ["genotype", "networks"])
def test_model_code_never_imports_the_job_side(module):
    path = Path(nb201.__file__).parent / f"{module}.py"
    assert not imported_names(path) & JOB_SIDE
