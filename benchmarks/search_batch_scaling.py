"""How many GPUs can one search use? Searches at 1x..16x a base global batch, one per arm (a set of large-batch
rules) and seed, on real images that ship inside the installed packages (the digits by default), long enough to
settle: the 1x search runs at least 1,000 optimiser steps. The arms, each adding to the one before from the third:

- none: the paper's rates at every batch;
- linear+warm-up: both learning rates linear in the batch, a linear warm-up of the weights' rate;
- linear/adam-sqrt+freeze: linear weights, adam-sqrt alphas (Malladi et al. 2022), the alphas frozen for the first
  --freeze-epochs (PC-DARTS), the weights' warm-up;
- +sqrt(k) epochs: the same, sqrt(k) times the epochs (--epoch-scaling sqrt);
- +LARS: the same with LARS for the weights;
- defaults: what `dist-darts search` does at that batch with no rule flag given (docs/large-batch.md), the arm a
  user gets;
- linear+warm-up+noise epochs: linear+warm-up with the epochs the gradient noise scale asks for at that batch,
  (B + B_noise) / (B0 + B_noise) times the 1x search's images (noise_scale.epochs_factor, what the end-of-search
  summary advises) in epochs of this batch's whole batches, with B_noise the median measured by this command's 1x
  searches: its runs start once those are finished.

At 1x every arm is the paper's search (warm-up and freeze apply only above 1x), so it runs once per seed. At 8x both
BatchNorm choices run: over the global batch (SyncBatchNorm; one process with the global batch) and per GPU (8
ranks of the base batch; one process accumulating 8 micro-batches of the base batch, which normalises each as a
rank would and averages their gradients as DDP does; tests/test_batch_scaling.py shows both equalities on gloo
ranks). Per run it records the supernet's validation top-1, the agreement of the derived cell with the other seeds'
1x cells (the 1x seeds' agreement among themselves is the noise floor), the stability of its cell over the last
epochs, a short retrain of the cell, the normal cell's parameter-free ops, steps, wall seconds and the gradient
noise scale along the search (history.json). The summary sets each global batch against the 1x searches' measured
B_noise, the theory's bound on the batch that still pays.

What is shrunk to afford it on 2 cores: the data (the 8x8 digits, upscaled to 16 px instead of the 32 they are
stored at: --image-size), the supernet (3 cells of C=4
instead of 8 of C=16) and the epoch (--images-per-epoch 640, a fresh draw each epoch: 40 steps at the base batch
16, so 25 epochs make 1,000 steps at 1x). The script prints its expected
total time from a short calibration before it starts. `--preset cifar10` runs the same study on CIFAR-10 at the
paper's supernet size (8 cells, C=16, batch 64, 50 epochs) on GPUs, one run per GPU at a time, and prints its
GPU-hour budget the same way; --toy shrinks either to a smoke run of a few seconds per search (on the CPU, on the
digits), and --no-record keeps a smoke run out of RESULTS.md.

`--preset held-back` is the acceptance check of the defaults on a task nothing was tuned on: 9 photographs that
ship inside installed packages and that nothing else in the project reads (benchmarks/photo_folder.py --photos
held-back: 96 training crops of each at 32 px, read at 16 px), the digits preset's supernet, 8 epochs of 384
images (192 steps at 1x, 24 at 8x; 25 epochs left the 1x search at 99 %, too close to solved to read 0.95x).
Run with `--multipliers 1,8 --arms none,defaults --per-gpu-bn-at 0`, it asks whether the search's default flags at
8x the batch, with the 1x search's epochs (an eighth of its steps), keep the supernet's validation accuracy, and
whether they ever do worse than no rule.

    python benchmarks/search_batch_scaling.py                   # the CPU study (prints its expected time first)
    python benchmarks/search_batch_scaling.py --preset cifar10 --data-dir DIR --gpus 8
    python benchmarks/search_batch_scaling.py --preset held-back --multipliers 1,8 --arms none,defaults \
        --per-gpu-bn-at 0 --rows benchmarks/batch_scaling_rows_held_back_8ep.jsonl
    python benchmarks/search_batch_scaling.py --toy --no-record # a smoke run
    python benchmarks/search_batch_scaling.py --redraw          # the newest recorded run's table and plot again

A long study keeps every finished run in --rows FILE (one JSON line each, written as it completes): the same
command again skips the runs already there, so a study outlives a stopped machine and its rows can be committed
as they complete. The runs go in the order that answers first: 1x for every seed (the reference and its noise
floor), then the multiplier that runs both BatchNorm choices, then the others from the smallest.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import torch  # noqa: E402
from dist_darts.noise_scale import epochs_factor  # noqa: E402
from dist_darts.spaces.cnn import genotype as gt  # noqa: E402

# each arm's search settings above 1x; "warm-up" and "freeze" are filled in from --warmup-epochs, --freeze-epochs
ARMS = {
    "none": dict(lr_scaling="none", arch_lr_scaling="none"),
    "linear+warm-up": dict(lr_scaling="linear", arch_lr_scaling="linear", warmup=True),
    "linear/adam-sqrt+freeze": dict(lr_scaling="linear", arch_lr_scaling="adam-sqrt", warmup=True, freeze=True),
    "+sqrt(k) epochs": dict(lr_scaling="linear", arch_lr_scaling="adam-sqrt", warmup=True, freeze=True,
                            epoch_scaling="sqrt"),
    "+LARS": dict(lr_scaling="linear", arch_lr_scaling="adam-sqrt", warmup=True, freeze=True, epoch_scaling="sqrt",
                  optimizer="lars"),
    "defaults": dict(defaults=True),  # SearchConfig's own rules, warm-ups included
    "linear+warm-up+noise epochs": dict(lr_scaling="linear", arch_lr_scaling="linear", warmup=True,
                                        noise_epochs=True),
}
PAPER = "paper (1x)"
SEARCH_SPLIT = {"cifar10": 25000}  # training images of a whole search epoch (train-portion 0.5)
PRESETS = {  # the study's sizes: CPU (default) and the paper's CIFAR-10 supernet on GPUs
    "digits": dict(dataset="digits", image_size=16, layers=3, init_channels=4, base_batch=16, epochs=25,
                   images_per_epoch=640, retrain_epochs=4, retrain_layers=6, retrain_channels=12, device="cpu"),
    "cifar10": dict(dataset="cifar10", image_size=0, layers=8, init_channels=16, base_batch=64, epochs=50,
                    images_per_epoch=0, retrain_epochs=20, retrain_layers=8, retrain_channels=16, device="cuda"),
    # the acceptance check on photographs nothing else in the project reads (benchmarks/photo_folder.py)
    "held-back": dict(dataset="folder", image_size=16, layers=3, init_channels=4, base_batch=16, epochs=8,
                      images_per_epoch=384, retrain_epochs=0, retrain_layers=6, retrain_channels=12, device="cpu"),
}
HELD_BACK_FOLDER = dict(size=32, train=96, val=8, seed=0, photos="held-back")  # 864 training crops of 9 photos


TOY = dict(dataset="digits", image_size=16, device="cpu", layers=3, init_channels=4, base_batch=8, epochs=1,
           images_per_epoch=16, retrain_epochs=1, retrain_layers=3, retrain_channels=4)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="digits", choices=tuple(PRESETS),
                   help="digits (the CPU study, default), cifar10 (the paper's supernet size, on GPUs) or "
                        "held-back (the acceptance check on 9 photographs the project never reads; writes their "
                        "folder unless --data-dir names one)")
    p.add_argument("--toy", action="store_true", help="smoke size: 1x and 2x of batch 8, one seed, 1 epoch of 16 "
                                                       "digits on the CPU, a 3-cell supernet, a 1-epoch retrain of "
                                                       "2 steps; no plot")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder of --preset cifar10, or the image folder of "
                                                    "--preset held-back")
    p.add_argument("--multipliers", default="1,2,4,8,16", help="global batches as multiples of the base "
                                                               "(default: 1,2,4,8,16)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"arms above 1x (default: {','.join(ARMS)})")
    p.add_argument("--per-gpu-bn-at", type=int, default=8, help="the multiplier that also runs with BatchNorm per "
                                                                "GPU (0 = none; default: 8)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell (default: 3)")
    p.add_argument("--warmup-epochs", type=int, default=2, help="weights' warm-up of the arms that have one "
                                                                "(default: 2)")
    p.add_argument("--freeze-epochs", type=int, default=None, help="alphas frozen for the first N epochs in the "
                                                                   "arms that freeze (default: 30 %% of the epochs, "
                                                                   "PC-DARTS's 15 of 50)")
    p.add_argument("--retrain-steps", type=int, default=0, help="cap on retrain steps per epoch (0 = whole epoch)")
    for name, kind in (("dataset", str), ("image_size", int), ("layers", int), ("init_channels", int),
                       ("base_batch", int), ("epochs", int), ("images_per_epoch", int), ("retrain_epochs", int),
                       ("retrain_layers", int), ("retrain_channels", int), ("device", str)):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"override the preset's {name.replace('_', ' ')} (" +
                            ", ".join(f"{preset}: {values[name]}" for preset, values in PRESETS.items()) + ")")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time, one torch thread each on the CPU, one "
                                                          "GPU each on GPUs (default: 2 on the CPU, --gpus)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs to spread the runs over (default: 1)")
    p.add_argument("--plot", default=None, help="plot file (default: docs/search_batch_scaling_DATASET.png)")
    p.add_argument("--no-record", action="store_true", help="print the table only: nothing appended to "
                                                            "RESULTS.md and results.jsonl")
    p.add_argument("--rows", default=None, help="JSON-lines file of finished runs: each run is appended as it "
                   "completes and runs already in it are skipped (default: none, the study starts over)")
    p.add_argument("--table-only", action="store_true", help="no searches: the table and plot of the runs already "
                   "in --rows, as far as the study has got (the runs still missing are counted in the title)")
    p.add_argument("--redraw", action="store_true", help="no searches: the table and plot of the newest recorded "
                   "run on this preset's data set, from benchmarks/results.jsonl")
    args = p.parse_args(argv)
    if args.image_size is None and args.dataset not in (None, PRESETS[args.preset]["dataset"]):
        args.image_size = 0  # another data set at its own size
    # --toy: the preset's plumbing at the size of a smoke run, on the CPU and the digits (flags given still win)
    for key, value in {**PRESETS[args.preset], **(TOY if args.toy else {})}.items():  # toy's over the preset's
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.toy:
        args.multipliers, args.seeds, args.retrain_steps, args.plot, args.warmup_epochs = "1,2", 1, 2, "", 0
    if args.freeze_epochs is None:
        args.freeze_epochs = round(0.3 * args.epochs)
    if args.jobs is None:
        args.jobs = args.gpus if args.device == "cuda" else 2
    if args.plot is None:
        args.plot = f"docs/search_batch_scaling_{args.preset if args.dataset == 'folder' else args.dataset}.png"
    args.multipliers = [int(m) for m in str(args.multipliers).split(",")]
    args.arms = str(args.arms).split(",")
    if 1 not in args.multipliers or any(a not in ARMS for a in args.arms):
        p.error(f"--multipliers must include 1 (the reference) and --arms must be some of {','.join(ARMS)}")
    if args.images_per_epoch and args.images_per_epoch < args.base_batch * max(args.multipliers):
        p.error("--images-per-epoch must hold at least one batch of the largest global batch")
    if args.dataset == "cifar10" and not args.data_dir and not args.redraw:
        p.error("--preset cifar10 needs --data-dir (the CIFAR-10 folder)")
    return args


def held_back_folder() -> str:
    """The image folder of --preset held-back (HELD_BACK_FOLDER's crops), written once into the temporary
    directory and reused by later runs."""
    from photo_folder import write_folder
    folder = Path(tempfile.gettempdir()) / "dist-darts-held-back-{size}px-{train}-{val}-{seed}".format(
        **HELD_BACK_FOLDER)
    done = folder / "complete"
    if not done.exists():
        write_folder(folder, **HELD_BACK_FOLDER)
        done.touch()  # a folder cut off while being written is written again
    return str(folder)


def plan(args) -> list[tuple]:
    """Every run: (seed, multiplier, arm, BatchNorm over "global" batch or "per-gpu"), in the order that answers
    first (the module docstring)."""
    runs = [(seed, 1, PAPER, "global") for seed in range(args.seeds)]
    for m in sorted(set(args.multipliers) - {1}, key=lambda m: (m != args.per_gpu_bn_at, m)):
        for seed in range(args.seeds):
            for bn in ("global", "per-gpu") if m == args.per_gpu_bn_at else ("global",):
                runs += [(seed, m, arm, bn) for arm in args.arms]
    return runs


# the arguments that decide what a run computes: a rows file written under other values cannot be reused
RUN_SETTINGS = ("dataset", "image_size", "layers", "init_channels", "base_batch", "epochs", "images_per_epoch",
                "retrain_epochs", "retrain_layers", "retrain_channels", "retrain_steps", "warmup_epochs",
                "freeze_epochs", "device")


def run_settings(args) -> dict:
    return {k: getattr(args, k) for k in RUN_SETTINGS}


def finished_rows(args) -> list[dict]:
    """The rows already in --rows (none without it); a file from other settings is refused."""
    if not args.rows or not Path(args.rows).is_file():
        return []
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
    settings = run_settings(args)
    for row in rows:
        if row["settings"] != settings:
            changed = sorted(k for k in settings if row["settings"].get(k) != settings[k])
            raise SystemExit(f"--rows {args.rows}: its runs used other settings ({', '.join(changed)}): "
                             "pass the same ones or another file")
    return rows


def run_key(row: dict) -> tuple:
    return row["seed"], row["multiplier"], row["arm"], row["bn"]


def search_config(args, seed: int, multiplier: int, arm: str, bn: str, output: str):
    """The SearchConfig of one run: the arm's rules above 1x, the paper's search at 1x."""
    from dist_darts.config import SearchConfig
    settings = {} if arm == PAPER else dict(ARMS[arm])
    warmup, freeze, defaults, noise_epochs = (settings.pop(key, False)
                                              for key in ("warmup", "freeze", "defaults", "noise_epochs"))
    if not defaults:  # the arm's warm-ups; the defaults arm keeps the search's own
        settings.update(warmup_epochs=args.warmup_epochs if warmup else 0,
                        arch_warmup_epochs=args.freeze_epochs if freeze else 0)
    per_gpu = bn == "per-gpu"
    batch = args.base_batch * (1 if per_gpu else multiplier)
    accumulate = multiplier if per_gpu else 1
    global_batch = args.base_batch * multiplier
    epochs = args.epochs
    if noise_epochs and args.b_noise is not None:  # (None only in the time estimate before the 1x searches end)
        # the images the factor asks for, in this batch's epochs: a 16x epoch of 640 images holds 2 batches of 256;
        # rounded first: 25 x 1.2 is 30, not 31
        images = args.epochs * steps_per_epoch(args, 1) * args.base_batch
        epochs = math.ceil(round(images * epochs_factor(args.base_batch, global_batch, args.b_noise)
                                 / (steps_per_epoch(args, multiplier) * global_batch), 6))
    return SearchConfig(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size, workers=0,
                        device=args.device, seed=seed, epochs=epochs, layers=args.layers,
                        init_channels=args.init_channels, batch_size=batch, accumulate=accumulate,
                        steps_per_epoch=args.images_per_epoch // global_batch, base_batch_size=args.base_batch,
                        noise_scale_every=max(1, steps_per_epoch(args, multiplier) // 4),
                        log_interval=10**6, output=output, **settings)


def _init_worker(devices) -> None:
    """A GPU per worker process, before CUDA starts in it."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())


def run_one(job: tuple) -> dict:
    """One search (and the short retrain of its cell); runs in a worker process. Returns its row, with the genotype
    of every epoch."""
    args, (seed, multiplier, arm, bn) = job
    from dist_darts import search
    if args.device == "cpu":
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"batch-scaling-{seed}-{multiplier}-") as tmp:
        cfg = search_config(args, seed, multiplier, arm, bn, f"{tmp}/search")
        started = time.perf_counter()
        result = search.run(cfg)
        seconds = time.perf_counter() - started
        history = json.loads(Path(f"{tmp}/search/history.json").read_text())
        steps = steps_per_epoch(args, multiplier) * len(history)
        row = {"seed": seed, "multiplier": multiplier, "global_batch": args.base_batch * multiplier, "arm": arm,
               "bn": bn, "epochs": len(history), "steps": steps, "search_val_top1": result.val_top1,
               "search_seconds": seconds, "genotype": gt.to_dict(result.genotype),
               "epoch_genotypes": [h["genotype"] for h in history],
               "noise_scale_weights": [h["noise_scale_weights"] for h in history],
               "noise_scale_alphas": [h["noise_scale_alphas"] for h in history]}
        if ARMS.get(arm, {}).get("noise_epochs"):
            row["reference_b_noise"] = args.b_noise  # what set its epochs
        if args.retrain_epochs:
            row.update(_bench.short_retrain(args.dataset, f"{tmp}/search/genotype.json", seed, args.retrain_epochs,
                                           args.retrain_steps, args.retrain_layers, args.retrain_channels,
                                           f"{tmp}/retrain", image_size=args.image_size, data_dir=args.data_dir))
    print(json.dumps({k: v for k, v in row.items() if k not in ("genotype", "epoch_genotypes")}), flush=True)
    return {**row, "settings": run_settings(args)}


