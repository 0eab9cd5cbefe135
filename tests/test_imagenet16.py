"""NAS-Bench-201's ImageNet16-120 (--dataset imagenet16-120): Downsampled ImageNet's 16x16 pickled batches, in the
released layout and written here, read by the restricted unpickler, cut to labels 1..120 (as 0..119) and trained
with the benchmark's crops after zero padding by 2."""

import os
import pickle

import numpy as np
import pytest

from dist_darts.data import DataError, build_loaders, datasets
from helpers import cli
from test_data import cfg, coded_images, collect, crop_flip_of, decode, env, error_of, sample_ids

TRAIN_FILES = [f"train_data_batch_{i}" for i in range(1, 11)]
PER_FILE = 6  # images per training batch file; val_data holds 8


def labels_of(ids):
    """1-based labels over all 1,000 classes: half of them among the benchmark's first 120."""
    return [int(1 + (i * 7) % 120) if i % 2 else int(121 + (i * 13) % 880) for i in ids]


def write_imagenet16(root):
    """train_data_batch_1..10 and val_data as the released files: dicts of 'data' (rows of 768 CHW bytes),
    1-based 'labels' and the training set's 'mean', pickled at protocol 2."""
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for name in TRAIN_FILES + ["val_data"]:
        ids = np.arange(start, start + (8 if name == "val_data" else PER_FILE))
        start += len(ids)
        entry = {"data": coded_images(ids, 16).transpose(0, 3, 1, 2).reshape(len(ids), -1), "labels": labels_of(ids)}
        if name != "val_data":
            entry["mean"] = np.full(768, 0.45, np.float64)
        with open(root / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    return root


@pytest.fixture(scope="module")
def in16_dir(tmp_path_factory):
    return str(write_imagenet16(tmp_path_factory.mktemp("imagenet16")))


def test_the_reader_keeps_the_first_120_classes_as_0_to_119(in16_dir):
    data = datasets.load("imagenet16-120", in16_dir)
    train_ids = np.arange(10 * PER_FILE)
    kept = train_ids[np.array(labels_of(train_ids)) <= 120]
    assert (data.num_classes, data.image_size, data.pad) == (120, 16, 2)
    np.testing.assert_array_equal(data.train.images, coded_images(kept, 16))
    assert data.train.labels.tolist() == [label - 1 for label in labels_of(kept)]
    test_ids = np.arange(10 * PER_FILE, 10 * PER_FILE + 8)
    test_kept = test_ids[np.array(labels_of(test_ids)) <= 120]
    np.testing.assert_array_equal(data.test.images, coded_images(test_kept, 16))
    assert data.test.labels.tolist() == [label - 1 for label in labels_of(test_kept)]


def test_training_crops_pad_by_2_as_the_benchmark(in16_dir):
    loader = build_loaders(cfg("imagenet16-120", in16_dir, batch_size=5), env(), "retrain").train
    shifts, flips = [], []
    for epoch in range(12):
        for x, _ in collect(loader, epoch):
            assert x.shape[1:] == (3, 16, 16)
            for image in decode(x, "imagenet16-120"):
                dy, dx, flipped = crop_flip_of(image)
                shifts += [dy, dx]
                flips.append(flipped)
    assert set(shifts) == set(range(-2, 3)) and 0.3 < np.mean(flips) < 0.7


def test_evaluation_reads_every_test_image_once(in16_dir):
    loader = build_loaders(cfg("imagenet16-120", in16_dir, batch_size=3), env(), "evaluate").test
    seen = [i for x, y in collect(loader) for i, label in zip(sample_ids(x, "imagenet16-120"), y.tolist())
            if label >= 0]
    test_ids = np.arange(10 * PER_FILE, 10 * PER_FILE + 8)
    assert sorted(seen) == test_ids[np.array(labels_of(test_ids)) <= 120].tolist()


def test_missing_files_and_download_are_one_line(tmp_path):
    message = error_of(cfg("imagenet16-120", str(tmp_path)))
    assert message.startswith(f"imagenet16-120: {tmp_path} has no train_data_batch_1..10 and val_data")
    message = error_of(cfg("imagenet16-120", str(tmp_path), download=True))
    assert "image-net.org" in message and "put train_data_batch_1..10 and val_data" in message


def test_bad_labels_and_code_in_a_batch_are_refused(tmp_path):
    root = write_imagenet16(tmp_path / "in16")
    bad = root / "train_data_batch_3"
    bad.write_bytes(pickle.dumps({"data": np.zeros((1, 768), np.uint8), "labels": [1001]}, protocol=2))
    assert error_of(cfg("imagenet16-120", str(root))) == f"imagenet16-120: {bad} has labels outside 0..999"
    made = tmp_path / "made_by_the_pickle"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {made}",)

    bad.write_bytes(pickle.dumps({"data": np.zeros((1, 768), np.uint8), "labels": [1], "x": RunsCode()}, protocol=2))
    message = error_of(cfg("imagenet16-120", str(root)))
    assert message.startswith(f"imagenet16-120: {bad} asks ") and "refused" in message and not made.exists()
    with pytest.raises(DataError, match="stored at 16x16"):
        datasets.load("imagenet16-120", str(root), image_size=32)


def test_a_nas_bench_201_search_runs_on_it(in16_dir, tmp_path):
    out = tmp_path / "s"
    cli("search", "--space", "nb201", "--dataset", "imagenet16-120", "--data-dir", in16_dir, "--layers", "1",
        "--init-channels", "4", "--batch-size", "4", "--workers", "0", "--epochs", "1", "--steps-per-epoch", "2",
        "--output", str(out))
    log = (out / "log.txt").read_text()
    assert "16 px images" in log and "data                      imagenet16-120" in log
    assert (out / "genotype.json").exists()


def test_dali_cpu_crops_as_the_torch_path(in16_dir):
    pytest.importorskip("nvidia.dali")
    from test_data_dali import assert_close_batches
    a, b = (build_loaders(cfg("imagenet16-120", in16_dir, backend=backend, batch_size=4, cutout=4), env(),
                          "retrain").train for backend in ("torch", "dali-cpu"))
    assert_close_batches(collect(a, 1), collect(b, 1), atol=1e-5)
