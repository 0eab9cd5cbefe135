"""The DALI backends against the torch backend: same plan, so the same samples, crops, flips and cutout squares."""

import pytest
import torch

pytest.importorskip("nvidia.dali")

from test_data import (  # noqa: E402  (tests/ is on sys.path under pytest)
    FOLDER_CLASSES, assert_same_batches, cfg, collect, env, write_cifar10, write_image_folder,
)

from dist_darts.data import DataError, build_loaders  # noqa: E402
from dist_darts.data.datasets import STATS  # noqa: E402


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    return str(write_cifar10(tmp_path_factory.mktemp("cifar10")))


@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory):
    return str(write_image_folder(tmp_path_factory.mktemp("folder")))


def both(c, rank_env, purpose, backends=("torch", "dali-cpu")):
    return [build_loaders(cfg(c.dataset, c.data_dir, backend=b, batch_size=c.batch_size, cutout=16), rank_env,
                          purpose) for b in backends]


def assert_close_batches(a, b, atol):
    assert len(a) == len(b)
    for (x, y), (u, v) in zip(a, b):
        assert x.shape == u.shape and x.dtype == u.dtype == torch.float32 and x.device == u.device
        assert torch.equal(y, v) and v.dtype == torch.int64
        assert (x - u).abs().max().item() < atol


@pytest.mark.parametrize("purpose", ["search", "retrain", "evaluate"])
def test_dali_cpu_matches_torch_on_in_memory_data(cifar10_dir, purpose):
    torch_loaders, dali_loaders = both(cfg(data_dir=cifar10_dir, batch_size=3), env(1, 2), purpose)
    assert torch_loaders[2:4] == dali_loaders[2:4]
    for name in ("train", "val", "test"):
        a, b = getattr(torch_loaders, name), getattr(dali_loaders, name)
        if a is not None:
            assert len(a) == len(b)
            # crop, flip, cutout and normalisation agree to float rounding
            assert_close_batches(collect(a, 2), collect(b, 2), atol=1e-5)


def test_dali_cpu_decodes_the_same_folder_images(folder_dir, monkeypatch):
    torch_loaders, dali_loaders = both(cfg("folder", folder_dir, batch_size=2), env(), "retrain")
    assert (dali_loaders.num_classes, dali_loaders.image_size) == (len(FOLDER_CLASSES), 224)
    # evaluation: resize 256 + centre crop 224; decoders and resamplers differ only slightly
    for (x, y), (u, v) in zip(torch_loaders.test, dali_loaders.test):
        assert u.shape == (2, 3, 224, 224) and u.dtype == torch.float32 and torch.equal(y, v)
        assert (x - u).abs().mean() < 0.02
    # training: the same crop window and flip (jitter factors neutralised: DALI's colour twist is not torchvision's)
    from dist_darts.data import plan

    def no_jitter(seed, width, height):
        return plan.imagenet_params(seed, width, height)._replace(brightness=1.0, contrast=1.0, saturation=1.0,
                                                                    hue=0.0)

    for module in ("dist_darts.data.torch", "dist_darts.data.dali"):
        monkeypatch.setattr(f"{module}.imagenet_params", no_jitter)
    torch_loaders, dali_loaders = both(cfg("folder", folder_dir, batch_size=2), env(), "retrain")
    for (x, _), (u, _) in zip(torch_loaders.train, dali_loaders.train):
        assert (x - u).abs().mean() < 0.03


def test_dali_cpu_jittered_images_stay_in_range(folder_dir):
    loader = build_loaders(cfg("folder", folder_dir, backend="dali-cpu", batch_size=4), env(), "retrain").train
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS["folder"])
    for x, _ in loader:
        assert x.shape == (4, 3, 224, 224) and torch.isfinite(x).all()
        pixels = x * std + mean
        assert pixels.min() > -0.01 and pixels.max() < 1.01


