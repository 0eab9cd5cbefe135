"""Data layer: readers on tiny files in the real on-disk formats, sharding, exact resume, torch backend, errors.

In-memory test images are position-coded: red = 8 * row + 3, green = 8 * column + 3, blue = 10 + sample id, so a
normalised output pixel tells which sample, row and column it came from (zero padding decodes to (0, 0, 0)).
"""

import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dist_darts.data import IGNORE_LABEL, DataError, build_loaders, datasets
from dist_darts.data.datasets import STATS

CPU = torch.device("cpu")
N_TRAIN, N_TEST = 40, 13  # CIFAR-10 fixture: 5 batches of 8, a test batch of 13


def env(rank=0, world_size=1, device=CPU):
    return SimpleNamespace(rank=rank, world_size=world_size, local_rank=0, device=device)


def cfg(dataset="cifar10", data_dir=None, backend="torch", batch_size=4, seed=0, **extra):
    return SimpleNamespace(dataset=dataset, data_dir=data_dir, data_backend=backend, batch_size=batch_size,
                           seed=seed, **extra)


def coded_images(ids, side=32):
    """Position-coded uint8 images (N, side, side, 3) for sample ids `ids` (< 246)."""
    rows, cols = np.mgrid[0:side, 0:side]
    base = np.stack([8 * rows + 3, 8 * cols + 3, np.zeros_like(rows)], axis=-1)
    images = np.repeat(base[None], len(ids), axis=0)
    images[..., 2] = 10 + np.asarray(ids)[:, None, None]
    return images.astype(np.uint8)


