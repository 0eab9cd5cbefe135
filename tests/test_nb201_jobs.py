"""--space nb201 end to end: search (every method, both orders, 2 gloo ranks, exact resume, the benchmark's numbers
per epoch), retrain with the benchmark's protocol, evaluate, and the refusals of the DARTS space's settings."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dist_darts import spaces
from dist_darts.data import build_loaders
from dist_darts.job import StoppedAsAsked
from dist_darts.methods import ALPHA_STEP, METHODS
from dist_darts.spaces import nb201
from dist_darts.spaces.nb201 import jobs
from dist_darts.spaces.nb201.config import NB201RetrainConfig, NB201SearchConfig
from helpers import assert_same_state, cli, model_state, torchrun
from test_nb201_bench import BEST, _arch_results

TINY = ("--space", "nb201", "--dataset", "digits", "--layers", "1", "--init-channels", "4", "--batch-size", "8",
        "--workers", "0")


def _search_cfg(out, **extra):
    return NB201SearchConfig(**{"dataset": "digits", "layers": 1, "init_channels": 4, "batch_size": 8, "workers": 0,
                                "device": "cpu", "epochs": 1, "steps_per_epoch": 2, "log_interval": 10**6,
                                "output": str(out), **extra})


def test_search_retrain_evaluate_from_the_command_line(tmp_path):
    search = tmp_path / "search"
    done = cli("search", *TINY, "--epochs", "2", "--steps-per-epoch", "3", "--output", str(search))
    arch = json.loads((search / "genotype.json").read_text())["arch_str"]
    assert nb201.load(arch) == arch and done.stdout.strip().splitlines()[-1] == arch
    history = json.loads((search / "history.json").read_text())
    assert len(history) == 2
    for row in history:  # the collapse fingerprint of every epoch
        ops = nb201.parse_arch(row["genotype"]["arch_str"])
        assert (row["skip_connect"], row["none"]) == (ops.count("skip_connect"), ops.count("none"))
        assert row["param_free"] == sum(op in ("none", "skip_connect", "avg_pool_3x3") for op in ops)
    assert torch.load(search / "alphas.pt")["alphas"].shape == (6, 5)
    assert (search / "genotype.png").stat().st_size > 0
    assert re.search(r"param-free ops \d/6 \(skip_connect \d, none \d\)", (search / "log.txt").read_text())

    retrain = tmp_path / "retrain"
    cli("retrain", *TINY, "--genotype", str(search / "genotype.json"), "--epochs", "1", "--steps-per-epoch", "3",
        "--output", str(retrain))
    metrics = json.loads((retrain / "metrics.json").read_text())
    net = nb201.Network(4, 1, arch, 10)
    assert metrics["genotype"] == {"arch_str": arch} and metrics["params"] == sum(p.numel() for p in net.parameters())

    evaluated = cli("evaluate", "--space", "nb201", "--checkpoint", str(retrain / "checkpoints" / "last.pt"))
    assert re.search(r"top-1 [\d.]+ %  top-5 [\d.]+ %  on 300 images", evaluated.stdout)
    # the DARTS space's evaluate names the space this checkpoint needs
    wrong = cli("evaluate", "--checkpoint", str(retrain / "checkpoints" / "last.pt"), check=False)
    assert wrong.returncode == 2 and "use it with --space nb201" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


def test_evaluate_reads_a_state_dict_of_the_authors_network(tmp_path):
    """xautodl's TinyNetwork weights (the fixture's) with --genotype, --layers and --init-channels."""
    from test_nb201 import _load
    ref = _load(Path(__file__).parent / "fixtures", "xautodl_nb201_infer.pt")
    c = ref["config"]
    torch.save(ref["archs"][BEST]["state_dict"], tmp_path / "tiny.pth")
    done = cli("evaluate", "--space", "nb201", "--checkpoint", str(tmp_path / "tiny.pth"), "--genotype", BEST,
               "--layers", str(c["N"]), "--init-channels", str(c["C"]), "--dataset", "digits",
               "--output", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 300 and metrics["params"] == sum(
        v.numel() for k, v in ref["archs"][BEST]["state_dict"].items() if "running" not in k and "num_batches" not in k)
    assert "top-1" in done.stdout


@pytest.mark.parametrize("flag", [("--partial-channels", "4"), ("--stem", "imagenet"), ("--max-skip", "1"),
                                  ("--derive", "darts-pt")])
def test_the_darts_space_settings_are_refused_in_one_line(tmp_path, flag):
    done = cli("search", *TINY, *flag, "--output", str(tmp_path / "s"), check=False)
    assert done.returncode == 2 and "does nothing in --space nb201" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_a_darts_genotype_is_refused_by_the_nb201_retrain(tmp_path):
    done = cli("retrain", *TINY, "--genotype", "DARTS_V2", "--output", str(tmp_path / "r"), check=False)
    assert done.returncode == 2 and "NAS-Bench-201 genotype 'DARTS_V2'" in done.stderr


def test_the_retrain_defaults_are_the_benchmarks_protocol():
    cfg = NB201RetrainConfig(dataset="digits")
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.momentum, cfg.nesterov, cfg.weight_decay) == (
        200, 256, 0.1, 0.9, True, 5e-4)
    assert (cfg.lr_schedule, cfg.learning_rate_min, cfg.auxiliary, cfg.cutout, cfg.drop_path_prob,
            cfg.grad_clip, cfg.label_smoothing, cfg.layers, cfg.init_channels) == (
        "cosine", 0.0, False, 0, 0.0, 0.0, 0.0, 5, 16)
    assert nb201.load(cfg.genotype) == BEST


def _first_step(out, **settings) -> dict:
    """The weights after a retrain's first step (digits, N=1, C=4, batch 8)."""
    cfg = NB201RetrainConfig(dataset="digits", layers=1, init_channels=4, batch_size=8, base_batch_size=8, workers=0,
                             device="cpu", epochs=1, stop_after_step=1, output=str(out), **settings)
    with pytest.raises(StoppedAsAsked):
        jobs.retrain(cfg)
    return cfg, model_state(out)


