"""The DARTS paper's protocol in the retrain and the sweep: checkpoints and winners are chosen on validation data
held out of the training images, the test split is read once, at the end, and the learning rate follows the batch."""

import json

import pytest
import torch

from dist_darts import config, train
from dist_darts.config import RetrainConfig, SweepConfig, retrain_rates
from helpers import cli

TINY = dict(dataset="digits", layers=3, init_channels=4, batch_size=16, workers=0, seed=0, auxiliary=False,
            log_interval=1, epochs=3, steps_per_epoch=2)


class CountingLoader:
    """A loader that counts the batches read from it (and may change their labels)."""

    def __init__(self, loader, reads: list, relabel=None):
        self.loader, self.reads, self.relabel = loader, reads, relabel

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, *args):
        self.loader.set_epoch(*args)

    def __iter__(self):
        for x, y in self.loader:
            self.reads.append(1)
            yield x, (y if self.relabel is None else torch.where(y >= 0, self.relabel(y), y))


def run_counting_test_reads(monkeypatch, tmp_path, relabel=None, **settings):
    reads, at_epochs = [], []
    real = train.build_loaders

    def counted(cfg, env, purpose):
        loaders = real(cfg, env, purpose)
        return loaders._replace(test=CountingLoader(loaders.test, reads, relabel))

    monkeypatch.setattr(train, "build_loaders", counted)
    cfg = RetrainConfig(**{**TINY, **settings}, output=str(tmp_path))
    result = train.run(cfg, on_epoch=lambda metrics, ckpt: at_epochs.append(len(reads)))
    return result, reads, at_epochs


def test_the_test_split_is_read_once_after_the_last_epoch(monkeypatch, tmp_path):
    result, reads, at_epochs = run_counting_test_reads(monkeypatch, tmp_path / "a", val_portion=0.2)
    assert at_epochs == [0, 0, 0]  # no test batch read while training, nor by the hold-out's evaluations
    assert len(reads) == 19 and result.test_top1 is not None  # the 300 test digits in batches of 16, once
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["test_top1"] == pytest.approx(result.test_top1) and metrics["best_val_top1"] is not None
    _, reads, _ = run_counting_test_reads(monkeypatch, tmp_path / "b", val_portion=0.2, evaluate_test=False)
    assert reads == []  # a selection retrain never reads the test split
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["test_top1"] is None


def test_best_checkpoint_never_depends_on_test_accuracy(monkeypatch, tmp_path):
    """best.pt is the best epoch on the hold-out: the same file whatever the test labels say; without a hold-out,
    no best.pt at all (the last epoch is the result, as the paper reports it)."""
    run_counting_test_reads(monkeypatch, tmp_path / "a", val_portion=0.2)
    run_counting_test_reads(monkeypatch, tmp_path / "b", relabel=lambda y: (y + 1) % 10, val_portion=0.2)
    best = [torch.load(tmp_path / r / "checkpoints" / "best.pt", weights_only=False) for r in "ab"]
    assert best[0]["epoch"] == best[1]["epoch"]
    for k, v in best[0]["model"].items():
        assert torch.equal(v, best[1]["model"][k]), k
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    val = [row["val_top1"] for row in history]
    assert best[0]["epoch"] == val.index(max(val)) + 1
    run_counting_test_reads(monkeypatch, tmp_path / "c")
    assert not (tmp_path / "c" / "checkpoints" / "best.pt").exists()
    assert "val_top1" not in json.loads((tmp_path / "c" / "history.json").read_text())[0]


@pytest.mark.parametrize("batch,world,expected", [
    (96, 1, dict(global_batch=96, learning_rate=0.025, warmup_epochs=0)),  # the paper's: unchanged
    (96, 8, dict(global_batch=768, learning_rate=0.2, warmup_epochs=5)),  # linear, warmed up
    (32, 1, dict(global_batch=32, learning_rate=0.025 / 3, warmup_epochs=0)),  # smaller: scaled down, no warm-up
])
def test_retrain_rates_scale_with_the_global_batch(batch, world, expected):
    rates = retrain_rates(RetrainConfig(dataset="digits", batch_size=batch), world)
    assert rates == pytest.approx(dict(expected, learning_rate_min=0.0))
    sqrt = retrain_rates(RetrainConfig(dataset="digits", batch_size=96, lr_scaling="sqrt", warmup_epochs=2), 4)
    assert sqrt == pytest.approx(dict(global_batch=384, learning_rate=0.05, learning_rate_min=0.0, warmup_epochs=2))


