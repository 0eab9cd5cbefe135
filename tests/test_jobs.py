"""End-to-end jobs on the embedded digits data: search, retrain, evaluate, run folders, bad input."""

import json

import pytest
import torch

from dist_darts.spaces.cnn import genotype as gt
from helpers import TINY_RETRAIN, TINY_SEARCH, cli


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    proc = cli("search", *TINY_SEARCH, "--epochs", "2", "--steps-per-epoch", "3", "--max-skip", "1",
               "--output", str(out))
    assert "search finished" in proc.stdout
    return out


def test_search_run_folder(search_dir):
    g = gt.load(str(search_dir / "genotype.json"))
    for name in ("config.yaml", "log.txt", "alphas.pt", "history.json", "result.json", "checkpoints/last.pt",
                 "genotypes/epoch_000.json", "genotypes/epoch_001.json", "alphas/epoch_001.pt",
                 "genotype_normal.png", "genotype_reduce.png", "alphas.png"):
        assert (search_dir / name).exists(), name
    assert list((search_dir / "tensorboard").iterdir())
    alphas = torch.load(search_dir / "alphas.pt", weights_only=True)
    assert gt.derive(alphas["alphas_normal"], alphas["alphas_reduce"], max_skip=1) == g  # P-DARTS's cap applied
    assert sum(op == "skip_connect" for op, _ in g.normal) <= 1
    assert gt.to_dict(g) == json.loads((search_dir / "result.json").read_text())["genotype"]
    history = json.loads((search_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]


def test_retrain_and_evaluate_the_found_genotype(search_dir, tmp_path):
    out = tmp_path / "retrain"
    cli("retrain", *TINY_RETRAIN, "--genotype", str(search_dir / "genotype.json"), "--epochs", "2",
        "--steps-per-epoch", "3", "--cutout", "--drop-path-prob", "0.2", "--ema-decay", "0.9", "--val-portion", "0.2",
        "--output", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_top1", "test_top5", "params", "val_top1", "best_val_top1"} <= metrics.keys() and metrics["params"] > 0
    assert (out / "checkpoints" / "best.pt").exists()  # chosen on the hold-out
    proc = cli("evaluate", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--workers", "0")
    assert "top-1" in proc.stdout
    evaluated = json.loads((out / "evaluate" / "last" / "metrics.json").read_text())
    assert evaluated["top1"] == pytest.approx(metrics["test_top1"]) and evaluated["params"] == metrics["params"]
    assert evaluated["split"] == "test"
    assert json.loads((out / "metrics.json").read_text()) == metrics  # the retrain's own results stay


def test_resuming_a_finished_retrain_keeps_its_results(tmp_path):
    args = ["retrain", *TINY_RETRAIN, "--epochs", "1", "--steps-per-epoch", "2", "--output", str(tmp_path)]
    cli(*args)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    cli(*args, "--resume")
    again = json.loads((tmp_path / "metrics.json").read_text())
    keys = ("test_top1", "test_top5", "val_top1")
    assert {k: again[k] for k in keys} == {k: metrics[k] for k in keys}


def test_evaluate_an_original_darts_state_dict(fixtures_dir, tmp_path):
    ref = torch.load(fixtures_dir / "original_cifar.pt", weights_only=True)
    torch.save(ref["state_dict"], tmp_path / "weights.pt")
    proc = cli("evaluate", "--checkpoint", str(tmp_path / "weights.pt"), "--genotype", "DARTS_V2", "--layers", "5",
               "--init-channels", "8", "--dataset", "digits", "--workers", "0")
    metrics = json.loads((tmp_path / "evaluate" / "weights" / "metrics.json").read_text())
    assert metrics["images"] == 300 and "top-1" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["search", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "cifar10"),
    (["search", "--dataset", "digits", "--epochs", "0"], "epochs: must be >= 1"),
    (["search", "--dataset", "digits", "--layers", "2"], "layers: a search needs >= 3 cells"),
    (["search", "--dataset", "digits", "--bogus-flag"], "unrecognized arguments"),
    (["retrain", "--dataset", "digits", "--genotype", "NOPE"], "neither a known name"),
    (["evaluate", "--checkpoint", "/nonexistent.pt"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    proc = cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_malformed_genotype_file(tmp_path):
    (tmp_path / "g.json").write_text('{"normal": [["sep_conv_3x3", 0]], "normal_concat": [2]}')
    proc = cli("retrain", "--dataset", "digits", "--genotype", str(tmp_path / "g.json"), check=False)
    assert proc.returncode == 2 and "genotype" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("content", [b"", b"garbage that is no zip", None])
def test_corrupted_checkpoint_on_resume(tmp_path, content):
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    if content is None:  # a real checkpoint cut short
        torch.save({"format": "x", "t": torch.zeros(10000)}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    else:
        ckpt.write_bytes(content)
    proc = cli("search", *TINY_SEARCH, "--epochs", "1", "--output", str(tmp_path), "--resume", check=False)
    assert proc.returncode == 2 and "corrupted" in proc.stderr and "Traceback" not in proc.stderr


def test_foreign_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": {}}, tmp_path / "checkpoints" / "last.pt")
    proc = cli("search", *TINY_SEARCH, "--epochs", "1", "--output", str(tmp_path), "--resume", check=False)
    assert proc.returncode == 2 and "not written by dist-darts" in proc.stderr


def test_resume_with_another_genotype_is_refused(tmp_path):
    args = ["retrain", *TINY_RETRAIN, "--epochs", "1", "--steps-per-epoch", "1", "--output", str(tmp_path)]
    cli(*args, "--genotype", "DARTS_V1")
    proc = cli(*args, "--genotype", "DARTS_V2", "--resume", check=False)
    assert proc.returncode == 2 and "has genotype='DARTS_V1' but this run has 'DARTS_V2'" in proc.stderr
