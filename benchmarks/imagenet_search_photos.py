"""Does the ImageNet-stem search learn on real images at ImageNet-like sizes, and what does it cost against a
CIFAR-stem search on the same images at 32 px?

Writes a folder of photographs that ship inside installed packages (benchmarks/photo_folder.py, one class per
photograph, --per-class training images each; --photos held-back takes the 9 that nothing else in the project
reads) at --size px and the same images resized to 32 px, then runs two searches through the CLI, each in
its own process: PC-DARTS' recipe (launch/configs/imagenet_search.yaml: the ImageNet stem, K=2, class-balanced
subsets, weight warm-up, alphas frozen at first) at toy size on the large images, and the same settings with
the CIFAR stem on the 32 px copies. Per search: the supernet's top-1 on the alphas' subset at the end (against
chance, one over the classes), the peak resident memory of the process and the memory check's estimate, and the
seconds per step of the last epoch (from its img/s, data loading included). The table is printed and appended to
benchmarks/RESULTS.md (and results.jsonl) unless --no-record.

    python benchmarks/imagenet_search_photos.py                       # 128 px, a few CPU minutes
    python benchmarks/imagenet_search_photos.py --photos held-back    # the held-back check
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
from photo_folder import PHOTO_SETS, photo_files, write_folder  # noqa: E402

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


def search(folder: Path, out: Path, stem: str, classes: int, seed: int, args) -> dict:
    steps = classes * round(0.5 * args.per_class) // args.batch_size  # the weights' subset: half of each class
    cmd = [sys.executable, "-c", RUN, "search", "--config", str(RECIPE), "--dataset", "folder", "--data-dir",
           str(folder), "--stem", stem, "--train-subset", "0.5", "--arch-subset", "0.25", "--layers",
           str(args.layers), "--init-channels", str(args.init_channels), "--batch-size", str(args.batch_size),
           "--workers", "0", "--device", "cpu", "--seed", str(seed), "--epochs", str(args.epochs),
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
    p.add_argument("--first-seed", type=int, default=2, help="(default 2)")
    p.add_argument("--seeds", type=int, default=1, help="seeds from --first-seed, each its own folder of crops and "
                                                        "its own two searches (default 1)")
    p.add_argument("--photos", default="project", choices=PHOTO_SETS,
                   help="which photographs (benchmarks/photo_folder.py; default project)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each search (default 1)")
    p.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md as it is")
    args = p.parse_args()
    classes, runs = len(photo_files(args.photos)), []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            large = write_folder(Path(tmp) / f"photos{args.size}", args.size, args.per_class, 2, seed, args.photos)
            small = resized_copy(large, Path(tmp) / "photos32", 32)
            for folder, stem in ((large, "imagenet"), (small, "cifar")):
                runs.append({"seed": seed, **search(folder, Path(tmp) / stem, stem, classes, seed, args)})
                print(f"seed {seed}, {stem} stem: supernet top-1 {runs[-1]['val_top1']:.1f} %", flush=True)
    label = {"imagenet": f"imagenet stem, {args.size} px", "cifar": "cifar stem, 32 px"}
    rows = [[label[r["stem"]], str(r["seed"]), f"{r['val_top1']:.1f}", f"{100 / classes:.1f}", f"{r['train_top1']:.1f}",
             f"{r['peak_rss_gib']:.2f}", f"{r['estimate_gib']:.2f}", f"{r['step_seconds']:.3f}",
             " ".join(map(str, r["val_top1_by_epoch"]))] for r in runs]
    if args.seeds > 1:
        for stem in label:
            mine = [r for r in runs if r["stem"] == stem]
            rows.append([label[stem], "mean", _bench.spread([r["val_top1"] for r in mine], ".1f"),
                         f"{100 / classes:.1f}", _bench.spread([r["train_top1"] for r in mine], ".1f"),
                         f"{max(r['peak_rss_gib'] for r in mine):.2f} (max)", "", "", ""])
    text = _bench.table(["search", "seed", "supernet top-1 % (alphas' subset)", "chance %", "train top-1 %",
                         "peak RSS GiB (process)", "memory estimate GiB", "s / step (last epoch)",
                         "top-1 by epoch"], rows, right_from=2)
    print(text)
    if not args.no_record:
        _bench.record("imagenet_search_photos", "cpu", {"runs": runs, "settings": vars(args)},
                      "ImageNet-stem search on real photographs" + (
                          " held back from the project" if args.photos == "held-back" else ""),
                      f"PC-DARTS' recipe (launch/configs/imagenet_search.yaml) at toy size: {args.layers} cells, "
                      f"C={args.init_channels}, K=2, batch {args.batch_size}, lr {args.learning_rate} (unscaled), "
                      f"{args.epochs} epochs (weights warm up over 1, alphas frozen for {args.epochs // 3}), subsets "
                      f"0.5/0.25 of {classes * args.per_class} training images of {classes} photographs "
                      f"(benchmarks/photo_folder.py --photos {args.photos}) at {args.size} px, and the same searches "
                      "with the CIFAR stem on those images resized to 32 px; each seed crops its own images and "
                      "seeds both searches. Top-1 is the supernet's on the alphas' subset at the end of the search; "
                      "peak RSS is the whole search process's (Python and torch included); the step time is the "
                      f"last epoch's (data loading included).\n\n{text}")


if __name__ == "__main__":
    main()
