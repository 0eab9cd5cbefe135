"""The collapse monitor: parameter-free op counts and warnings on hand-set cells, the Hessian eigenvalue estimate
against the explicit Hessian of a tiny supernet, and the search writing both every epoch."""

import json

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from dist_darts import collapse
from dist_darts.spaces.cnn.genotype import DARTS_V2, Genotype
from dist_darts.spaces.cnn.supernet import Network


def test_parameter_free_counts_and_the_darts_plus_rule():
    assert collapse.cell_counts(DARTS_V2) == {"param_free_normal": 2, "param_free_reduce": 8, "skip_normal": 2}
    skips = [("skip_connect", 0), ("skip_connect", 1)] * 2 + [("avg_pool_3x3", 0), ("sep_conv_3x3", 1)] * 2
    collapsed = Genotype(skips, [2, 3, 4, 5], DARTS_V2.reduce, [2, 3, 4, 5])
    counts = collapse.cell_counts(collapsed)
    assert counts == {"param_free_normal": 6, "param_free_reduce": 8, "skip_normal": 4}
    message, kept = collapse.signals(counts, 7, None)["skips"]
    assert "4 skip_connects" in message and kept == 7  # DARTS+ keeps the cell where it stops
    # criterion 1: two skip_connects fire (DARTS_V2's normal cell holds two), one does not
    assert collapse.signals(collapse.cell_counts(DARTS_V2), 3, None).keys() == {"skips"}
    one = Genotype([("skip_connect", 0)] + [("sep_conv_3x3", 1)] * 7, [2, 3, 4, 5], DARTS_V2.reduce, [2, 3, 4, 5])
    assert collapse.signals(collapse.cell_counts(one), 3, None) == {}
    # a skip-count sequence: the rule fires at the first epoch with 2 or more
    sequence = [0, 1, 1, 0, 1, 2, 3, 4]
    fired = [e for e, n in enumerate(sequence) if "skips" in collapse.signals({"skip_normal": n}, e, None)]
    assert fired[0] == 5


def _first_firing(eigenvalues, every=1, rule=collapse.LocalAverageRule()):
    """(epoch of the estimate at which RobustDARTS's rule first fires, the epoch it rolls back to), or None."""
    epochs = [every * i for i in range(len(eigenvalues))]
    for n in range(1, len(eigenvalues) + 1):
        fired = collapse.local_average_stop(epochs[:n], eigenvalues[:n], rule)
        if fired:
            return epochs[n - 1], fired[0]
    return None


def test_robustdarts_local_average_rule_on_hand_computed_sequences():
    # estimates every epoch, 1.0 until epoch 14, 2.0 from 15: after the estimate of epoch 16 the local average
    # of epochs 12-16 is (3 + 4) / 5 = 1.4, the one 4 estimates earlier (epochs 8-12) 1.0: 1.4 > 1.3, and the
    # earlier window's centre, epoch 10, is the start epoch; epoch 15's (1.2x) did not fire
    assert _first_firing([1.0] * 15 + [2.0] * 20) == (16, 10)
    # the same jump at epoch 20: 1.2x after epoch 20, 1.4x after epoch 21, rolled back to epoch 15
    assert _first_firing([1.0] * 20 + [2.0] * 20) == (21, 15)
    # a jump long before the start epoch: by the first check (after epoch 16) both windows hold the new level
    assert _first_firing([1.0] * 3 + [2.0] * 40) is None
    # the authors' spacing, every 2 epochs (estimates at 0, 2, 4, ...): the first check is at epoch 22, rolling
    # back to 10; a doubling from the estimate of epoch 30 fires after 32's ((3 + 4) / 5 = 1.4x), rolling back to
    # the centre of the earlier window (estimates of epochs 16-24): 20
    assert _first_firing([1.0] * 15 + [2.0] * 10, every=2) == (32, 20)
    # a flat curve with 15 % noise either way: the local averages stay within 1.03 and 0.97, never 1.3x apart
    # (the previous rule, 1.3x the minimum so far, fired at the second estimate)
    assert _first_firing([1.15, 0.85] * 25) is None
    # slow growth, 3 % per epoch (4.3x over 50 epochs): local averages 4 estimates apart differ by 1.03^4 = 1.13x
    assert _first_firing([1.03 ** i for i in range(50)]) is None
    # growth at 8 % per epoch: 1.08^4 = 1.36x > 1.3 at the first check, after epoch 16
    assert _first_firing([1.08 ** i for i in range(50)]) == (16, 10)
    # its parameters: a factor of 1.5 lets the doubling through longer (1.6x after epoch 17), a start epoch of 12
    # delays the first check to epoch 18
    assert _first_firing([1.0] * 15 + [2.0] * 20, rule=collapse.LocalAverageRule(factor=1.5)) == (17, 11)
    assert _first_firing([1.0] * 15 + [2.0] * 20, rule=collapse.LocalAverageRule(start_epoch=12)) == (18, 12)
    message, kept = collapse.signals({"skip_normal": 0}, 16, [(e, 1.0 if e < 15 else 2.0) for e in range(17)])[
        "eigenvalue"]
    assert kept == 10 and "1.40x" in message


