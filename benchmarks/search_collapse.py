"""Which search methods keep a long search from collapsing onto parameter-free ops? Plain DARTS and each
anti-collapse method (--method), several seeds each, the same search and retrain settings, on real images that ship
inside the installed packages: the digits (the default) or --dataset photos.

Per run it measures
- the parameter-free ops (skip_connect, pools) among the 8 edges of the derived normal cell (and reduction cell),
- the top-1 of a short retrain of the derived cells on a held-out tenth of the training images (what to choose a
  method by) and on the test split (read once, to report),
- the search's seconds per step, and its ratio to plain DARTS's (runs share the machine two at a time, so the
  ratio is rough).

The table is printed and appended to benchmarks/RESULTS.md (and results.jsonl); with matplotlib, one plot (the
normal cell's parameter-free ops and the retrain top-1 per method, each seed a dot) is drawn to --plot.

    python benchmarks/search_collapse.py                 # 6 methods x 3 seeds, 10 epochs of 12 steps, retrains
    python benchmarks/search_collapse.py --toy           # a smoke run of a few seconds per search
    python benchmarks/search_collapse.py --dataset photos --methods darts,fair-darts,drnas --plot docs/search_collapse_photos.png
    python benchmarks/search_collapse.py --methods darts --derive darts-pt --plot docs/search_collapse_darts_pt.png
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



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="smoke size: 2 methods, one seed, 1 epoch of 2 steps, a "
                                                       "1-epoch retrain of 2 steps; no plot")
    p.add_argument("--dataset", default="digits", choices=("digits", "photos"),
                   help="embedded real images: digits (8x8 digits) or photos (patches of 10 photographs)")
    p.add_argument("--methods", default=",".join(_bench.METHOD_NAMES), help="methods (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from this one (default: 0; a held-back "
                                                              "check takes seeds no comparison has seen)")
    p.add_argument("--epochs", type=int, default=10, help="search epochs (default: 10)")
    p.add_argument("--steps-per-epoch", type=int, default=12, help="search steps per epoch (default: 12)")
    p.add_argument("--batch-size", type=int, default=32, help="search batch (default: 32)")
    p.add_argument("--layers", type=int, default=5, help="supernet cells (default: 5)")
    p.add_argument("--init-channels", type=int, default=4, help="supernet C (default: 4)")
    p.add_argument("--retrain-epochs", type=int, default=4, help="short retrain of each derived genotype (0 = none; "
                                                                 "default: 4)")
    p.add_argument("--retrain-layers", type=int, default=6, help="retrain cells (default: 6)")
    p.add_argument("--retrain-channels", type=int, default=12, help="retrain C (default: 12)")
    p.add_argument("--retrain-steps", type=int, default=0, help="cap on retrain steps per epoch (0 = whole epoch)")
    p.add_argument("--derive", default="original", choices=("original", "darts-pt"),
                   help="cell derivation of every run (default: original; darts-pt adds DARTS-PT's selection epochs)")
    p.add_argument("--pt-tune-epochs", type=int, default=1, help="with --derive darts-pt: search epochs between two "
                   "decisions (default: 1, for the CPU; the authors' is 5)")
    p.add_argument("--darts-settings", action="store_true", help="run every method at DARTS's optimiser settings "
                   "instead of its authors' (--method's own, docs/methods.md); the sizes above apply either way")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (default: 2)")
    p.add_argument("--plot", default="docs/search_collapse.png", help="plot file (default: %(default)s)")
    p.add_argument("--redraw", action="store_true", help="no searches: the plot of the newest recorded run of this "
                   "--dataset, --methods, --first-seed and --derive again, from benchmarks/results.jsonl")
    args = p.parse_args(argv)
    if args.toy:
        args.methods, args.seeds, args.epochs, args.steps_per_epoch = "darts,drnas", 1, 1, 2
        args.layers, args.batch_size, args.retrain_epochs, args.retrain_steps = 3, 8, 1, 2
        args.retrain_layers, args.retrain_channels, args.plot = 3, 4, ""
    args.methods = _bench.method_list(p, args.methods)
    return args


def run_one(job: tuple) -> dict:
    """Search with one method and seed, then retrain the derived cells; runs in a worker process."""
    args, method, seed = job
    import torch
    from dist_darts import collapse, search
    from dist_darts.config import SearchConfig, build
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"collapse-{method}-{seed}-") as tmp:
        settings = dict(dataset=args.dataset, workers=0, device="cpu", seed=seed, epochs=args.epochs,
                        steps_per_epoch=args.steps_per_epoch, layers=args.layers, init_channels=args.init_channels,
                        batch_size=args.batch_size, method=method, derive=args.derive,
                        pt_tune_epochs=args.pt_tune_epochs, log_interval=10**6, output=f"{tmp}/search")
        # build() adds the method's own settings (its rates from its base batch) where these do not set them
        cfg = SearchConfig(**settings) if args.darts_settings else build(SearchConfig, overrides=settings)
        started = time.perf_counter()
        result = search.run(cfg)
        seconds = time.perf_counter() - started
        counts = collapse.cell_counts(result.genotype)
        label = method if args.derive == "original" else f"{method} + {args.derive}"
        row = {"method": label, "seed": seed, "search_val_top1": result.val_top1,
               "param_free_normal": counts["param_free_normal"], "param_free_reduce": counts["param_free_reduce"],
               "skip_normal": counts["skip_normal"], "search_seconds": seconds,
               "search_seconds_per_step": seconds / (result.epochs * args.steps_per_epoch),
               "genotype": json.dumps(search.gt.to_dict(result.genotype))}
        if args.retrain_epochs:
            row.update(_bench.short_retrain(args.dataset, f"{tmp}/search/genotype.json", seed, args.retrain_epochs,
                                           args.retrain_steps, args.retrain_layers, args.retrain_channels,
                                           f"{tmp}/retrain"))
    print(json.dumps({k: v for k, v in row.items() if k != "genotype"}), flush=True)
    return row


def plot(path: str, rows: list[dict], labels: list[str], args) -> str | None:
    plt = _bench.pyplot()
    if plt is None:
        return None
    panels = [("param_free_normal", "parameter-free ops in the normal cell (of 8)")]
    if args.retrain_epochs:  # the hold-out the methods are compared on, not the test split
        panels.append(("retrain_val_top1", f"{args.retrain_epochs}-epoch retrain top-1 on the hold-out %"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for i, method in enumerate(labels):
            values = [r[key] for r in rows if r["method"] == method]
            ax.scatter([i + 0.06 * (j - 1) for j in range(len(values))], values, alpha=0.7)
            ax.hlines(statistics.fmean(values), i - 0.25, i + 0.25, color="k")
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_ylabel(label)
    fig.suptitle(f"DARTS search on {args.dataset}, {args.epochs} epochs x {args.steps_per_epoch} steps, "
                 f"{args.seeds} seeds (dots; bar = mean)")
    return _bench.save_figure(fig, path)


def redraw(args) -> None:
    """The plot of the newest recorded run with args' data set, methods, first seed and derivation."""
    wanted = {"dataset": args.dataset, "methods": args.methods, "first_seed": args.first_seed, "derive": args.derive}
    records = [r for r in _bench.recorded("search_collapse")
               if all(r["args"].get(k) == v for k, v in wanted.items())]
    if not records:
        raise SystemExit(f"--redraw: no recorded run of {wanted} in benchmarks/results.jsonl")
    rows = records[-1]["rows"]
    recorded = argparse.Namespace(**records[-1]["args"])
    print(plot(args.plot, rows, list(dict.fromkeys(r["method"] for r in rows)), recorded))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.redraw:
        return redraw(args)
    jobs = [(args, method, seed) for seed in range(args.first_seed, args.first_seed + args.seeds)
            for method in args.methods]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        rows = pool.map(run_one, jobs, chunksize=1)
    labels = list(dict.fromkeys(r["method"] for r in rows))
    darts_step = [r["search_seconds_per_step"] for r in rows if r["method"] == "darts"]
    header = ["method", "param-free ops, normal cell (of 8)", "runs with a parametric majority", "skip_connects, normal",
              "param-free ops, reduction", "retrain val top-1 %", "retrain test top-1 %", "search val top-1 %", "s per search step",
              "step cost vs darts", "search s"]
    lines = []
    for method in labels:
        column = {key: [r[key] for r in rows if r["method"] == method] for key in rows[0]}
        majority = sum(n < 4 for n in column["param_free_normal"])
        step = statistics.fmean(column["search_seconds_per_step"])
        lines.append([method, _bench.spread(column["param_free_normal"]), f"{majority}/{len(column['seed'])}",
                      _bench.spread(column["skip_normal"]), _bench.spread(column["param_free_reduce"]),
                      *((_bench.spread(column["retrain_val_top1"]), _bench.spread(column["retrain_top1"]))
                        if args.retrain_epochs else ("-", "-")),
                      _bench.spread(column["search_val_top1"]), f"{step:.2f}",
                      f"{step / statistics.fmean(darts_step):.2f}x" if darts_step else "-",
                      f"{statistics.fmean(column['search_seconds']):.0f}"])
    markdown = _bench.table(header, lines, right_from=1)
    drawn = plot(args.plot, rows, labels, args) if args.plot else None
    size = (f"{args.dataset}, supernet {args.layers} cells C={args.init_channels} batch {args.batch_size}, {args.epochs} "
            f"search epochs of {args.steps_per_epoch} steps, seeds {args.first_seed}-{args.first_seed + args.seeds - 1} "
            f"per method, first order; retrain "
            f"{args.retrain_layers} cells C={args.retrain_channels}, {args.retrain_epochs} epoch(s)" +
            (f" of at most {args.retrain_steps} steps" if args.retrain_steps else "") +
            f"; mean ± std over seeds; {args.jobs} runs at a time, 1 thread each" +
            (f"; cells by {args.derive} with {args.pt_tune_epochs} search epoch(s) between decisions (its selection "
             "epochs count in the seconds per step)" if args.derive != "original" else ""))
    print(markdown)
    title = "Search collapse by method" + (" (toy size: a smoke run of the script, not evidence)" if args.toy else "")
    _bench.record("search_collapse", "cpu", {"rows": rows, "args": vars(args)}, title,
                  f"{size}\n\n{markdown}\n" + (f"\nPlot: `{drawn}`\n" if drawn else ""))


if __name__ == "__main__":
    main()
