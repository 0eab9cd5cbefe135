"""Data sets read in their original on-disk formats.

CIFAR-10/100 and NAS-Bench-201's ImageNet16-120 (python pickle batches, read by a restricted unpickler), SVHN
(.mat files), ImageNet and any `train/` + `val/` folder of class subfolders, scikit-learn's 8x8 digits (the
embedded default, no download), `photos` (patches of the photographs scikit-image ships, no download) and
`synthetic` (sizes only).
Small data sets are returned in memory as uint8 (N, H, W, 3) arrays; image folders as sorted path lists.

Image size of an image folder: an explicit `image_size` wins; else `imagenet` uses ImageNet's 224-px crops,
and a `folder` the shorter side its images share (read from the headers of up to 64 files per split), or 224
when they differ or share a side longer than 224. Folders below 128 px (plan.small_images) train with CIFAR's
augmentation at that size: resize the shorter side to it (nothing to do at the native size), centre crop,
zero-pad by 4 and crop at a random offset, random flip; and are evaluated resized and centre-cropped to it.
Larger ones train with ImageNet's RandomResizedCrop, flip and colour jitter, and are evaluated resized to
256/224 of the size and centre-cropped. So a folder of 32x32 images searches as CIFAR-10 does, not at 224.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import NamedTuple, Union

import numpy as np
from PIL import Image

from .. import safe_pickle
from ..config import DATASETS


class DataError(ValueError):
    """Bad data or data settings: a missing folder, a damaged file, an unusable backend. One line."""


class Arrays(NamedTuple):
    """A split held in memory: uint8 images (N, H, W, 3) and int64 labels (N,)."""
    images: np.ndarray
    labels: np.ndarray


class Files(NamedTuple):
    """A split of image files: paths and their int64 labels, in sorted (class, file name) order."""
    paths: list
    labels: np.ndarray


class Synthetic(NamedTuple):
    """A split of random tensors for benchmarks: only its size (as all-zero labels) is real."""
    labels: np.ndarray


Split = Union[Arrays, Files, Synthetic]


class Dataset(NamedTuple):
    name: str
    train: Split
    test: Split  # the test split (CIFAR, SVHN, digits) or the `val/` folder (ImageNet, folder)
    num_classes: int
    image_size: int
    mean: tuple  # per-channel mean and std of the training images, in [0, 1]
    std: tuple
    pad: int = 4  # training crops of an in-memory split: zero padding on each side, then a random crop back


IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
STATS = {
    "cifar10": ((0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)),
    "cifar100": ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
    "svhn": ((0.4376821, 0.4437697, 0.47280442), (0.19803012, 0.20101562, 0.19703614)),
    "digits": ((0.30475527,) * 3, (0.32333505,) * 3),  # computed on our 32x32 training split below
    "photos": ((0.4626179, 0.40215362, 0.37452948), (0.25935767, 0.22787583, 0.22926346)),  # training patches
    "imagenet": IMAGENET_STATS,
    "folder": IMAGENET_STATS,
    "synthetic": ((0.5,) * 3, (0.25,) * 3),
    # NAS-Bench-201's (xautodl's) figures for its downsampled ImageNet
    "imagenet16-120": ((122.68 / 255, 116.66 / 255, 104.01 / 255), (63.22 / 255, 61.26 / 255, 65.09 / 255)),
}
# (train, test) sizes of the real data sets, which synthetic data imitates
SIZES = {
    "cifar10": (50000, 10000), "cifar100": (50000, 10000), "svhn": (73257, 26032),
    "imagenet": (1281167, 50000), "digits": (1497, 300), "photos": (2000, 400), "synthetic": (50000, 10000),
    "imagenet16-120": (151700, 6000),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_TEST_SIZE = 300
# the photographs of scikit-image's data folder behind the 10 classes of `photos`: people, animals, objects,
# textures, a telescope field and a micrograph, colour and grey
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png",
          "hubble_deep_field.jpg", "ihc.png", "rocket.jpg")
PHOTO_SIDE = 160  # each photograph is resized to this shorter side before patches are cut
PHOTO_PATCHES = (200, 40)  # 32x32 patches per photograph: training (top 3/4 of it), test (its bottom 1/4)
DOWNLOAD_HINT = "pass --download where there is a network"
FOLDER_SAMPLE = 64  # files per split whose headers decide the size a folder's images share
IMAGE_FOLDERS = ("imagenet", "folder")


def load(name: str, root: str | None, download: bool = False, image_size: int = 0) -> Dataset:
    """Read data set `name` from folder `root` (None for digits), downloading first if asked and missing.
    `image_size` > 0 sets the size image folders are cropped to (0: from the data, see the module docstring)."""
    _check_image_size(name, image_size)
    if name == "digits":
        return _digits(image_size or DATASETS["digits"].image_size)
    if name == "photos":
        return _photos()
    if name not in READERS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(READERS)}, digits, photos, synthetic")
    if not root:
        raise DataError(f"{name}: no data directory given (--data-dir)")
    data = READERS[name](name, os.path.expanduser(root), download)
    return data._replace(image_size=image_size) if image_size else data


def synthetic(name: str, image_size: int = 0) -> Dataset:
    """Random data with the shape and split sizes of data set `name` (no files are read)."""
    if name not in SIZES:
        raise DataError(f"synthetic data needs a dataset of known size, one of {', '.join(SIZES)}; got {name!r}")
    _check_image_size(name, image_size)
    train, test = (Synthetic(np.zeros(n, np.int64)) for n in SIZES[name])
    info = DATASETS[name]
    return Dataset(name, train, test, info.num_classes, image_size or info.image_size, *STATS[name])


def _check_image_size(name, image_size):
    if image_size < 0:
        raise DataError(f"bad data setting: image size {image_size} (0 takes it from the data)")
    if image_size and name not in IMAGE_FOLDERS + ("digits",):
        raise DataError(f"{name}: an image size applies to image folders ({', '.join(IMAGE_FOLDERS)}) and the "
                        f"digits only; {name} is stored at {DATASETS[name].image_size}x{DATASETS[name].image_size}")


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (at most 200 characters), for DataError messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _require(name, root, relpaths, expected, download, fetch):
    """Raise a one-line DataError naming `root` and the `expected` files unless all `relpaths` exist."""
    def missing():
        return [p for p in relpaths if not os.path.exists(os.path.join(root, p))]

    if missing() and download:
        with download_lock(root):
            try:
                if missing():  # not fetched meanwhile by the process that held the lock
                    fetch()
            except Exception as exc:  # urllib, tarfile and checksum errors all mean the same: no usable download
                raise DataError(f"{name}: downloading to {root} failed ({one_line(exc)}); "
                                f"put {expected} there by hand") from None
    if missing():
        raise DataError(f"{name}: {root} has no {expected}; {DOWNLOAD_HINT}")


@contextlib.contextmanager
def download_lock(root: str):
    """Exclusive use of data folder `root` while downloading into it: of all the ranks and trials on the machines
    that share the folder, one downloads; the others wait, then find the files."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".dist-darts-download.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or its process dies
        yield