def expected_seconds(args, runs: list[tuple]) -> float:
    """The study's expected wall time: seconds per training image of a short calibration search step at the base
    batch (alphas and weights), times the images every run's search processes, over the runs at a time (the short
    retrains come on top; the noise-epochs arm counts the study's epochs until the 1x searches have measured
    B_noise)."""
    from dist_darts.config import search_rates
    from dist_darts.job import autocast_factory
    from dist_darts.spaces.cnn.supernet import Network
    device = torch.device(args.device)
    size = 32  # the digits (upscaled) and CIFAR-10 alike
    torch.manual_seed(0)
    model = Network(args.init_channels, 10, args.layers).to(device).to(memory_format=torch.channels_last)
    batches = [torch.randn(args.base_batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last) if i % 2 == 0 else torch.randint(0, 10, (args.base_batch,), device=device)
        for i in range(4)]
    step = _bench.darts_search_step(model, model, 1, autocast_factory("auto", device)[0], batches)
    if args.device == "cpu":
        torch.set_num_threads(1)
    step()
    started = time.perf_counter()
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_image = (time.perf_counter() - started) / 3 / args.base_batch
    images = sum(search_rates(search_config(args, *run, "unused"), 1)["epochs"] * steps_per_epoch(args, run[1])
                 * args.base_batch * run[1] for run in runs)
    return per_image * images / args.jobs


