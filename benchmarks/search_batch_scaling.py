"""Does the search keep its quality as the global batch grows? Searches at 1x, 2x, 4x and 8x a base batch, one per
scaling rule (the same rule for the weights and the alphas) and seed, the same number of epochs each (so fewer steps
at a larger batch), on real images that ship inside the installed packages: the digits (default) or --dataset photos.

One process with the large batch stands in for N ranks of batch B/N with SyncBatchNorm: the same math
(tests/test_batch_scaling.py shows it on 2 gloo ranks), so the curve of 8 GPUs can be drawn on a machine without
them. Per run it measures

- the supernet's validation top-1 at the end of the search (the search split),
- genotype agreement: the share of the derived cells' (op, input) edges, node by node, that the seed's 1x search
  derived too,
- alpha distance: the mean over epochs of the L1 distance between the softmaxed alphas and the seed's 1x search's,
  per edge,
- the test top-1 of a short retrain of the derived cells (the metric that matters), when --retrain-epochs > 0.

At 1x every rule is the paper's (the factor is 1), so the 1x search runs once per seed. An epoch is
--images-per-epoch training images (a fresh random draw of the search split each epoch; 0 = the whole split), so
a 1x search takes 8x the steps of an 8x one. The table is printed and appended to benchmarks/RESULTS.md (and
results.jsonl); with matplotlib, one plot (retrain top-1, or search top-1 without retrains, vs global batch, one
line per rule, the seeds' spread as error bars, beside the supernet's accuracy and the normal cell's parameter-free
ops) is drawn to --plot; --redraw re-renders the newest recorded run's table and plot without searching.

    python benchmarks/search_batch_scaling.py                    # digits: 16..128, 3 rules, 3 seeds, retrains
    python benchmarks/search_batch_scaling.py --dataset photos   # the same on the photographs
    python benchmarks/search_batch_scaling.py --toy              # a smoke run of a few seconds per search
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
import torch  # noqa: E402
from dist_darts import genotype as gt  # noqa: E402

RULES = ("none", "linear", "sqrt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="smoke size: 1x and 2x of batch 8, one seed, 1 epoch of 16 "
                                                       "images, a 1-epoch retrain of 2 steps; no plot")
    p.add_argument("--dataset", default="digits", choices=("digits", "photos"),
                   help="embedded real images: digits (8x8 digits) or photos (patches of 10 photographs)")
    p.add_argument("--base-batch", type=int, default=16, help="the 1x global batch, the rules' reference "
                                                              "(default: 16)")
    p.add_argument("--multipliers", default="1,2,4,8", help="global batches as multiples of the base (default: "
                                                            "1,2,4,8)")
    p.add_argument("--rules", default=",".join(RULES), help="scaling rules (default: none,linear,sqrt)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (rule, batch) (default: 3)")
    p.add_argument("--epochs", type=int, default=6, help="search epochs, the same at every batch (default: 6)")
    p.add_argument("--images-per-epoch", type=int, default=256, help="training images per search epoch (0 = the "
                                                                     "whole search split; default: 256)")
    p.add_argument("--warmup-epochs", type=int, default=0, help="weights' lr warm-up of every search (default: 0)")
    p.add_argument("--layers", type=int, default=5, help="supernet cells (default: 5)")
    p.add_argument("--init-channels", type=int, default=4, help="supernet C (default: 4)")
    p.add_argument("--retrain-epochs", type=int, default=4, help="short retrain of each derived genotype "
                                                                 "(0 = none; default: 4)")
    p.add_argument("--retrain-layers", type=int, default=6, help="retrain cells (default: 6)")
    p.add_argument("--retrain-channels", type=int, default=12, help="retrain C (default: 12)")
    p.add_argument("--retrain-steps", type=int, default=0, help="cap on retrain steps per epoch (0 = whole epoch)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each (default: 2)")
    p.add_argument("--plot", default=None, help="plot file (default: docs/search_batch_scaling_DATASET.png)")
    p.add_argument("--redraw", action="store_true", help="no searches: the table and plot of the newest recorded "
                   "run on --dataset, from benchmarks/results.jsonl, with this script's columns")
    args = p.parse_args(argv)
    if args.toy:
        args.base_batch, args.multipliers, args.seeds, args.epochs, args.images_per_epoch = 8, "1,2", 1, 1, 16
        args.layers, args.retrain_epochs, args.retrain_steps, args.retrain_layers = 3, 1, 2, 3
        args.retrain_channels, args.plot = 4, ""
    if args.plot is None:
        args.plot = f"docs/search_batch_scaling_{args.dataset}.png"
    args.multipliers = [int(m) for m in args.multipliers.split(",")]
    args.rules = args.rules.split(",")
    if 1 not in args.multipliers or any(r not in RULES for r in args.rules):
        p.error("--multipliers must include 1 (the reference) and --rules must be some of none,linear,sqrt")
    if args.images_per_epoch and args.images_per_epoch < args.base_batch * max(args.multipliers):
        p.error("--images-per-epoch must hold at least one batch of the largest global batch")
    return args


def run_one(job: tuple) -> dict:
    """One search (and the short retrain of its cells); runs in a worker process. Returns its row, with the
    genotype and the softmaxed alphas of every epoch for the comparison with the seed's 1x search."""
    args, seed, multiplier, rule = job
    from dist_darts import search
    from dist_darts.config import SearchConfig
    torch.set_num_threads(1)
    batch = args.base_batch * multiplier
    with tempfile.TemporaryDirectory(prefix=f"batch-scaling-{seed}-{multiplier}-{rule}-") as tmp:
        cfg = SearchConfig(dataset=args.dataset, workers=0, device="cpu", seed=seed, epochs=args.epochs,
                           steps_per_epoch=args.images_per_epoch // batch, layers=args.layers,
                           init_channels=args.init_channels, batch_size=batch, base_batch_size=args.base_batch,
                           lr_scaling="none" if rule == "any" else rule,
                           arch_lr_scaling="none" if rule == "any" else rule, warmup_epochs=args.warmup_epochs,
                           log_interval=10**6, output=f"{tmp}/search")
        started = time.perf_counter()
        result = search.run(cfg)
        seconds = time.perf_counter() - started
        alphas = [torch.load(f"{tmp}/search/alphas/epoch_{e:03d}.pt") for e in range(args.epochs)]
        row = {"seed": seed, "multiplier": multiplier, "global_batch": batch, "rule": rule,
               "search_val_top1": result.val_top1, "search_seconds": seconds,
               "genotype": gt.to_dict(result.genotype),
               "softmax_alphas": [{k: torch.softmax(v.float(), -1).tolist() for k, v in a.items()} for a in alphas]}
        if args.retrain_epochs:
            row["retrain_top1"] = _bench.short_retrain_top1(args.dataset, f"{tmp}/search/genotype.json", seed,
                                                            args.retrain_epochs, args.retrain_steps,
                                                            args.retrain_layers, args.retrain_channels,
                                                            f"{tmp}/retrain")
    print(json.dumps({k: v for k, v in row.items() if k not in ("genotype", "softmax_alphas")}), flush=True)
    return row


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


