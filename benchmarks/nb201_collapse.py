"""Does a method keep a search of the NAS-Bench-201 space from collapsing? Plain DARTS and the anti-collapse methods
(--method, each at its authors' settings), several seeds each, on real images that ship inside the installed
packages (the digits by default, or --dataset photos), the benchmark's cell on a smaller network.

Per run it records, every epoch, the collapse fingerprint of the derived cell: how many of its 6 edges are
skip_connect, none, and parameter-free (those two and avg_pool_3x3); for the final cell a short retrain with the
benchmark's protocol (shortened) on a held-out tenth of the training images (what to choose by) and on the test
split (read once, to report). With --benchmark-file (the NAS-Bench-201 or NATS-Bench topology file) each final
cell's benchmark accuracies are added: the field's currency, on a GPU-sized search (docs/nas-bench-201.md).

The table is printed and appended to benchmarks/RESULTS.md (and results.jsonl); with matplotlib, --plot draws the
share of skip_connect and none per epoch (mean over seeds) and each run's retrain top-1.

    python benchmarks/nb201_collapse.py                      # 4 methods x 3 seeds on the digits
    python benchmarks/nb201_collapse.py --toy --no-record    # a smoke run
    python benchmarks/nb201_collapse.py --dataset photos --plot docs/nb201_collapse_photos.png
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

DEFAULT_METHODS = "darts,beta-darts,fair-darts,drnas"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="smoke size: 2 methods, one seed, 2 epochs of 2 steps, a "
                                                       "1-epoch retrain of 2 steps; no plot")
    p.add_argument("--dataset", default="digits", choices=("digits", "photos"), help="embedded real images")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"methods (default: {DEFAULT_METHODS})")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    p.add_argument("--epochs", type=int, default=15, help="search epochs (default: 15)")
    p.add_argument("--steps-per-epoch", type=int, default=20, help="search steps per epoch (default: 20)")
    p.add_argument("--batch-size", type=int, default=32, help="search batch (default: 32)")
    p.add_argument("--cells", type=int, default=1, help="cells per stage N (default: 1; the benchmark's 5)")
    p.add_argument("--channels", type=int, default=8, help="channels C (default: 8; the benchmark's 16)")
    p.add_argument("--retrain-epochs", type=int, default=4, help="short retrain of each final cell (0 = none; "
                                                                 "default: 4)")
    p.add_argument("--retrain-steps", type=int, default=0, help="cap on retrain steps per epoch (0 = whole epoch)")
    p.add_argument("--benchmark-file", default=None, help="NAS-Bench-201 / NATS-Bench topology file: the final "
                                                          "cells' benchmark accuracies")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (default: 2)")
    p.add_argument("--plot", default="docs/nb201_collapse.png", help="plot file (default: %(default)s)")
    p.add_argument("--no-record", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    if args.toy:
        args.methods, args.seeds, args.epochs, args.steps_per_epoch = "darts,drnas", 1, 2, 2
        args.batch_size, args.channels, args.retrain_epochs, args.retrain_steps, args.plot = 8, 4, 1, 2, ""
    args.methods = _bench.method_list(p, args.methods)
    return args


def run_one(job: tuple) -> dict:
    """Search with one method and seed, then retrain the final cell; runs in a worker process."""
    args, method, seed = job
    import torch
    from dist_darts.config import build
    from dist_darts.spaces.nb201 import jobs
    from dist_darts.spaces.nb201.bench import Benchmark
    from dist_darts.spaces.nb201.config import NB201RetrainConfig, NB201SearchConfig
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"nb201-{method}-{seed}-") as tmp:
        settings = dict(dataset=args.dataset, workers=0, device="cpu", seed=seed, epochs=args.epochs,
                        steps_per_epoch=args.steps_per_epoch, layers=args.cells, init_channels=args.channels,
                        batch_size=args.batch_size, method=method, log_interval=10**6, output=f"{tmp}/search")
        cfg = build(NB201SearchConfig, overrides=settings)  # with the method's own settings where not set here
        started = time.perf_counter()
        result = jobs.search(cfg)
        seconds = time.perf_counter() - started
        history = json.loads(Path(f"{tmp}/search/history.json").read_text())
        last = history[-1]
        row = {"method": method, "seed": seed, "arch_str": result.genotype, "search_val_top1": result.val_top1,
               "param_free": last["param_free"], "skip_connect": last["skip_connect"], "none": last["none"],
               "epoch_skip_connect": [h["skip_connect"] for h in history], "epoch_none": [h["none"] for h in history],
               "search_seconds": seconds}
        if args.retrain_epochs:
            retrain = NB201RetrainConfig(dataset=args.dataset, workers=0, device="cpu", seed=seed,
                                         genotype=result.genotype, epochs=args.retrain_epochs,
                                         steps_per_epoch=args.retrain_steps, layers=args.cells,
                                         init_channels=args.channels, batch_size=64, val_portion=0.1,
                                         log_interval=10**6, output=f"{tmp}/retrain")
            trained = jobs.retrain(retrain)  # the benchmark's protocol, its rate linear in the batch (64 of 256)
            row.update(retrain_val_top1=trained.val_top1, retrain_top1=trained.test_top1)
    if args.benchmark_file:
        entry = Benchmark(args.benchmark_file).lookup(row["arch_str"])
        row.update({f"bench_{k}": entry[k] for k in ("cifar10_test", "cifar100_test", "imagenet16_120_test")})
    print(json.dumps({k: v for k, v in row.items() if not k.startswith("epoch_")}), flush=True)
    return row


def plot(path: str, rows: list[dict], methods: list[str], args) -> str | None:
    plt = _bench.pyplot()
    if plt is None:
        return None
    panels = 3 if args.retrain_epochs else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4))
    for key, ax, label in (("epoch_skip_connect", axes[0], "skip_connect"), ("epoch_none", axes[1], "none")):
        for method in methods:
            runs = [r[key] for r in rows if r["method"] == method]
            mean = [statistics.fmean(v) / 6 for v in zip(*runs)]
            ax.plot(range(1, len(mean) + 1), mean, label=method)
        ax.set_xlabel("search epoch")
        ax.set_ylabel(f"share of the 6 edges that are {label} (mean over seeds)")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend()
    if args.retrain_epochs:
        for i, method in enumerate(methods):
            values = [r["retrain_top1"] for r in rows if r["method"] == method]
            axes[2].scatter([i] * len(values), values, alpha=0.7)
            axes[2].hlines(statistics.fmean(values), i - 0.25, i + 0.25, color="k")
        axes[2].set_xticks(range(len(methods)), methods, rotation=30)
        axes[2].set_ylabel(f"{args.retrain_epochs}-epoch retrain test top-1 %")
    fig.suptitle(f"NAS-Bench-201 space on {args.dataset}: N={args.cells}, C={args.channels}, {args.epochs} epochs x "
                 f"{args.steps_per_epoch} steps, {args.seeds} seeds")
    return _bench.save_figure(fig, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = [(args, method, seed) for seed in range(args.seeds) for method in args.methods]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        rows = pool.map(run_one, runs, chunksize=1)
    bench = [k for k in ("bench_cifar10_test", "bench_cifar100_test", "bench_imagenet16_120_test") if k in rows[0]]
    header = ["method", "param-free edges (of 6)", "skip_connect", "none", "runs with a parametric majority",
              "retrain val top-1 %", "retrain test top-1 %", "search val top-1 %", *bench, "search s"]
    lines = []
    for method in args.methods:
        column = {key: [r[key] for r in rows if r["method"] == method] for key in rows[0]}
        lines.append([method, _bench.spread(column["param_free"]), _bench.spread(column["skip_connect"]),
                      _bench.spread(column["none"]), f"{sum(n < 3 for n in column['param_free'])}/{args.seeds}",
                      *((_bench.spread(column["retrain_val_top1"]), _bench.spread(column["retrain_top1"]))
                        if args.retrain_epochs else ("-", "-")),
                      _bench.spread(column["search_val_top1"]), *(_bench.spread(column[k]) for k in bench),
                      f"{statistics.fmean(column['search_seconds']):.0f}"])
    markdown = _bench.table(header, lines, right_from=1)
    cells = "\n".join(f"- {r['method']} seed {r['seed']}: `{r['arch_str']}`" for r in rows)
    drawn = plot(args.plot, rows, args.methods, args) if args.plot else None
    size = (f"{args.dataset}, NAS-Bench-201 search network N={args.cells} C={args.channels}, batch "
            f"{args.batch_size}, {args.epochs} search epochs of {args.steps_per_epoch} steps, seeds 0-{args.seeds - 1} "
            f"per method at its authors' settings, first order; retrain of the final cell with the benchmark's "
            f"protocol for {args.retrain_epochs} epoch(s) at batch 64" +
            (f" of at most {args.retrain_steps} steps" if args.retrain_steps else "") +
            f"; mean ± std over seeds; {args.jobs} runs at a time, 1 thread each")
    print(markdown)
    if args.no_record:
        return
    title = "NAS-Bench-201 space: collapse by method" + (" (toy size: a smoke run, not evidence)" if args.toy else "")
    _bench.record("nb201_collapse", "cpu", {"rows": rows, "args": vars(args)}, title,
                  f"{size}\n\n{markdown}\n\nFinal cells:\n\n{cells}\n" + (f"\nPlot: `{drawn}`\n" if drawn else ""))


if __name__ == "__main__":
    main()