def write_cifar10(root, n_per_batch=8, n_test=N_TEST):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    start = 0
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        ids = np.arange(start, start + n)
        start += n
        data = coded_images(ids).transpose(0, 3, 1, 2).reshape(n, -1)  # rows of 3072 CHW bytes, as CIFAR stores
        entry = {"batch_label": name, "labels": [int(i % 10) for i in ids], "data": data,
                 "filenames": [f"{i}.png" for i in ids]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    return root


def write_cifar100(root, n_train=30, n_test=10):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, ids in (("train", np.arange(n_train)), ("test", np.arange(n_train, n_train + n_test))):
        entry = {"filenames": [f"{i}.png" for i in ids], "fine_labels": [int(i * 3 % 100) for i in ids],
                 "coarse_labels": [int(i % 20) for i in ids],
                 "data": coded_images(ids).transpose(0, 3, 1, 2).reshape(len(ids), -1)}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    return root


def write_svhn(root, n_train=20, n_test=10):
    from scipy.io import savemat
    root.mkdir(parents=True, exist_ok=True)
    splits = (("train_32x32.mat", np.arange(n_train)), ("test_32x32.mat", np.arange(n_train, n_train + n_test)))
    for name, ids in splits:
        X = coded_images(ids).transpose(1, 2, 3, 0)  # (32, 32, 3, N), as the real files
        y = (ids % 10 + 1).astype(np.uint8).reshape(-1, 1)  # 1..10, 10 meaning digit 0
        savemat(root / name, {"X": X, "y": y})
    return root


FOLDER_CLASSES = ("cat", "dog", "fish")
FOLDER_SIZES = ((40, 30), (64, 48), (50, 70), (120, 90), (33, 33))


def write_image_folder(root, n_train=4, n_val=3):
    """train/ and val/ with one subfolder per class of small JPEGs of several sizes (smooth content)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in FOLDER_CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = FOLDER_SIZES[i % len(FOLDER_SIZES)]
                ys, xs = np.mgrid[0:h, 0:w]
                img = np.stack([xs * 255 // w, ys * 255 // h, (xs + ys) * 127 // (w + h) + rng.integers(0, 100)], -1)
                Image.fromarray(img.astype(np.uint8)).save(root / split / c / f"{c}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    return str(write_cifar10(tmp_path_factory.mktemp("cifar10")))


@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory):
    return str(write_image_folder(tmp_path_factory.mktemp("folder")))


def decode(images, dataset="cifar10"):
    """Normalised float images -> uint8 pixels (N, 3, H, W)."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS[dataset])
    return ((images.cpu() * std + mean) * 255).round().to(torch.int64)


def sample_ids(images, dataset="cifar10"):
    """The sample id of each position-coded image: the most common non-zero blue value."""
    blue = decode(images, dataset)[:, 2].flatten(1)
    return [int(torch.mode(b[b > 0]).values) - 10 for b in blue]


def collect(loader, epoch=0, start_step=0):
    loader.set_epoch(epoch, start_step)
    return [(x.clone(), y.clone()) for x, y in loader]


# --- readers -------------------------------------------------------------------------------------------------

def test_cifar10_reader_keeps_pixels_and_labels(cifar10_dir):
    data = datasets.load("cifar10", cifar10_dir)
    assert data.train.images.shape == (N_TRAIN, 32, 32, 3) and data.train.images.dtype == np.uint8
    assert np.array_equal(data.train.images, coded_images(np.arange(N_TRAIN)))
    assert np.array_equal(data.test.images, coded_images(np.arange(N_TRAIN, N_TRAIN + N_TEST)))
    assert data.train.labels.dtype == np.int64 and list(data.train.labels[:12]) == [i % 10 for i in range(12)]
    assert (data.num_classes, data.image_size) == (10, 32)


def test_cifar100_reader_uses_fine_labels(tmp_path):
    data = datasets.load("cifar100", str(write_cifar100(tmp_path)))
    assert data.train.images.shape == (30, 32, 32, 3) and data.test.images.shape == (10, 32, 32, 3)
    assert list(data.train.labels[:5]) == [0, 3, 6, 9, 12] and data.num_classes == 100
    assert np.array_equal(data.test.images, coded_images(np.arange(30, 40)))


def test_svhn_reader_transposes_and_maps_label_10_to_0(tmp_path):
    data = datasets.load("svhn", str(write_svhn(tmp_path)))
    assert np.array_equal(data.train.images, coded_images(np.arange(20)))
    assert list(data.train.labels[:11]) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert data.test.images.shape == (10, 32, 32, 3)


def test_image_folder_lists_classes_in_sorted_order(folder_dir):
    data = datasets.load("folder", folder_dir)
    assert data.num_classes == 3 and data.image_size == 224
    assert len(data.train.paths) == 12 and len(data.test.paths) == 9
    assert list(data.train.labels) == [0] * 4 + [1] * 4 + [2] * 4
    assert data.test.paths[3].endswith(os.path.join("val", "dog", "dog_0.JPEG"))


def test_digits_is_the_embedded_default():
    data = datasets.load("digits", None)
    assert data.train.images.shape == (1497, 32, 32, 3) and data.test.images.shape == (300, 32, 32, 3)
    assert data.train.images.dtype == np.uint8 and data.train.images.max() == 255
    assert np.array_equal(data.train.images[..., 0], data.train.images[..., 2])  # grey, replicated
    assert set(data.test.labels.tolist()) == set(range(10))
    assert np.array_equal(datasets.load("digits", None).test.labels, data.test.labels)  # fixed split
    # a minimal cfg (no train_portion, cutout, workers, download) is enough
    minimal = SimpleNamespace(dataset="digits", data_dir=None, data_backend="auto", batch_size=32, seed=1)
    loaders = build_loaders(minimal, env(), "search")
    assert (len(loaders.train), len(loaders.val), loaders.num_classes) == (23, 23, 10)  # 748 // 32, 749 // 32
    x, y = next(iter(loaders.train))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_photos_are_patches_of_the_photographs_scikit_image_ships():
    data = datasets.load("photos", None)
    assert data.train.images.shape == (2000, 32, 32, 3) and data.test.images.shape == (400, 32, 32, 3)
    assert data.train.images.dtype == np.uint8 and data.num_classes == 10
    assert np.bincount(data.train.labels).tolist() == [200] * 10 and np.bincount(data.test.labels).tolist() == [40] * 10
    again = datasets.load("photos", None)
    assert np.array_equal(again.train.images, data.train.images)  # fixed patches
    assert np.array_equal(again.test.images, data.test.images)
    # the normalisation constants are the training patches' own
    x = data.train.images.astype(np.float64) / 255
    assert np.allclose(x.mean((0, 1, 2)), data.mean, atol=1e-6) and np.allclose(x.std((0, 1, 2)), data.std, atol=1e-6)
    # every test patch lies in the bottom quarter of its photograph, no training patch does
    from PIL import Image
    spec = __import__("importlib.util").util.find_spec("skimage")
    folder = os.path.join(spec.submodule_search_locations[0], "data")
    with Image.open(os.path.join(folder, datasets.PHOTOS[3])) as image:
        image = image.convert("RGB")
        scale = datasets.PHOTO_SIDE / min(image.size)
        pixels = np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))
    border = pixels.shape[0] * 3 // 4
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (32, 32, 3))[:, :, 0]
    first_test = data.test.images[data.test.labels == 3][0]
    rows = np.nonzero((windows == first_test).all(axis=(2, 3, 4)))[0]
    assert len(rows) and rows.min() >= border
    first_train = data.train.images[data.train.labels == 3][0]
    rows = np.nonzero((windows == first_train).all(axis=(2, 3, 4)))[0]
    assert len(rows) and rows.max() + 32 <= border