def alpha_distance(trajectory, reference) -> float:
    """Mean over epochs and edges of the L1 distance between two runs' softmaxed alphas."""
    per_epoch = [statistics.fmean(float((torch.tensor(a[k]) - torch.tensor(b[k])).abs().sum(-1).mean()) for k in a)
                 for a, b in zip(trajectory, reference)]
    return statistics.fmean(per_epoch)


def plot(path: str, rows: list[dict], args, panels: list[tuple[str, str]]) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels):
        for i, rule in enumerate(args.rules):
            xs, means, stds = [], [], []
            for m in args.multipliers:
                values = [r[metric] for r in rows if r["multiplier"] == m and r["rule"] in (rule, "any")]
                xs.append(args.base_batch * m * (1 + 0.04 * (i - 1)))  # rules side by side, not on top
                means.append(statistics.fmean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=rule)
        ax.set_xscale("log", base=2)
        batches = [args.base_batch * m for m in args.multipliers]
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("global batch")
        ax.set_ylabel(label)
    axes[0][0].legend(title="lr scaling")
    fig.suptitle(f"DARTS search on {args.dataset}, {args.epochs} epochs, {args.seeds} seed(s) (mean ± std)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.redraw:
        record = [r for r in map(json.loads, (_bench.HERE / "results.jsonl").read_text().splitlines())
                  if r["benchmark"] == "search_batch_scaling" and r["args"].get("dataset", "digits") == args.dataset][-1]
        return summarize(record["rows"], argparse.Namespace(**{**record["args"], "plot": args.plot}),
                         f" (redrawn from the run of {record['date'][:16]})")
    jobs = [(args, seed, m, rule) for seed in range(args.seeds) for m in args.multipliers
            for rule in (["any"] if m == 1 else args.rules)]  # at 1x every rule is the paper's
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        rows = pool.map(run_one, jobs, chunksize=1)
    references = {r["seed"]: r for r in rows if r["multiplier"] == 1}
    for r in rows:
        ref = references[r["seed"]]
        r["agreement"] = agreement(gt.from_dict(r["genotype"]), gt.from_dict(ref["genotype"]))
        r["alpha_distance"] = alpha_distance(r["softmax_alphas"], ref["softmax_alphas"])
    for r in rows:
        del r["softmax_alphas"]  # too long for results.jsonl
    summarize(rows, args, " (toy size: a smoke run of the script, not evidence)" if args.toy else "")


def summarize(rows: list[dict], args, title_note: str) -> None:
    """Print the table, draw the plot and append both to RESULTS.md (and the rows to results.jsonl)."""
    from dist_darts import collapse
    for r in rows:
        r["param_free_normal"] = collapse.cell_counts(gt.from_dict(r["genotype"]))["param_free_normal"]
    header = ["global batch", "rule", "search val top-1 %", "genotype agreement with 1x", "alpha L1 to 1x",
              "param-free ops, normal (of 8)", "retrain top-1 %", "search s"]
    lines = []
    for m in args.multipliers:
        for rule in (["any"] if m == 1 else args.rules):
            sel = [r for r in rows if r["multiplier"] == m and r["rule"] == rule]
            column = {key: [r[key] for r in sel] for key in sel[0]}
            lines.append([str(args.base_batch * m), rule, _bench.spread(column["search_val_top1"]),
                          _bench.spread(column["agreement"]), _bench.spread(column["alpha_distance"], ".2e"),
                          _bench.spread(column["param_free_normal"]),
                          _bench.spread(column["retrain_top1"]) if args.retrain_epochs else "-",
                          _bench.spread(column["search_seconds"], ".0f")])
    markdown = _bench.table(header, lines, right_from=2)
    panels = ([("retrain_top1", f"{args.retrain_epochs}-epoch retrain top-1 %")] if args.retrain_epochs else []) + [
        ("search_val_top1", "supernet val top-1 %"), ("param_free_normal", "param-free ops, normal cell (of 8)")]
    drawn = plot(args.plot, rows, args, panels) if args.plot else None
    size = (f"{args.dataset}, supernet {args.layers} cells C={args.init_channels}, base batch {args.base_batch}, "
            f"{args.epochs} search epoch(s) of " +
            (f"{args.images_per_epoch} training images" if args.images_per_epoch else "the whole search split") +
            f", first order, weights lr warm-up {args.warmup_epochs} epoch(s), {args.seeds} seed(s); retrain "
            f"{args.retrain_layers} cells C={args.retrain_channels}, {args.retrain_epochs} epoch(s)" +
            (f" of at most {args.retrain_steps} steps" if args.retrain_steps else "") +
            f"; mean ± std over seeds; one process with the global batch (= ranks with SyncBatchNorm); "
            f"{args.jobs} runs at a time, 1 thread each")
    print(markdown)
    title = "Search batch scaling" + title_note
    _bench.record("search_batch_scaling", "cpu", {"rows": rows, "args": vars(args)}, title,
                  f"{size}\n\n{markdown}\n" + (f"\nPlot: `{drawn}`\n" if drawn else ""))


if __name__ == "__main__":
    main()
