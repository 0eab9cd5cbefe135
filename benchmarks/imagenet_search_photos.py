"""Does the ImageNet-stem search learn on real images at ImageNet-like sizes, and what does it cost against a
CIFAR-stem search on the same images at 32 px?

Writes a folder of scikit-image's photographs (benchmarks/photo_folder.py: 10 classes, --per-class training
images each) at --size px and the same images resized to 32 px, then runs two searches through the CLI, each in
its own process: PC-DARTS' recipe (launch/configs/imagenet_search.yaml: the ImageNet stem, K=2, class-balanced
subsets, weight warm-up, alphas frozen at first) at toy size on the large images, and the same settings with
the CIFAR stem on the 32 px copies. Per search: the supernet's top-1 on the alphas' subset at the end (against
chance, 10 %), the peak resident memory of the process and the memory check's estimate, and the seconds per
step of the last epoch (from its img/s, data loading included). The table is printed and appended to
benchmarks/RESULTS.md (and results.jsonl) unless --no-record.

    python benchmarks/imagenet_search_photos.py                 # 128 px, a few CPU minutes
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
from photo_folder import write_folder  # noqa: E402

RECIPE = _bench.ROOT / "launch" / "configs" / "imagenet_search.yaml"
# a peak-resident-set probe around the CLI: the search's whole process, start-up included
RUN = ("import resource, runpy, sys\nsys.argv = ['dist_darts', *sys.argv[1:]]\ntry:\n"
       "    runpy.run_module('dist_darts', run_name='__main__')\nfinally:\n"
       "    print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n")


def resized_copy(folder: Path, out: Path, size: int) -> Path:
    for path in folder.rglob("*.jpg"):
        target = out / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.convert("RGB").resize((size, size), Image.BICUBIC).save(target, quality=90)
    return out


def search(folder: Path, out: Path, stem: str, args) -> dict:
    steps = 10 * round(0.5 * args.per_class) // args.batch_size  # the weights' subset: half of each class
    cmd = [sys.executable, "-c", RUN, "search", "--config", str(RECIPE), "--dataset", "folder", "--data-dir",
           str(folder), "--stem", stem, "--train-subset", "0.5", "--arch-subset", "0.25", "--layers",
           str(args.layers), "--init-channels", str(args.init_channels), "--batch-size", str(args.batch_size),
           "--workers", "0", "--device", "cpu", "--seed", str(args.seed), "--epochs", str(args.epochs),
           "--warmup-epochs", "1", "--arch-warmup-epochs", str(args.epochs // 3), "--lr-scaling", "none",
           "--arch-lr-scaling", "none", "--learning-rate", str(args.learning_rate), "--log-interval", str(steps),
           "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_bench.worker_env(args.threads), cwd=_bench.ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"search failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    result = json.loads((out / "result.json").read_text())
    history = json.loads((out / "history.json").read_text())
    images_per_s = float(re.findall(r"\| ([\d.]+) img/s", proc.stdout)[-1])  # the last epoch's
    return {"stem": stem, "steps_per_epoch": steps, "val_top1": result["val_top1"], "train_top1": result["train_top1"],
            "val_top1_by_epoch": [round(row["val_top1"], 1) for row in history],
            "estimate_gib": float(re.search(r"memory estimate: ([\d.]+) GiB", proc.stdout).group(1)),
            "peak_rss_gib": int(re.search(r"peak_rss_kib (\d+)", proc.stdout).group(1)) / 2**20,
            "step_seconds": args.batch_size / images_per_s, "seconds": result["seconds"],
            "genotype": result["genotype"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128, help="side of the large images (default 128)")
    p.add_argument("--per-class", type=int, default=32, help="training images per class (default 32)")
    p.add_argument("--layers", type=int, default=5, help="cells (default 5)")
    p.add_argument("--init-channels", type=int, default=8, help="initial channels (default 8)")
    p.add_argument("--batch-size", type=int, default=16, help="batch (default 16)")
    p.add_argument("--learning-rate", type=float, default=0.1, help="weights' learning rate, unscaled (default 0.1)")
    p.add_argument("--epochs", type=int, default=6, help="epochs; the alphas are frozen for the first third "
                                                         "(default 6)")
    p.add_argument("--seed", type=int, default=2, help="(default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each search (default 1)")
    p.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md as it is")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        large = write_folder(Path(tmp) / f"photos{args.size}", args.size, args.per_class, 2, args.seed)
        small = resized_copy(large, Path(tmp) / "photos32", 32)
        runs = [search(large, Path(tmp) / "imagenet", "imagenet", args),
                search(small, Path(tmp) / "cifar", "cifar", args)]
    rows = [[f"{r['stem']} stem, {args.size if r['stem'] == 'imagenet' else 32} px", f"{r['val_top1']:.1f}", "10.0",
             f"{r['train_top1']:.1f}", f"{r['peak_rss_gib']:.2f}", f"{r['estimate_gib']:.2f}",
             f"{r['step_seconds']:.3f}", " ".join(map(str, r["val_top1_by_epoch"]))] for r in runs]
    text = _bench.table(["search", "supernet top-1 % (alphas' subset)", "chance %", "train top-1 %",
                         "peak RSS GiB (process)", "memory estimate GiB", "s / step (last epoch)",
                         "top-1 by epoch"], rows)
    print(text)
    if not args.no_record:
        _bench.record("imagenet_search_photos", "cpu", {"runs": runs, "settings": vars(args)},
                      "ImageNet-stem search on real photographs",
                      f"PC-DARTS' recipe (launch/configs/imagenet_search.yaml) at toy size: {args.layers} cells, "
                      f"C={args.init_channels}, K=2, batch {args.batch_size}, lr {args.learning_rate} (unscaled), "
                      f"{args.epochs} epochs (weights warm up over 1, alphas frozen for {args.epochs // 3}), subsets "
                      f"0.5/0.25 of {10 * args.per_class} training images of 10 photographs (benchmarks/photo_folder.py"
                      f") at {args.size} px, and the same searches with the CIFAR stem on those images resized to "
                      "32 px. Top-1 is the supernet's on the alphas' subset at the end of the search; peak RSS is "
                      "the whole search process's (Python and torch included); the step time is the last epoch's "
                      f"(data loading included).\n\n{text}")


if __name__ == "__main__":
    main()