# --- loaders: shapes, normalisation, augmentation ----------------------------------------------------------------

@pytest.mark.parametrize("purpose", ["search", "retrain", "evaluate"])
def test_loaders_have_the_promised_shape(cifar10_dir, purpose):
    loaders = build_loaders(cfg(data_dir=cifar10_dir, cutout=16), env(), purpose)
    assert (loaders.num_classes, loaders.image_size) == (10, 32)
    expected = {"search": (5, 5, None), "retrain": (10, None, 4), "evaluate": (None, None, 4)}[purpose]
    lengths = tuple(None if x is None else len(x) for x in (loaders.train, loaders.val, loaders.test))
    assert lengths == expected
    for loader in filter(None, (loaders.train, loaders.val, loaders.test)):
        batches = list(loader)
        assert len(batches) == len(loader)
        for x, y in batches:
            assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and x.device == CPU
            assert y.shape == (4,) and y.dtype == torch.int64


def test_evaluation_batches_are_normalised_pixels(cifar10_dir):
    (x, y), *_ = build_loaders(cfg(data_dir=cifar10_dir), env(), "evaluate").test
    assert torch.equal(decode(x), torch.from_numpy(coded_images(range(N_TRAIN, N_TRAIN + 4))).permute(0, 3, 1, 2))
    mean, std = STATS["cifar10"]
    red = (8 * 0 + 3) / 255  # row 0 of the red channel
    assert x[0, 0, 0, 0].item() == pytest.approx((red - mean[0]) / std[0], abs=1e-6)
    assert y.tolist() == [0, 1, 2, 3]


def crop_flip_of(image):
    """(dy, dx, flipped) of one augmented position-coded image (padding decodes to 0)."""
    red, green = image[0], image[1]
    real = red > 0
    rows = (red[real] - 3) // 8 - torch.nonzero(real)[:, 0]
    cols = (green[real] - 3) // 8
    out_cols = torch.nonzero(real)[:, 1]
    flipped = bool((cols + out_cols == cols[0] + out_cols[0]).all()) and len(set(cols.tolist())) > 1
    dx = (cols + out_cols - (image.shape[-1] - 1)).unique() if flipped else (cols - out_cols).unique()
    assert len(rows.unique()) == 1 and len(dx) == 1  # a pure shift (and mirror): a crop
    return int(rows[0]), int(dx[0]), flipped