def test_the_retrain_steps_with_nesterov_sgd_unclipped(tmp_path):
    """One retrain step equals a hand-made Nesterov SGD step on the same batch (--grad-clip 0 leaves the
    gradients as they are, no auxiliary loss)."""
    _, initial = _first_step(tmp_path / "still", learning_rate=1e-30, weight_decay=0.0)  # the seed's weights
    cfg, after = _first_step(tmp_path / "r", learning_rate=0.5)  # large: a missing Nesterov term shows
    # fresh BatchNorm statistics, the run's initial weights, and the run's memory format: the digits' flat
    # backgrounds leave a few pre-ReLU values within rounding of 0, whose side of the kink (so their gradient)
    # another summation order can flip, a 2 % change of some weights after a step this large
    reference = nb201.Network(4, 1, cfg.genotype, 10).to(memory_format=torch.channels_last)
    reference.load_state_dict({n: initial[n] for n, _ in reference.named_parameters()}, strict=False)
    loaders = build_loaders(cfg, SimpleNamespace(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
                            "retrain")
    loaders.train.set_epoch(0, 0)
    x, y = next(iter(loaders.train))
    opt = torch.optim.SGD(reference.parameters(), 0.5, momentum=0.9, weight_decay=5e-4, nesterov=True)
    reference.train()
    torch.nn.functional.cross_entropy(reference(x.contiguous(memory_format=torch.channels_last)), y).backward()
    opt.step()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(after[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_searches_none_in_this_space(method):
    """The cell is read off with 'none' among the ops (the authors' rule), so every method weighs it and trains
    its alpha, as DrNAS's authors' NAS-Bench-201 code does; the DARTS space's methods keep their own op sets."""
    net = nb201.SearchNetwork(4, 1, 10, method=method)
    assert (net.method.weights(net.alphas)[:, nb201.OPS.index("none")] > 0).all()
    x = torch.randn(4, 3, 8, 8)
    with net.sampling(ALPHA_STEP, torch.Generator().manual_seed(0)):
        loss = net(x).logsumexp(-1).mean()
        penalty = net.method.penalty([net.alphas], 5, 10)
    (loss if penalty is None else loss + penalty).backward()
    assert (net.alphas.grad[:, nb201.OPS.index("none")] != 0).all()
    assert METHODS[method].searches_none == (method in ("darts", "darts-minus"))  # the DARTS space's own


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("unrolled", [False, True])
def test_every_method_searches_in_both_orders(tmp_path, method, unrolled):
    result = jobs.search(_search_cfg(tmp_path, method=method, unrolled=unrolled))
    alphas = torch.load(tmp_path / "alphas.pt")["alphas"]
    assert torch.isfinite(alphas).all() and not torch.equal(alphas, torch.zeros_like(alphas))
    assert result.genotype == nb201.derive(alphas)


def test_the_collapse_monitors_and_the_accumulation_run_on_its_supernet(tmp_path):
    """RobustDARTS's eigenvalue (every epoch) and DARTS+'s skip rule read this space's alphas and cell."""
    jobs.search(_search_cfg(tmp_path, epochs=2, hessian_every=1, early_stop="skips", accumulate=2))
    history = json.loads((tmp_path / "history.json").read_text())
    assert all(isinstance(row["hessian_eigenvalue"], float) for row in history)
    assert len(history) == (1 if history[0]["skip_connect"] >= 2 else 2)  # the rule ends it at 2 skips


def test_a_stopped_search_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    jobs.search(_search_cfg(straight, epochs=2, method="drnas"))
    stopped = tmp_path / "stopped"
    with pytest.raises(StoppedAsAsked):
        jobs.search(_search_cfg(stopped, epochs=2, method="drnas", stop_after_step=3))
    jobs.search(_search_cfg(stopped, epochs=2, method="drnas", resume=True))
    assert_same_state(model_state(straight), model_state(stopped))
    assert (json.loads((straight / "history.json").read_text())
            == json.loads((stopped / "history.json").read_text()))


def test_each_epoch_reads_its_cell_in_the_benchmark(tmp_path):
    """bench_* numbers in history.json and the epoch line; a cell the file lacks costs that epoch's numbers only."""
    plain = tmp_path / "plain"
    cli("search", *TINY, "--epochs", "1", "--steps-per-epoch", "2", "--output", str(plain))
    arch = json.loads((plain / "genotype.json").read_text())["arch_str"]
    others = [a for a in (BEST, "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|") if a != arch]
    g = torch.Generator().manual_seed(0)
    listed = {"meta_archs": [arch, *others],
              "arch2infos": {i: {"full": _arch_results(i, a, 200, g)} for i, a in enumerate([arch, *others])}}
    torch.save(listed, tmp_path / "listed.pth")
    unlisted = {"meta_archs": others, "arch2infos": {i: {"full": _arch_results(i, a, 200, g)}
                                                     for i, a in enumerate(others)}}
    torch.save(unlisted, tmp_path / "unlisted.pth")
    entry = nb201.bench.Benchmark(tmp_path / "listed.pth").lookup(arch)

    out = tmp_path / "listed"
    cli("search", *TINY, "--epochs", "1", "--steps-per-epoch", "2", "--benchmark-file", str(tmp_path / "listed.pth"),
        "--output", str(out))
    row = json.loads((out / "history.json").read_text())[0]
    assert row["genotype"]["arch_str"] == arch  # the benchmark only reads: the same search
    for name, _, _ in nb201.bench.RESULTS:
        assert row[f"bench_{name}"] == pytest.approx(entry[name]), name
    assert f"bench CIFAR-10 test {entry['cifar10_test']:.2f}%" in (out / "log.txt").read_text()

    out = tmp_path / "unlisted"
    cli("search", *TINY, "--epochs", "1", "--steps-per-epoch", "2", "--benchmark-file",
        str(tmp_path / "unlisted.pth"), "--output", str(out))
    row = json.loads((out / "history.json").read_text())[0]
    assert row["genotype"]["arch_str"] == arch and not any(k.startswith("bench_") for k in row)
    assert "no benchmark numbers this epoch" in (out / "log.txt").read_text()


def test_a_file_that_is_not_the_benchmark_is_one_line(tmp_path):
    (tmp_path / "b.pth").write_bytes(b"not a benchmark")
    done = cli("search", *TINY, "--benchmark-file", str(tmp_path / "b.pth"), "--output", str(tmp_path / "s"),
               check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1


def test_genotype_show_and_draw_take_an_arch_string_or_its_json(tmp_path):
    shown = cli("genotype", "show", BEST, "--format", "json")
    assert json.loads(shown.stdout) == {"arch_str": BEST}
    nb201.save(BEST, tmp_path / "genotype.json")
    assert cli("genotype", "show", str(tmp_path / "genotype.json")).stdout.strip() == BEST
    drawn = cli("genotype", "draw", str(tmp_path / "genotype.json"), "--output", str(tmp_path / "cell"))
    assert drawn.stdout.strip() == str(tmp_path / "cell.png") and (tmp_path / "cell.png").stat().st_size > 0
    bad = cli("genotype", "show", "|nor_conv_3x3~0|", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_table_lists_the_three_spaces():
    assert list(spaces.SPACES) == ["cnn", "rnn", "nb201"]
    assert spaces.SPACES["nb201"].search_config is NB201SearchConfig


@pytest.mark.slow
def test_two_ranks_search_with_identical_replicas(tmp_path):
    proc = torchrun(2, "search", *TINY, "--epochs", "1", "--steps-per-epoch", "3", "--output", str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2 and len(result["replica_digest"]) == 64
    assert "ranks diverged" not in proc.stdout + proc.stderr


def test_the_collapse_study_runs_at_toy_size():
    import subprocess
    import sys
    from helpers import env_for_subprocess
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "nb201_collapse.py"
    out = subprocess.run([sys.executable, str(script), "--toy", "--no-record", "--jobs", "1"], capture_output=True,
                         text=True, env=env_for_subprocess(), timeout=900, check=True).stdout
    assert "| method | param-free edges (of 6) | skip_connect | none |" in out
    assert re.search(r"\| darts \| [\d.]+ \| [\d.]+ \| [\d.]+ \| \d/1 \|", out) and "| drnas |" in out
