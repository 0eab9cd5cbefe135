"""Image folders train at the size their images share: a folder of 32x32 PNGs (scikit-learn's digits, upscaled)
searches and retrains at 32 px with CIFAR's augmentation, and at 64 px when asked."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from dist_darts.data import build_loaders, dali_available, datasets
from dist_darts.data.datasets import DataError
from dist_darts.data.plan import ShardPlan
from dist_darts.data.torch import make_loaders
from helpers import TINY_RETRAIN, cli
from test_data import decode, write_image_folder

CPU = torch.device("cpu")
CLASSES = (0, 1, 2)


def env():
    return SimpleNamespace(rank=0, world_size=1, local_rank=0, device=CPU)


def cfg(root, backend="torch", **extra):
    return SimpleNamespace(dataset="folder", data_dir=str(root), data_backend=backend, batch_size=4, seed=0,
                           **extra)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """train/ (16 per class) and val/ (4 per class) of real handwritten digits as 32x32 RGB PNGs."""
    root = tmp_path_factory.mktemp("digits_png")
    digits = load_digits()
    for c in CLASSES:
        images = digits.images[digits.target == c][:20]
        for i, pixels in enumerate(images):
            split = "train" if i < 16 else "val"
            (root / split / f"digit{c}").mkdir(parents=True, exist_ok=True)
            img = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.Resampling.BILINEAR)
            img.convert("RGB").save(root / split / f"digit{c}" / f"{i:03d}.png")
    return root


def originals(root, split="train"):
    """Every PNG of a split ("train" or "test", i.e. val/) as (3, 32, 32) pixels, in the loaders' sorted order."""
    files = getattr(datasets.load("folder", str(root)), split).paths
    return [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).long() for p in files]


def shifted(padded, dy, dx, flip):
    """The 32x32 crop at (dy, dx) of a zero-padded image, mirrored if `flip`."""
    crop = padded[:, dy:dy + 32, dx:dx + 32]
    return crop.flip(-1) if flip else crop


def test_the_size_comes_from_the_images(digits_folder, tmp_path):
    assert datasets.load("folder", str(digits_folder)).image_size == 32
    assert datasets.load("folder", str(digits_folder), image_size=64).image_size == 64
    assert datasets.load("imagenet", str(digits_folder)).image_size == 224  # ImageNet's crops whatever the files
    mixed = write_image_folder(tmp_path / "mixed")  # images of five sizes
    assert datasets.load("folder", str(mixed)).image_size == 224
    with pytest.raises(DataError, match="image size applies to image folders"):
        datasets.load("cifar10", str(tmp_path), image_size=64)


def test_the_digits_come_at_any_size_from_the_same_originals():
    """The 8x8 originals upscaled to the asked size (cheap CPU studies run at 16 px), 32 px by default."""
    small, default = datasets.load("digits", None, image_size=16), datasets.load("digits", None)
    assert small.image_size == 16 and small.train.images.shape[1:] == (16, 16, 3)
    assert default.image_size == 32 and default.train.images.shape[1:] == (32, 32, 3)
    assert (small.train.labels == default.train.labels).all()
    shrunk = torch.nn.functional.interpolate(torch.from_numpy(default.train.images).permute(0, 3, 1, 2).float(),
                                             size=16, mode="area").permute(0, 2, 3, 1).numpy()
    assert np.abs(shrunk - small.train.images).mean() < 1  # the same digits: grey levels 0..255
    with pytest.raises(DataError, match="image size -1"):
        datasets.load("folder", str(digits_folder), image_size=-1)


def test_training_at_32_is_cifar_style(digits_folder):
    """Each training sample is its PNG shifted by at most 4 pixels (zeros come in) and maybe mirrored."""
    loaders = build_loaders(cfg(digits_folder), env(), "search")
    assert loaders.image_size == 32
    pngs = originals(digits_folder)
    padded = [torch.nn.functional.pad(p, (4, 4, 4, 4)) for p in pngs]
    for x, y in loaders.train:
        assert x.shape == (4, 3, 32, 32)
        for image, label in zip(decode(x, "folder"), y):
            sources = [k for k, p in enumerate(padded) for dy in range(9) for dx in range(9) for flip in (False, True)
                       if torch.equal(image, shifted(p, dy, dx, flip))]
            assert sources and all(k // 16 == label for k in sources)  # 16 training files per class
        break
    val = next(iter(build_loaders(cfg(digits_folder), env(), "retrain").test))[0]
    assert torch.equal(decode(val, "folder"), torch.stack(originals(digits_folder, "test")[:4]))  # as stored


def test_an_image_size_of_64_is_used(digits_folder):
    data = datasets.load("folder", str(digits_folder), image_size=64)
    plans = [ShardPlan(np.arange(len(split.labels)), split.labels, batch_size=4, rank=0, world_size=1, seed=0,
                       stream=0, train=train) for split, train in ((data.train, True), (data.test, False))]
    train = make_loaders(data.train, plans[:1], data, CPU, workers=0)[0]
    val = make_loaders(data.test, plans[1:], data, CPU, workers=0)[0]
    assert next(iter(train))[0].shape == next(iter(val))[0].shape == (4, 3, 64, 64)
    loaders = build_loaders(cfg(digits_folder, image_size=64), env(), "retrain")  # as a job's --image-size 64
    assert loaders.image_size == 64 and next(iter(loaders.train))[0].shape == (4, 3, 64, 64)


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
def test_dali_cpu_agrees_at_the_native_size(digits_folder):
    torch_loaders, dali_loaders = (build_loaders(cfg(digits_folder, backend), env(), "retrain")
                                   for backend in ("torch", "dali-cpu"))
    assert dali_loaders.image_size == 32
    for split in ("train", "test"):
        for (x, y), (u, v) in zip(getattr(torch_loaders, split), getattr(dali_loaders, split)):
            assert u.shape == (4, 3, 32, 32) and torch.equal(y, v)
            assert (x - u).abs().max() < 1e-4  # the same crop and flip; no resampling at the native size


def test_a_retrain_job_on_the_folder_runs_at_32(digits_folder, tmp_path):
    cli("retrain", *TINY_RETRAIN, "--dataset", "folder", "--data-dir", str(digits_folder), "--batch-size", "8",
        "--epochs", "1", "--steps-per-epoch", "2", "--genotype", "DARTS_V2", "--output", str(tmp_path / "run"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["image_size"] == 32