def test_crop_offsets_and_flip_rate(cifar10_dir):
    loader = build_loaders(cfg(data_dir=cifar10_dir, batch_size=8), env(), "retrain").train
    shifts, flips = [], []
    for epoch in range(8):
        for x, _ in collect(loader, epoch):
            for image in decode(x):
                dy, dx, flipped = crop_flip_of(image)
                shifts += [dy, dx]
                flips.append(flipped)
                # zero padding exactly where the shifted window leaves the image
                padding = image[0] == 0
                assert (padding.sum(0) == 32).sum() == abs(dx) and (padding.sum(1) == 32).sum() == abs(dy)
    assert set(shifts) == set(range(-4, 5))
    assert 0.4 < np.mean(flips) < 0.6 and len(flips) == 320


def test_cutout_is_a_clipped_square(cifar10_dir):
    loader = build_loaders(cfg(data_dir=cifar10_dir, batch_size=8, cutout=16), env(), "retrain").train
    sides, areas = [], []
    for epoch in range(5):
        for x, _ in collect(loader, epoch):
            for image in x:
                zero = (image == 0).all(0)  # only cutout gives exactly 0 in every channel
                rows, cols = zero.any(1).nonzero()[:, 0], zero.any(0).nonzero()[:, 0]
                assert zero.sum() == len(rows) * len(cols)  # a rectangle
                sides += [len(rows), len(cols)]
                areas.append(int(zero.sum()))
    assert min(sides) >= 8 and max(sides) == 16  # 16 x 16, clipped at the borders to no less than 8
    assert 0.1 < np.mean(np.array(areas) == 256) < 0.45  # unclipped when the centre is in 8..23 both ways: 1/4
    assert not (collect(build_loaders(cfg(data_dir=cifar10_dir), env(), "retrain").train)[0][0] == 0).all(1).any()


# --- sharding, splits, exact resume --------------------------------------------------------------------------

@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_complete_and_equal(cifar10_dir, world_size):
    per_rank = [build_loaders(cfg(data_dir=cifar10_dir, batch_size=3), env(r, world_size), "retrain")
                for r in range(world_size)]
    # training: every rank has the same number of steps; together they read distinct samples, dropping < 1 batch
    assert len({len(lo.train) for lo in per_rank}) == 1
    steps = len(per_rank[0].train)
    assert steps == N_TRAIN // (3 * world_size)
    for epoch in range(2):
        seen = [sid for lo in per_rank for x, _ in collect(lo.train, epoch) for sid in sample_ids(x)]
        assert len(seen) == len(set(seen)) == steps * 3 * world_size and set(seen) <= set(range(N_TRAIN))
    # evaluation: every test sample exactly once over all ranks, padding labelled IGNORE_LABEL
    assert len({len(lo.test) for lo in per_rank}) == 1
    seen = []
    for lo in per_rank:
        for x, y in lo.test:
            seen += [sid for sid, label in zip(sample_ids(x), y.tolist()) if label != IGNORE_LABEL]
            assert all(label == IGNORE_LABEL or label == sid % 10 for sid, label in zip(sample_ids(x), y.tolist()))
    assert sorted(seen) == list(range(N_TRAIN, N_TRAIN + N_TEST))


def test_search_split_is_the_same_on_every_rank_and_restart(cifar10_dir):
    def halves(rank, world_size, seed=0):
        loaders = build_loaders(cfg(data_dir=cifar10_dir, batch_size=2, seed=seed), env(rank, world_size), "search")
        return set(loaders.train.plan.indices.tolist()), set(loaders.val.plan.indices.tolist())

    train, val = halves(0, 1)
    assert len(train) == len(val) == 20 and not train & val and train | val == set(range(N_TRAIN))
    assert all(halves(r, 3) == (train, val) for r in range(3))
    assert halves(0, 1) == (train, val)  # a restart
    assert halves(0, 1, seed=1) != (train, val)
    # the halves themselves are sharded: rank batches of one epoch are disjoint and inside their half
    seen = [sid for r in range(2) for x, _ in collect(build_loaders(
        cfg(data_dir=cifar10_dir, batch_size=2), env(r, 2), "search").val, 3) for sid in sample_ids(x)]
    assert len(seen) == len(set(seen)) == 20 and set(seen) == val


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (x, y), (u, v) in zip(a, b):
        assert torch.equal(x, u) and torch.equal(y, v)