def _check_labels(name, path, labels, num_classes):
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: {path} has labels outside 0..{num_classes - 1}")


def _read_pickled_batch(name, path, label_key, side, purpose):
    """(images (N, 3, side, side) uint8, labels (N,) int64) of one pickled batch ('data': rows of CHW bytes)."""
    try:
        with open(path, "rb") as fh:
            entry = safe_pickle.load(fh, what=f"{name}: {path}", purpose=purpose)
        x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, side, side)
        y = np.asarray(entry[label_key], dtype=np.int64).reshape(-1)
    except safe_pickle.PickleRefused as exc:
        raise DataError(str(exc)) from None
    except Exception as exc:  # a damaged pickle can raise almost anything
        raise DataError(f"{name}: {path} is not a readable {purpose.removeprefix('a ')} ({one_line(exc)})") from None
    if len(x) != len(y):
        raise DataError(f"{name}: {path} has {len(x)} images but {len(y)} labels")
    return x, y


def _hwc(images: list) -> np.ndarray:
    """Batches of CHW rows as one HWC array, the layout of every in-memory split."""
    return np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1))


def _read_cifar(name, root, download):
    cifar10 = name == "cifar10"
    folder, label_key = ("cifar-10-batches-py", "labels") if cifar10 else ("cifar-100-python", "fine_labels")
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if cifar10 else ["train"]
    test_files = ["test_batch"] if cifar10 else ["test"]
    expected = (f"{folder}/data_batch_1..5 and test_batch" if cifar10 else f"{folder}/train and test")

    def fetch():
        from torchvision import datasets as tv
        (tv.CIFAR10 if cifar10 else tv.CIFAR100)(root, download=True)

    _require(name, root, [f"{folder}/{f}" for f in train_files + test_files], expected, download, fetch)
    num_classes = DATASETS[name].num_classes

    def read(files):
        images, labels = [], []
        for f in files:
            path = os.path.join(root, folder, f)
            x, y = _read_pickled_batch(name, path, label_key, 32, "a CIFAR batch")
            _check_labels(name, path, y, num_classes)
            images.append(x)
            labels.append(y)
        return Arrays(_hwc(images), np.concatenate(labels))

    return Dataset(name, read(train_files), read(test_files), num_classes, 32, *STATS[name])


