"""Images per second of each available data backend, through the public build_loaders().

Two workloads, both with training augmentation:
  cifar     50,000 32x32 uint8 images of random content written as CIFAR-10 pickles, read into memory, then
            DARTS' retrain augmentation: pad-4 random crop, flip, normalise, cutout 16;
  imagenet  a few hundred generated 500x375 JPEGs in class folders: decode, random-resized crop 224, flip,
            colour jitter, normalise.
Backends: torch (ours: batched on tensors for cifar, a DataLoader for imagenet), dali-cpu, dali-gpu (with a GPU),
synthetic (a fixed batch: the ceiling), and for cifar the naive per-sample torchvision DataLoader as in the
original DARTS (the issue's baseline). Each pass times the last `--steps` batches of a fresh epoch; the median
of `--passes` passes after one warm-up pass is reported. Appends a JSON line to benchmarks/results.jsonl and a
section to benchmarks/RESULTS.md.

    python benchmarks/data_throughput.py [--passes 5] [--steps 40] [--batch-size 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from dist_darts.data import build_loaders, dali_available, datasets
from dist_darts.data.datasets import STATS

HERE = Path(__file__).resolve().parent


def write_cifar(root: Path, rng):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(10000, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, 10000).tolist()}, f, protocol=4)


def write_jpegs(root: Path, rng, n_train: int, classes: int = 8):
    """Smooth gradients plus noise: JPEGs of about ImageNet's typical size and file size."""
    ys, xs = np.mgrid[0:375, 0:500]
    for split, n in (("train", n_train), ("val", classes)):
        for i in range(n):
            folder = root / split / f"class_{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            base = np.stack([xs * 255 // 500, ys * 255 // 375, (xs + ys) * 255 // 875], axis=-1)
            img = (base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.JPEG", quality=90)


def torchvision_per_sample(root: Path, batch_size: int, workers: int):
    """The original DARTS CIFAR pipeline: torchvision CIFAR10-style dataset of PIL images, per-sample transforms."""
    from torchvision import transforms as T

    data = datasets.load("cifar10", str(root))

    def cutout(img, length=16):  # DARTS utils.Cutout, applied to the normalised tensor
        h, w = img.shape[1:]
        y, x = np.random.randint(h), np.random.randint(w)
        img[:, max(y - length // 2, 0):min(y + length // 2, h), max(x - length // 2, 0):min(x + length // 2, w)] = 0
        return img

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(*STATS["cifar10"]), cutout])

    class Cifar(torch.utils.data.Dataset):
        def __len__(self):
            return len(data.train.labels)

        def __getitem__(self, i):
            return transform(Image.fromarray(data.train.images[i])), int(data.train.labels[i])

    loader = torch.utils.data.DataLoader(Cifar(), batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    return loader


def time_passes(loader, steps: int, passes: int, device) -> list[float]:
    """Images/s of `passes` timed passes (after one warm-up) over the last `steps` batches of an epoch."""
    rates = []
    for epoch in range(passes + 1):
        start_step = len(loader) - steps
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch, start_step)
            batches = iter(loader)
        else:  # the plain DataLoader baseline: stop after `steps` batches
            batches = (b for _, b in zip(range(steps), loader))
        t0 = time.perf_counter()
        n = 0
        for x, _ in batches:
            n += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch:
            rates.append(n / (time.perf_counter() - t0))
    return rates


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    out = {}
    for dist in ("torch", "torchvision", "numpy", "pillow", "nvidia-dali-cuda130"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--passes", type=int, default=5, help="timed passes (default 5)")
    p.add_argument("--steps", type=int, default=40, help="batches per timed pass (default 40)")
    p.add_argument("--batch-size", type=int, default=256, help="cifar batch size (default 256)")
    p.add_argument("--imagenet-batch-size", type=int, default=32, help="imagenet batch size (default 32)")
    p.add_argument("--jpegs", type=int, default=320, help="generated training JPEGs (default 320)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads (default 2)")
    args = p.parse_args()

    gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    env = SimpleNamespace(rank=0, world_size=1, local_rank=0, device=device)
    backends = ["torch"] + (["dali-cpu"] + (["dali-gpu"] if gpu else []) if dali_available() else []) + ["synthetic"]
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cifar(tmp / "cifar", rng)
        write_jpegs(tmp / "jpegs", rng, args.jpegs)
        # (workload, dataset, synthetic stand-in, folder, batch size, timed steps)
        workloads = [("cifar", "cifar10", "cifar10", tmp / "cifar", args.batch_size, args.steps),
                     ("imagenet", "folder", "imagenet", tmp / "jpegs", args.imagenet_batch_size,
                      args.jpegs // args.imagenet_batch_size)]
        for workload, dataset, synthetic, root, batch_size, steps in workloads:
            for backend in backends:
                cfg = SimpleNamespace(dataset=synthetic if backend == "synthetic" else dataset, data_dir=str(root),
                                      data_backend=backend, batch_size=batch_size, seed=0, cutout=16,
                                      workers=args.workers)
                loader = build_loaders(cfg, env, "retrain").train
                rows.append((workload, backend, batch_size, time_passes(loader, steps, args.passes, device)))
                del loader
            if workload == "cifar":
                loader = torchvision_per_sample(root, batch_size, args.workers)
                rows.append((workload, "torchvision per-sample", batch_size,
                             time_passes(loader, steps, args.passes, torch.device("cpu"))))
                del loader
    report(rows, args, device)


def report(rows, args, device):
    baseline = {w: statistics.median(r) for w, b, _, r in rows if b == "torchvision per-sample"}
    header = "| workload | backend | batch | images/s (median) | min - max | vs torchvision per-sample |"
    lines = [header, "|---|---|---|---:|---:|---:|"]
    results = []
    for workload, backend, batch, rates in rows:
        median = statistics.median(rates)
        ratio = f"{median / baseline[workload]:.1f}x" if workload in baseline else ""
        lines.append(f"| {workload} | {backend} | {batch} | {median:,.0f} | {min(rates):,.0f} - {max(rates):,.0f} "
                     f"| {ratio} |")
        results.append({"workload": workload, "backend": backend, "batch_size": batch, "median": round(median),
                        "rates": [round(r) for r in rates]})
    table = "\n".join(lines)
    print(table)
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    record = {"benchmark": "data_throughput", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": command, "device": str(device), "machine": machine(), "versions": versions(),
              "passes": args.passes, "steps": args.steps, "workers": args.workers, "results": results}
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    m, v = record["machine"], record["versions"]
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n## Data loading throughput ({record['date'][:10]})\n\n"
                f"`{command}`\n\n"
                f"Machine: {m['cpu']}, {m['cores']} cores{', ' + m['gpu'] if 'gpu' in m else ', no GPU'}; "
                f"data on {device}; {args.workers} DataLoader workers / DALI threads.\n"
                f"Versions: Python {m['python']}, " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".\n\n"
                f"{table}\n\n"
                f"Median of {args.passes} timed passes after a warm-up pass; cifar passes are {args.steps} batches "
                f"of in-memory 32x32 images (crop, flip, cutout 16); imagenet passes are {args.jpegs} generated "
                "500x375 JPEGs (decode, random-resized crop 224, flip, colour jitter). synthetic is a fixed batch: "
                "the ceiling.\n")


if __name__ == "__main__":
    main()