@pytest.mark.parametrize("workers", [0, 2])
def test_set_epoch_start_step_reproduces_the_epoch_tail(cifar10_dir, folder_dir, workers):
    settings = [cfg(data_dir=cifar10_dir, cutout=16, workers=workers), cfg("folder", folder_dir, workers=workers)]
    for c in settings:
        loader = build_loaders(c, env(1, 2), "retrain").train
        full = collect(loader, epoch=3)
        assert not all(torch.equal(x, u) for (x, _), (u, _) in zip(full, collect(loader, epoch=4)))
        torch.manual_seed(1234)  # whatever ran before must not matter
        np.random.seed(1234)
        next(iter(loader))  # an abandoned iteration
        assert_same_batches(collect(loader, epoch=3, start_step=1), full[1:])
        fresh = build_loaders(c, env(1, 2), "retrain").train  # a restarted process
        assert_same_batches(collect(fresh, epoch=3, start_step=len(full) - 1), full[-1:])
        assert collect(fresh, epoch=3, start_step=len(full)) == []


def test_workers_do_not_change_batches(folder_dir):
    one, two = (build_loaders(cfg("folder", folder_dir, workers=w), env(), "retrain") for w in (0, 2))
    assert_same_batches(collect(one.train, 2), collect(two.train, 2))
    assert_same_batches(collect(one.test), collect(two.test))


def test_image_folder_batches(folder_dir):
    loaders = build_loaders(cfg("folder", folder_dir, batch_size=2), env(), "retrain")
    assert (loaders.num_classes, loaders.image_size, len(loaders.train), len(loaders.test)) == (3, 224, 6, 5)
    x, y = next(iter(loaders.train))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    labels = torch.cat([y for _, y in loaders.test])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, IGNORE_LABEL]
    pixels = decode(torch.cat([x for x, _ in loaders.test]), "folder")
    assert pixels.min() >= 0 and pixels.max() <= 255