IMAGENET16_TRAIN = [f"train_data_batch_{i}" for i in range(1, 11)]
IMAGENET16_ALL_CLASSES = 1000


def _read_imagenet16(name, root, download):
    """Downsampled ImageNet at 16x16 (Chrabaszcz et al., 2017: the pickled batches train_data_batch_1..10 and
    val_data, 1-based labels of all 1,000 classes), cut as NAS-Bench-201's ImageNet16-120: the images of labels
    1..120, labelled 0..119 (151,700 training images; val_data's 6,000 are the test split). Trained with crops
    after zero padding by 2, the benchmark's."""

    def fetch():
        raise RuntimeError("Downsampled ImageNet is served to ImageNet account holders only (image-net.org, "
                           "'Imagenet16_train.zip' and 'Imagenet16_val.zip')")

    expected = "train_data_batch_1..10 and val_data (Downsampled ImageNet 16x16, unzipped)"
    _require(name, root, IMAGENET16_TRAIN + ["val_data"], expected, download, fetch)
    num_classes = DATASETS[name].num_classes

    def read(files):
        images, labels = [], []
        for f in files:
            path = os.path.join(root, f)
            x, y = _read_pickled_batch(name, path, "labels", 16, "a Downsampled ImageNet batch")
            _check_labels(name, path, y - 1, IMAGENET16_ALL_CLASSES)
            kept = y <= num_classes
            images.append(x[kept])
            labels.append(y[kept] - 1)
        return Arrays(_hwc(images), np.concatenate(labels))

    return Dataset(name, read(IMAGENET16_TRAIN), read(["val_data"]), num_classes, 16, *STATS[name], pad=2)


def _read_svhn(name, root, download):
    files = ["train_32x32.mat", "test_32x32.mat"]

    def fetch():
        from torchvision import datasets as tv
        for split in ("train", "test"):
            tv.SVHN(root, split=split, download=True)

    _require(name, root, files, "train_32x32.mat and test_32x32.mat", download, fetch)

    def read(f):
        from scipy.io import loadmat
        path = os.path.join(root, f)
        try:
            mat = loadmat(path)
            x = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2))  # HWCN -> NHWC
            y = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # SVHN writes digit 0 as label 10
        except Exception as exc:  # scipy raises many types for damaged files
            raise DataError(f"{name}: {path} is not a readable SVHN .mat file ({one_line(exc)})") from None
        if x.shape[1:] != (32, 32, 3) or len(x) != len(y):
            raise DataError(f"{name}: {path} holds X of shape {tuple(mat['X'].shape)} and {len(y)} labels, "
                            "not 32x32x3xN images with N labels")
        return Arrays(x, y)

    return Dataset(name, read(files[0]), read(files[1]), 10, 32, *STATS[name])