def test_imagenet_preset_scales_from_its_own_batch():
    cfg = config.build(RetrainConfig, {"dataset": "imagenet", "data_dir": "/data/imagenet"})
    assert (cfg.base_batch_size, cfg.batch_size, cfg.learning_rate) == (128, 128, 0.1)
    assert retrain_rates(cfg, 8) == pytest.approx(dict(global_batch=1024, learning_rate=0.8, learning_rate_min=0.0,
                                                       warmup_epochs=5))


def test_retrain_rates_are_printed_and_resolved_in_config_yaml(tmp_path):
    proc = cli("retrain", "--dataset", "digits", "--layers", "3", "--init-channels", "4", "--batch-size", "48",
               "--workers", "0", "--no-auxiliary", "--epochs", "1", "--steps-per-epoch", "1", "--output",
               str(tmp_path))
    assert "lr 0.0125 (linear from 0.025 at base batch 96) | warm-up 0 epoch(s)" in proc.stdout + proc.stderr
    resolved = config.yaml.safe_load((tmp_path / "config.yaml").read_text())["resolved"]
    assert resolved == pytest.approx(dict(global_batch=48, learning_rate=0.0125, learning_rate_min=0.0,
                                          warmup_epochs=0))


def test_the_selection_length_is_the_papers_by_default():
    assert SweepConfig().select_epochs is None  # unset: the space's own, below
    from dist_darts.spaces import SPACES
    assert (SPACES["cnn"].paper_select_epochs, SPACES["rnn"].paper_select_epochs) == (100, 300)


def test_a_selection_retrain_trains_on_a_class_balanced_subset_disjoint_from_its_hold_out():
    """--train-subset (the sweep's --select-train-subset): a seed-determined, class-balanced share of what the
    hold-out left, the same on every rank."""
    from types import SimpleNamespace

    import numpy as np

    from dist_darts.data import build_loaders
    cfg = RetrainConfig(**TINY, val_portion=0.2, train_subset=0.25, output="unused")

    def plans(rank):
        env = SimpleNamespace(rank=rank, world_size=2, local_rank=0, device=torch.device("cpu"))
        loaders = build_loaders(cfg, env, "retrain")
        return loaders.train.plan, loaders.val.plan

    (train_plan, val_plan), (train_other, _) = plans(0), plans(1)
    labels = np.asarray(train_plan.labels)
    kept, held = train_plan.indices, val_plan.indices
    assert not set(kept) & set(held) and np.array_equal(kept, train_other.indices)
    everything = np.bincount(labels)
    left = everything - np.bincount(labels[held], minlength=len(everything))
    assert np.abs(np.bincount(labels[kept], minlength=len(everything)) - 0.25 * left).max() <= 0.5 + 1e-9
    other_seed = build_loaders(RetrainConfig(**{**TINY, "seed": 1}, val_portion=0.2, train_subset=0.25,
                                             output="unused"),
                               SimpleNamespace(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
                               "retrain")
    assert not np.array_equal(other_seed.train.plan.indices, kept)


def test_the_sweep_gives_its_selection_retrains_the_subset_and_never_its_final_retrains():
    from dist_darts.spaces import SPACES
    sweep = SweepConfig(dataset="digits", train_subset=0.1, arch_subset=0.025, select_train_subset=0.2)
    assert SPACES["cnn"].selection_settings(sweep)["train_subset"] == 0.2
    assert "train_subset" not in sweep.passed_on(RetrainConfig)  # the search's 0.1 is the search's
    assert sweep.passed_on(config.SearchConfig)["train_subset"] == 0.1
    with pytest.raises(config.ConfigError, match="select-train-subset"):
        SweepConfig(space="rnn", dataset="ptb", select_train_subset=0.2)