@pytest.mark.parametrize("dataset", ["cifar10", "folder"])
def test_dali_set_epoch_start_step_reproduces_the_epoch_tail(cifar10_dir, folder_dir, dataset):
    c = cfg(dataset, cifar10_dir if dataset == "cifar10" else folder_dir, backend="dali-cpu", batch_size=2, cutout=16)
    loader = build_loaders(c, env(0, 2), "retrain").train
    full = collect(loader, epoch=5)
    next(iter(loader))  # abandoned after one batch, with more prefetched
    assert_same_batches(collect(loader, epoch=5, start_step=2), full[2:])
    assert collect(loader, epoch=5, start_step=len(full)) == []
    assert_same_batches(collect(loader, epoch=5), full)
    fresh = build_loaders(c, env(0, 2), "retrain").train
    assert_same_batches(collect(fresh, epoch=5, start_step=1), full[1:])


def test_dali_rejects_unreadable_images_in_one_line(tmp_path):
    folder = write_image_folder(tmp_path / "folder", n_train=2, n_val=1)
    (folder / "val" / "dog" / "dog_0.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    loader = build_loaders(cfg("folder", str(folder), backend="dali-cpu", batch_size=2), env(), "evaluate").test
    with pytest.raises(DataError, match="dog_0.JPEG is not a readable image") as info:
        list(loader)
    assert "\n" not in str(info.value)


# --- GPU ---------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("purpose", ["search", "retrain", "evaluate"])
def test_gpu_backends_match_dali_cpu(cifar10_dir, purpose):
    gpu = env(device=torch.device("cuda", 0))
    torch_gpu, dali_gpu = both(cfg(data_dir=cifar10_dir, batch_size=3), gpu, purpose, ("torch", "dali-gpu"))
    (dali_cpu,) = both(cfg(data_dir=cifar10_dir, batch_size=3), env(), purpose, ("dali-cpu",))
    for name in ("train", "val", "test"):
        if getattr(dali_cpu, name) is None:
            continue
        reference = [(x.cuda(), y.cuda()) for x, y in collect(getattr(dali_cpu, name), 1)]
        for loaders in (torch_gpu, dali_gpu):
            assert_close_batches(collect(getattr(loaders, name), 1), reference, atol=1e-5)


@pytest.mark.gpu
def test_gpu_folder_loaders(folder_dir):
    gpu = env(device=torch.device("cuda", 0))
    torch_gpu, dali_gpu = both(cfg("folder", folder_dir, batch_size=2), gpu, "retrain", ("torch", "dali-gpu"))
    (torch_cpu,) = both(cfg("folder", folder_dir, batch_size=2), env(), "retrain", ("torch",))
    assert_close_batches(collect(torch_gpu.train), [(x.cuda(), y.cuda()) for x, y in collect(torch_cpu.train)], 1e-5)
    for (x, y), (u, v) in zip(collect(torch_gpu.test), collect(dali_gpu.test)):
        assert u.device.type == "cuda" and u.shape == (2, 3, 224, 224) and torch.equal(y, v)
        assert (x - u).abs().mean() < 0.03  # nvJPEG and PIL differ slightly


def test_dali_pipeline_is_built_once_when_epochs_are_left_half_way(cifar10_dir):
    """The search's validation loader is zipped with the training loader and evaluate stops at max_steps: an
    epoch left half way resets the pipeline (draining its prefetched batches) instead of building a new one."""
    c = cfg(data_dir=cifar10_dir, backend="dali-cpu", batch_size=2, cutout=16)
    loader = build_loaders(c, env(), "search").val
    full = collect(loader, epoch=1)
    pipe = loader._pipe
    for epoch in range(3):
        loader.set_epoch(epoch)
        for step, _ in enumerate(loader):
            if step == 1:
                break
        assert loader._pipe is pipe
    assert_same_batches(collect(loader, epoch=1), full)
    assert loader._pipe is pipe