def _read_image_folder(name, root, download):
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    if not (os.path.isdir(train_dir) and os.path.isdir(val_dir)):
        hint = "; ImageNet cannot be downloaded automatically" if download else ""
        raise DataError(f"{name}: {root} has no train/ and val/ folders of class subfolders "
                        f"(train/<class>/<image>.JPEG){hint}")
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise DataError(f"{name}: {train_dir} has no class subfolders")
    class_index = {c: i for i, c in enumerate(classes)}

    def listing(folder):
        paths, labels = [], []
        for c in sorted(e.name for e in os.scandir(folder) if e.is_dir()):
            if c not in class_index:
                raise DataError(f"{name}: {folder}/{c} is not a class folder of {train_dir}")
            files = sorted(f for f in os.listdir(os.path.join(folder, c)) if f.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(folder, c, f) for f in files]
            labels += [class_index[c]] * len(files)
        if not paths:
            raise DataError(f"{name}: {folder} has no images ({' '.join(IMAGE_EXTENSIONS)}) in class subfolders")
        return Files(paths, np.asarray(labels, np.int64))

    train, val = listing(train_dir), listing(val_dir)
    crop = DATASETS["imagenet"].image_size
    size = crop if name == "imagenet" else min(shared_side(train.paths, val.paths) or crop, crop)
    return Dataset(name, train, val, len(classes), size, *STATS[name])


def shared_side(*splits) -> int | None:
    """The shorter side of the images if all of them have one size, else None; judged on the headers of
    FOLDER_SAMPLE files spread evenly over each split's path list (which covers the classes in order)."""
    sample = [path for paths in splits for path in paths[::max(1, len(paths) // FOLDER_SAMPLE)][:FOLDER_SAMPLE]]
    sizes = set()
    for path in sample:
        try:
            with Image.open(path) as img:
                sizes.add(img.size)
        except OSError:  # not counted: the loaders name a damaged file when they reach it
            continue
    return min(sizes.pop()) if len(sizes) == 1 else None


def _digits(size: int):
    """scikit-learn's 1,797 real 8x8 digits, upscaled to `size` x `size` RGB (32 by default; smaller sizes make
    cheap studies), split 1,497/300 by a fixed seed. The normalisation stays the 32-px split's."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] * (255 / 16)  # 17 grey levels -> 0..255
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)
    images = x.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).contiguous().numpy()
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))  # fixed: the test set never depends on cfg.seed
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return Dataset("digits", Arrays(images[train], labels[train]), Arrays(images[test], labels[test]),
                   10, size, *STATS["digits"])


def photo_dir() -> str:
    """The folder of photographs scikit-image ships (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("photos: the photographs come with scikit-image: pip install 'dist-darts[photos]'")
    return os.path.join(spec.submodule_search_locations[0], "data")


def _photos():
    """A real-image task that ships inside a package: which of 10 photographs a 32x32 patch comes from. Each
    photograph (scikit-image's own files, read as images, never through its code) is resized to a shorter side of
    160 px; 200 training patches are cut at fixed random places in its top three quarters and 40 test patches in
    its bottom quarter, so no test pixel is ever seen in training."""
    folder = photo_dir()
    rng = np.random.default_rng(0)  # fixed: the patches never depend on cfg.seed
    splits = ([], []), ([], [])
    for label, name in enumerate(PHOTOS):
        with Image.open(os.path.join(folder, name)) as image:
            image = image.convert("RGB")
            scale = PHOTO_SIDE / min(image.size)
            pixels = np.asarray(image.resize((round(image.width * scale), round(image.height * scale)),
                                             Image.BICUBIC))
        border = pixels.shape[0] * 3 // 4
        regions = pixels[:border], pixels[border:]
        for (images, labels), region, count in zip(splits, regions, PHOTO_PATCHES):
            rows = rng.integers(0, region.shape[0] - 32 + 1, count)
            cols = rng.integers(0, region.shape[1] - 32 + 1, count)
            images += [region[r:r + 32, c:c + 32] for r, c in zip(rows, cols)]
            labels += [label] * count
    (train_x, train_y), (test_x, test_y) = ((np.stack(x), np.array(y, dtype=np.int64)) for x, y in splits)
    return Dataset("photos", Arrays(train_x, train_y), Arrays(test_x, test_y), len(PHOTOS), 32, *STATS["photos"])


READERS = {
    "cifar10": _read_cifar, "cifar100": _read_cifar, "svhn": _read_svhn, "imagenet": _read_image_folder,
    "folder": _read_image_folder, "imagenet16-120": _read_imagenet16,
}