def test_eigenvalue_is_the_largest_not_the_largest_in_magnitude():
    class Quadratic(nn.Module):  # loss 0.5 a^T A a: its Hessian is A, eigenvalues -5, 2, 1
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor([0.3, -0.2, 0.5]))
            q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
            self.register_buffer("A", q @ torch.diag(torch.tensor([-5.0, 2.0, 1.0])) @ q.T)

        def arch_parameters(self):
            return [self.a]

        def forward(self, x):
            return 0.5 * self.a @ self.A @ self.a

    estimate = collapse.hessian_eigenvalue(Quadratic(), lambda out, y: out, torch.zeros(1), None, iterations=100)
    assert estimate == pytest.approx(2.0, rel=1e-6)


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
    largest = eigenvalues.max().item()  # the largest, as RobustDARTS takes it
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate = collapse.hessian_eigenvalue(model, criterion, x, y, iterations=200)
    assert abs(estimate - largest) <= 1e-3 * abs(largest), (estimate, largest, eigenvalues)
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


def test_an_early_stop_ends_the_search_with_the_rules_genotype_and_stays_ended(tmp_path, monkeypatch):
    """The rules themselves are tested above on hand-set sequences; here one is made to fire at epoch 2 of 4,
    keeping epoch 1's genotype (as RobustDARTS's roll-back does)."""
    from dist_darts import search
    from dist_darts.config import SearchConfig
    from dist_darts.spaces.cnn.genotype import from_dict
    calls = []

    def fires_at_epoch_2(counts, epoch, estimates, rule):
        calls.append(counts)
        return {"skips": ("4 skip_connects, say", 0)} if len(calls) == 2 else {}

    monkeypatch.setattr(collapse, "signals", fires_at_epoch_2)
    out = tmp_path / "run"
    settings = dict(dataset="digits", layers=3, init_channels=4, batch_size=8, workers=0, epochs=4, steps_per_epoch=1,
                    early_stop="skips", output=str(out))
    reported = []
    result = search.run(SearchConfig(**settings), on_epoch=lambda m, c: reported.append(m))
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and result.epochs == 2
    assert result.genotype == from_dict(history[0]["genotype"])  # epoch 1's: the one the rule kept
    assert from_dict(json.loads(reported[-1]["genotype"])) == result.genotype  # what a sweep takes from the trial
    saved = json.loads((out / "result.json").read_text())
    assert saved["early_stopped"] and saved["epochs"] == 2
    assert "early stop after epoch 2 of 4: 4 skip_connects, say; the result is epoch 1's genotype" in \
        (out / "log.txt").read_text()
    again = []
    resumed = search.run(SearchConfig(**settings, resume=True), on_epoch=lambda m, c: again.append(m))
    assert len(calls) == 2 and len(json.loads((out / "history.json").read_text())) == 2  # nothing trained
    assert resumed.genotype == result.genotype and again == reported[-1:]


def test_the_collapse_benchmark_redraws_a_recorded_run_without_searching(tmp_path):
    """--redraw plots the newest recorded comparison of the given data set and methods (the photographs' run in
    benchmarks/results.jsonl); an unrecorded combination is one line, no traceback."""
    import subprocess
    import sys
    from pathlib import Path
    from helpers import env_for_subprocess
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "search_collapse.py"
    drawn = tmp_path / "photos.png"
    done = subprocess.run([sys.executable, str(script), "--redraw", "--dataset", "photos", "--plot", str(drawn)],
                          capture_output=True, text=True, env=env_for_subprocess(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "matplotlib is not installed" in done.stdout or drawn.stat().st_size > 10_000
    missing = subprocess.run([sys.executable, str(script), "--redraw", "--first-seed", "99"], capture_output=True,
                             text=True, env=env_for_subprocess(), timeout=300)
    assert missing.returncode == 1 and "--redraw: no recorded run" in missing.stderr
    assert "Traceback" not in missing.stderr