def steps_per_epoch(args, multiplier: int) -> int:
    """Optimiser steps per epoch at this multiplier: --images-per-epoch, else the whole search split."""
    return (args.images_per_epoch or SEARCH_SPLIT[args.dataset]) // (args.base_batch * multiplier)


def agreement(genotype, reference) -> float:
    """Share of (op, input) edges that the reference derived for the same node of the same cell type."""
    shared = total = 0
    for cell in ("normal", "reduce"):
        edges, ref = getattr(genotype, cell), getattr(reference, cell)
        for node in range(0, len(edges), 2):
            mine, theirs = list(map(tuple, edges[node:node + 2])), list(map(tuple, ref[node:node + 2]))
            shared += sum(1 for e in mine if e in theirs)
            total += len(mine)
    return shared / total


def stability(epoch_genotypes: list, last: int = 3) -> float:
    """Mean agreement of the final cell with the cells of the `last` epochs before it: 1 = settled."""
    final = gt.from_dict(epoch_genotypes[-1])
    earlier = epoch_genotypes[-1 - last:-1] or epoch_genotypes[-1:]
    return statistics.fmean(agreement(final, gt.from_dict(g)) for g in earlier)


def last_measured(values: list):
    return next((v for v in reversed(values) if v is not None), None)


def reference_noise_scale(rows: list[dict]) -> float | None:
    """The theory's bound, from the 1x searches: the median over seeds of the smaller of the weights' and the
    alphas' last B_noise (None before any is measured)."""
    measured = []
    for r in rows:
        last = [v for v in (last_measured(r["noise_scale_weights"]), last_measured(r["noise_scale_alphas"]))
                if v is not None]
        if r["arm"] == PAPER and last:
            measured.append(min(last))
    return statistics.median(measured) if measured else None