def test_synthetic_batches_are_fixed_and_shaped_like_the_dataset():
    loaders = build_loaders(cfg("imagenet", backend="synthetic", batch_size=2), env(0, 4), "retrain")
    assert (loaders.num_classes, loaders.image_size, len(loaders.train)) == (1000, 224, 1281167 // 8)
    it = iter(loaders.train)
    (x, y), (u, v) = next(it), next(it)
    assert x.shape == (2, 3, 224, 224) and x is u and y is v and y.dtype == torch.int64
    assert len(build_loaders(cfg("synthetic", batch_size=100), env(), "evaluate").test) == 100


# --- one-line errors ---------------------------------------------------------------------------------------------

def error_of(c, purpose="retrain", rank_env=None):
    with pytest.raises(DataError) as info:
        build_loaders(c, rank_env or env(), purpose)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_data_names_the_folder_and_the_files(tmp_path):
    message = error_of(cfg("cifar10", str(tmp_path)))
    assert str(tmp_path) in message and "cifar-10-batches-py/data_batch_1..5 and test_batch" in message
    assert "--download" in message
    assert "cifar-100-python/train and test" in error_of(cfg("cifar100", str(tmp_path)))
    assert "train_32x32.mat and test_32x32.mat" in error_of(cfg("svhn", str(tmp_path)))
    assert "train/ and val/" in error_of(cfg("imagenet", str(tmp_path)))
    assert "--data-dir" in error_of(cfg("cifar10", None))


def test_damaged_files_give_one_line(tmp_path, cifar10_dir):
    root = write_cifar10(tmp_path / "c10")
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04not a pickle")
    assert "data_batch_3 is not a readable CIFAR batch" in error_of(cfg("cifar10", str(root)))
    svhn = write_svhn(tmp_path / "svhn")
    (svhn / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    assert "test_32x32.mat is not a readable SVHN .mat file" in error_of(cfg("svhn", str(svhn)))
    folder = write_image_folder(tmp_path / "folder", n_train=1, n_val=1)
    (folder / "val" / "cat" / "cat_0.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    for workers in (0, 1):  # from a worker process too (torch then takes 5 s to stop it)
        val = build_loaders(cfg("folder", str(folder), workers=workers), env(), "evaluate").test
        with pytest.raises(DataError) as info:
            list(val)
        assert str(info.value).startswith(f"{folder}/val/cat/cat_0.JPEG is not a readable image (")
        assert "\n" not in str(info.value)


def py2_cifar_batch(images: np.ndarray, labels: list) -> bytes:
    """A CIFAR batch pickled as the released files are (Python 2 cPickle, protocol 2, numpy 1.x): the array goes
    through numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype, and its bytes are a Python 2 str."""
    import struct

    def text(s):  # SHORT_BINSTRING or BINSTRING: a Python 2 str
        b = s if isinstance(s, bytes) else s.encode("latin1")
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b

    def int_(i):
        return b"J" + struct.pack("<i", i)

    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + int_(0) + b"\x85" + text("b") + b"\x87R"
             + b"(" + int_(1) + int_(data.shape[0]) + int_(data.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + text("u1") + int_(0) + int_(1) + b"\x87R"
             + b"(" + int_(3) + text("|") + b"NNN" + int_(-1) + int_(-1) + int_(0) + b"tb"
             + b"\x89" + text(data.tobytes()) + b"tb")
    return (b"\x80\x02}(" + text("batch_label") + text("training batch")
            + text("labels") + b"](" + b"".join(int_(y) for y in labels) + b"e"
            + text("data") + array + text("filenames") + b"](" + text("0.png") + b"eu.")


def test_cifar_batches_pickled_by_python_2_load(tmp_path):
    """The released batches' pickle recipe (numpy.core, Python 2 strings) reads through the restricted reader."""
    root = write_cifar10(tmp_path / "c10")
    ids = np.arange(100, 108)
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(py2_cifar_batch(coded_images(ids), [3] * 8))
    data = datasets.load("cifar10", str(root))
    np.testing.assert_array_equal(data.train.images[8:16], coded_images(ids))
    assert data.train.labels[8:16].tolist() == [3] * 8


class _RunsCode:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("how", ["os.system", "builtins.open", "in the array's dtype"])
def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path, how):
    root = write_cifar10(tmp_path / "c10")
    made = tmp_path / "made_by_the_pickle"
    payload = {"os.system": _RunsCode(os.system, f"touch {made}"),
               "builtins.open": _RunsCode(open, str(made), "w"),
               "in the array's dtype": np.array([_RunsCode(os.system, f"touch {made}")], dtype=object)}[how]
    entry = {"batch_label": "x", "labels": [0], "data": np.zeros((1, 3072), np.uint8), "filenames": [payload]}
    batch = root / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    message = error_of(cfg("cifar10", str(root)))
    refused = {"os.system": "posix.system", "builtins.open": "io.open", "in the array's dtype": "numpy dtype object"}
    assert message.startswith(f"cifar10: {batch} asks ") and refused[how] in message and "refused" in message
    assert not made.exists()


def test_bad_settings_give_one_line(cifar10_dir, monkeypatch):
    assert "unknown dataset 'mnist'" in error_of(cfg("mnist", cifar10_dir))
    assert "unknown data backend 'jax'" in error_of(cfg(data_dir=cifar10_dir, backend="jax"))
    assert "unknown loader purpose" in error_of(cfg(data_dir=cifar10_dir), purpose="train")
    assert "train_portion 1.5" in error_of(cfg(data_dir=cifar10_dir, train_portion=1.5), "search")
    assert "fewer than one global batch (4 ranks x batch size 8)" in error_of(
        cfg(data_dir=cifar10_dir, batch_size=8), "search", env(0, 4))
    monkeypatch.setattr("dist_darts.data.dali_available", lambda: True)
    assert "dali-gpu needs a CUDA device" in error_of(cfg(data_dir=cifar10_dir, backend="dali-gpu"))
    monkeypatch.setattr("dist_darts.data.dali_available", lambda: False)
    assert "pip install 'dist-darts[dali]'" in error_of(cfg(data_dir=cifar10_dir, backend="dali-cpu"))
    assert build_loaders(cfg(data_dir=cifar10_dir, backend="auto"), env(), "evaluate").test is not None


def test_failed_download_gives_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3]\nTemporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    message = error_of(cfg("cifar10", str(tmp_path), download=True))
    assert f"cifar10: downloading to {tmp_path} failed" in message and "name resolution" in message


@pytest.mark.gpu
@pytest.mark.parametrize("purpose", ["search", "retrain"])
def test_in_memory_gpu_batches_make_no_host_sync(cifar10_dir, purpose):
    """Index, label and augmentation arrays reach the GPU from pinned memory without non_blocking=False copies;
    the batches equal the CPU loader's."""
    gpu = build_loaders(cfg(data_dir=cifar10_dir, cutout=16), env(device=torch.device("cuda", 0)), purpose)
    cpu = build_loaders(cfg(data_dir=cifar10_dir, cutout=16), env(), purpose)
    loader = gpu.train
    loader.set_epoch(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [(x.clone(), y.clone()) for x, y in loader]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for (x, y), (u, v) in zip(batches, collect(cpu.train)):
        assert torch.allclose(x.cpu(), u, atol=1e-6) and torch.equal(y.cpu(), v)


def test_retrain_holdout_is_class_balanced_seeded_and_the_same_on_every_rank(cifar10_dir):
    def split(rank, world_size, seed=0, portion=0.25):
        loaders = build_loaders(cfg(data_dir=cifar10_dir, batch_size=2, seed=seed, val_portion=portion),
                                env(rank, world_size), "retrain")
        return set(loaders.train.plan.indices.tolist()), set(loaders.val.plan.indices.tolist())

    train, held = split(0, 1)
    labels = np.arange(N_TRAIN) % 10  # the fixture's labels: sample id mod 10
    assert not train & held and train | held == set(range(N_TRAIN))
    assert np.bincount(labels[sorted(held)], minlength=10).tolist() == [1] * 10  # round(0.25 x 4) of each class
    assert all(split(r, 3) == (train, held) for r in range(3)) and split(0, 1) == (train, held)
    assert split(0, 1, seed=1) != (train, held)
    # the hold-out is evaluated like the test split: every sample once over the ranks, no augmentation
    seen = [sid for r in range(2)
            for x, y in build_loaders(cfg(data_dir=cifar10_dir, batch_size=2, val_portion=0.25), env(r, 2), "retrain").val
            for sid, label in zip(sample_ids(x), y.tolist()) if label != IGNORE_LABEL]
    assert sorted(seen) == sorted(held)
    assert build_loaders(cfg(data_dir=cifar10_dir), env(), "retrain").val is None  # no hold-out asked for


def test_a_download_happens_once_however_many_ask_at_once(tmp_path):
    """Ranks and trials sharing a data folder: the first to take the folder's lock downloads, the others wait and
    then find the files (threads open the lock file separately, as processes do)."""
    import threading
    import time

    fetched = []

    def fetch():
        fetched.append(1)
        time.sleep(0.3)
        (tmp_path / "data.bin").write_bytes(b"x")

    threads = [threading.Thread(target=datasets._require, args=("toy", str(tmp_path), ["data.bin"], "data.bin", True,
                                                                 fetch)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fetched == [1] and (tmp_path / "data.bin").read_bytes() == b"x"
