"""PC-DARTS' ImageNet search path: class-balanced subsets (balanced, disjoint, seeded, the same on every gloo rank
and in a resume, on the torch and DALI backends), launch/configs/imagenet_search.yaml at toy size from the CLI on a
folder of real photographs at 128 px (1 process and 2 gloo ranks), and the one-line refusals (odd maps, memory)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from dist_darts import config
from dist_darts.data import build_loaders, dali_available
from dist_darts.data.plan import class_balanced_subsets
from dist_darts.distributed import close_distributed, init_distributed
from helpers import checkpoint_step, cli, env_for_subprocess, free_port, kill_when, model_state, assert_same_state, \
    torchrun

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "launch" / "configs" / "imagenet_search.yaml")
# the recipe at toy size: 3 cells of 4 channels, batch 4, 2 epochs (the alphas frozen in the first), 2 steps each
TOY = ["--layers", "3", "--init-channels", "4", "--batch-size", "4", "--workers", "0", "--epochs", "2",
       "--steps-per-epoch", "2", "--warmup-epochs", "1", "--arch-warmup-epochs", "1", "--log-interval", "1"]


def _photo_folder_module():
    spec = importlib.util.spec_from_file_location("photo_folder", ROOT / "benchmarks" / "photo_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos128(tmp_path_factory):
    """10 classes of real photographs at 128 px: 12 training and 2 validation images each."""
    return str(_photo_folder_module().write_folder(tmp_path_factory.mktemp("photos128"), 128, 12, 2))


def _subset_args(folder, train=0.5, arch=0.25):
    return ["--config", RECIPE, "--dataset", "folder", "--data-dir", folder, "--train-subset", str(train),
            "--arch-subset", str(arch)]


def test_subsets_are_class_balanced_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), [40 + 7 * c for c in range(10)])
    np.random.default_rng(0).shuffle(labels)
    weights, alphas = class_balanced_subsets(labels, (0.1, 0.025), seed=2, stream=0)
    for c in range(10):
        n = 40 + 7 * c
        assert (labels[weights] == c).sum() == max(1, round(0.1 * n))
        assert (labels[alphas] == c).sum() == max(1, round(0.025 * n))
    assert not set(weights) & set(alphas) and len(set(weights)) == len(weights)
    again = class_balanced_subsets(labels, (0.1, 0.025), seed=2, stream=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (weights, alphas)))
    other = class_balanced_subsets(labels, (0.1, 0.025), seed=3, stream=0)
    assert not np.array_equal(other[0], weights)


def test_subsets_need_both_fractions_and_replace_the_portion_split():
    for bad in ({"train_subset": 0.1}, {"arch_subset": 0.1}, {"train_subset": 0.8, "arch_subset": 0.3},
                {"train_subset": -0.1, "arch_subset": 0.1}):
        with pytest.raises(config.ConfigError, match="subset"):
            config.SearchConfig(dataset="digits", **bad)
    c = SimpleNamespace(dataset="digits", data_dir=None, data_backend="torch", batch_size=8, seed=0, workers=0,
                        train_portion=0.5, train_subset=0.2, arch_subset=0.1)
    loaders = build_loaders(c, SimpleNamespace(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
                            "search")
    assert len(loaders.train.plan.indices) in range(290, 310) and len(loaders.val.plan.indices) in range(140, 160)


def _rank_worker(rank, port, folder, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    env = init_distributed("cpu")
    record = {}
    for backend in ("torch", "dali-cpu") if dali_available() else ("torch",):
        c = SimpleNamespace(dataset="folder", data_dir=folder, data_backend=backend, batch_size=2, seed=5, workers=0,
                            train_portion=0.5, train_subset=0.5, arch_subset=0.25)
        loaders = build_loaders(c, env, "search")
        for name in ("train", "val"):
            loader = getattr(loaders, name)
            loader.set_epoch(1)
            batches = [(loader.plan.batch(1, s)[0], y) for s, (_, y) in zip(range(len(loader)), loader)]
            record[backend, name] = (loader.plan.indices, [i for i, _ in batches],
                                     [y.numpy() for _, y in batches])
    torch.save(record, os.path.join(out, f"rank{rank}.pt"))
    close_distributed()


def test_subsets_are_the_same_on_two_gloo_ranks_and_sharded_by_the_plan(photos128, tmp_path):
    mp.spawn(_rank_worker, args=(free_port(), photos128, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    labels = np.repeat(np.arange(10), 12)  # the folder lists class by class, file names in order
    for key in r0:
        (subset0, shards0, labels0), (subset1, shards1, labels1) = r0[key], r1[key]
        assert np.array_equal(subset0, subset1)  # one subset on every rank
        seen0, seen1 = np.concatenate(shards0), np.concatenate(shards1)
        assert not set(seen0) & set(seen1)  # disjoint shards
        assert len(seen0) + len(seen1) == len(subset0) // 4 * 4  # everything but the last partial global batch
        assert set(seen0) | set(seen1) <= set(subset0)
        for shard, ys in ((shards0, labels0), (shards1, labels1)):
            assert all(np.array_equal(labels[i], y) for i, y in zip(shard, ys))
    weights, alphas = r0["torch", "train"][0], r0["torch", "val"][0]
    assert np.bincount(labels[weights]).tolist() == [6] * 10 and np.bincount(labels[alphas]).tolist() == [3] * 10
    assert not set(weights) & set(alphas)
    if ("dali-cpu", "train") in r0:  # the DALI backend reads the same samples in the same batches
        for name in ("train", "val"):
            for a, b in zip(r0["torch", name][1:], r0["dali-cpu", name][1:]):
                assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_shorter_alphas_split_is_read_again_within_the_epoch_from_any_step():
    from dist_darts.search import _cycled
    c = SimpleNamespace(dataset="digits", data_dir=None, data_backend="torch", batch_size=8, seed=0, workers=0,
                        train_subset=0.1, arch_subset=0.02)
    val = build_loaders(c, SimpleNamespace(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")),
                        "search").val
    assert len(val) == 3
    whole = [labels for _, (_, labels) in zip(range(8), _cycled(val, 2, 0))]
    val.set_epoch(3)
    assert all(torch.equal(a, b) for a, b in zip(whole[3:6], [y for _, y in val]))  # the next epoch of the loader
    for start in range(8):
        tail = [labels for _, (_, labels) in zip(range(8 - start), _cycled(val, 2, start))]
        assert all(torch.equal(a, b) for a, b in zip(tail, whole[start:]))


def test_the_recipe_has_pcdarts_rates_at_its_batch_and_builds_as_the_sweep_does(tmp_path):
    c = config.build(config.SearchConfig, config.load_yaml(RECIPE))
    assert (c.stem, c.train_subset, c.arch_subset, c.partial_channels, c.epochs, c.arch_warmup_epochs,
            c.warmup_epochs, c.unrolled) == ("imagenet", 0.1, 0.025, 2, 50, 35, 5, False)
    rates = config.search_rates(c, 8)
    assert {k: rates[k] for k in ("global_batch", "learning_rate", "learning_rate_min", "arch_learning_rate")} == {
        "global_batch": 1024, "learning_rate": 0.5, "learning_rate_min": 0.0, "arch_learning_rate": 0.006}
    # `dist-darts sweep --search FILE` builds each trial's search from the file's keys plus its own settings
    trial = config.build(config.SearchConfig, {**config.load_yaml(RECIPE), "epochs": 2, "seed": 0,
                                               "output": str(tmp_path / "search" / "seed_0"), "resume": True})
    assert (trial.stem, trial.train_subset, trial.arch_subset) == ("imagenet", 0.1, 0.025)


def _finished(run):
    result = json.loads((Path(run) / "result.json").read_text())
    resolved = yaml.safe_load((Path(run) / "config.yaml").read_text())["resolved"]
    return result, resolved


@pytest.mark.slow
def test_recipe_searches_real_photos_at_128px_from_the_cli(photos128, tmp_path):
    out = tmp_path / "run"
    proc = cli("search", *_subset_args(photos128), *TOY, "--output", str(out))
    assert "supernet stem: imagenet (128 px images)" in proc.stdout
    assert "subsets: 60 images for the weights, 30 for the alphas" in proc.stdout
    result, resolved = _finished(out)
    assert result["epochs"] == 2 and result["world_size"] == 1
    assert resolved["subsets"]["weights_images"] == 60 and resolved["global_batch"] == 4
    assert (out / "genotype.json").is_file()


@pytest.mark.slow
def test_recipe_searches_real_photos_at_128px_on_two_gloo_ranks(photos128, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(2, "search", *_subset_args(photos128), *TOY, "--output", str(out))
    assert "supernet stem: imagenet (128 px images)" in proc.stdout + proc.stderr
    result, resolved = _finished(out)
    assert result["world_size"] == 2 and resolved["global_batch"] == 8
    single = tmp_path / "single"  # one rank draws the same subsets
    cli("search", *_subset_args(photos128), *TOY, "--steps-per-epoch", "1", "--epochs", "1", "--output", str(single))
    assert _finished(single)[1]["subsets"] == resolved["subsets"]


@pytest.mark.slow
def test_subsets_survive_a_kill_and_resume_and_a_changed_subset_is_refused(tmp_path):
    # 150 images for the weights, 30 for the alphas: 3 alpha batches, read twice in an epoch of 6 steps
    args = ["search", "--dataset", "digits", "--layers", "3", "--init-channels", "4", "--batch-size", "8",
            "--workers", "0", "--seed", "0", "--train-subset", "0.1", "--arch-subset", "0.02", "--epochs", "1",
            "--steps-per-epoch", "6", "--checkpoint-steps", "1", "--deterministic"]
    cli(*args, "--output", str(tmp_path / "straight"))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dist_darts", *args, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for_subprocess())
    ckpt = out / "checkpoints" / "last.pt"
    kill_when(proc, lambda: (checkpoint_step(ckpt) or (0, 0))[1] >= 4)  # in the second pass over the alphas' split
    epoch, step = checkpoint_step(ckpt)
    resumed = cli(*args, "--output", str(out), "--resume")
    assert f"resumed from {ckpt} at epoch {epoch} step {step}" in resumed.stdout and epoch == 0 and 4 <= step < 6
    assert_same_state(model_state(tmp_path / "straight"), model_state(out))
    refused = cli(*[a if a != "0.02" else "0.03" for a in args], "--output", str(out), "--resume", check=False)
    assert refused.returncode == 2 and "arch-subset=0.02" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_folder_whose_images_changed_is_refused_on_resume(tmp_path):
    folder = _photo_folder_module().write_folder(tmp_path / "photos", 128, 4, 1)
    args = ["search", *_subset_args(str(folder)), *TOY, "--epochs", "1", "--steps-per-epoch", "1",
            "--output", str(tmp_path / "run")]
    cli(*args)
    for path in sorted((folder / "train" / "brick").iterdir())[:2]:  # the subsets cannot be drawn again
        path.unlink()
    refused = cli(*args, "--resume", check=False)
    assert refused.returncode == 2 and "another subsets" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_144px_images_are_refused_in_one_line_with_the_imagenet_stem_and_run_with_the_cifar_stem(tmp_path):
    folder = str(_photo_folder_module().write_folder(tmp_path / "photos", 144, 2, 1))
    common = ["search", "--dataset", "folder", "--data-dir", folder, "--layers", "3", "--init-channels", "4",
              "--batch-size", "4", "--workers", "0", "--epochs", "1", "--steps-per-epoch", "1"]
    refused = cli(*common, "--output", str(tmp_path / "auto"), check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "cannot take 144 px images" in refused.stderr and "--image-size 128 or 160" in refused.stderr
    ran = cli(*common, "--stem", "cifar", "--output", str(tmp_path / "cifar"))
    assert "supernet stem: cifar (144 px images)" in ran.stdout


def test_the_memory_check_refuses_the_recipe_at_an_impossible_batch_naming_one_that_fits(tmp_path):
    # 64 channels: about 200 MB of activations per 224 px image in fp32, 200 GiB at batch 1024
    proc = cli("search", "--config", RECIPE, "--data-backend", "synthetic", "--init-channels", "64",
               "--batch-size", "1024", "--output", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "batch 1024" in lines[0] and "fits (about" in lines[0] and "--accumulate" in lines[0], lines[0]
    largest = int(lines[0].split("--batch-size ")[1].split()[0])
    assert 1 <= largest < 1024