def plot(path: str, rows: list[dict], args, panels: list[tuple[str, str]]) -> str | None:
    plt = _bench.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels):
        for i, arm in enumerate(args.arms):
            xs, means, stds = [], [], []
            for m in args.multipliers:
                values = [r[metric] for r in rows if r["multiplier"] == m and r["bn"] == "global"
                          and r["arm"] in (arm, PAPER)]
                if not values:  # a partial study (--table-only): this arm has not run at this batch yet
                    continue
                xs.append(args.base_batch * m * (1 + 0.03 * (i - len(args.arms) / 2)))  # arms side by side
                means.append(statistics.fmean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=arm)
        ax.set_xscale("log", base=2)
        batches = [args.base_batch * m for m in args.multipliers]
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("global batch")
        ax.set_ylabel(label)
    axes[0][0].legend(title="arm", fontsize=7)
    fig.suptitle(f"DARTS search on {args.dataset}, {args.epochs} epochs at 1x, {args.seeds} seed(s) (mean ± std)")
    return _bench.save_figure(fig, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.redraw:
        record = [r for r in _bench.recorded("search_batch_scaling")
                  if "arms" in r["args"] and r["args"]["dataset"] == args.dataset][-1]
        return summarize(record["rows"], argparse.Namespace(**{**record["args"], "plot": args.plot,
                                                               "no_record": True}),
                         f" (redrawn from the run of {record['date'][:16]})")
    if args.preset == "held-back" and args.dataset == "folder" and not args.data_dir:
        args.data_dir = held_back_folder()
    rows = finished_rows(args)
    done = {run_key(r) for r in rows}
    runs = [run for run in plan(args) if run not in done]
    if rows:
        print(f"{len(rows)} runs already in {args.rows}", flush=True)
    partial = ""
    if args.table_only:
        if not rows:
            raise SystemExit(f"--table-only: no finished runs in {args.rows}")
        if runs:  # a finished study's table is no partial one
            partial = f" (partial: {len(plan(args)) - len(runs)} of {len(plan(args))} runs; the study goes on)"
        runs = []
    cells = set(plan(args))  # a rows file may hold more than this command's cells
    args.b_noise = reference_noise_scale([r for r in rows if run_key(r) in cells])
    expected = expected_seconds(args, runs) if runs else 0.0
    unit = "GPU-hours" if args.device == "cuda" else "core-hours"
    print(f"{len(runs)} searches, {args.jobs} at a time: expected {expected / 3600:.2f} h of wall time "
          f"({expected * args.jobs / 3600:.2f} {unit} of searching, the short retrains on top)", flush=True)
    # the arm whose epochs follow the 1x searches' B_noise runs after them
    later = [run for run in runs if ARMS.get(run[2], {}).get("noise_epochs")]
    for phase in ([run for run in runs if run not in later], later):
        if not phase:
            continue
        if phase is later:  # the first phase may have run the 1x searches since the estimate's value
            args.b_noise = reference_noise_scale([r for r in rows if run_key(r) in cells])
            if args.b_noise is None:
                print("the arm linear+warm-up+noise epochs did not run: the 1x searches measured no noise scale",
                      flush=True)
                break
        devices = None  # each pool's workers take a GPU each from a queue of their own
        if args.device == "cuda":
            devices = multiprocessing.get_context("spawn").Manager().Queue()
            for i in range(args.jobs):
                devices.put(i % args.gpus)
        with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(phase)), _init_worker,
                                                       (devices,)) as pool:
            for row in pool.imap_unordered(run_one, [(args, run) for run in phase], chunksize=1):
                rows.append(row)
                if args.rows:
                    with open(args.rows, "a") as f:
                        f.write(json.dumps(row) + "\n")
    rows = sorted((r for r in rows if run_key(r) in cells), key=lambda r: (
        r["multiplier"], r["bn"] != "global", ([PAPER] + args.arms).index(r["arm"]), r["seed"]))  # the table's order
    references = [r for r in rows if r["arm"] == PAPER]
    for r in rows:
        others = [gt.from_dict(ref["genotype"]) for ref in references if ref["seed"] != r["seed"]]
        r["agreement"] = (statistics.fmean(agreement(gt.from_dict(r["genotype"]), o) for o in others)
                          if others else float("nan"))
        r["stability"] = stability(r.pop("epoch_genotypes"))
        r.pop("settings")
    summarize(rows, args, " (toy size: a smoke run of the script, not evidence)" if args.toy else partial)


