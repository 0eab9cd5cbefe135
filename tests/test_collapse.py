"""The collapse monitor: parameter-free op counts and warnings on hand-set cells, the Hessian eigenvalue estimate
against the explicit Hessian of a tiny supernet, and the search writing both every epoch."""

import json

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from dist_darts import collapse
from dist_darts.genotype import DARTS_V2, Genotype
from dist_darts.supernet import Network


def test_parameter_free_counts_and_warnings():
    assert collapse.cell_counts(DARTS_V2) == {"param_free_normal": 2, "param_free_reduce": 8, "skip_normal": 2}
    skips = [("skip_connect", 0), ("skip_connect", 1)] * 2 + [("avg_pool_3x3", 0), ("sep_conv_3x3", 1)] * 2
    collapsed = Genotype(skips, [2, 3, 4, 5], DARTS_V2.reduce, [2, 3, 4, 5])
    counts = collapse.cell_counts(collapsed)
    assert counts == {"param_free_normal": 6, "param_free_reduce": 8, "skip_normal": 4}
    assert collapse.signals(counts, []).keys() == {"skips"}
    assert "4 skip_connects" in collapse.signals(counts, [])["skips"]
    assert collapse.signals(collapse.cell_counts(DARTS_V2), [1.0, 0.8, 1.0]) == {}  # 1.25x its minimum
    grown = collapse.signals(collapse.cell_counts(DARTS_V2), [1.0, 0.8, 1.2])
    assert grown.keys() == {"eigenvalue"} and "1.50x its minimum" in grown["eigenvalue"]


def tiny_supernet():
    torch.manual_seed(0)
    # the plain path (stock convs, no folding) is twice differentiable: the explicit Hessian needs that
    model = Network(2, 3, 3, steps=2, multiplier=2, fold_alphas=False, fast_depthwise=False).double().train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    return model, x, y


@pytest.mark.slow  # the explicit Hessian: 80 double-backward passes
def test_eigenvalue_estimate_matches_the_explicit_hessian():
    model, x, y = tiny_supernet()
    criterion = nn.CrossEntropyLoss()
    names, alphas = model.arch_parameter_names(), [a.detach().clone() for a in model.arch_parameters()]
    sizes = [a.numel() for a in alphas]

    def loss(flat):
        parts = [p.view_as(a) for p, a in zip(flat.split(sizes), alphas)]
        return criterion(functional_call(model, dict(zip(names, parts)), (x,)), y)

    hessian = torch.autograd.functional.hessian(loss, torch.cat([a.reshape(-1) for a in alphas]))
    eigenvalues = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    dominant = eigenvalues[eigenvalues.abs().argmax()].item()
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate = collapse.hessian_eigenvalue(model, criterion, x, y, iterations=200)
    assert abs(estimate - dominant) <= 1e-3 * abs(dominant), (estimate, dominant)
    for k, v in model.state_dict().items():  # weights, alphas and BN statistics as they were
        assert torch.equal(v, weights_before[k]), k


@pytest.mark.slow
def test_search_records_the_collapse_monitor(tmp_path):
    from dist_darts import search
    from dist_darts.config import SearchConfig
    out = tmp_path / "run"
    search.run(SearchConfig(dataset="digits", layers=3, init_channels=4, batch_size=8, workers=0, epochs=1,
                            steps_per_epoch=1, hessian_every=1, output=str(out)))
    (row,) = json.loads((out / "history.json").read_text())
    assert 0 <= row["param_free_normal"] <= 8 and 0 <= row["param_free_reduce"] <= 8
    assert isinstance(row["hessian_eigenvalue"], float)
    assert "param-free ops normal" in (out / "log.txt").read_text() and (out / "collapse.png").is_file()


def test_the_eigenvalue_rule_needs_the_estimates():
    from dist_darts.config import ConfigError, SearchConfig
    with pytest.raises(ConfigError, match="early-stop: the eigenvalue rule needs the estimates"):
        SearchConfig(dataset="digits", early_stop="eigenvalue")
    SearchConfig(dataset="digits", early_stop="eigenvalue", hessian_every=2)


def test_an_early_stop_ends_the_search_with_the_previous_epochs_genotype_and_stays_ended(tmp_path, monkeypatch):
    """The rule itself is tested above on hand-set cells; here it is made to fire at epoch 2 of 4."""
    from dist_darts import search
    from dist_darts.config import SearchConfig
    from dist_darts.genotype import from_dict
    calls = []

    def fires_at_epoch_2(counts, eigenvalues):
        calls.append(counts)
        return {"skips": "4 skip_connects, say"} if len(calls) == 2 else {}

    monkeypatch.setattr(collapse, "signals", fires_at_epoch_2)
    out = tmp_path / "run"
    settings = dict(dataset="digits", layers=3, init_channels=4, batch_size=8, workers=0, epochs=4, steps_per_epoch=1,
                    early_stop="skips", output=str(out))
    reported = []
    result = search.run(SearchConfig(**settings), on_epoch=lambda m, c: reported.append(m))
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and result.epochs == 2
    assert result.genotype == from_dict(history[0]["genotype"])  # epoch 1's: the last before the rule fired
    assert from_dict(json.loads(reported[-1]["genotype"])) == result.genotype  # what a sweep takes from the trial
    saved = json.loads((out / "result.json").read_text())
    assert saved["early_stopped"] and saved["epochs"] == 2
    assert "early stop after epoch 2 of 4: 4 skip_connects, say; the result is epoch 1's genotype" in \
        (out / "log.txt").read_text()
    again = []
    resumed = search.run(SearchConfig(**settings, resume=True), on_epoch=lambda m, c: again.append(m))
    assert len(calls) == 2 and len(json.loads((out / "history.json").read_text())) == 2  # nothing trained
    assert resumed.genotype == result.genotype and again == reported[-1:]
