"""Does the search keep its quality as the global batch grows? Searches at 1x, 2x, 4x and 8x a base batch, one per
scaling rule (the same rule for the weights and the alphas) and seed, the same number of epochs each, on the
embedded digits data (real images).

One process with the large batch stands in for N ranks of batch B/N with SyncBatchNorm: the same math, so the
curve of 8 GPUs can be drawn on a machine without them. Per run it measures

- the supernet's validation top-1 at the end of the search (the search split),
- genotype agreement: the share of the derived cells' (op, input) edges, node by node, that the seed's 1x search
  derived too,
- alpha distance: the mean over epochs of the L1 distance between the softmaxed alphas and the seed's 1x search's,
  per edge,
- the top-1 of a short retrain of the derived cells (the metric that matters), when --retrain-epochs > 0.

At 1x every rule is the paper's (the factor is 1), so the 1x search runs once per seed. The table is printed and
appended to benchmarks/RESULTS.md (and results.jsonl); with matplotlib, one plot (retrain top-1, or search top-1
without retrains, vs global batch, one line per rule, the seeds' spread as error bars) is drawn to --plot.

    python benchmarks/search_batch_scaling.py                     # 1,2,4,8 x 64, 3 seeds, 10 epochs, retrains
    python benchmarks/search_batch_scaling.py --toy               # a smoke run of a few seconds per search

Not done yet: the second, larger real-image task the study asks for (crops of photographs that ship inside a
package); a --toy run is a check that the script works, not evidence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import torch  # noqa: E402
from dist_darts import genotype as gt  # noqa: E402

RULES = ("none", "linear", "sqrt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="smoke size: 1x and 2x of batch 8, one seed, 1 epoch of 2 "
                                                       "steps, a 1-epoch retrain of 2 steps; no plot")
    p.add_argument("--base-batch", type=int, default=64, help="the 1x global batch (default: 64, the paper's)")
    p.add_argument("--multipliers", default="1,2,4,8", help="global batches as multiples of the base (default: "
                                                            "1,2,4,8)")
    p.add_argument("--rules", default=",".join(RULES), help="scaling rules (default: none,linear,sqrt)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (rule, batch) (default: 3)")
    p.add_argument("--epochs", type=int, default=10, help="search epochs, the same at every batch (default: 10)")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="cap on search steps per epoch (0 = the whole "
                                                                  "epoch, fewer steps at a larger batch)")
    p.add_argument("--layers", type=int, default=5, help="supernet cells (default: 5)")
    p.add_argument("--init-channels", type=int, default=8, help="supernet and retrain C (default: 8)")
    p.add_argument("--retrain-epochs", type=int, default=10, help="short retrain of each derived genotype "
                                                                  "(0 = none; default: 10)")
    p.add_argument("--retrain-steps", type=int, default=0, help="cap on retrain steps per epoch (0 = whole epoch)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--plot", default="docs/search_batch_scaling.png", help="plot file (default: %(default)s)")
    args = p.parse_args(argv)
    if args.toy:
        args.base_batch, args.multipliers, args.seeds, args.epochs = 8, "1,2", 1, 1
        args.steps_per_epoch, args.layers, args.init_channels = 2, 3, 4
        args.retrain_epochs, args.retrain_steps, args.plot = 1, 2, ""
    args.multipliers = [int(m) for m in args.multipliers.split(",")]
    args.rules = args.rules.split(",")
    if 1 not in args.multipliers or any(r not in RULES for r in args.rules):
        p.error("--multipliers must include 1 (the reference) and --rules must be some of none,linear,sqrt")
    return args


def run_search(args, out: Path, seed: int, multiplier: int, rule: str):
    from dist_darts import search
    from dist_darts.config import SearchConfig
    cfg = SearchConfig(dataset="digits", workers=0, device="cpu", seed=seed, epochs=args.epochs,
                       steps_per_epoch=args.steps_per_epoch, layers=args.layers, init_channels=args.init_channels,
                       batch_size=args.base_batch * multiplier, base_batch_size=args.base_batch,
                       lr_scaling=rule, arch_lr_scaling=rule, log_interval=10**6, output=str(out))
    result = search.run(cfg)
    alphas = [torch.load(out / "alphas" / f"epoch_{e:03d}.pt") for e in range(args.epochs)]
    return result, [{k: torch.softmax(v.float(), -1) for k, v in a.items()} for a in alphas]


def run_retrain(args, out: Path, genotype_file: Path, seed: int) -> float:
    from dist_darts import train
    from dist_darts.config import RetrainConfig
    cfg = RetrainConfig(dataset="digits", workers=0, device="cpu", seed=seed, genotype=str(genotype_file),
                        epochs=args.retrain_epochs, steps_per_epoch=args.retrain_steps, layers=args.layers,
                        init_channels=args.init_channels, batch_size=args.base_batch, auxiliary=False,
                        log_interval=10**6, output=str(out))
    return train.run(cfg).top1


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
    per_epoch = [statistics.fmean(float((a[k] - b[k]).abs().sum(-1).mean()) for k in a)
                 for a, b in zip(trajectory, reference)]
    return statistics.fmean(per_epoch)


def plot(path: str, rows: list[dict], args, metric: str, label: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for rule in args.rules:
        xs, means, stds = [], [], []
        for m in args.multipliers:
            values = [r[metric] for r in rows if r["multiplier"] == m and r["rule"] in (rule, "any")]
            xs.append(args.base_batch * m)
            means.append(statistics.fmean(values))
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=rule)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch")
    ax.set_ylabel(label)
    ax.set_title(f"DARTS search on digits, {args.epochs} epochs, {args.seeds} seed(s)")
    ax.legend(title="lr scaling")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="batch-scaling-") as tmp:
        for seed in range(args.seeds):
            reference = None
            for m in args.multipliers:
                for rule in (["any"] if m == 1 else args.rules):  # at 1x every rule is the paper's
                    out = Path(tmp) / f"s{seed}-x{m}-{rule}"
                    result, alphas = run_search(args, out, seed, m, "none" if rule == "any" else rule)
                    if m == 1:
                        reference = (result.genotype, alphas)
                    row = {"seed": seed, "multiplier": m, "global_batch": args.base_batch * m, "rule": rule,
                           "search_val_top1": result.val_top1, "agreement": agreement(result.genotype, reference[0]),
                           "alpha_distance": alpha_distance(alphas, reference[1]), "search_seconds": result.seconds,
                           "genotype": json.dumps(gt.to_dict(result.genotype))}
                    if args.retrain_epochs:
                        row["retrain_top1"] = run_retrain(args, Path(tmp) / f"r-{out.name}", out / "genotype.json",
                                                          seed)
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "genotype"}), flush=True)
    header = ["global batch", "rule", "search val top-1 %", "genotype agreement with 1x", "alpha L1 to 1x",
              "retrain top-1 %", "search s"]
    lines = []
    for m in args.multipliers:
        for rule in (["any"] if m == 1 else args.rules):
            sel = [r for r in rows if r["multiplier"] == m and r["rule"] == rule]
            column = {key: [r[key] for r in sel] for key in sel[0]}
            lines.append([str(args.base_batch * m), rule, _bench.spread(column["search_val_top1"]),
                          _bench.spread(column["agreement"]), _bench.spread(column["alpha_distance"], ".2e"),
                          _bench.spread(column["retrain_top1"]) if args.retrain_epochs else "-",
                          _bench.spread(column["search_seconds"])])
    markdown = _bench.table(header, lines, right_from=2)
    metric, label = ("retrain_top1", "short-retrain top-1 %") if args.retrain_epochs else \
        ("search_val_top1", "search val top-1 %")
    drawn = plot(args.plot, rows, args, metric, label) if args.plot else None
    size = (f"digits, {args.layers} cells, C={args.init_channels}, base batch {args.base_batch}, {args.epochs} "
            f"search epoch(s)" + (f" of at most {args.steps_per_epoch} steps" if args.steps_per_epoch else "") +
            f", {args.seeds} seed(s), retrain {args.retrain_epochs} epoch(s)" +
            (f" of at most {args.retrain_steps} steps" if args.retrain_steps else "") +
            "; mean ± std over seeds; one process with the global batch (= ranks with SyncBatchNorm)")
    print(markdown)
    title = "Search batch scaling" + (" (toy size: a smoke run of the script, not evidence)" if args.toy else "")
    _bench.record("search_batch_scaling", "cpu", {"rows": rows, "args": vars(args)}, title,
                  f"{size}\n\n{markdown}\n" + (f"\nPlot: `{drawn}`\n" if drawn else ""))


if __name__ == "__main__":
    main()