def summarize(rows: list[dict], args, title_note: str) -> None:
    """Print the table, draw the plot and append both to RESULTS.md (and the rows to results.jsonl)."""
    from dist_darts import collapse
    for r in rows:
        r["param_free_normal"] = collapse.cell_counts(gt.from_dict(r["genotype"]))["param_free_normal"]
    paper = [r for r in rows if r["arm"] == PAPER]
    b_noise = reference_noise_scale(rows)
    header = ["global batch", "arm", "BN", "seeds", "steps", "search val top-1 %", "agreement with other seeds' 1x",
              "cell stability (last 3 epochs)", "param-free ops, normal (of 8)", "retrain top-1 %",
              "B_noise weights", "B_noise alphas", "batch / B_noise(1x)", "search s"]

    def shown(xs, fmt=".2f"):
        xs = [x for x in xs if x is not None and not math.isnan(x)]
        return _bench.spread(xs, fmt) if xs else "-"
    lines = []
    for m, arm, bn in dict.fromkeys((r["multiplier"], r["arm"], r["bn"]) for r in rows):
        sel = [r for r in rows if (r["multiplier"], r["arm"], r["bn"]) == (m, arm, bn)]
        col = {key: [r.get(key) for r in sel] for key in sel[0]}
        lines.append([str(args.base_batch * m), arm, bn, str(len(sel)), shown(col["steps"], ".0f"),
                      shown(col["search_val_top1"]),
                      shown(col["agreement"]), shown(col["stability"]), shown(col["param_free_normal"]),
                      shown(col.get("retrain_top1", [])),
                      shown([last_measured(v) for v in col["noise_scale_weights"]], ".0f"),
                      shown([last_measured(v) for v in col["noise_scale_alphas"]], ".0f"),
                      f"{args.base_batch * m / b_noise:.2g}" if b_noise else "-",
                      shown(col["search_seconds"], ".0f")])
    markdown = _bench.table(header, lines, right_from=3)
    floor = shown([r["agreement"] for r in paper])
    panels = ([("retrain_top1", f"{args.retrain_epochs}-epoch retrain top-1 %")] if args.retrain_epochs else []) + [
        ("search_val_top1", "supernet val top-1 %"), ("agreement", "agreement with other seeds' 1x cells")]
    drawn = plot(args.plot, rows, args, panels) if args.plot else None
    size = (f"{args.dataset}" + (f" at {args.image_size} px" if args.image_size else "") +
            f", supernet {args.layers} cells C={args.init_channels}, "
            f"base batch {args.base_batch}, {args.epochs} search epoch(s) of " +
            (f"{args.images_per_epoch} training images" if args.images_per_epoch else "the whole search split") +
            f" ({steps_per_epoch(args, 1) * args.epochs} steps at 1x), first order, warm-up {args.warmup_epochs} "
            f"epoch(s), alpha freeze {args.freeze_epochs} epoch(s), {args.seeds} seed(s); retrain "
            f"{args.retrain_layers} cells C={args.retrain_channels}, {args.retrain_epochs} epoch(s)" +
            (f" of at most {args.retrain_steps} steps" if args.retrain_steps else "") +
            f"; mean ± std over seeds; BN global = one process with the global batch (= ranks with SyncBatchNorm), "
            f"per-gpu = accumulated micro-batches of the base batch (= ranks without); {args.jobs} runs at a time. "
            f"Noise floor: the 1x seeds' cells agree with each other on {floor} of their edges. Median B_noise of "
            f"the 1x searches (the smaller of weights and alphas at the end): "
            f"{'-' if b_noise is None else f'{b_noise:.0f}'}.")
    print(f"{size}\n\n{markdown}")
    if not args.no_record:
        _bench.record("search_batch_scaling", args.device, {"rows": rows, "args": vars(args)},
                      "Search batch scaling" + title_note,
                      f"{size}\n\n{markdown}\n" + (f"\nPlot: `{drawn}`\n" if drawn else ""))


if __name__ == "__main__":
    main()
